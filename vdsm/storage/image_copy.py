"""The storage side of the two SPM verbs of live storage migration, run in a task.

docs/contract.md §4 says what they do and how they fail:

- :func:`clone_structure` (cloneImageStructure): an empty twin of an image's chain on another
  domain — same volUUIDs, capacities, formats, allocation, parents — no data.
- :func:`sync_data` (syncImageData): copy the data of the chosen volumes (ALL, INTERNAL, LEAF)
  into their existing twins, layer by layer, thin staying thin and preallocated preallocated.

Locks: the caller (the API layer) holds, for the whole call, the source image SHARED and the
destination image EXCLUSIVE: ``locks.hold(lock_requests(src, dst, img_uuid))``. Before starting
the task it may call :func:`check_clone` / :func:`check_sync` to refuse bad requests at once;
the task checks again under the locks.

Both record an undo step before every step they take (see :mod:`vdsm.storage.rollback_steps`),
so a failed, stopped or crashed task leaves no half-made destination: a clone's volumes are
removed, a twin being (or having been) written is left ILLEGAL. Errors carry the real cause:
metadata problems, qemu-img's stderr.

This module runs the steps; the checks of the chains and the plan of each copy,
which only read, are :mod:`vdsm.storage.copy_plan`'s.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from vdsm import validation
from vdsm.copy_governor import FIRST_LOOK, CopyGovernor, Decision, GuestIo
from vdsm.errors import (
    CommandAborted,
    CommandError,
    CopyImageError,
    DestImageActionError,
    TaskAborted,
    VdsmError,
)
from vdsm.storage import copy_plan, image, mirror_copy, qemuimg
from vdsm.storage import volume as volumes
from vdsm.storage.constants import Legality, Preallocation
from vdsm.storage.copy_plan import Chain, VolumeCopy
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.resource_locks import LockRequest, exclusive_image, shared_image
from vdsm.storage.rollback_steps import MARK_ILLEGAL, REMOVE_VOLUME, volume_args
from vdsm.storage.runner import Cancellation
from vdsm.storage.task.context import TaskContext
from vdsm.storage.volume import Volume
from vdsm.storage.volume_lease import VolumeLeases

log = logging.getLogger("vdsm.storage.image_copy")


@dataclass(frozen=True)
class CopyRate:
    """How fast a copy may go: the operator's cap, and whether the rate adapts to the guests.

    ``limit``: bytes per second (None: no cap; vdsmd's copy_rate_limit). ``guest_io``: the
    guests' I/O counters (VmManager.guest_io) when the rate adapts (vdsmd's
    adaptive_copy_rate), None when it does not. When it adapts, a volume whose copy starts
    held back (busy guests) runs as a mirror job in qemu-storage-daemon
    (:mod:`vdsm.storage.mirror_copy`), whose rate the governor changes as it runs; a volume
    whose copy starts at full speed (idle guests) is copied by qemu-img convert at the cap,
    the fastest way measured, and what the guests did meanwhile decides how the next one
    starts.
    """

    limit: int | None = None
    guest_io: Callable[[], GuestIo] | None = None

    def governor(self) -> CopyGovernor | None:
        """A governor for one task's copies (it keeps what it learnt from volume to volume),
        None when the rate does not adapt."""
        return CopyGovernor(cap=self.limit or 0) if self.guest_io is not None else None


# No cap, not adaptive: qemu-img convert at full speed.
UNLIMITED = CopyRate()


def lock_requests(
    src: FileStorageDomain, dst: FileStorageDomain, img_uuid: str
) -> list[LockRequest]:
    """The locks a clone or a sync needs: the source image SHARED, the destination EXCLUSIVE."""
    return [shared_image(src.sd_uuid, img_uuid), exclusive_image(dst.sd_uuid, img_uuid)]


# --- cloneImageStructure ----------------------------------------------------------------------


def clone_structure(
    src: FileStorageDomain, dst: FileStorageDomain, img_uuid: str, ctx: TaskContext
) -> None:
    """Create on ``dst`` an empty, LEGAL twin of the chain of image ``img_uuid`` of ``src``.

    Raises 268 (no such image on src), 262 (src chain broken), 259 (src unreadable or a
    volume not LEGAL), 260 (image already on dst, or creating a twin failed), 411 (stopped).
    """
    img_uuid = validation.uuid(img_uuid, "imgUUID")  # canonical: it names files
    source = check_clone(src, dst, img_uuid)
    log.info("cloning structure of image %s from %s to %s", img_uuid, src.sd_uuid, dst.sd_uuid)
    for done, (vol, md) in enumerate(source, start=1):
        ctx.check_aborted()
        # Recorded first: a crash inside create leaves files the step recognises by name.
        ctx.add_rollback(REMOVE_VOLUME, volume_args(Volume(dst, img_uuid, vol.vol_uuid)))
        try:
            # create() makes the volume LEGAL and demotes its parent to INTERNAL.
            volumes.create(
                dst,
                img_uuid,
                vol.vol_uuid,
                capacity=md.capacity,
                volume_format=md.format,
                allocation=md.allocation,
                disk_type=md.disk_type,
                description=md.description,
                parent_uuid=md.parent,
                cancellation=ctx.cancellation,
            )
        except (CommandAborted, TaskAborted):
            raise
        except (VdsmError, OSError) as e:
            raise DestImageActionError(
                f"creating volume {vol.vol_uuid} of image {img_uuid} in domain {dst.sd_uuid}: {e}"
            ) from e
        ctx.set_progress(100.0 * done / len(source))


def check_clone(src: FileStorageDomain, dst: FileStorageDomain, img_uuid: str) -> Chain:
    """The checks of :func:`clone_structure` (also for the API layer, to refuse at once what
    the task would refuse); returns the source chain. Raises 268, 262, 259, 260."""
    img_uuid = validation.uuid(img_uuid, "imgUUID")
    source = copy_plan.source_chain(src, img_uuid)
    if image.exists(dst, img_uuid):
        raise DestImageActionError(f"image {img_uuid} already exists in domain {dst.sd_uuid}")
    return source


# --- syncImageData ----------------------------------------------------------------------------


def sync_data(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    img_uuid: str,
    sync_type: str,
    ctx: TaskContext,
    *,
    rate: CopyRate = UNLIMITED,
    leases: VolumeLeases | None = None,
) -> None:
    """Copy the volumes chosen by ``sync_type`` into their twins on ``dst``, one at a time.

    ``rate``: the cap and whether the copy yields to the guests, so that a copy leaves the
    guests on the same storage their share of it. ``leases``: the twins' volume
    leases are held for the whole copy and flush (a twin another writer holds: 651, before
    anything is written).

    The twins must be fresh from :func:`clone_structure` (or hold a partial copy of the same
    read-only source): a base twin is written with --target-is-zero, so areas where the
    source reads zeros are not written at all.

    Copies run one after another, except into another device at full speed, where they run
    all at once (:func:`_all_at_once`).

    Raises 2000 (unknown syncType), 268, 262 (chains differ), 259, 260, 261 (qemu-img failed),
    411 (stopped).
    """
    governor = rate.governor()
    if governor is not None and rate.guest_io is not None:
        # The first look's counters, read now: the checks and the leases below take part of
        # the FIRST_LOOK the first copy would otherwise wait for (see _start_decision).
        governor.begin(rate.guest_io(), at=time.monotonic())
    mode, pairs, target = copy_plan.checked_sync(src, dst, img_uuid, sync_type)
    copies = copy_plan.plan_all(pairs, target)
    progress = Progress(ctx, sum(copy.size for copy in copies))
    log.info(
        "syncing %s of image %s: %d volumes, %d bytes", mode, img_uuid, len(copies), progress.total
    )
    held = leases.held([copy.dst for copy in copies], "copy into") if leases else nullcontext()
    with held:  # the twins' leases, for the whole write (none anywhere else may write them)
        at_once = _all_at_once(copies, rate)
        if not at_once or not _copy_volumes_at_once(copies, ctx, progress, rate, governor):
            for copy in copies:
                copy_volume(copy, ctx, progress, rate, governor)
        _flush_all(copies)
    progress.finish()


def _flush_all(copies: list[VolumeCopy]) -> None:
    # Durable before the task succeeds (the caller then pivots and deletes the source).
    # Flushed once at the end, not after each volume: a twin written through the page cache
    # had its writeback started as its copy ended, and it goes on while the next ones are
    # copied (docs/benchmarks.md, tuning). A crash before this point leaves the task unfinished, and
    # its recovery marks every twin ILLEGAL: a LEGAL twin not flushed yet is never used.
    for copy in copies:
        flush_volume(copy.dst)


def check_sync(
    src: FileStorageDomain, dst: FileStorageDomain, img_uuid: str, sync_type: str
) -> None:
    """The checks of :func:`sync_data`, also for the API layer to refuse at once what the
    task would refuse. Raises 2000, 268, 262, 259, 260."""
    copy_plan.checked_sync(src, dst, img_uuid, sync_type)


def _all_at_once(copies: list[VolumeCopy], rate: CopyRate) -> bool:
    """Whether the volumes are copied all at the same time rather than one after another.

    Into a twin on another device (O_DIRECT at both ends, VolumeCopy.direct_io) the copy meets
    the source's read limit alone, and one qemu-img reading one layer leaves the source's
    queue short: measured on qemu-img 7.2 into a memory-backed device, three layers (2 GiB)
    took 1.33-1.46 s at once against 1.65-1.72 s one after another, the source reading
    1.5-1.6 GiB/s. Between two domains of one device the copies would compete for the disk
    they read and write: one after another. Not with a cap either: qemu-img's -r is per
    process, so the copies together would exceed it.
    """
    return len(copies) > 1 and rate.limit is None and all(copy.direct_io() for copy in copies)


def _copy_volumes_at_once(
    copies: list[VolumeCopy],
    ctx: TaskContext,
    progress: Progress,
    rate: CopyRate,
    governor: CopyGovernor | None,
) -> bool:
    """Copy every volume into its twin at the same time, each by a qemu-img convert of its own
    whose twin is opened without its backing chain (the copies would otherwise lock each
    other out). One failure stops the others and is the task's error.

    A copy whose rate adapts starts at once, without waiting for the governor's first look,
    which it takes while the copies run: into another device the copy's whole time is
    what that wait would add to (the replication's mirror, too, runs at full speed until its
    first look). When the look finds the guests busy, the copies are stopped and False
    returned: the caller copies the volumes one by one, held back, from the start.
    """
    ctx.check_aborted()
    allocated_before = []
    for copy in copies:
        ctx.add_rollback(MARK_ILLEGAL, volume_args(copy.dst))
        _set_dst_legality(copy.dst, Legality.ILLEGAL)
        allocated_before.append(_allocated(copy.dst))
    log.info("copying %d volumes to their twins at once", len(copies))
    group = ctx.cancellation.child()  # stops the others when one fails
    errors: list[BaseException] = []

    def run(key: int, copy: VolumeCopy) -> None:
        try:
            _convert_volume(copy, group, progress.volume(copy.size, key), None, alone=True)
        except BaseException as e:
            if not group.cancelled:  # the first failure, not a copy it stopped
                errors.append(e)
            group.cancel()

    threads = [
        threading.Thread(target=run, args=(key, copy), name=f"copy-{key}", daemon=True)
        for key, copy in enumerate(copies)
    ]
    for thread in threads:
        thread.start()
    busy = False
    if governor is not None and governor.fresh:
        # Copies that end before the first look is due need none.
        due = (governor.began_at or time.monotonic()) + FIRST_LOOK
        for thread in threads:
            thread.join(max(0.0, due - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            busy = bool(_start_decision(governor, rate).held_back)
    if busy:
        group.cancel()
    for thread in threads:
        thread.join()
    ctx.check_aborted()  # a stop of the task stopped them all
    if busy:
        log.info("guests busy at the first look: copying the volumes one by one, held back")
        progress.forget_volumes_in_flight()
        return False
    if errors:
        raise errors[0]
    for key, (copy, before) in enumerate(zip(copies, allocated_before, strict=True)):
        if copy.dst_md.allocation is Preallocation.PREALLOCATED:
            _keep_preallocated(copy.dst, before)
        _set_dst_legality(copy.dst, Legality.LEGAL)
        progress.volume_done(copy.size, key)
    return True


def copy_volume(
    copy: VolumeCopy,
    ctx: TaskContext,
    progress: Progress,
    rate: CopyRate,
    governor: CopyGovernor | None = None,
) -> None:
    """Copy one volume into its twin: ILLEGAL while written, LEGAL once whole. ``governor``
    (from ``rate.governor()``; None: a new one) decides an adaptive copy's rate."""
    ctx.check_aborted()
    ctx.add_rollback(MARK_ILLEGAL, volume_args(copy.dst))
    # ILLEGAL while written: a partially copied twin must never be usable.
    _set_dst_legality(copy.dst, Legality.ILLEGAL)
    log.info("copying %s (%d bytes) to its twin", copy.src.description_for_errors, copy.size)
    allocated_before = _allocated(copy.dst)
    governor = governor or rate.governor()
    start = _start_decision(governor, rate) if governor is not None else None
    if start is not None and start.held_back and mirror_copy.supported(copy):
        assert governor is not None
        _mirror_volume(copy, ctx, progress, rate, governor, start)
    else:
        started = time.monotonic()
        _convert_volume(copy, ctx.cancellation, progress.volume(copy.size), rate.limit)
        if governor is not None and rate.guest_io is not None:
            # What the guests did meanwhile decides how the next volume starts.
            governor.decide(rate.guest_io(), time.monotonic() - started, copy.size)
    if copy.dst_md.allocation is Preallocation.PREALLOCATED:
        _keep_preallocated(copy.dst, allocated_before)
    _start_writeback(copy.dst)
    # A stop that arrived as the copy ended still stops the task, with the twin ILLEGAL.
    ctx.check_aborted()
    _set_dst_legality(copy.dst, Legality.LEGAL)
    progress.volume_done(copy.size)


