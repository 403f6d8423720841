"""Copy one volume into its twin with a qemu-storage-daemon mirror job, whose rate can change
while it runs: the offline copy of syncImageData and of the offline moves, for a volume whose
copy starts held back by busy guests (:mod:`vdsm.copy_governor`; with the guests idle
image_copy uses qemu-img convert, measured faster in a whole move).

``qemu-img convert`` fixes its rate (``-r``) when it starts; changing it means starting again
from zero. A ``blockdev-mirror`` job in a ``qemu-storage-daemon`` takes a new rate at any time
(``block-job-set-speed``), so the copy yields to the guests and takes full speed back without
losing what it copied. Measured against ``qemu-img convert -n`` into the same empty twins
(docs/copy-rate.md): these nodes and jobs leave exactly what convert leaves (``qemu-img
compare`` of the chains, ``qemu-img map`` of each layer, the bytes allocated):

- a qcow2 volume with a parent: the source opened read-only with its chain, ``sync: top`` (only
  what this layer allocates); the twin opened without its backing chain, zero writes may unmap
  (a zero cluster over the parent's data stays a zero cluster, as it reads as zeros);
- a raw volume into a thin twin: ``sync: full``, 4 KiB granularity (the default 64 KiB
  allocates around small data), zero writes unmap (holes stay holes);
- a raw volume into a preallocated twin: the same, but the twin's file ignores discards (else
  the mirror punches holes into the preallocation).

Other volumes (a qcow2 volume without a parent: the mirror leaves zero clusters where convert
leaves nothing; a preallocated qcow2 twin) are not :func:`supported`: they are copied by
``qemu-img convert``, whose rate is the operator's cap.

The daemon is a child of the one runner (:func:`vdsm.storage.runner.run`, in a thread of its
own, so it dies with vdsmd and carries the task's tag); this module talks QMP to it through
QEMU's own client library (``qemu.qmp``), on a socket vdsmd listens on and the daemon connects
to, so there is no race for a socket the daemon has not made yet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from vdsm.copy_governor import FIRST_LOOK, LOOK_EVERY, CopyGovernor, Decision, GuestIo
from vdsm.errors import CommandAborted, CommandError
from vdsm.storage import runner
from vdsm.storage.constants import Preallocation, VolumeFormat
from vdsm.storage.copy_plan import VolumeCopy

log = logging.getLogger("vdsm.storage.mirror_copy")
# QEMU's client logs every connection's end at INFO; each copy ends one.
logging.getLogger("qemu.qmp").setLevel(logging.WARNING)

QEMU_STORAGE_DAEMON = "qemu-storage-daemon"

# The mirror's buffer, fixed when the job starts: the most it has in flight. A job held back
# gets 1 MiB, so a low rate stays smooth (with QEMU's default 16 MiB it moves in bursts of that
# size at full speed, a stall for the guests each time); a job starting at full speed gets
# the default, whose 16 requests of 1 MiB in flight a fast disk needs (with 1 MiB: one
# request at a time).
SMALL_BUF = 1024**2
BIG_BUF = 16 * 1024**2
# A job starting at a rate above this (bytes/s), or with none, gets BIG_BUF.
BIG_BUF_ABOVE = 256 * 1024**2
# A raw twin's mirror granularity: the file system's block, so small data allocates no more.
RAW_GRANULARITY = 4096
# Seconds the daemon has to start and connect to our monitor socket.
CONNECT_TIMEOUT = 10.0
# Seconds a QMP command may take; these are all quick ones.
COMMAND_TIMEOUT = 30.0
# Seconds the daemon has to exit after "quit" or after its job failed.
EXIT_TIMEOUT = 10.0

_JOB = "copy"
_EVENTS = ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")

# Called at every look: bytes done of bytes to do, and the rate decision in force.
ProgressReport = Callable[[int, int, Decision], None]


class MirrorFailed(Exception):
    """The mirror job, its daemon or QMP failed; the message says what, in QEMU's words."""


