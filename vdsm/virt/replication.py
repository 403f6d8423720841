"""Drive replication: diskReplicateStart / diskReplicateFinish (docs/contract.md §3).

A replication mirrors a drive's active layer onto an existing destination leaf with libvirt's
shallow block copy; libvirt opens the destination's backing chain only at pivot, so the SPM
can fill the destination's internal volumes (syncImageData) while the mirror runs. Finish then
pivots the VM to the destination (blockJobAbort PIVOT) or, when srcDisk == dstDisk, cancels the
mirror and leaves the VM on the source (with a finished sync: a live clone).

The replication is an explicit state machine (job_records.ReplicationRecord, its states and
transitions) whose record lives in the VM's durable record and is written *before* each step
it guards:

    STARTING  → the record exists; the destination may not be touched yet (then its chain
                is recorded before the copy starts)
    MIRRORING → the block copy job runs
    SWITCHING → auto mode: the background copy is being restarted with synchronous writes
    PIVOTING / ABORTING → blockJobAbort was requested; back to MIRRORING if libvirt refuses

so after a crash of vdsmd a later Finish still knows what to finish or clean up. Pitfalls kept
out (docs/contract.md §8): the record is kept when a pivot or abort fails (41); readiness is
libvirt's READY (event or ``ready='yes'``), never cur == end; a job that vanished or failed is
reported as such (55), never as success; a libvirt failure is a 55 naming libvirt's cause.

Convergence (docs/contract.md §8.3): in ``auto`` mode the copy starts in background mode
(lowest guest latency) and a monitor thread watches what is left to copy; if it stops
shrinking for a whole window, the guest writes faster than the copy, so the job is restarted
with synchronous writes (QEMU's write-blocking mirror), which always converges. The monitor
never sleeps or polls while holding the VM's lock, and libvirt failing under it (QEMU killed)
ends it with a log line, never a dead thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

from vdsm import crash_point
from vdsm.copy_governor import FIRST_LOOK, LOOK_EVERY, CopyGovernor, Decision, GuestIo
from vdsm.errors import (
    DriveSwitchFailed,
    InvalidParameter,
    ReplicationError,
    ReplicationNotInProgress,
    ReplicationNotReady,
    VdsmError,
    VmDown,
)
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.volume import Volume
from vdsm.storage.volume_lease import VolumeLease
from vdsm.virt import domain_xml, vm_leases
from vdsm.virt.connection import error_message
from vdsm.virt.drives import Drive, VolumeLink, prepare_chain
from vdsm.virt.job_records import CopyMode, DiskRef, Identity, ReplicaState, ReplicationRecord
from vdsm.virt.vm import DOWN, Vm

log = logging.getLogger("vdsm.virt.replication")

MiB = 1024**2

# The monitor looks every copy_governor.LOOK_EVERY seconds; a switch to sync waits this long
# for the cancelled job to go.
_SWITCH_POLL = 0.05
_SWITCH_TIMEOUT = 30.0
# What _switch_to_sync answers when the mirror runs again, now with synchronous writes.
SWITCHED = "the mirror now runs with synchronous writes"


@dataclass(frozen=True)
class ReplicationEnded:
    """What a finished replication tells the host's metrics (vdsm/observe/)."""

    pivot: bool  # pivoted to the destination (else aborted: the VM stays on the source)
    seconds: float  # from its diskReplicateStart to its end
    switch_seconds: float | None  # libvirt's blockJobAbort (pivot or abort); None if recovered


