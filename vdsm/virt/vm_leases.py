"""A running VM's volume leases: which it must hold, and moving them as its disks move.

The writer of a volume holds its lease (vdsm/storage/volume_lease.py). For a VM the writer is
its QEMU process, which holds leases through libvirt's sanlock lock manager: a ``<lease>``
device in the domain XML is acquired for QEMU's pid before the guest runs, and a lease attached
or detached live is acquired or released at once (about 25 ms each, measured). So the leases a
VM needs follow from its record alone:

- the top (active) volume of every writable drive;
- during a replication, the destination's leaf too (the mirror writes it), from before the
  block copy starts until the pivot (then the source's leaf is released) or the abort (then the
  destination's is);
- during a live merge, the base too (the commit writes it), until the chain drops the top.

Every operation attaches what it is about to write *before* the write starts (an attach that
sanlock refuses stops the operation with sanlock's reason, nothing started), and afterwards
:func:`reconcile` makes libvirt's list equal to what the record needs, releasing what no writer
needs any more. After a restart of vdsmd the same reconcile, run on the record that recovery
brought in line with libvirt, repairs any step a crash interrupted: the record and the domain's
``<lease>`` list then agree whatever the point of the crash.

A VM started while volume leases are off (or recovered from before they existed) has none and
gets none: ``VmRecord.leases`` says which kind it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import libvirt
from lxml import etree

from vdsm.errors import AcquireLockFailure, VdsmError
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.volume import Volume
from vdsm.storage.volume_lease import VolumeLease, ensure_formatted
from vdsm.virt.connection import error_message
from vdsm.virt.drives import Drive
from vdsm.virt.vm import Vm
from vdsm.virt.vm_store import VmRecord

log = logging.getLogger("vdsm.virt.vm_leases")

_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE


def lease_element(lease: VolumeLease) -> etree._Element:
    element = etree.Element("lease")
    etree.SubElement(element, "lockspace").text = lease.sd_uuid
    etree.SubElement(element, "key").text = lease.vol_uuid
    etree.SubElement(element, "target", path=str(lease.path), offset=str(lease.offset))
    return element


def drive_leases(drives: Iterable[Drive]) -> list[VolumeLease]:
    """The leases a VM starting on ``drives`` needs: each writable drive's top volume."""
    return [
        VolumeLease.of_data_path(d.domain_id, d.volume_id, d.path) for d in drives if not d.readonly
    ]


def needed(record: VmRecord) -> set[VolumeLease]:
    """Every lease the VM's writers need now, from its record (see the module docstring)."""
    leases = set(drive_leases(record.drives))
    for replication in record.replications.values():
        if replication.dst_chain:
            leaf = replication.dst_chain[-1]
            leases.add(
                VolumeLease.of_data_path(replication.dst.domain_id, leaf.volume_id, leaf.path)
            )
    by_target = {d.target: d for d in record.drives}
    for target, merge in record.merges.items():
        drive = by_target.get(target)
        if drive is None:
            continue
        for link in drive.chain:
            if link.volume_id == merge.base:
                leases.add(VolumeLease.of_data_path(drive.domain_id, link.volume_id, link.path))
    return leases


def read_leases(xml: str) -> set[VolumeLease]:
    """The ``<lease>`` devices of a live domain."""
    root = etree.fromstring(xml.encode())
    found = set()
    for element in root.iterfind("devices/lease"):
        target = element.find("target")
        lockspace, key = element.findtext("lockspace"), element.findtext("key")
        if target is None or not lockspace or not key:
            continue
        found.add(
            VolumeLease(
                lockspace, key, Path(target.get("path", "")), int(target.get("offset", "0"))
            )
        )
    return found


def prepare(storage: HostStorage, drives: Sequence[Drive], leases: Iterable[VolumeLease]) -> None:
    """Before a lease is given to libvirt: this host joined its lockspace (661), a volume made
    before volume leases existed gets its lease formatted, and nobody holds it now (651)."""
    by_volume = {(d.domain_id, link.volume_id): (d, link) for d in drives for link in d.chain}
    for lease in leases:
        storage.leases.host_id(lease.sd_uuid)
        found = by_volume.get((lease.sd_uuid, lease.vol_uuid))
        if found is None:
            continue
        drive, _ = found
        domain = storage.pool_domain(drive.pool_id, drive.domain_id)
        ensure_formatted(Volume(domain, drive.image_id, lease.vol_uuid))
        # Said plainly before anything starts. libvirt's acquire (when the CPUs start) stays
        # the guard; on one machine QEMU's image locks would refuse first with their own words.
        owner = storage.leases.owner(lease, domain.metadata.block_size)
        if owner is not None:
            raise AcquireLockFailure(
                f"the {lease.describe()} is held by host id {owner}: a VM runs on the volume "
                "there, or a task writes it"
            )