def _start_decision(governor: CopyGovernor, rate: CopyRate) -> Decision:
    """How a volume's copy starts. A governor that never decided takes a second look
    FIRST_LOOK after its first (the task's start, when sync_data took it), so a copy starting
    while the guests are busy starts held back; later volumes start where the last one left
    the governor."""
    assert rate.guest_io is not None
    if not governor.fresh:
        return governor.begin(rate.guest_io())
    if governor.began_at is None:
        governor.begin(rate.guest_io(), at=time.monotonic())
    assert governor.began_at is not None
    wait = FIRST_LOOK - (time.monotonic() - governor.began_at)
    if wait > 0:
        time.sleep(wait)
    return governor.decide(rate.guest_io(), time.monotonic() - governor.began_at, 0)


def _mirror_volume(
    copy: VolumeCopy,
    ctx: TaskContext,
    progress: Progress,
    rate: CopyRate,
    governor: CopyGovernor,
    start: Decision,
) -> None:
    """The adaptive copy, for a volume that starts held back: a mirror job whose rate the
    governor sets at every look."""

    def report(done: int, length: int, decision: Decision) -> None:
        # The job's length is what it walks (a raw volume's whole capacity); the weight of
        # the volume in the task's progress is what it allocates.
        progress.at(copy.size, done / length if length else 0.0, decision.held_back)

    try:
        mirror_copy.copy_volume(
            copy,
            governor=governor,
            start=start,
            guest_io=rate.guest_io,
            on_progress=report,
            cancellation=ctx.cancellation,
        )
    except CommandAborted as e:
        raise TaskAborted(f"copy of {copy.src.description_for_errors} stopped") from e
    except (mirror_copy.MirrorFailed, CommandError) as e:
        detail = e.detail if isinstance(e, CommandError) else str(e)
        raise CopyImageError(
            f"copying {copy.src.description_for_errors} to domain {copy.dst.domain.sd_uuid}: "
            f"{detail}"
        ) from e