@dataclass(frozen=True)
class MirrorJob:
    """The daemon's two nodes and the job's options for one volume."""

    source: dict[str, Any]
    target: dict[str, Any]
    sync: str
    granularity: int | None


def supported(copy: VolumeCopy) -> bool:
    """Whether :func:`copy_volume` reproduces what ``qemu-img convert`` would leave."""
    if copy.dst_md.format is not copy.src_md.format:
        return False  # a collapsed copy into another format: qemu-img converts it
    if copy.src_md.format is VolumeFormat.RAW:
        return True
    return copy.backing is not None and copy.dst_md.allocation is Preallocation.SPARSE


def job_for(copy: VolumeCopy) -> MirrorJob:
    """The nodes and job options that copy ``copy`` as ``qemu-img convert -n`` would."""
    if not supported(copy):
        raise ValueError(f"{copy.src.description_for_errors}: no mirror recipe for this volume")
    source_file: dict[str, Any] = {"driver": "file", "filename": str(copy.src.path)}
    target_file: dict[str, Any] = {"driver": "file", "filename": str(copy.dst.path)}
    # O_DIRECT at both ends or neither, as image_copy's qemu-img convert (VolumeCopy.
    # direct_io). The daemon never flushes the twin (not even as it closes it, which would
    # wait for the writeback of a volume copied through the page cache before the next one
    # starts); image_copy fsyncs every twin before the task succeeds.
    direct = copy.direct_io()
    if direct:
        source_file["cache"] = {"direct": True}
    no_flush = {"direct": direct, "no-flush": True}
    if copy.src_md.format is VolumeFormat.COW:
        return MirrorJob(
            # The whole chain under the source (its header names the parent): only what this
            # layer allocates is copied, read through the chain as the guest would.
            source={"driver": "qcow2", "node-name": "src", "read-only": True, "file": source_file},
            target={
                "driver": "qcow2",
                "node-name": "dst",
                # The twin's parent is not opened: nothing is read or written there, and its
                # own header keeps the link.
                "backing": None,
                "detect-zeroes": "unmap",
                "discard": "unmap",
                "cache": no_flush,
                "file": target_file,
            },
            sync="top",
            granularity=None,
        )
    preallocated = copy.dst_md.allocation is Preallocation.PREALLOCATED
    target_file["discard"] = "ignore" if preallocated else "unmap"
    target: dict[str, Any] = {
        "driver": "raw",
        "node-name": "dst",
        "cache": no_flush,
        "file": target_file,
    }
    if not preallocated:
        target |= {"detect-zeroes": "unmap", "discard": "unmap"}
    return MirrorJob(
        source={"driver": "raw", "node-name": "src", "read-only": True, "file": source_file},
        target=target,
        sync="full",
        granularity=RAW_GRANULARITY,
    )


def copy_volume(
    copy: VolumeCopy,
    *,
    governor: CopyGovernor,
    start: Decision,
    guest_io: Callable[[], GuestIo] | None,
    on_progress: ProgressReport,
    cancellation: runner.Cancellation,
) -> None:
    """Copy ``copy.src`` into its twin at ``start``'s rate, then asking ``governor`` for the
    rate at every look (its counters taken by ``governor.begin`` or its last look).

    ``guest_io`` gives the guests' I/O counters (None: the copy runs at the governor's full
    speed, the operator's cap). ``cancellation`` (the task's) stops the copy: the daemon is
    terminated and CommandAborted raised, the twin left partial (the caller's rollback marks
    it ILLEGAL). Raises MirrorFailed when the daemon or the job fails.
    """
    job = job_for(copy)
    label = copy.src.description_for_errors
    started = time.monotonic()
    # The daemon has a token of its own, so this module can stop it without stopping the
    # task; it carries the task's tag, so a restarted vdsmd finds it after a crash.
    own = runner.Cancellation(cancellation.label)
    with tempfile.TemporaryDirectory(prefix="vdsm-mirror-") as run_dir:
        socket_path = os.path.join(run_dir, "qmp.sock")
        try:
            asyncio.run(
                _Mirror(job, label, governor, start, guest_io, on_progress, cancellation, own).run(
                    socket_path
                )
            )
        except BaseException:
            own.cancel()  # never leave the daemon behind, whatever went wrong
            raise
    log.info("copied %s by a mirror job in %.2f s", label, time.monotonic() - started)


