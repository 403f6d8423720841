"""Live snapshot, as VDSM does it: every listed drive switches to its new leaf in one call.

The new leaves already exist (created with createVolume on top of each drive's current leaf).
libvirt's ``snapshotCreateXML`` with DISK_ONLY | REUSE_EXT | NO_METADATA | ATOMIC switches
all of them at once or none; only after it succeeds does the VM's durable record name the new
leaves. If it fails, the VM stays on its old leaves and nothing recorded has changed.
With volume leases, QEMU takes each new leaf's lease before the switch (a refusal stops the
snapshot first) and gives the old leaf's up after it.
"""

from __future__ import annotations

import logging
from typing import Any

import libvirt
from lxml import etree

from vdsm import crash_point, validation
from vdsm.errors import InvalidParameter, SnapshotError, VdsmError
from vdsm.storage.host_storage import HostStorage
from vdsm.virt import vm_leases
from vdsm.virt.connection import error_message
from vdsm.virt.drives import Drive, VolumeLink, prepare_chain
from vdsm.virt.vm import Vm

log = logging.getLogger("vdsm.virt.snapshot")

FLAGS = (
    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
    | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
)


def snapshot(vm: Vm, storage: HostStorage, snap_drives: list[dict[str, Any]]) -> None:
    if not snap_drives:
        raise InvalidParameter("snapDrives", snap_drives, "no drive to snapshot")
    with vm.lock:
        plan = [_plan(vm, storage, spec, f"snapDrives[{n}]") for n, spec in enumerate(snap_drives)]
        targets = [drive.target for drive, _ in plan]
        if len(set(targets)) != len(targets):
            raise InvalidParameter("snapDrives", targets, "a drive is listed twice")
        dom = vm.domain()
        # The new leaves' leases before QEMU writes to them; the old leaves' go after.
        new_leases = vm_leases.drive_leases(
            drive.with_chain(drive.domain_id, chain) for drive, chain in plan
        )
        attached = []
        if vm.record.leases:
            try:
                attached = vm_leases.attach_all(vm, storage, new_leases)
            except VdsmError as e:
                raise SnapshotError(f"VM {vm.vm_id}: {e.message}") from None
        crash_point.reached("snapshot:leases-attached")
        try:
            dom.snapshotCreateXML(_snapshot_xml(vm, plan), FLAGS)
        except libvirt.libvirtError as e:
            vm_leases.detach_quietly(vm, storage, attached)
            raise SnapshotError(f"VM {vm.vm_id}: libvirt: {error_message(e)}") from None
        crash_point.reached("snapshot:switched")
        for drive, chain in plan:
            vm.replace_drive(drive.with_chain(drive.domain_id, chain))
        vm_leases.reconcile(vm, storage)
        log.info("VM %s: snapshot of %s", vm.vm_id, ", ".join(targets))


def _plan(
    vm: Vm, storage: HostStorage, spec: object, where: str
) -> tuple[Drive, tuple[VolumeLink, ...]]:
    if not isinstance(spec, dict):
        raise InvalidParameter(where, spec, "expected a mapping")
    domain_id = validation.uuid(spec.get("domainID"), f"{where}.domainID")
    image_id = validation.uuid(spec.get("imageID"), f"{where}.imageID")
    base_id = validation.uuid(spec.get("baseVolumeID"), f"{where}.baseVolumeID")
    new_id = validation.uuid(spec.get("volumeID"), f"{where}.volumeID")
    drive = vm.find_drive(domain_id, image_id, base_id)
    chain = prepare_chain(storage, drive.pool_id, domain_id, image_id, new_id)
    if chain[:-1] != drive.chain:
        raise SnapshotError(
            f"volume {new_id} is not a child of the drive's leaf {base_id} "
            f"(its chain is {[link.volume_id for link in chain]})"
        )
    return drive, chain


def _snapshot_xml(vm: Vm, plan: list[tuple[Drive, tuple[VolumeLink, ...]]]) -> str:
    new_leaf = {drive.target: chain[-1] for drive, chain in plan}
    root = etree.Element("domainsnapshot")
    disks = etree.SubElement(root, "disks")
    for drive in vm.drives:
        link = new_leaf.get(drive.target)
        if link is None:
            etree.SubElement(disks, "disk", name=drive.target, snapshot="no")
            continue
        disk = etree.SubElement(disks, "disk", name=drive.target, snapshot="external", type="file")
        etree.SubElement(disk, "driver", type=link.format)
        etree.SubElement(disk, "source", file=link.path)
    return etree.tostring(root, encoding="unicode")
