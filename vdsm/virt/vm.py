"""A VM: a view of one libvirt domain plus its durable record. Operations live elsewhere.

The view answers what a VM *is* (status, drives, I/O counters, block job state, as typed
data: the API builds getVmStats' payload from a :class:`VmSample`) and keeps its record on
disk current; snapshot, replication and merge are modules of their own that act on it. One
lock per VM serialises the operations that change its drives.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import libvirt

from vdsm.copy_governor import Decision
from vdsm.errors import DriveNotFound, VdsmError, VmDown
from vdsm.virt import domain_xml
from vdsm.virt.connection import Connection, failure, is_connection_lost, is_no_domain
from vdsm.virt.domain_xml import LiveDisk
from vdsm.virt.drives import Drive
from vdsm.virt.vm_store import VmRecord, VmStore

T = TypeVar("T")

log = logging.getLogger("vdsm.virt.vm")

UP = "Up"
PAUSED = "Paused"
DOWN = "Down"


@dataclass(frozen=True)
class BlockJobEvent:
    """The last block job event libvirt sent for a disk."""

    job_type: int
    status: int  # libvirt.VIR_DOMAIN_BLOCK_JOB_{COMPLETED,FAILED,CANCELED,READY}


# libvirt's block job types, by the names getVmStats reports.
JOB_TYPES = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: "pull",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: "copy",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: "commit",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: "commit",
}


@dataclass(frozen=True)
class DiskIo:
    """A disk's I/O counters since QEMU started (libvirt's blockStats)."""

    read_ops: int
    read_bytes: int
    write_ops: int
    write_bytes: int


@dataclass(frozen=True)
class BlockJob:
    """A disk's running block job, as libvirt reports it."""

    kind: str  # a JOB_TYPES name, or "unknown"
    cur: int
    end: int
    bandwidth: int
    ready: bool  # libvirt's READY (the mirror's ready='yes' or the READY event)


@dataclass
class VmSample:
    """What libvirt says about a VM at one moment, for getVmStats."""

    status: str
    sampled: bool  # False: the VM was Down when asked, nothing else was looked at
    io: dict[str, DiskIo] = field(default_factory=dict)  # by drive target
    jobs: dict[str, BlockJob] = field(default_factory=dict)  # by drive target