class Replications:
    """Starts, finishes and watches the replications of every VM of this host."""

    def __init__(
        self,
        storage: HostStorage,
        *,
        convergence_window: float = 10.0,
        guest_io: Callable[[], GuestIo] | None = None,
        on_ended: Callable[[ReplicationEnded], None] | None = None,
    ) -> None:
        """``guest_io``: the guests' I/O counters (VmManager.guest_io) the adaptive copy rate
        watches; None: every mirror runs at its fixed rate (the bandwidth, or full speed).
        ``on_ended``: told of every replication that pivoted or was aborted."""
        self._storage = storage
        self.convergence_window = convergence_window
        self._guest_io = guest_io
        self._on_ended = on_ended
        self._monitors: dict[tuple[str, str], threading.Event] = {}
        self._monitors_lock = threading.Lock()

    # --- start ------------------------------------------------------------------------------

    def start(
        self,
        vm: Vm,
        src: dict[str, Any],
        dst: dict[str, Any],
        *,
        copy_mode: str = CopyMode.AUTO,
        bandwidth_mib: int = 0,
    ) -> None:
        mode = CopyMode(copy_mode)
        if bandwidth_mib < 0:
            raise InvalidParameter("bandwidth", bandwidth_mib, "must be 0 (unlimited) or more")
        with vm.lock:
            drive, record = self._find(vm, _identity(src))
            if record is not None:
                raise ReplicationError(
                    f"VM {vm.vm_id} drive {drive.target} is already replicating to "
                    f"{record.dst.domain_id}"
                )
            if drive.target in vm.record.merges:
                # Refused before anything starts: a failed start cancels the drive's block job,
                # which would then be the merge's.
                raise ReplicationError(f"VM {vm.vm_id} drive {drive.target} is being merged")
            record = ReplicationRecord(
                src=_disk_ref(src, drive.pool_id),
                dst=_disk_ref(dst, drive.pool_id),
                copy_mode=CopyMode.BACKGROUND if mode is CopyMode.AUTO else mode,
                auto=mode is CopyMode.AUTO,
                bandwidth_mib=bandwidth_mib,
            )
            # The intent is durable before the destination is touched.
            vm.record.replications[drive.target] = record
            vm.save()
            copy_started = False
            try:
                record.dst_chain = self._prepare_destination(drive, record)
                vm.save()  # the chain a pivot switches to is durable before the copy starts
                if vm.record.leases:
                    # QEMU holds the destination leaf's lease before the mirror writes to it.
                    leaf = record.dst_chain[-1]
                    vm_leases.attach(
                        vm,
                        self._storage,
                        VolumeLease.of_data_path(record.dst.domain_id, leaf.volume_id, leaf.path),
                    )
                    crash_point.reached("replicate:lease-attached")
                copy_started = True  # from here a job may exist, even if blockCopy then fails
                self._start_copy(vm, drive.target, record)
                record.advance(ReplicaState.MIRRORING)
                vm.save()
            except Exception as e:
                self._abandon(vm, drive.target, started_job=copy_started)
                cause = e.message if isinstance(e, VdsmError) else str(e)
                raise ReplicationError(
                    f"VM {vm.vm_id} drive {drive.target}: cannot start replication: {cause}"
                ) from e
        log.info(
            "VM %s drive %s: replicating to %s (%s)",
            vm.vm_id,
            drive.target,
            record.dst.domain_id,
            mode,
        )
        if record.auto or self._guest_io is not None:
            self._watch(vm, drive.target)

    def _prepare_destination(
        self, drive: Drive, record: ReplicationRecord
    ) -> tuple[VolumeLink, ...]:
        dst = record.dst
        chain = prepare_chain(
            self._storage, dst.pool_id, dst.domain_id, dst.image_id, dst.volume_id
        )
        src_domain = self._storage.pool_domain(drive.pool_id, drive.domain_id)
        dst_domain = self._storage.pool_domain(dst.pool_id, dst.domain_id)
        src_cap = Volume(src_domain, drive.image_id, drive.volume_id).metadata().capacity
        dst_cap = Volume(dst_domain, dst.image_id, dst.volume_id).metadata().capacity
        if src_cap != dst_cap:
            raise ReplicationError(
                f"destination volume {dst.volume_id} has capacity {dst_cap}, "
                f"the source {src_cap}: a mirror needs equal sizes"
            )
        if chain[-1].path == drive.path:
            raise ReplicationError("the destination is the drive's own active volume")
        return chain

    def _start_copy(self, vm: Vm, target: str, record: ReplicationRecord) -> None:
        dom = vm.domain()
        flags = libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW | libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
        try:
            persistent = dom.isPersistent()
        except libvirt.libvirtError as e:
            raise ReplicationError(f"libvirt: {error_message(e)}") from None
        if persistent:
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
        if record.copy_mode is CopyMode.SYNC:
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES
        params: dict[str, int] = {}
        if record.bandwidth_mib:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH] = record.bandwidth_mib * MiB
        vm.clear_job_event(target)
        try:
            dom.blockCopy(target, domain_xml.disk_source_xml(record.dst_chain), params, flags)
        except libvirt.libvirtError as e:
            raise ReplicationError(f"libvirt: {error_message(e)}") from None

    # --- finish -----------------------------------------------------------------------------

    def finish(self, vm: Vm, src: dict[str, Any], dst: dict[str, Any]) -> None:
        src_id, dst_id = _identity(src), _identity(dst)
        pivot = src_id != dst_id
        with vm.lock:
            drive, record = self._find(vm, src_id)
            if record is None:
                raise ReplicationNotInProgress(
                    f"VM {vm.vm_id} drive {drive.target} has no replication"
                )
            target = drive.target
            if pivot and dst_id != record.dst.identity():
                raise InvalidParameter(
                    "dstDisk", dst_id, f"the replication's destination is {record.dst.identity()}"
                )
            if record.state is ReplicaState.SWITCHING:
                raise ReplicationNotReady(
                    f"VM {vm.vm_id} drive {target}: the mirror is being restarted with "
                    "synchronous writes; retry later"
                )
            try:
                live = vm.live_disks().get(target)
                dom = vm.domain()
                job = dom.blockJobInfo(target, 0)
            except VmDown:
                self._abandon(vm, target, started_job=False)
                raise ReplicationError(
                    f"VM {vm.vm_id} is not running any more: replication of {target} is gone"
                ) from None
            except (libvirt.libvirtError, VdsmError) as e:
                raise self._libvirt_failed(vm, target, _cause(e)) from None
            if self._completed_before(vm, drive, record, live, job):
                return
            if not job or live is None or live.mirror is None:
                event = vm.last_job_event(target)
                self._abandon(vm, target, started_job=False)
                dst_sd, _, dst_vol = record.dst.identity()
                raise ReplicationError(
                    f"VM {vm.vm_id} drive {target}: the mirror job to volume {dst_vol} in "
                    f"domain {dst_sd} is gone ({_describe_event(event)})"
                )
            event = vm.last_job_event(target)
            ready = live.mirror.ready or (
                event is not None and event.status == libvirt.VIR_DOMAIN_BLOCK_JOB_READY
            )
            # Only a pivot needs READY. Cancelling is always safe (the VM stays on the
            # source), and a caller recovering from a failure must be able to abort a mirror
            # that has not converged.
            if pivot and not ready:
                raise ReplicationNotReady(
                    f"VM {vm.vm_id} drive {target}: mirror not ready yet "
                    f"({job.get('cur', 0)} of {job.get('end', 0)} bytes); retry later"
                )
            record.advance(ReplicaState.PIVOTING if pivot else ReplicaState.ABORTING)
            vm.save()
            flags = libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT if pivot else 0
            switch_started = time.monotonic()
            try:
                dom.blockJobAbort(target, flags)
            except libvirt.libvirtError as e:
                record.advance(ReplicaState.MIRRORING)
                vm.save()
                raise DriveSwitchFailed(
                    f"VM {vm.vm_id} drive {target}: {'pivot' if pivot else 'abort'} refused by "
                    f"libvirt: {error_message(e)}; the replication is kept, retry or abort"
                ) from None
            switch_seconds = time.monotonic() - switch_started
            crash_point.reached("finish:pivoted" if pivot else "finish:aborted")
            self._done(vm, drive, record, pivot, switch_seconds)

    def _libvirt_failed(self, vm: Vm, target: str, cause: str) -> ReplicationError:
        """The error for libvirt failing under Finish: with the VM gone the replication is
        forgotten; otherwise it is kept, for a retry."""
        if _is_down(vm):
            self._abandon(vm, target, started_job=False)
            return ReplicationError(
                f"VM {vm.vm_id} is not running any more: replication of {target} is gone "
                f"(libvirt: {cause})"
            )
        return ReplicationError(
            f"VM {vm.vm_id} drive {target}: libvirt: {cause}; the replication is kept, retry"
        )

    def _completed_before(
        self,
        vm: Vm,
        drive: Drive,
        record: ReplicationRecord,
        live: domain_xml.LiveDisk | None,
        job: dict[str, Any],
    ) -> bool:
        """A pivot or abort that libvirt finished before a crash of vdsmd: only the
        bookkeeping is left to do."""
        if job or live is None or not live.chain:
            return False
        current = live.chain[-1][0]
        dst_leaf = record.dst_chain[-1].path if record.dst_chain else None
        if record.state is ReplicaState.PIVOTING and current == dst_leaf:
            self._done(vm, drive, record, pivot=True)
            return True
        if record.state is ReplicaState.ABORTING and current == drive.path:
            self._done(vm, drive, record, pivot=False)
            return True
        return False

    def _done(
        self,
        vm: Vm,
        drive: Drive,
        record: ReplicationRecord,
        pivot: bool,
        switch_seconds: float | None = None,
    ) -> None:
        self._unwatch(vm, drive.target)
        vm.record.replications.pop(drive.target, None)
        if pivot:
            new = drive.with_chain(record.dst.domain_id, record.dst_chain)
            vm.record.drives = [new if d.target == drive.target else d for d in vm.record.drives]
        vm.save()  # one atomic write: the drive names the destination and the record is gone
        vm.clear_job_event(drive.target)
        # The side QEMU stopped writing gives its lease up: the source's after a pivot, the
        # destination's after an abort.
        vm_leases.reconcile(vm, self._storage)
        log.info(
            "VM %s drive %s: replication %s",
            vm.vm_id,
            drive.target,
            "pivoted to the destination" if pivot else "aborted, VM stays on the source",
        )
        if self._on_ended is not None:
            # record.started is wall time: it is persisted, and survives a restart of vdsmd.
            seconds = max(0.0, time.time() - record.started)
            self._on_ended(ReplicationEnded(pivot, seconds, switch_seconds))

    # --- helpers ----------------------------------------------------------------------------

    def _find(self, vm: Vm, src_id: Identity) -> tuple[Drive, ReplicationRecord | None]:
        for target, record in vm.record.replications.items():
            if record.src.identity() == src_id:
                return vm.drive_by_target(target), record
        drive = vm.find_drive(*src_id)
        return drive, vm.record.replications.get(drive.target)

    def _abandon(self, vm: Vm, target: str, *, started_job: bool) -> None:
        """Cancel a job this replication may have started and forget the replication."""
        self._unwatch(vm, target)
        if started_job:
            try:
                dom = vm.domain()
                if dom.blockJobInfo(target, 0):
                    dom.blockJobAbort(target, 0)
            except (VdsmError, libvirt.libvirtError) as e:
                log.warning("VM %s drive %s: cleaning up the job: %s", vm.vm_id, target, e)
        vm.record.replications.pop(target, None)
        vm.save()
        vm_leases.reconcile(vm, self._storage)

    # --- convergence ------------------------------------------------------------------------

    def recover(self, vm: Vm) -> None:
        """After a restart: watch again the auto-mode replications still converging, and
        finish a switch to synchronous writes a dead daemon left half-done."""
        for target, record in vm.record.replications.items():
            converging = record.auto and record.copy_mode is CopyMode.BACKGROUND
            adaptive = self._guest_io is not None and record.state is ReplicaState.MIRRORING
            if converging or adaptive or record.state is ReplicaState.SWITCHING:
                self._watch(vm, target)

    def _watch(self, vm: Vm, target: str) -> None:
        stop = threading.Event()
        with self._monitors_lock:
            old = self._monitors.pop((vm.vm_id, target), None)
            if old is not None:
                old.set()
            self._monitors[(vm.vm_id, target)] = stop
        threading.Thread(
            target=self._monitor,
            args=(vm, target, stop),
            name=f"converge-{vm.vm_id[:8]}-{target}",
            daemon=True,
        ).start()

    def _unwatch(self, vm: Vm, target: str) -> None:
        with self._monitors_lock:
            stop = self._monitors.pop((vm.vm_id, target), None)
        if stop is not None:
            stop.set()

    def _monitor(self, vm: Vm, target: str, stop: threading.Event) -> None:
        """The monitor thread: one log line when it starts, one saying why it stopped."""
        log.info("VM %s drive %s: convergence monitor started", vm.vm_id, target)
        try:
            reason = self._converge(vm, target, stop)
        finally:
            vm.copy_decisions.pop(target, None)
        log.info("VM %s drive %s: convergence monitor stopped: %s", vm.vm_id, target, reason)

    def _converge(self, vm: Vm, target: str, stop: threading.Event) -> str:
        """Watch the mirror until it is READY or ends: in auto mode, switch it to synchronous
        writes when what is left to copy stops shrinking; with the adaptive rate, set its
        speed at every look (copy_governor). Returns why it stopped. Never holds vm.lock
        while it waits or asks libvirt."""
        record = vm.record.replications.get(target)
        if record is None:
            return "the replication finished or was abandoned"
        switch = record.auto and record.copy_mode is CopyMode.BACKGROUND
        if record.state is ReplicaState.SWITCHING:
            outcome = self._switch_to_sync(vm, target, stop, resumed=True)
            if outcome != SWITCHED:
                return outcome
            switch = False
        governor = CopyGovernor(cap=record.bandwidth_mib * MiB)
        vm.copy_decisions[target] = Decision(governor.full_speed, "")
        if self._guest_io is not None:
            governor.begin(self._guest_io())  # the counters the first look compares to
        best_remaining: int | None = None
        best_at = last_at = time.monotonic()
        last_cur: int | None = None
        failing = False
        look = FIRST_LOOK  # soon: a busy guest suffers a mirror at full speed until then
        while not stop.wait(look):
            look = LOOK_EVERY
            try:
                live = vm.live_disks().get(target)
                job = vm.domain().blockJobInfo(target, 0)
                if job and live is not None and live.mirror is not None:
                    now, cur = time.monotonic(), int(job.get("cur", 0))
                    if live.mirror.ready:
                        # What is left is what the guest writes now: at full speed, so the
                        # pivot does not wait on a held-back copy.
                        vm.set_copy_rate(target, Decision(governor.full_speed, ""))
                    elif self._guest_io is not None and last_cur is not None:
                        copied = max(0, cur - last_cur)
                        decision = governor.decide(self._guest_io(), now - last_at, copied)
                        vm.set_copy_rate(target, decision)
                    last_at, last_cur = now, cur
            except VmDown:
                return "the VM is not running; Finish will report it"
            except (libvirt.libvirtError, VdsmError) as e:
                cause = _cause(e)
                if _is_down(vm):
                    return f"the VM is not running (libvirt: {cause}); Finish will report it"
                if not failing:
                    log.warning(
                        "VM %s drive %s: convergence monitor: libvirt: %s; still watching",
                        vm.vm_id,
                        target,
                        cause,
                    )
                failing = True
                continue
            failing = False
            if not job or live is None or live.mirror is None:
                return "the mirror job ended; Finish will report it"
            if live.mirror.ready:
                return "the mirror is ready"
            if not switch:
                continue
            remaining = int(job.get("end", 0)) - int(job.get("cur", 0))
            now = time.monotonic()
            if best_remaining is None or remaining < best_remaining * 0.9:
                best_remaining, best_at = remaining, now
            elif now - best_at >= self.convergence_window:
                log.warning(
                    "VM %s drive %s: mirror not converging (%d bytes left for %.0fs): "
                    "restarting it with synchronous writes",
                    vm.vm_id,
                    target,
                    remaining,
                    self.convergence_window,
                )
                outcome = self._switch_to_sync(vm, target, stop, resumed=False)
                if outcome != SWITCHED or self._guest_io is None:
                    return outcome
                # The new job starts at the operator's rate; the governor goes on from there.
                switch, last_cur = False, None
                vm.copy_decisions[target] = Decision(governor.full_speed, "")
        return "the replication finished or was abandoned"

    def _switch_to_sync(self, vm: Vm, target: str, stop: threading.Event, *, resumed: bool) -> str:
        """Cancel the background copy (SWITCHING, so Finish answers 40 meanwhile), wait for it
        to go without holding the lock, and start the copy again with synchronous writes.
        Any failure leaves the record MIRRORING: Finish then finds the job gone (55)."""
        with vm.lock:
            record = vm.record.replications.get(target)
            if record is None or stop.is_set():
                return "the replication finished or was abandoned"
            if not resumed:
                if record.state is not ReplicaState.MIRRORING:
                    return f"the replication is {record.state}"
                record.advance(ReplicaState.SWITCHING)
                vm.save()  # before the abort: a restarted daemon finishes the switch
            try:
                dom = vm.domain()
                # Cancel before READY leaves a partial copy; the new job copies it all again.
                if dom.blockJobInfo(target, 0):
                    dom.blockJobAbort(target, 0)
            except (VdsmError, libvirt.libvirtError) as e:
                return self._switch_failed(vm, target, record, _cause(e))
        deadline = time.monotonic() + _SWITCH_TIMEOUT
        try:
            while vm.domain().blockJobInfo(target, 0) and time.monotonic() < deadline:
                if stop.wait(_SWITCH_POLL):
                    break
        except (VdsmError, libvirt.libvirtError) as e:
            with vm.lock:
                return self._switch_failed(vm, target, record, _cause(e))
        with vm.lock:
            if vm.record.replications.get(target) is not record:
                return "the replication finished or was abandoned"
            try:
                record.copy_mode = CopyMode.SYNC
                vm.save()
                self._start_copy(vm, target, record)
            except (VdsmError, libvirt.libvirtError) as e:
                return self._switch_failed(vm, target, record, _cause(e))
            record.advance(ReplicaState.MIRRORING)
            vm.save()
        return SWITCHED

    def _switch_failed(self, vm: Vm, target: str, record: ReplicationRecord, cause: str) -> str:
        """Called with vm.lock held: leave the record MIRRORING for Finish to report (55)."""
        log.error(
            "VM %s drive %s: switching to synchronous writes failed: %s", vm.vm_id, target, cause
        )
        if vm.record.replications.get(target) is record:
            record.advance(ReplicaState.MIRRORING)
            vm.save()
        return "switching to synchronous writes failed"