def _convert_volume(
    copy: VolumeCopy,
    cancellation: Cancellation,
    on_progress: Callable[[float], None],
    rate_limit: int | None,
    *,
    alone: bool = False,
) -> None:
    """``alone``: a twin with a parent is opened without its backing chain, so that copies
    into one chain can run at once. Only then: through the page cache, a twin opened alone
    was copied 34% slower (a 2 GiB chain on one disk, 3.33 s against 2.49 s, medians of four
    alternating rounds)."""
    direct = copy.direct_io()  # O_DIRECT or the page cache: see VolumeCopy.direct_io
    try:
        qemuimg.convert(
            copy.src.path,
            copy.dst.path,
            src_format=copy.src_md.format.qemu_format,
            dst_format=copy.dst_md.format.qemu_format,
            target_exists=True,
            src_direct=direct,
            dst_direct=direct,
            # With a parent: -B tells qemu-img the twin has a backing file, so only this
            # layer is copied and the twin's own link is kept. Without one: the fresh twin
            # reads as zeros, so skip zeros (a preallocated twin keeps its allocation).
            backing=copy.backing,
            backing_format=copy.backing_format,
            target_is_zero=copy.backing is None,
            dst_alone=alone and copy.backing is not None,
            rate_limit=rate_limit,
            on_progress=on_progress,
            cancellation=cancellation,
        )
    except CommandAborted as e:
        raise TaskAborted(f"copy of {copy.src.description_for_errors} stopped") from e
    except CommandError as e:
        raise CopyImageError(
            f"copying {copy.src.description_for_errors} to domain {copy.dst.domain.sd_uuid}: "
            f"{e.detail}"
        ) from e