def verify_held(
    storage: HostStorage, drives: Sequence[Drive], leases: Iterable[VolumeLease]
) -> None:
    """After libvirt started a VM with ``leases``: sanlock says this host holds each. A libvirt
    whose lock manager is not sanlock accepts ``<lease>`` and ignores it; that VM would run
    unprotected, so it is refused (651) instead."""
    domains = {d.domain_id: d.pool_id for d in drives}
    for lease in leases:
        host_id = storage.leases.host_id(lease.sd_uuid)
        pool_id = domains.get(lease.sd_uuid)
        block_size = (
            storage.pool_domain(pool_id, lease.sd_uuid).metadata.block_size if pool_id else 512
        )
        owner = storage.leases.owner(lease, block_size)
        if owner != host_id:
            raise AcquireLockFailure(
                f"libvirt started the VM but this host (host id {host_id}) does not hold the "
                f"{lease.describe()} (holder: {owner}): libvirt's lock manager is not sanlock; "
                'set lock_manager = "sanlock" in /etc/libvirt/qemu.conf and restart libvirtd, '
                "or turn volume_leases off in vdsm.conf"
            )


def attach(vm: Vm, storage: HostStorage, lease: VolumeLease) -> bool:
    """Give the running VM's QEMU ``lease`` (sanlock acquires it for QEMU's pid); False if it
    already had it. 661 when this host has not joined the lockspace, 651 with sanlock's reason
    (libvirt's words) when sanlock refuses."""
    dom = vm.domain()
    if lease in read_leases(dom.XMLDesc(0)):
        return False
    storage.leases.host_id(lease.sd_uuid)
    xml = etree.tostring(lease_element(lease), encoding="unicode")
    try:
        dom.attachDeviceFlags(xml, _LIVE)
    except libvirt.libvirtError as e:
        raise AcquireLockFailure(f"{lease.describe()}: {error_message(e)}") from None
    log.info("VM %s: holds the %s", vm.vm_id, lease.describe())
    return True


def detach(vm: Vm, lease: VolumeLease) -> None:
    """Release ``lease`` from the running VM's QEMU (sanlock frees it at once)."""
    xml = etree.tostring(lease_element(lease), encoding="unicode")
    try:
        vm.domain().detachDeviceFlags(xml, _LIVE)
    except libvirt.libvirtError as e:
        raise AcquireLockFailure(f"{lease.describe()}: release: {error_message(e)}") from None
    log.info("VM %s: released the %s", vm.vm_id, lease.describe())


def attach_all(vm: Vm, storage: HostStorage, leases: Sequence[VolumeLease]) -> list[VolumeLease]:
    """Attach each lease, or none: on a failure those attached here are released again and the
    failure raised. Returns those attached here (not those the VM had already)."""
    attached: list[VolumeLease] = []
    try:
        for lease in leases:
            if attach(vm, storage, lease):
                attached.append(lease)
    except Exception:
        detach_quietly(vm, storage, attached)
        raise
    return attached


def detach_quietly(vm: Vm, storage: HostStorage, leases: Iterable[VolumeLease]) -> None:
    """Release leases without raising: a release that fails goes to the stale leases (which log
    it), to be written free on the storage (sanlock may have forgotten it already, leaving it
    owned by this host there), and the next :func:`reconcile` (at the latest, the next start
    of vdsmd) retries libvirt's side."""
    for lease in leases:
        try:
            detach(vm, lease)
        except VdsmError as e:
            storage.leases.stale.add(lease, f"VM {vm.vm_id}: {e.message}")  # it logs why


def reconcile(vm: Vm, storage: HostStorage, record: VmRecord | None = None) -> None:
    """Make the running VM's leases what its record needs (or ``record``, the one it is about
    to have): attach what is missing, release what no writer needs any more. Problems are
    logged, never raised: the operation that called it has already succeeded, and the next
    reconcile retries."""
    record = record or vm.record
    if not record.leases:
        return
    try:
        held = read_leases(vm.domain().XMLDesc(0))
    except (VdsmError, libvirt.libvirtError) as e:
        log.warning("VM %s: cannot read its leases: %s", vm.vm_id, e)
        return
    want = needed(record)
    for lease in sorted(want - held, key=_order):
        try:
            attach(vm, storage, lease)
        except VdsmError as e:
            log.error("VM %s: a writer lacks its lease: %s", vm.vm_id, e.message)
    detach_quietly(vm, storage, sorted(held - want, key=_order))


def _order(lease: VolumeLease) -> tuple[str, str]:
    return (lease.sd_uuid, lease.vol_uuid)