def _identity(disk: dict[str, Any]) -> Identity:
    """A DriveSpecVolume's (domainID, imageID, volumeID), as the API names a drive."""
    return (disk["domainID"], disk["imageID"], disk["volumeID"])


def _disk_ref(disk: dict[str, Any], pool_id: str) -> DiskRef:
    return DiskRef(
        domain_id=disk["domainID"],
        image_id=disk["imageID"],
        volume_id=disk["volumeID"],
        pool_id=disk.get("poolID", pool_id),
    )


def _cause(error: libvirt.libvirtError | VdsmError) -> str:
    """libvirt's words for a failure, whether libvirt raised it or vdsm already wrapped it."""
    return error_message(error) if isinstance(error, libvirt.libvirtError) else error.detail


def _is_down(vm: Vm) -> bool:
    try:
        return vm.status() == DOWN
    except VdsmError:
        return False  # libvirt cannot say: the VM may well run


def _describe_event(event: Any) -> str:
    if event is None:
        return "no job event was received; QEMU may have restarted"
    names = {
        libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED: "completed",
        libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED: "failed",
        libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED: "cancelled",
        libvirt.VIR_DOMAIN_BLOCK_JOB_READY: "ready",
    }
    described = f"libvirt's last event: the job {names.get(event.status, event.status)}"
    if event.status == libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED:
        # QEMU ends a mirror with an error when a write to the destination fails (an I/O
        # error, no space left) or the source cannot be read; libvirt does not say which.
        described += ": QEMU could not write the destination or read the source"
    return described
