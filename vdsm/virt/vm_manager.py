"""The VMs of this host: create, destroy, look up, recover after a restart, route events.

Create writes the VM's record *before* asking libvirt to start it, so a crash in between
leaves a record recovery understands (the VM is reported Down) and never a running VM vdsm
does not know. A failed create leaves nothing defined or running: domains are transient, and
anything started is destroyed again if a later step fails.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import libvirt

from vdsm.copy_governor import GuestIo
from vdsm.errors import NoSuchVM, VdsmError, VMCreateError, VmDown, VMExists
from vdsm.storage.host_storage import HostStorage
from vdsm.virt import domain_xml, drives, unaccounted_io, vm_leases, vm_spec
from vdsm.virt.connection import Connection, error_message, failure, is_no_domain
from vdsm.virt.drives import VolumeLink, parse_volume_path
from vdsm.virt.vm import Vm
from vdsm.virt.vm_store import VmRecord, VmStore

log = logging.getLogger("vdsm.virt.vm_manager")


def detect_domain_type(requested: str) -> str:
    """ "kvm", "qemu" (TCG), or for "auto": kvm only with a real kvm_intel/kvm_amd module.

    A /dev/kvm alone is not enough: nested set-ups (kvm_pvm) provide one on which a Linux guest
    does not boot (docs/design.md, "Testing under QEMU"), while TCG always works.
    """
    if requested in ("kvm", "qemu"):
        return requested
    hardware = any(Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd"))
    return "kvm" if hardware and Path("/dev/kvm").exists() else "qemu"


class VmManager:
    def __init__(
        self,
        connection: Connection,
        storage: HostStorage,
        store: VmStore,
        *,
        domain_type: str,
        boot_dir: Path,
    ) -> None:
        self._connection = connection
        self._boot_dir = boot_dir
        self._storage = storage
        self._store = store
        self.domain_type = domain_type
        self._lock = threading.Lock()
        self._vms: dict[str, Vm] = {}
        self._creating: set[str] = set()
        connection.set_listener(self)

    # --- lookup -----------------------------------------------------------------------------

    def get(self, vm_id: str) -> Vm:
        with self._lock:
            vm = self._vms.get(vm_id)
        if vm is None:
            raise NoSuchVM(vm_id)
        return vm

    def all(self) -> list[Vm]:
        with self._lock:
            return list(self._vms.values())

    def guest_io(self) -> GuestIo:
        """The I/O counters of every drive of every running VM here, summed: what the copies'
        governors watch (copy_governor). A VM gone or unreachable meanwhile counts nothing."""
        ops = nbytes = busy_ns = 0
        for vm in self.all():
            try:
                dom = vm.domain()
                for drive in vm.drives:
                    stats = dom.blockStatsFlags(drive.target, 0)
                    ops += sum(int(stats.get(f"{k}_operations", 0)) for k in ("rd", "wr"))
                    nbytes += sum(int(stats.get(f"{k}_bytes", 0)) for k in ("rd", "wr"))
                    busy_ns += sum(int(stats.get(f"{k}_total_times", 0)) for k in ("rd", "wr"))
            except (libvirt.libvirtError, VdsmError):
                continue
        extra = unaccounted_io.read()  # the bench's writer only (TEST-ONLY; None in production)
        if extra is not None:
            ops, nbytes, busy_ns = ops + extra.ops, nbytes + extra.nbytes, busy_ns + extra.busy_ns
        return GuestIo(ops, nbytes, busy_ns)

    # --- create and destroy -----------------------------------------------------------------

    def create(self, params: dict[str, Any]) -> Vm:
        spec = vm_spec.parse(params, boot_dir=self._boot_dir, console_log=self._store.console_log)
        with self._lock:
            if spec.vm_id in self._vms or spec.vm_id in self._creating:
                raise VMExists(spec.vm_id)
            self._creating.add(spec.vm_id)
        try:
            return self._create(spec)
        finally:
            with self._lock:
                self._creating.discard(spec.vm_id)

    def _create(self, spec: vm_spec.VmSpec) -> Vm:
        conn = self._connection.get()
        try:
            conn.lookupByUUIDString(spec.vm_id)
        except libvirt.libvirtError as e:
            if not is_no_domain(e):
                raise VMCreateError(f"VM {spec.vm_id}: {error_message(e)}") from None
        else:
            raise VMExists(f"{spec.vm_id} (a libvirt domain with this UUID runs)")
        prepared = [drives.prepare(self._storage, disk) for disk in spec.disks]
        leases = vm_leases.drive_leases(prepared) if self._storage.leases.enabled else []
        try:
            # Checked here, named plainly: libvirt says only "No space left on device".
            vm_leases.prepare(self._storage, prepared, leases)
        except VdsmError as e:
            raise VMCreateError(f"VM {spec.vm_id}: {e.message}") from None
        xml = domain_xml.build(
            spec,
            prepared,
            self.domain_type,
            leases=[vm_leases.lease_element(lease) for lease in leases],
        )
        record = VmRecord(
            vm_id=spec.vm_id,
            params=spec.params,
            drives=prepared,
            console_log=str(spec.console_log),
            leases=self._storage.leases.enabled,
        )
        self._store.save(record)
        try:
            dom = conn.createXML(xml, 0)
        except libvirt.libvirtError as e:
            self._store.remove(spec.vm_id)
            raise VMCreateError(f"VM {spec.vm_id}: libvirt: {error_message(e)}") from None
        except BaseException:
            self._store.remove(spec.vm_id)
            raise
        try:
            vm_leases.verify_held(self._storage, prepared, leases)
        except BaseException as e:
            _destroy_quietly(dom)
            self._store.remove(spec.vm_id)
            if isinstance(e, VdsmError):
                raise VMCreateError(f"VM {spec.vm_id}: {e.message}") from None
            raise
        vm = Vm(record, self._connection, self._store)
        with self._lock:
            self._vms[spec.vm_id] = vm
        log.info("VM %s (%s) started on %s", spec.vm_id, spec.name, self.domain_type)
        return vm

    def destroy(self, vm_id: str) -> None:
        vm = self.get(vm_id)
        with vm.lock:
            try:
                self._connection.get().lookupByUUIDString(vm_id).destroy()
            except libvirt.libvirtError as e:
                if not is_no_domain(e):
                    raise failure(e, f"VM {vm_id}: destroy") from None
            self._store.remove(vm_id)
            with self._lock:
                self._vms.pop(vm_id, None)
        log.info("VM %s destroyed", vm_id)

    # --- recovery ---------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Recover every VM from its record and libvirt; return their ids."""
        for record in self._store.load_all():
            vm = Vm(record, self._connection, self._store)
            try:
                live = vm.live_disks()
            except VmDown:
                vm.mark_down("QEMU process is gone (found at recovery)")
                log.warning("VM %s recovered as Down", record.vm_id)
            except Exception as e:
                # libvirt itself is unreachable (or the record is odd): say nothing about the VM
                # until it can be checked, and never let one VM stop the daemon's start.
                log.error("VM %s not checked at recovery: %s", record.vm_id, e)
            else:
                self._reconcile(vm, live)
                # The record now names what QEMU runs on: its leases follow it (a crash
                # between a lease step and the record's update is repaired here).
                vm_leases.reconcile(vm, self._storage)
                log.info("VM %s recovered: %s", record.vm_id, vm.status())
            with self._lock:
                self._vms[record.vm_id] = vm
        return sorted(self._vms)

    def _reconcile(self, vm: Vm, live: dict[str, domain_xml.LiveDisk]) -> None:
        """libvirt knows which chain QEMU has open: if the record disagrees (a snapshot or a
        pivot finished just before a crash), the record follows libvirt."""
        changed = False
        for drive in vm.drives:
            disk = live.get(drive.target)
            if disk is None:
                continue
            chain = _chain_from_paths(disk.chain)
            if chain is None or chain == drive.chain:
                continue
            domain_id = parse_volume_path(chain[-1].path)
            if domain_id is None:
                continue
            log.warning(
                "VM %s drive %s: record named another chain, following libvirt",
                vm.vm_id,
                drive.target,
            )
            vm.record.drives = [
                d.with_chain(domain_id[0], chain) if d.target == drive.target else d
                for d in vm.record.drives
            ]
            changed = True
        if changed:
            vm.save()

    # --- events -----------------------------------------------------------------------------

    def _lookup(self, vm_id: str) -> Vm | None:
        with self._lock:
            return self._vms.get(vm_id)

    def on_lifecycle(self, vm_id: str, event: int, detail: int) -> None:
        vm = self._lookup(vm_id)
        if vm is not None and event in (
            libvirt.VIR_DOMAIN_EVENT_STOPPED,
            libvirt.VIR_DOMAIN_EVENT_CRASHED,
        ):
            reason = {
                libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "the guest shut down",
                libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
                libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "the guest crashed",
                libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "QEMU process failed",
            }.get(detail, f"stopped (libvirt detail {detail})")
            vm.mark_down(reason)

    def on_block_job(self, vm_id: str, disk: str, job_type: int, status: int) -> None:
        vm = self._lookup(vm_id)
        if vm is not None:
            vm.on_block_job(disk, job_type, status)

    def on_io_error(self, vm_id: str, disk: str, action: int, reason: str) -> None:
        log.warning("VM %s disk %s: I/O error (%s), action %d", vm_id, disk, reason, action)


def _destroy_quietly(dom: libvirt.virDomain) -> None:
    try:
        dom.destroy()
    except libvirt.libvirtError as e:
        log.warning("cannot destroy a VM that failed to start: %s", error_message(e))


def _chain_from_paths(chain: tuple[tuple[str, str], ...]) -> tuple[VolumeLink, ...] | None:
    links = []
    for path, fmt in chain:
        parsed = parse_volume_path(path)
        if parsed is None:
            return None
        links.append(VolumeLink(volume_id=parsed[2], path=path, format=fmt))
    return tuple(links)
