"""Offline moves: moveImage (copy or move a whole chain to another domain) and copyImage
(collapse a chain into one new volume), each run in an SPM task.

docs/contract.md §4 says what they do and how they fail. Both are built on
:mod:`vdsm.storage.image_copy`'s machinery, so a copy here is the same as a clone + sync of
live storage migration: the chain's shape kept (or collapsed, for copyImage), each volume
copied by qemu-img convert, thin staying thin, every copy ILLEGAL while written, one durable
flush at the end, and an undo step recorded before every step.

Neither runs next to a VM: vdsmd holds the lease of every source volume for the whole task, so
a VM that runs on the image anywhere in the pool (its QEMU holds the top volume's lease)
refuses the task (651, naming the volume) and a VM started meanwhile is refused by sanlock.

A move never touches its source before the copy is complete: until every twin is LEGAL and
flushed, a failure, a stop or a crash only removes the twins. Then, in one write, the task's
undo log becomes a single step that *finishes* the move (``FINISH_MOVE`` of
:mod:`vdsm.storage.rollback_steps`): an interrupted deletion of the source is completed,
never undone, as deleteImage's is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from vdsm import crash_point, validation
from vdsm.errors import (
    CommandAborted,
    DestImageActionError,
    InvalidParameter,
    SourceImageActionError,
    TaskAborted,
    VdsmError,
    VolumeDoesNotExist,
)
from vdsm.storage import copy_plan, image, image_copy, qemuimg
from vdsm.storage import volume as volumes
from vdsm.storage.constants import Preallocation, VolumeFormat, VolumeRole
from vdsm.storage.copy_plan import Chain, VolumeCopy
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.resource_locks import LockRequest, exclusive_image, shared_image
from vdsm.storage.rollback_steps import FINISH_MOVE, REMOVE_IMAGE, REMOVE_VOLUME, volume_args
from vdsm.storage.runner import Cancellation
from vdsm.storage.task.context import JSONArgs, TaskContext
from vdsm.storage.volume import Volume
from vdsm.storage.volume_lease import VolumeLeases

log = logging.getLogger("vdsm.storage.image_move")


class Operation(StrEnum):
    """moveImage's ``op``: VDSM's ImageMoveOperation (COPY = 1, MOVE = 2 on the wire)."""

    COPY = "COPY"  # the image is copied; the source stays
    MOVE = "MOVE"  # copied, then the source is deleted


# --- moveImage --------------------------------------------------------------------------------


def move_lock_requests(
    src: FileStorageDomain, dst: FileStorageDomain, img_uuid: str, op: Operation
) -> list[LockRequest]:
    """A MOVE deletes the source: EXCLUSIVE; a COPY only reads it: SHARED (as VDSM's)."""
    source = exclusive_image if op is Operation.MOVE else shared_image
    return [source(src.sd_uuid, img_uuid), exclusive_image(dst.sd_uuid, img_uuid)]


def check_move(
    src: FileStorageDomain, dst: FileStorageDomain, img_uuid: str, op: str, force: bool
) -> tuple[Operation, Chain]:
    """The checks of :func:`move_image` (the API layer calls them to refuse at once); returns
    the operation and the source chain. Raises 1000, 268, 262, 259, 260."""
    operation = _operation(op)
    img_uuid = validation.uuid(img_uuid, "imgUUID")
    if src.sd_uuid == dst.sd_uuid:
        raise InvalidParameter("dstDomUUID", dst.sd_uuid, "must differ from srcDomUUID")
    source = copy_plan.source_chain(src, img_uuid)
    if operation is Operation.MOVE:
        for vol, md in source:
            if md.role is VolumeRole.SHARED:
                # Other images may be based on a template: it cannot leave its domain.
                raise SourceImageActionError(
                    f"{vol.description_for_errors} is a shared (template) volume: not moved"
                )
    if image.exists(dst, img_uuid) and not force:
        raise DestImageActionError(
            f"image {img_uuid} already exists in domain {dst.sd_uuid} (force replaces it)"
        )
    return operation, source


def move_image(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    img_uuid: str,
    op: str,
    ctx: TaskContext,
    *,
    leases: VolumeLeases,
    post_zero: bool = False,
    force: bool = False,
    rate: image_copy.CopyRate = image_copy.UNLIMITED,
) -> None:
    """Copy image ``img_uuid`` of ``src`` to ``dst`` with its chain's shape; a MOVE then
    deletes the source (its data zeroed first when ``post_zero``).

    ``force``: an image already on ``dst`` is deleted first (without it: 260). The caller holds
    :func:`move_lock_requests`. Raises 1000, 268, 262, 259, 260, 261, 651 (a VM or a task
    uses a source volume or a twin), 411 (stopped).
    """
    img_uuid = validation.uuid(img_uuid, "imgUUID")
    operation, source = check_move(src, dst, img_uuid, op, force)
    log.info("%s image %s from %s to %s", operation, img_uuid, src.sd_uuid, dst.sd_uuid)
    # Every source volume's lease, for the whole task: no VM may run on what is copied, and
    # none may start on it until a move has deleted it.
    with leases.held([vol for vol, _ in source], operation.lower()) as held:
        if image.exists(dst, img_uuid):  # force: replace it, as VDSM's move does
            _delete_image(dst, img_uuid, ctx, leases, post_zero=post_zero)
        copy_end = 100.0 if operation is Operation.COPY else 95.0
        image_copy.clone_structure(src, dst, img_uuid, _Scaled(ctx, 0.0, 0.0))
        image_copy.sync_data(
            src,
            dst,
            img_uuid,
            copy_plan.SyncType.ALL,
            _Scaled(ctx, 0.0, copy_end),
            rate=rate,
            leases=leases,
        )
        if operation is Operation.COPY:
            return
        ctx.check_aborted()  # the last moment a stop still keeps the source
        # The point of no return: every twin is LEGAL and flushed. From here an interruption
        # finishes the move; the twins' undo steps must never run again.
        ctx.replace_rollback(
            FINISH_MOVE, {"sd_uuid": src.sd_uuid, "img_uuid": img_uuid, "post_zero": post_zero}
        )
        crash_point.reached("move:point-of-no-return")
        if image.exists(src, img_uuid):
            image.delete(src, img_uuid, post_zero=post_zero, release_lease=held.release)
    ctx.set_progress(100.0)


# --- copyImage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollapsedCopy:
    """What :func:`copy_image` makes: one volume from a source chain base → ``src_vol``."""

    src_chain: Chain  # base → the source volume
    dst_img_uuid: str
    dst_vol_uuid: str
    volume_format: VolumeFormat
    allocation: Preallocation
    shared: bool  # volType SHARED: the new volume is a template


def check_copy(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    src_img_uuid: str,
    src_vol_uuid: str,
    dst_img_uuid: str,
    dst_vol_uuid: str,
    *,
    vol_type: str,
    vol_format: str,
    preallocate: str,
    force: bool,
) -> CollapsedCopy:
    """The checks of :func:`copy_image`; raises 1000, 201, 268, 262, 259, 260."""
    src_img_uuid = validation.uuid(src_img_uuid, "srcImgUUID")
    src_vol_uuid = validation.uuid(src_vol_uuid, "srcVolUUID")
    dst_img_uuid = validation.uuid(dst_img_uuid, "dstImgUUID")
    dst_vol_uuid = validation.uuid(dst_vol_uuid, "dstVolUUID")
    if src.sd_uuid == dst.sd_uuid and src_img_uuid == dst_img_uuid:
        raise InvalidParameter("dstImgUUID", dst_img_uuid, "must differ from srcImgUUID")
    chain = copy_plan.source_chain(src, src_img_uuid)
    uuids = [vol.vol_uuid for vol, _ in chain]
    if src_vol_uuid not in uuids:
        raise VolumeDoesNotExist(f"volume {src_vol_uuid} of image {src_img_uuid} in {src.sd_uuid}")
    chain = chain[: uuids.index(src_vol_uuid) + 1]
    if image.exists(dst, dst_img_uuid) and not force:
        raise DestImageActionError(
            f"image {dst_img_uuid} already exists in domain {dst.sd_uuid} (force replaces it)"
        )
    top_md = chain[-1][1]
    # UNKNOWN (VDSM's 0): keep the source volume's format or allocation.
    fmt = top_md.format if vol_format == "UNKNOWN" else VolumeFormat(vol_format)
    alloc = top_md.allocation if preallocate == "UNKNOWN" else Preallocation(preallocate)
    return CollapsedCopy(chain, dst_img_uuid, dst_vol_uuid, fmt, alloc, vol_type == "SHARED")


def copy_lock_requests(
    src: FileStorageDomain, dst: FileStorageDomain, src_img_uuid: str, dst_img_uuid: str
) -> list[LockRequest]:
    return [shared_image(src.sd_uuid, src_img_uuid), exclusive_image(dst.sd_uuid, dst_img_uuid)]


def copy_image(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    plan: CollapsedCopy,
    ctx: TaskContext,
    *,
    description: str,
    leases: VolumeLeases,
    post_zero: bool = False,
    rate: image_copy.CopyRate = image_copy.UNLIMITED,
) -> None:
    """Make volume ``plan.dst_vol_uuid``, the base of a new image on ``dst``, holding what the
    source chain reads at its top volume (the chain collapsed, as VDSM's copyImage does).

    The caller holds :func:`copy_lock_requests` and passes the plan of :func:`check_copy`
    (made again under the locks). Raises 259, 260, 261, 651, 411.
    """
    top, top_md = plan.src_chain[-1]
    log.info(
        "copying %s (collapsed) to volume %s of image %s in %s",
        top.description_for_errors,
        plan.dst_vol_uuid,
        plan.dst_img_uuid,
        dst.sd_uuid,
    )
    with leases.held([vol for vol, _ in plan.src_chain], "copy"):
        if image.exists(dst, plan.dst_img_uuid):  # force
            _delete_image(dst, plan.dst_img_uuid, ctx, leases, post_zero=post_zero)
        new = Volume(dst, plan.dst_img_uuid, plan.dst_vol_uuid)
        ctx.check_aborted()
        ctx.add_rollback(REMOVE_VOLUME, volume_args(new))
        try:
            volumes.create(
                dst,
                plan.dst_img_uuid,
                plan.dst_vol_uuid,
                capacity=top_md.capacity,
                volume_format=plan.volume_format,
                allocation=plan.allocation,
                disk_type=top_md.disk_type,
                description=description,
                cancellation=ctx.cancellation,
            )
            new_md = new.metadata()
        except (CommandAborted, TaskAborted):
            raise
        except (VdsmError, OSError) as e:
            raise DestImageActionError(f"creating {new.description_for_errors}: {e}") from e
        try:
            # The whole chain as the top volume reads it: no -B, so qemu-img collapses.
            extents = qemuimg.map(top.path, fmt=top_md.format.qemu_format, force_share=True)
        except VdsmError as e:
            raise SourceImageActionError(f"{top.description_for_errors}: {e}") from e
        size = qemuimg.allocated_bytes(extents)
        copy = VolumeCopy(top, top_md, new, new_md, None, None, size)
        progress = image_copy.Progress(ctx, size)
        with leases.held([new], "copy into"):
            image_copy.copy_volume(copy, ctx, progress, rate)
            image_copy.flush_volume(new)
        if plan.shared:
            new.set_role(VolumeRole.SHARED)
    progress.finish()


# --- shared -----------------------------------------------------------------------------------


def _operation(op: str) -> Operation:
    try:
        return Operation(op)
    except ValueError:
        raise InvalidParameter("op", op, "expected COPY (1) or MOVE (2)") from None


def _delete_image(
    domain: FileStorageDomain,
    img_uuid: str,
    ctx: TaskContext,
    leases: VolumeLeases,
    *,
    post_zero: bool,
) -> None:
    """``force``: delete the image already on the destination, under its volumes' leases (a
    VM using it refuses the task); finished, never undone, if interrupted (as deleteImage)."""
    ctx.check_aborted()
    vols = [Volume(domain, img_uuid, v) for v in volumes.image_volumes(domain, img_uuid)]
    with leases.held(vols, "replace") as held:
        ctx.add_rollback(REMOVE_IMAGE, {"sd_uuid": domain.sd_uuid, "img_uuid": img_uuid})
        image.delete(domain, img_uuid, post_zero=post_zero, release_lease=held.release)
    log.info("force: replaced image %s in domain %s", img_uuid, domain.sd_uuid)


class _Scaled:
    """A task context whose progress maps 0–100 into ``lo``–``hi`` of the whole task, so a
    task made of several phases reports one steadily rising figure (bytes pass unchanged)."""

    def __init__(self, ctx: TaskContext, lo: float, hi: float) -> None:
        self._ctx, self._lo, self._hi = ctx, lo, hi

    @property
    def task_id(self) -> str:
        return self._ctx.task_id

    @property
    def cancellation(self) -> Cancellation:
        return self._ctx.cancellation

    def add_rollback(self, name: str, args: JSONArgs) -> None:
        self._ctx.add_rollback(name, args)

    def replace_rollback(self, name: str, args: JSONArgs) -> None:
        self._ctx.replace_rollback(name, args)

    def set_progress(
        self,
        percent: float,
        *,
        done_bytes: int | None = None,
        total_bytes: int | None = None,
        held_back: str | None = None,
    ) -> None:
        scaled = self._lo + (self._hi - self._lo) * percent / 100.0
        self._ctx.set_progress(
            scaled, done_bytes=done_bytes, total_bytes=total_bytes, held_back=held_back
        )

    def check_aborted(self) -> None:
        self._ctx.check_aborted()
