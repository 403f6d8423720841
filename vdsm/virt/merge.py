"""Live merge: VM.merge commits a volume into its parent while the VM runs (as VDSM's merge).

``Merges.start(vm, drive, base, top)`` starts libvirt's blockCommit of ``top`` into ``base`` (its
parent) and returns; the job shows in getVmStats. A watcher thread finishes it:

- top is the active layer: an *active* commit; once it is READY, ``blockJobAbort(PIVOT)``
  switches the VM to ``base``, which becomes the active layer;
- top is internal: a plain commit with relative backing names; when it completes, top's
  child is backed by ``base`` (libvirt rewrote its header; vdsm records the new parent).

Either way the drive's chain loses ``top``, which is marked ILLEGAL (its data now lives in
``base``) for the caller to delete with deleteVolume. The merge's record sits in the VM's
durable record (job_records.MergeRecord: COMMITTING, then PIVOTING for an active commit) from
before the job starts until the chain is updated, so a restarted vdsmd
finishes the bookkeeping of a merge that completed while it was down, or forgets one that
failed; a failed merge leaves the chain as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import libvirt

from vdsm import crash_point, validation
from vdsm.copy_governor import LOOK_EVERY, CopyGovernor, GuestIo, MiB
from vdsm.errors import InvalidParameter, MergeError, VdsmError
from vdsm.storage.constants import Legality
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.volume import Volume
from vdsm.storage.volume_lease import VolumeLease
from vdsm.virt import vm_leases
from vdsm.virt.connection import error_message
from vdsm.virt.drives import Drive, drive_spec
from vdsm.virt.job_records import MergeRecord, MergeState
from vdsm.virt.vm import Vm

log = logging.getLogger("vdsm.virt.merge")

# The watcher: woken by these job events, else every _POLL seconds; never more often than
# every _MIN_PAUSE seconds.
_WAKE_ON = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_READY,
    libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED,
    libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED,
    libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED,
}
_POLL = 0.2
_MIN_PAUSE = 0.01


class Merges:
    def __init__(
        self, storage: HostStorage, *, guest_io: Callable[[], GuestIo] | None = None
    ) -> None:
        """``guest_io``: the guests' I/O counters (VmManager.guest_io) the adaptive copy rate
        watches; None: every commit runs at its fixed rate (the bandwidth, or full speed)."""
        self._storage = storage
        self._guest_io = guest_io

    def start(
        self,
        vm: Vm,
        drive_value: object,
        base_id: str,
        top_id: str,
        *,
        bandwidth_mib: int = 0,
        job_id: str | None = None,
    ) -> None:
        base_id = validation.uuid(base_id, "baseVolUUID")
        top_id = validation.uuid(top_id, "topVolUUID")
        job_id = validation.uuid(job_id, "jobUUID") if job_id else str(uuid.uuid4())
        if bandwidth_mib < 0:
            raise InvalidParameter("bandwidth", bandwidth_mib, "must be 0 (unlimited) or more")
        with vm.lock:
            drive = vm.find_drive(*drive_spec(drive_value, "drive"))
            ids = [link.volume_id for link in drive.chain]
            if top_id not in ids or ids.index(top_id) == 0:
                raise MergeError(
                    f"volume {top_id} is not a non-base volume of drive {drive.target}"
                )
            if ids[ids.index(top_id) - 1] != base_id:
                raise MergeError(f"volume {base_id} is not the parent of {top_id}")
            if drive.target in vm.record.replications or drive.target in vm.record.merges:
                raise MergeError(f"drive {drive.target} is busy with another block job")
            dom = vm.domain()
            if dom.blockJobInfo(drive.target, 0):
                raise MergeError(f"drive {drive.target} already has a block job")
            active = top_id == drive.volume_id
            record = MergeRecord(job_id=job_id, base=base_id, top=top_id, active=active)
            vm.record.merges[drive.target] = record
            vm.save()
            base_path = drive.chain[ids.index(base_id)].path
            if vm.record.leases:
                # The commit writes into base: QEMU holds its lease from before the job.
                try:
                    vm_leases.attach(
                        vm,
                        self._storage,
                        VolumeLease.of_data_path(drive.domain_id, base_id, base_path),
                    )
                except VdsmError as e:
                    self._forget(vm, drive.target)
                    raise MergeError(f"VM {vm.vm_id} drive {drive.target}: {e.message}") from None
                crash_point.reached("merge:lease-attached")
            top_path = drive.chain[ids.index(top_id)].path
            flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_RELATIVE
            if active:
                flags |= libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
            vm.clear_job_event(drive.target)
            try:
                dom.blockCommit(drive.target, base_path, top_path, bandwidth_mib, flags)
            except libvirt.libvirtError as e:
                self._forget(vm, drive.target)
                raise MergeError(
                    f"VM {vm.vm_id} drive {drive.target}: {error_message(e)}"
                ) from None
        log.info(
            "VM %s drive %s: merging %s into %s (job %s, %s)",
            vm.vm_id,
            drive.target,
            top_id,
            base_id,
            job_id,
            "active" if active else "internal",
        )
        self._watch(vm, drive.target, bandwidth_mib * MiB)

    def recover(self, vm: Vm) -> None:
        for target in list(vm.record.merges):
            # The operator's bandwidth is not recorded: a recovered merge keeps the rate it
            # has (governing it could exceed that bandwidth).
            self._watch(vm, target, None)

    def _watch(self, vm: Vm, target: str, cap: int | None) -> None:
        """``cap``: the operator's bandwidth in bytes/s (0: none), None: not governed."""
        threading.Thread(
            target=self._run,
            args=(vm, target, cap),
            name=f"merge-{vm.vm_id[:8]}-{target}",
            daemon=True,
        ).start()

    def _run(self, vm: Vm, target: str, cap: int | None) -> None:
        try:
            self._follow(vm, target, cap)
        except Exception:
            log.exception("VM %s drive %s: merge watcher failed", vm.vm_id, target)
        finally:
            vm.copy_decisions.pop(target, None)

    def _follow(self, vm: Vm, target: str, cap: int | None) -> None:
        governor = CopyGovernor(cap=cap or 0)
        last: tuple[float, int] | None = None  # when the governor last looked, and cur then
        if self._guest_io is not None and cap is not None:
            governor.begin(self._guest_io())  # the counters the first look compares to
            last = (time.monotonic(), 0)
        while True:
            # Woken by libvirt's job event (READY, or the job's end) as soon as it arrives,
            # instead of a fixed 0.2 s sleep: bench/ measured the merge step of a disk move
            # at 0.29 s with the sleep, most of it spent asleep (docs/benchmarks.md, overhead).
            # The poll stays as the fallback for an event that never comes (a restart).
            vm.wait_job_event(target, _WAKE_ON, timeout=_POLL)
            time.sleep(_MIN_PAUSE)  # a READY event stays recorded: never spin on it
            refused = False
            with vm.lock:
                record = vm.record.merges.get(target)
                if record is None:
                    return
                try:
                    dom = vm.domain()
                    job = dom.blockJobInfo(target, 0)
                    live = vm.live_disks().get(target)
                except (VdsmError, libvirt.libvirtError) as e:
                    why = error_message(e) if isinstance(e, libvirt.libvirtError) else e.detail
                    log.warning("VM %s drive %s: merge abandoned: %s", vm.vm_id, target, why)
                    self._forget(vm, target)
                    return
                if job and last is not None and time.monotonic() - last[0] >= LOOK_EVERY:
                    last = self._govern(vm, target, governor, last, job)
                drive = vm.drive_by_target(target)
                live_ids = [p.rsplit("/", 1)[-1] for p, _ in (live.chain if live else ())]
                if not job:
                    if live is not None and record.top not in live_ids:
                        self._done(vm, drive, record)  # finished (maybe while we were down)
                    else:
                        event = vm.last_job_event(target)
                        log.error(
                            "VM %s drive %s: merge failed (last event %s); chain unchanged",
                            vm.vm_id,
                            target,
                            event,
                        )
                        self._forget(vm, target)
                    return
                if record.active and live is not None and live.mirror and live.mirror.ready:
                    record.advance(MergeState.PIVOTING)
                    vm.save()
                    try:
                        dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    except libvirt.libvirtError as e:
                        record.advance(MergeState.COMMITTING)
                        vm.save()
                        log.warning(
                            "VM %s drive %s: merge pivot refused, retrying: %s",
                            vm.vm_id,
                            target,
                            error_message(e),
                        )
                        refused = True
                    else:
                        self._done(vm, drive, record)
                        return
            if refused:
                time.sleep(_POLL)  # retry the refused pivot at the old pace

    def _govern(
        self, vm: Vm, target: str, governor: CopyGovernor, last: tuple[float, int], job: Any
    ) -> tuple[float, int]:
        """One look of the adaptive rate (copy_governor): the commit's speed set live when
        the decision changed it. Called with vm.lock held; libvirt answers at once."""
        assert self._guest_io is not None
        now, cur = time.monotonic(), int(job.get("cur", 0))
        decision = governor.decide(self._guest_io(), now - last[0], max(0, cur - last[1]))
        try:
            vm.set_copy_rate(target, decision)
        except (VdsmError, libvirt.libvirtError) as e:
            why = error_message(e) if isinstance(e, libvirt.libvirtError) else e.detail
            log.warning("VM %s drive %s: merge rate not changed: %s", vm.vm_id, target, why)
        return now, cur

    def _done(self, vm: Vm, drive: Drive, record: MergeRecord) -> None:
        top = record.top
        ids = [link.volume_id for link in drive.chain]
        chain = tuple(link for link in drive.chain if link.volume_id != top)
        # The metadata first, the record after: both writes are idempotent, so a crash
        # between them leaves the merge record in place and recovery runs _done again;
        # and nobody sees the new chain in getVmStats before the child's parent says so.
        domain = self._storage.pool_domain(drive.pool_id, drive.domain_id)
        if top in ids and ids.index(top) + 1 < len(ids):  # internal: the child's new parent
            Volume(domain, drive.image_id, ids[ids.index(top) + 1]).set_parent(record.base)
        Volume(domain, drive.image_id, top).set_legality(Legality.ILLEGAL)
        merged = dataclasses.replace(
            vm.record,
            merges={t: m for t, m in vm.record.merges.items() if t != drive.target},
            drives=[
                drive.with_chain(drive.domain_id, chain) if d.target == drive.target else d
                for d in vm.record.drives
            ],
        )
        # An active commit's old top gives its lease up *before* the record drops it: the
        # moment getVmStats shows the chain without the top, a client may delete the top, and
        # the delete takes its lease (a CI run lost that race after a libvirtd restart, when
        # the release came a little late). A crash in between: recovery runs _done again.
        vm_leases.reconcile(vm, self._storage, merged)
        vm.record.merges, vm.record.drives = merged.merges, merged.drives
        vm.save()
        vm.clear_job_event(drive.target)
        log.info("VM %s drive %s: merged %s into %s", vm.vm_id, drive.target, top, record.base)

    def _forget(self, vm: Vm, target: str) -> None:
        vm.record.merges.pop(target, None)
        vm.save()
        vm_leases.reconcile(vm, self._storage)