class Vm:
    def __init__(self, record: VmRecord, connection: Connection, store: VmStore) -> None:
        self.record = record
        self._connection = connection
        self._store = store
        self.lock = threading.RLock()
        self._events_lock = threading.Lock()
        self._job_events: dict[str, BlockJobEvent] = {}
        self._job_event_cond = threading.Condition(self._events_lock)
        # The adaptive copy rate of each drive whose mirror runs (copy_governor), by target:
        # what getVmStats shows of it. In memory only: a restarted watcher decides again.
        self.copy_decisions: dict[str, Decision] = {}

    @property
    def vm_id(self) -> str:
        return self.record.vm_id

    @property
    def name(self) -> str:
        return str(self.record.params.get("vmName", self.vm_id))

    # --- libvirt side -----------------------------------------------------------------------

    def domain(self) -> libvirt.virDomain:
        """The running domain; VmDown if QEMU is gone."""
        return self._ask(lambda dom: dom)

    def status(self) -> str:
        try:
            state, _ = self._ask(lambda dom: dom.state())
        except VmDown:
            return DOWN
        if state == libvirt.VIR_DOMAIN_PAUSED:
            return PAUSED
        if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
            return UP
        return DOWN

    def live_disks(self) -> dict[str, LiveDisk]:
        return domain_xml.read_disks(self._ask(lambda dom: dom.XMLDesc(0)))

    def _ask(self, question: Callable[[libvirt.virDomain], T]) -> T:
        """``question`` put to the running domain. Asked once more, on a new connection, when
        the connection to libvirtd broke under it: libvirtd restarted, and QEMU runs on (a
        load run caught list and getVmStats answering 100 "Broken pipe" in that moment).
        VmDown when QEMU is gone (also when it went between the lookup and the question),
        4001 when libvirtd stays unreachable."""
        for last in (False, True):
            try:
                return question(self._connection.get().lookupByUUIDString(self.vm_id))
            except libvirt.libvirtError as e:
                if is_no_domain(e):
                    message = self.record.exit_message or "not running"
                    raise VmDown(f"VM {self.vm_id}: {message}") from None
                if last or not is_connection_lost(e):
                    raise failure(e, f"VM {self.vm_id}") from None
        raise AssertionError("unreachable")

    def sample(self) -> VmSample:
        """Status, then each drive's I/O counters and block job. A VM that stops while it is
        looked at gives what was read so far, with its new status, rather than an error."""
        status = self.status()
        if status == DOWN:
            return VmSample(status, sampled=False)
        sample = VmSample(status, sampled=True)
        try:
            dom = self.domain()
            live = self.live_disks()
            for drive in self.drives:
                rd_ops, rd_bytes, wr_ops, wr_bytes, _ = dom.blockStats(drive.target)
                sample.io[drive.target] = DiskIo(rd_ops, rd_bytes, wr_ops, wr_bytes)
                job = dom.blockJobInfo(drive.target, 0)
                if job:
                    mirror = live[drive.target].mirror if drive.target in live else None
                    event = self.last_job_event(drive.target)
                    sample.jobs[drive.target] = BlockJob(
                        kind=JOB_TYPES.get(job.get("type", 0), "unknown"),
                        cur=int(job.get("cur", 0)),
                        end=int(job.get("end", 0)),
                        bandwidth=int(job.get("bandwidth", 0)),
                        ready=bool(mirror and mirror.ready)
                        or bool(event and event.status == libvirt.VIR_DOMAIN_BLOCK_JOB_READY),
                    )
        except (libvirt.libvirtError, VdsmError):
            sample.status = self.status()
        return sample

    def set_copy_rate(self, target: str, decision: Decision) -> None:
        """The drive's block job (mirror or commit) at the adaptive rate's decision: its speed
        changed live (blockJobSetSpeed) only when the rate changed. libvirt's errors pass."""
        previous = self.copy_decisions.get(target)
        if previous is None or previous.rate != decision.rate:
            flags = libvirt.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES
            self.domain().blockJobSetSpeed(target, decision.rate, flags)
            log.debug(
                "VM %s drive %s: copy rate %s%s",
                self.vm_id,
                target,
                f"{decision.rate / 2**20:.0f} MiB/s" if decision.rate else "unlimited",
                f": held back, {decision.held_back}" if decision.held_back else "",
            )
        self.copy_decisions[target] = decision

    # --- drives -----------------------------------------------------------------------------

    @property
    def drives(self) -> list[Drive]:
        return list(self.record.drives)

    def find_drive(self, domain_id: str, image_id: str, volume_id: str) -> Drive:
        """The drive whose (domainID, imageID, current volumeID) match; 13 otherwise."""
        for drive in self.record.drives:
            if drive.identity() == (domain_id, image_id, volume_id):
                return drive
        raise DriveNotFound(
            f"VM {self.vm_id} has no drive on volume {volume_id} of image {image_id} "
            f"in domain {domain_id}"
        )

    def drive_by_target(self, target: str) -> Drive:
        for drive in self.record.drives:
            if drive.target == target:
                return drive
        raise DriveNotFound(f"VM {self.vm_id} has no drive {target}")

    def replace_drive(self, drive: Drive) -> None:
        """Record that a disk now runs on another chain (after a snapshot, pivot, merge)."""
        self.record.drives = [drive if d.target == drive.target else d for d in self.record.drives]
        self.save()

    def save(self) -> None:
        self._store.save(self.record)

    # --- events (called on the libvirt event thread: no libvirt calls here) ------------------

    def on_block_job(self, disk: str, job_type: int, status: int) -> None:
        with self._job_event_cond:
            self._job_events[disk] = BlockJobEvent(job_type, status)
            self._job_event_cond.notify_all()

    def last_job_event(self, target: str) -> BlockJobEvent | None:
        with self._events_lock:
            return self._job_events.get(target)

    def clear_job_event(self, target: str) -> None:
        with self._events_lock:
            self._job_events.pop(target, None)

    def wait_job_event(
        self, target: str, statuses: set[int], timeout: float
    ) -> BlockJobEvent | None:
        """Wait until the disk's last job event has one of ``statuses``."""
        with self._job_event_cond:
            self._job_event_cond.wait_for(
                lambda: (e := self._job_events.get(target)) is not None and e.status in statuses,
                timeout=timeout,
            )
            return self._job_events.get(target)

    def mark_down(self, message: str) -> None:
        if self.record.exit_message is None:
            self.record.exit_message = message
            try:
                self.save()
            except OSError:
                log.exception("cannot persist that VM %s is down", self.vm_id)
