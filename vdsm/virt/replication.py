"""Drive replication: diskReplicateStart / diskReplicateFinish (lsm-contract §3).

A replication mirrors a drive's active layer onto an existing destination leaf with libvirt's
shallow block copy; libvirt opens the destination's backing chain only at pivot, so the SPM
can fill the destination's internal volumes (syncImageData) while the mirror runs. Finish then
pivots the VM to the destination (blockJobAbort PIVOT) or, when srcDisk == dstDisk, cancels the
mirror and leaves the VM on the source (with a finished sync: a live clone).

The replication is an explicit state machine whose record lives in the VM's durable record and
is written *before* each step it guards:

    STARTING  → the record exists; the destination may not be touched yet
    MIRRORING → the block copy job runs
    PIVOTING / ABORTING → blockJobAbort was requested; back to MIRRORING if libvirt refuses

so after a crash of vdsmd a later Finish still knows what to finish or clean up. Pitfalls kept
out (contract §8): the record is kept when a pivot or abort fails (41); readiness is libvirt's
READY (event or ``ready='yes'``), never cur == end; a job that vanished or failed is reported
as such (55), never as success.

Convergence (contract §8.3): in ``auto`` mode the copy starts in background mode (lowest guest
latency) and a monitor watches what is left to copy; if it stops shrinking for a whole window,
the guest writes faster than the copy, so the job is restarted with synchronous writes (QEMU's
write-blocking mirror), which always converges.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import StrEnum
from typing import Any

import libvirt

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
from vdsm.virt import domain_xml
from vdsm.virt.connection import error_message
from vdsm.virt.drives import Drive, VolumeLink, prepare_chain
from vdsm.virt.vm import Vm

log = logging.getLogger("vdsm.virt.replication")

MiB = 1024**2


class ReplicaState(StrEnum):
    STARTING = "starting"
    MIRRORING = "mirroring"
    PIVOTING = "pivoting"
    ABORTING = "aborting"


class CopyMode(StrEnum):
    AUTO = "auto"  # background, switched to sync when it does not converge
    BACKGROUND = "background"  # guest writes are copied later (QEMU copy-mode=background)
    SYNC = "sync"  # guest writes reach both sides before they complete (write-blocking)


Identity = tuple[str, str, str]


def identity(disk: dict[str, Any]) -> Identity:
    return (disk["domainID"], disk["imageID"], disk["volumeID"])


class Replications:
    """Starts, finishes and watches the replications of every VM of this host."""

    def __init__(self, storage: HostStorage, *, convergence_window: float = 10.0) -> None:
        self._storage = storage
        self.convergence_window = convergence_window
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
            drive, record = self._find(vm, identity(src))
            if record is not None:
                raise ReplicationError(
                    f"VM {vm.vm_id} drive {drive.target} is already replicating to "
                    f"{record['dst']['domainID']}"
                )
            record = {
                "state": ReplicaState.STARTING.value,
                "src": _disk_dict(src, drive.pool_id),
                "dst": _disk_dict(dst, drive.pool_id),
                "dst_chain": [],
                "copy_mode": CopyMode.BACKGROUND.value if mode is CopyMode.AUTO else mode.value,
                "auto": mode is CopyMode.AUTO,
                "bandwidth_mib": bandwidth_mib,
                "started": time.time(),
            }
            # The intent is durable before the destination is touched.
            vm.record.replications[drive.target] = record
            vm.save()
            try:
                dst_chain = self._prepare_destination(vm, drive, record)
                record["dst_chain"] = [link.__dict__ for link in dst_chain]
                self._start_copy(vm, drive.target, dst_chain, record)
                record["state"] = ReplicaState.MIRRORING.value
                vm.save()
            except Exception as e:
                self._abandon(vm, drive.target, started_job=True)
                cause = e.message if isinstance(e, VdsmError) else str(e)
                raise ReplicationError(
                    f"VM {vm.vm_id} drive {drive.target}: cannot start replication: {cause}"
                ) from e
        log.info(
            "VM %s drive %s: replicating to %s (%s)",
            vm.vm_id,
            drive.target,
            record["dst"]["domainID"],
            mode,
        )
        if record["auto"]:
            self._watch(vm, drive.target)

    def _prepare_destination(
        self, vm: Vm, drive: Drive, record: dict[str, Any]
    ) -> tuple[VolumeLink, ...]:
        dst = record["dst"]
        chain = prepare_chain(
            self._storage, dst["poolID"], dst["domainID"], dst["imageID"], dst["volumeID"]
        )
        src_domain = self._storage.pool_domain(drive.pool_id, drive.domain_id)
        dst_domain = self._storage.pool_domain(dst["poolID"], dst["domainID"])
        src_cap = Volume(src_domain, drive.image_id, drive.volume_id).metadata().capacity
        dst_cap = Volume(dst_domain, dst["imageID"], dst["volumeID"]).metadata().capacity
        if src_cap != dst_cap:
            raise ReplicationError(
                f"destination volume {dst['volumeID']} has capacity {dst_cap}, "
                f"the source {src_cap}: a mirror needs equal sizes"
            )
        if chain[-1].path == drive.path:
            raise ReplicationError("the destination is the drive's own active volume")
        return chain

    def _start_copy(
        self, vm: Vm, target: str, dst_chain: tuple[VolumeLink, ...], record: dict[str, Any]
    ) -> None:
        dom = vm.domain()
        flags = libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW | libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
        if dom.isPersistent():
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
        if record["copy_mode"] == CopyMode.SYNC:
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_SYNCHRONOUS_WRITES
        params: dict[str, int] = {}
        if record["bandwidth_mib"]:
            params[libvirt.VIR_DOMAIN_BLOCK_COPY_BANDWIDTH] = record["bandwidth_mib"] * MiB
        vm.clear_job_event(target)
        try:
            dom.blockCopy(target, domain_xml.disk_source_xml(dst_chain), params, flags)
        except libvirt.libvirtError as e:
            raise ReplicationError(f"libvirt: {error_message(e)}") from None

    # --- finish -----------------------------------------------------------------------------

    def finish(self, vm: Vm, src: dict[str, Any], dst: dict[str, Any]) -> None:
        src_id, dst_id = identity(src), identity(dst)
        pivot = src_id != dst_id
        with vm.lock:
            drive, record = self._find(vm, src_id)
            if record is None:
                raise ReplicationNotInProgress(
                    f"VM {vm.vm_id} drive {drive.target} has no replication"
                )
            target = drive.target
            if pivot and dst_id != identity(record["dst"]):
                raise InvalidParameter(
                    "dstDisk", dst_id, f"the replication's destination is {identity(record['dst'])}"
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
            if self._completed_before(vm, drive, record, live, job):
                return
            if not job or live is None or live.mirror is None:
                event = vm.last_job_event(target)
                self._abandon(vm, target, started_job=False)
                raise ReplicationError(
                    f"VM {vm.vm_id} drive {target}: the mirror job is gone"
                    f" ({_describe_event(event)})"
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
            record["state"] = (ReplicaState.PIVOTING if pivot else ReplicaState.ABORTING).value
            vm.save()
            flags = libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT if pivot else 0
            try:
                dom.blockJobAbort(target, flags)
            except libvirt.libvirtError as e:
                record["state"] = ReplicaState.MIRRORING.value
                vm.save()
                raise DriveSwitchFailed(
                    f"VM {vm.vm_id} drive {target}: {'pivot' if pivot else 'abort'} refused by "
                    f"libvirt: {error_message(e)}; the replication is kept, retry or abort"
                ) from None
            self._done(vm, drive, record, pivot)

    def _completed_before(
        self,
        vm: Vm,
        drive: Drive,
        record: dict[str, Any],
        live: domain_xml.LiveDisk | None,
        job: dict[str, Any],
    ) -> bool:
        """A pivot or abort that libvirt finished before a crash of vdsmd: only the
        bookkeeping is left to do."""
        if job or live is None or not live.chain:
            return False
        current = live.chain[-1][0]
        dst_leaf = record["dst_chain"][-1]["path"] if record["dst_chain"] else None
        if record["state"] == ReplicaState.PIVOTING and current == dst_leaf:
            self._done(vm, drive, record, pivot=True)
            return True
        if record["state"] == ReplicaState.ABORTING and current == drive.path:
            self._done(vm, drive, record, pivot=False)
            return True
        return False

    def _done(self, vm: Vm, drive: Drive, record: dict[str, Any], pivot: bool) -> None:
        self._unwatch(vm, drive.target)
        vm.record.replications.pop(drive.target, None)
        if pivot:
            chain = tuple(VolumeLink(**link) for link in record["dst_chain"])
            new = drive.with_chain(record["dst"]["domainID"], chain)
            vm.record.drives = [new if d.target == drive.target else d for d in vm.record.drives]
        vm.save()  # one atomic write: the drive names the destination and the record is gone
        vm.clear_job_event(drive.target)
        log.info(
            "VM %s drive %s: replication %s",
            vm.vm_id,
            drive.target,
            "pivoted to the destination" if pivot else "aborted, VM stays on the source",
        )

    # --- helpers ----------------------------------------------------------------------------

    def _find(self, vm: Vm, src_id: Identity) -> tuple[Drive, dict[str, Any] | None]:
        for target, record in vm.record.replications.items():
            if identity(record["src"]) == src_id:
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

    # --- convergence ------------------------------------------------------------------------

    def recover(self, vm: Vm) -> None:
        """After a restart: watch again the auto-mode replications still converging."""
        for target, record in vm.record.replications.items():
            if record.get("auto") and record["copy_mode"] == CopyMode.BACKGROUND:
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
        best_remaining: int | None = None
        best_at = time.monotonic()
        while not stop.wait(0.5):
            try:
                live = vm.live_disks().get(target)
                job = vm.domain().blockJobInfo(target, 0)
            except VdsmError:
                return  # the VM is gone; Finish will report it
            if not job or live is None or live.mirror is None or live.mirror.ready:
                return  # ready (or ended): nothing to watch
            remaining = int(job.get("end", 0)) - int(job.get("cur", 0))
            now = time.monotonic()
            if best_remaining is None or remaining < best_remaining * 0.9:
                best_remaining, best_at = remaining, now
            elif now - best_at >= self.convergence_window:
                self._switch_to_sync(vm, target, remaining)
                return

    def _switch_to_sync(self, vm: Vm, target: str, remaining: int) -> None:
        with vm.lock:
            record = vm.record.replications.get(target)
            if record is None or record["state"] != ReplicaState.MIRRORING:
                return
            log.warning(
                "VM %s drive %s: mirror not converging (%d bytes left for %.0fs): "
                "restarting it with synchronous writes",
                vm.vm_id,
                target,
                remaining,
                self.convergence_window,
            )
            dom = vm.domain()
            try:
                # Cancel before READY leaves a partial copy; the new job copies it all again.
                dom.blockJobAbort(target, 0)
                deadline = time.monotonic() + 30
                while dom.blockJobInfo(target, 0) and time.monotonic() < deadline:
                    time.sleep(0.05)
                record["copy_mode"] = CopyMode.SYNC.value
                vm.save()
                chain = tuple(VolumeLink(**link) for link in record["dst_chain"])
                self._start_copy(vm, target, chain, record)
            except (VdsmError, libvirt.libvirtError) as e:
                # Leave the record: Finish will find the job gone and report it (55).
                log.error(
                    "VM %s drive %s: switching to synchronous writes failed: %s",
                    vm.vm_id,
                    target,
                    e,
                )


def _disk_dict(disk: dict[str, Any], pool_id: str) -> dict[str, Any]:
    return {
        "domainID": disk["domainID"],
        "imageID": disk["imageID"],
        "volumeID": disk["volumeID"],
        "poolID": disk.get("poolID", pool_id),
    }


def _describe_event(event: Any) -> str:
    if event is None:
        return "no job event was received; QEMU may have restarted"
    names = {
        libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED: "completed",
        libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED: "failed",
        libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED: "cancelled",
        libvirt.VIR_DOMAIN_BLOCK_JOB_READY: "ready",
    }
    return f"libvirt's last event: the job {names.get(event.status, event.status)}"