def _start_writeback(vol: Volume) -> None:
    """Start writing a copied twin's dirty pages back, without waiting for it (a twin copied
    through the page cache; after an O_DIRECT copy there is nothing to write back).

    POSIX_FADV_DONTNEED starts the writeback (and drops the pages already clean), so the disk
    writes this twin while the next volume is read, instead of everything at the final fsync;
    it also keeps gigabytes of copied data from lingering in the page cache. Advisory: an
    error only means the final flush has more to do.
    """
    try:
        fd = os.open(vol.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except OSError as e:
        log.debug("%s: cannot start writeback: %s", vol.description_for_errors, e)


def flush_volume(vol: Volume) -> None:
    """Put a twin's data on stable storage.

    A synced twin must survive a host crash (after the pivot the source is deleted), so the
    sync ends with one fsync per twin. A copy with O_DIRECT (qemu-img -t none) already
    flushed as it closed the twin, and this fsync costs little; one through the page cache
    (qemu-img's default target cache "unsafe" never flushes, nor does the mirror job) ends
    with its data in the page cache, and this is what makes it durable.
    """
    try:
        fd = os.open(vol.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise DestImageActionError(f"{vol.description_for_errors}: cannot flush: {e}") from e


def _allocated(vol: Volume) -> int:
    try:
        return vol.path.stat().st_blocks * 512
    except OSError as e:
        raise DestImageActionError(f"{vol.description_for_errors}: {e}") from e


def _keep_preallocated(vol: Volume, allocated_before: int) -> None:
    """Give a preallocated twin back the space the copy released.

    Where the source layer has zero clusters qemu-img writes zeros with "may unmap", and qcow2
    then frees those clusters and punches them out of the file (measured on 7.2). Reserving
    the whole file again is a no-op on allocated ranges; it runs only when space was released,
    because without fallocate(2) (NFSv3) glibc emulates it block by block.
    """
    if _allocated(vol) >= allocated_before:
        return
    try:
        fd = os.open(vol.path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except OSError as e:
        raise DestImageActionError(
            f"{vol.description_for_errors}: cannot keep it preallocated: {e}"
        ) from e
    log.info("re-allocated space released by the copy in %s", vol.description_for_errors)


class Progress:
    """Progress of a whole sync, weighted by the bytes each volume has to copy.

    qemu-img reports from a reader thread of the runner, and volumes copied at the same time
    report from threads of their own, hence the lock. Each volume in flight has a key (its
    index in the sync; 0 when one volume is copied at a time).
    """

    def __init__(self, ctx: TaskContext, total: int) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self.total = total
        self._done = 0  # bytes of the volumes already copied
        self._held_back = ""  # why the copy is held back now ("" when it is not)
        self._in_flight: dict[int, int] = {}  # bytes done so far of each volume being copied

    def volume(self, size: int, key: int = 0) -> Callable[[float], None]:
        """The on_progress callback for the copy of a volume of ``size`` bytes."""
        return lambda percent: self._advance(key, int(size * percent / 100))

    def at(self, size: int, fraction: float, held_back: str) -> None:
        """The copy of a volume of ``size`` bytes is ``fraction`` done, held back or not."""
        with self._lock:
            self._held_back = held_back
        self._advance(0, int(size * min(1.0, max(0.0, fraction))))

    def volume_done(self, size: int, key: int = 0) -> None:
        with self._lock:
            self._done += size
            self._held_back = ""
            self._in_flight.pop(key, None)
        self._report()

    def forget_volumes_in_flight(self) -> None:
        """The copies in flight were stopped, to be made again: their bytes are not done."""
        with self._lock:
            self._in_flight.clear()
        self._report()

    def finish(self) -> None:
        self._ctx.set_progress(100.0, done_bytes=self.total, total_bytes=self.total, held_back="")

    def _advance(self, key: int, done: int) -> None:
        with self._lock:
            # A mirror job's length grows as it finds more to copy: never report going back.
            self._in_flight[key] = max(self._in_flight.get(key, 0), done)
        self._report()

    def _report(self) -> None:
        with self._lock:
            done = self._done + sum(self._in_flight.values())
            # Nothing to copy (empty volumes) counts as done only at the end.
            percent = 100.0 * done / self.total if self.total else 0.0
            self._ctx.set_progress(
                percent, done_bytes=done, total_bytes=self.total, held_back=self._held_back
            )


def _set_dst_legality(vol: Volume, legality: Legality) -> None:
    try:
        vol.set_legality(legality)
    except (VdsmError, OSError) as e:
        raise DestImageActionError(f"marking {vol.description_for_errors} {legality}: {e}") from e