class _Mirror:
    """One copy: the daemon, its QMP connection and the job, in one event loop."""

    def __init__(
        self,
        job: MirrorJob,
        label: str,
        governor: CopyGovernor,
        start: Decision,
        guest_io: Callable[[], GuestIo] | None,
        on_progress: ProgressReport,
        task_cancellation: runner.Cancellation,
        own_cancellation: runner.Cancellation,
    ) -> None:
        self._job = job
        self._label = label
        self._governor = governor
        self._guest_io = guest_io
        self._on_progress = on_progress
        self._task_cancellation = task_cancellation
        self._own = own_cancellation
        self._qmp = QMPClient("vdsm-mirror")
        self._events = EventListener(_EVENTS)
        self._speed = start.rate  # the job's speed now (bytes/s, 0: none)
        self._decision = start  # the governor's decision in force

    async def run(self, socket_path: str) -> None:
        await self._qmp.start_server(socket_path)
        argv = [
            QEMU_STORAGE_DAEMON,
            "--chardev",
            f"socket,id=qmp,path={socket_path}",
            "--monitor",
            "chardev=qmp",
        ]
        daemon = asyncio.ensure_future(asyncio.to_thread(runner.run, argv, cancellation=self._own))
        try:
            await self._connect(daemon)
            with self._qmp.listen(self._events):
                await self._start()
                await self._follow(daemon)
            try:
                await self._execute("quit")
            except MirrorFailed:
                pass  # it may close the connection before it answers: its exit code tells
            if not await self._exited(daemon):
                raise MirrorFailed(f"{QEMU_STORAGE_DAEMON} did not exit within {EXIT_TIMEOUT:g} s")
            daemon.result()
        except MirrorFailed as e:
            # A daemon that failed by itself (it crashed, or refused its arguments) says why
            # on stderr, which says more than the broken connection we saw.
            self._own.cancel()
            gone = await self._exited(daemon) and not daemon.cancelled()
            failure = daemon.exception() if gone else None
            if isinstance(failure, CommandError) and not isinstance(failure, CommandAborted):
                raise MirrorFailed(f"{e}: {failure.detail}") from failure
            raise
        finally:
            self._own.cancel()  # a no-op once the daemon is gone
            if await self._exited(daemon) and not daemon.cancelled():
                daemon.exception()  # retrieved: its error was reported above, or superseded
            try:
                await self._qmp.disconnect()
            except (EOFError, QMPError, OSError):
                pass  # the daemon closed the connection first, as it does after "quit"

    async def _connect(self, daemon: asyncio.Future[runner.CommandResult]) -> None:
        accept: asyncio.Future[None] = asyncio.ensure_future(self._qmp.accept())
        waited: set[asyncio.Future[Any]] = {accept, daemon}
        done, _ = await asyncio.wait(
            waited, timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if accept in done:
            accept.result()
            return
        accept.cancel()
        if daemon in done:
            raise MirrorFailed(f"{QEMU_STORAGE_DAEMON} exited before it connected")
        raise MirrorFailed(f"{QEMU_STORAGE_DAEMON} did not connect within {CONNECT_TIMEOUT:g} s")

    async def _start(self) -> None:
        await self._execute("blockdev-add", self._job.source)
        await self._execute("blockdev-add", self._job.target)
        big = self._speed == 0 or self._speed > BIG_BUF_ABOVE
        mirror: dict[str, Any] = {
            "job-id": _JOB,
            "device": "src",
            "target": "dst",
            "sync": self._job.sync,
            "speed": self._speed,
            "buf-size": BIG_BUF if big else SMALL_BUF,
            # An I/O error ends the job at once, its errno in the completion event ("stop"
            # would pause it and tell only which side failed).
            "on-source-error": "report",
            "on-target-error": "report",
        }
        if self._job.granularity is not None:
            mirror["granularity"] = self._job.granularity
        await self._execute("blockdev-mirror", mirror)

    async def _follow(self, daemon: asyncio.Future[runner.CommandResult]) -> None:
        """Look at the job every LOOK_EVERY s (at once on an event) until it completed."""
        last_at, last_offset = time.monotonic(), 0
        decision = self._decision
        ending = False
        look = FIRST_LOOK
        # Until the first look the job runs at the rate it started at: say so, held back or not.
        self._on_progress(0, 0, decision)
        while True:
            for name, data in await self._events_within(look):
                if name == "BLOCK_JOB_COMPLETED":
                    if data.get("error"):
                        raise MirrorFailed(f"copy of {self._label} failed: {data['error']}")
                    length = int(data.get("len", 0))
                    self._on_progress(length, length, decision)
                    return
                if name == "BLOCK_JOB_CANCELLED":
                    raise MirrorFailed(f"copy of {self._label} was cancelled by QEMU")
                if name == "BLOCK_JOB_READY" and not ending:
                    # In sync, and nothing writes the read-only source: ending the job without
                    # a pivot leaves the twin a whole copy (BLOCK_JOB_COMPLETED follows).
                    ending = True
                    await self._execute("block-job-cancel", {"device": _JOB})
            if self._task_cancellation.cancelled:
                raise CommandAborted([QEMU_STORAGE_DAEMON], None, "", reason="cancelled")
            if daemon.done():
                raise MirrorFailed(f"{QEMU_STORAGE_DAEMON} exited while the copy ran")
            offset, length = await self._position()
            now = time.monotonic()
            if self._guest_io is not None and not ending:
                decision = self._governor.decide(
                    self._guest_io(), now - last_at, max(0, offset - last_offset)
                )
                if decision.rate != self._speed:
                    log.debug(
                        "%s: speed %d bytes/s (%s)",
                        self._label,
                        decision.rate,
                        decision.held_back or "full",
                    )
                    await self._execute(
                        "block-job-set-speed", {"device": _JOB, "speed": decision.rate}
                    )
                    self._speed = decision.rate
            last_at, last_offset, look = now, offset, LOOK_EVERY
            self._on_progress(offset, length, decision)

    async def _events_within(self, seconds: float) -> list[tuple[str, Mapping[str, Any]]]:
        """The job's events that arrive within ``seconds`` (waiting no longer once one came)."""
        try:
            first = await asyncio.wait_for(self._events.get(), seconds)
        except TimeoutError:
            return []
        events = [first]
        while not self._events.empty():
            events.append(await self._events.get())  # queued already: returns at once
        return [(str(e["event"]), _mapping(e.get("data"))) for e in events]

    async def _position(self) -> tuple[int, int]:
        jobs = await self._execute("query-block-jobs")
        for job in jobs if isinstance(jobs, list) else []:
            if job.get("device") == _JOB:
                return int(job.get("offset", 0)), int(job.get("len", 0))
        return 0, 0

    async def _execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        try:
            return await asyncio.wait_for(self._qmp.execute(command, arguments), COMMAND_TIMEOUT)
        except ExecuteError as e:
            raise MirrorFailed(f"copy of {self._label}: {command}: {e.error.error.desc}") from e
        except (QMPError, TimeoutError, OSError, EOFError) as e:
            raise MirrorFailed(f"copy of {self._label}: {command}: {e or type(e).__name__}") from e

    async def _exited(self, daemon: asyncio.Future[runner.CommandResult]) -> bool:
        """Wait up to EXIT_TIMEOUT for the daemon to be gone; True when it is. After a
        cancel the runner ends it within its SIGTERM grace, so this then returns True."""
        done, _ = await asyncio.wait({daemon}, timeout=EXIT_TIMEOUT)
        return bool(done)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
