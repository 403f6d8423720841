"""Volume leases on one host: a running VM's QEMU holds the lease of each volume it writes,
and the leases move with the disk (snapshot, replication, pivot, abort, merge).

Real sanlock (the machine's daemon, which vdsmd and libvirt's sanlock lock manager share),
real libvirt, real QEMU. "Held" is sanlock's own answer (``sanlock client status``: which pid
holds which resource), compared with the domain XML's ``<lease>`` list and vdsmd's record.
vdsmd is also killed between each lease step and the step it guards (vdsm.crash_point), then
restarted: the three must agree again.

The tests that leave vdsmd running and its pool connected share one daemon and pool
(``pooled_plain_vms``: the plain vdsmd, as ``leased_vdsmd``; an image and VMs of their own);
those that kill vdsmd or disconnect the pool have a daemon and pool each.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sanlock
from lxml import etree

from tests.functional import lease_helpers
from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, running, wait_task
from tests.functional.lease_helpers import Lease, machine_sanlock_status
from tests.functional.lsm_helpers import Migration, VmFixture, chain_of, qemu_pid, virsh
from tests.functional.storage_helpers import code, ok
from vdsm.crash_point import ENV as CRASH_AT


def held_by(pid: int) -> set[Lease]:
    return lease_helpers.held_by(machine_sanlock_status(), pid)


def xml_leases(vm_id: str) -> set[Lease]:
    root = etree.fromstring(virsh("dumpxml", vm_id).encode())
    return {
        (str(e.findtext("lockspace")), str(e.findtext("key")))
        for e in root.iterfind("devices/lease")
    }


def agree(vms: VmFixture, vm_id: str) -> set[Lease]:
    """The leases QEMU holds (sanlock) are the XML's, and include the record's leaf; returns
    them."""
    qemu = qemu_pid(vm_id)
    held = held_by(qemu)
    assert held == xml_leases(vm_id)
    leaf = chain_of(vms.stats(vm_id))[-1]
    assert any(vol == leaf for _, vol in held), (held, leaf)
    return held


@pytest.fixture
def leased_vdsmd(tmp_path: Path) -> Iterator[VdsmdProcess]:
    daemon = VdsmdProcess(tmp_path / "vdsmd")
    with running(daemon):
        yield daemon


@pytest.fixture
def leased_vms(leased_vdsmd: VdsmdProcess, tmp_path: Path) -> Iterator[VmFixture]:
    fixture = VmFixture(leased_vdsmd, tmp_path)
    try:
        yield fixture
    finally:
        fixture.cleanup()


def replicate(m: Migration, snap: str) -> tuple[dict[str, str], dict[str, str]]:
    src, dst = m.disk(m.st.sd, snap), m.disk(m.st.sd2, snap)
    ok(m.rpc.diskReplicateStart(m.vm_id, src, dst))
    return src, dst


def test_leases_follow_the_disk_through_a_migration(pooled_plain_vms: VmFixture) -> None:
    vms = pooled_plain_vms
    st = vms.storage
    vm_id = vms.start()
    qemu = qemu_pid(vm_id)
    assert held_by(qemu) == {(st.sd, vms.leaf)} == xml_leases(vm_id)

    m = Migration(vms, vm_id)
    snap = m.live_snapshot()
    # The new leaf's lease was taken before the switch, the old leaf's given up after it.
    assert held_by(qemu) == {(st.sd, snap)} == xml_leases(vm_id)

    m.clone()
    src, dst = replicate(m, snap)
    # The mirror writes both leaves: QEMU holds both.
    assert held_by(qemu) == {(st.sd, snap), (st.sd2, snap)} == xml_leases(vm_id)
    m.sync()
    m.finish_when_ready(src, dst)
    assert held_by(qemu) == {(st.sd2, snap)} == xml_leases(vm_id)

    # Nothing of the source is held any more: the SPM may delete it.
    task = ok(m.rpc.deleteImage(st.sd, st.sp, vms.img, False, False))["uuid"]
    assert wait_task(vms.daemon, task)["taskResult"] == "success"
    assert held_by(qemu) == {(st.sd2, snap)}


def test_abort_gives_the_destination_lease_back(pooled_plain_vms: VmFixture) -> None:
    vms = pooled_plain_vms
    st = vms.storage
    vm_id = vms.start()
    qemu = qemu_pid(vm_id)
    m = Migration(vms, vm_id)
    snap = m.live_snapshot()
    m.clone()
    src, _ = replicate(m, snap)
    assert held_by(qemu) == {(st.sd, snap), (st.sd2, snap)}
    m.finish_when_ready(src, src)  # srcDisk == dstDisk: abort, the VM stays on the source
    assert held_by(qemu) == {(st.sd, snap)} == xml_leases(vm_id)


def test_live_merge_moves_the_lease_to_the_base(pooled_plain_vms: VmFixture) -> None:
    vms = pooled_plain_vms
    st = vms.storage
    vm_id = vms.start()
    qemu = qemu_pid(vm_id)
    drive = {"domainID": st.sd, "poolID": st.sp, "imageID": vms.img, "volumeID": vms.leaf}
    ok(vms.daemon.xmlrpc().merge(vm_id, drive, vms.base, vms.leaf, 0, new_uuid()))
    deadline = time.monotonic() + 60
    while chain_of(vms.stats(vm_id)) != [vms.base]:
        assert time.monotonic() < deadline, vms.stats(vm_id)
        time.sleep(0.1)
    # The old top's lease is given back before the record names the chain without it: a
    # client that deletes the top as soon as it sees that chain must find the lease free.
    assert held_by(qemu) == {(st.sd, vms.base)} == xml_leases(vm_id)


def test_a_volume_a_vm_writes_is_not_deleted(pooled_plain_vms: VmFixture) -> None:
    vms = pooled_plain_vms
    st = vms.storage
    vms.start()
    rpc = vms.daemon.xmlrpc()
    for reply in (
        rpc.deleteImage(st.sd, st.sp, vms.img, False, False),
        rpc.deleteVolume(st.sd, st.sp, vms.img, [vms.leaf], False, False),
    ):
        status = wait_task(vms.daemon, ok(reply)["uuid"])
        assert status["code"] == 651, status
        assert vms.leaf in status["message"] and "lease" in status["message"], status
    # Nothing changed: the chain and its files are all there, LEGAL.
    assert st.chain(vms.img) and set(st.chain(vms.img)) == {vms.base, vms.leaf}
    for vol in (vms.base, vms.leaf):
        info = ok(rpc.getVolumeInfo(st.sd, st.sp, vms.img, vol))["info"]
        assert info["legality"] == "LEGAL", info


def test_a_vm_whose_lockspace_is_not_joined_is_refused(leased_vms: VmFixture) -> None:
    vms = leased_vms
    st = vms.storage
    rpc = vms.daemon.xmlrpc()
    ok(rpc.spmStop(st.sp))
    ok(rpc.disconnectStoragePool(st.sp, 1, ""))
    params = vms.params()
    reply = rpc.create(params)
    assert code(reply) == 9, reply
    message = reply["status"]["message"]
    assert "has not joined the lockspace" in message and st.sd in message, message
    assert "No space left" not in message
    assert virsh("domstate", params["vmId"]).strip() == ""


# The crash points between a lease step and the step it guards (vdsm/crash_point.py), and what
# brings each to that point.
CRASHES = [
    "snapshot:leases-attached",
    "snapshot:switched",
    "replicate:lease-attached",
    "finish:pivoted",
    "finish:aborted",
]


def crash_at(vms: VmFixture, point: str, action: Any) -> None:
    """Restart vdsmd armed to die at ``point``, run ``action`` (it dies under it), then start
    vdsmd again unarmed (each restart starts the SPM again, as the engine would)."""
    daemon = vms.daemon
    daemon.env[CRASH_AT] = point
    daemon.restart()
    try:
        action()
    except Exception:  # the daemon died under the call: that is the point
        pass
    deadline = time.monotonic() + 30
    while daemon.running:
        assert time.monotonic() < deadline, f"vdsmd did not die at {point}"
        time.sleep(0.05)
    assert f"crash point {point} reached" in daemon.log()
    del daemon.env[CRASH_AT]
    daemon.restart()


@pytest.mark.parametrize("point", CRASHES)
def test_vdsmd_killed_at_each_lease_step(leased_vms: VmFixture, point: str) -> None:
    vms = leased_vms
    st = vms.storage
    vm_id = vms.start()
    qemu = qemu_pid(vm_id)
    m = Migration(vms, vm_id)
    if point.startswith("snapshot"):
        snap = new_uuid()
        st.create_volume(vms.img, snap, parent=vms.leaf)
        request = [
            {"domainID": st.sd, "imageID": vms.img, "baseVolumeID": vms.leaf, "volumeID": snap}
        ]
        crash_at(vms, point, lambda: vms.daemon.xmlrpc().snapshot(vm_id, request))
        leaf = chain_of(vms.stats(vm_id))[-1]
        # Died before the switch: the VM stays on its leaf; after it: the record follows.
        assert leaf == (vms.leaf if point == "snapshot:leases-attached" else snap)
        assert agree(vms, vm_id) == {(st.sd, leaf)}
    else:
        snap = m.live_snapshot()
        m.clone()
        src, dst = m.disk(st.sd, snap), m.disk(st.sd2, snap)
        if point == "replicate:lease-attached":
            crash_at(vms, point, lambda: vms.daemon.xmlrpc().diskReplicateStart(vm_id, src, dst))
        else:
            replicate(m, snap)
            m.sync()
            finish_to = dst if point == "finish:pivoted" else src
            crash_at(vms, point, lambda: m.finish_when_ready(src, finish_to))
        held = agree(vms, vm_id)
        leaf = chain_of(vms.stats(vm_id))[-1]
        assert leaf == snap
        # Finishing (again) what the crash interrupted leaves exactly the side QEMU runs on.
        m.rpc = vms.daemon.xmlrpc()
        reply = m.rpc.diskReplicateFinish(vm_id, src, src if point != "finish:pivoted" else dst)
        assert code(reply) in (0, 55, 88), reply
        on = st.sd2 if point == "finish:pivoted" else st.sd
        assert (on, snap) in held
        assert agree(vms, vm_id) == {(on, snap)}
    assert qemu_pid(vm_id) == qemu  # the VM never stopped


def test_a_volume_made_before_leases_gets_its_lease(pooled_plain_vms: VmFixture) -> None:
    """A volume whose ``.lease`` is empty (made before volume leases existed) has its lease
    formatted when a VM first needs it."""
    vms = pooled_plain_vms
    st = vms.storage
    lease_file = st.root / "src" / st.sd / "images" / vms.img / f"{vms.leaf}.lease"
    assert lease_file.stat().st_size > 0
    lease_file.write_bytes(b"")
    vm_id = vms.start()
    assert held_by(qemu_pid(vm_id)) == {(st.sd, vms.leaf)}
    assert lease_file.stat().st_size > 0


def test_replicate_refused_while_another_holds_the_destination_lease(
    pooled_plain_vms: VmFixture,
) -> None:
    """diskReplicateStart takes the destination leaf's lease before the mirror writes to it:
    held by another process (here the test itself, through the machine's sanlock daemon), it
    answers 55 with sanlock's reason and starts nothing; once free, the same call works."""
    vms = pooled_plain_vms
    st = vms.storage
    vm_id = vms.start()
    qemu = qemu_pid(vm_id)
    m = Migration(vms, vm_id)
    snap = m.live_snapshot()
    m.clone()
    lease_file = st.root / "dst" / st.sd2 / "images" / vms.img / f"{snap}.lease"
    deadline = time.monotonic() + 30  # the destination's lockspace joined (attached last)
    while not ok(m.rpc.repoStats()).get(st.sd2, {}).get("acquired"):
        assert time.monotonic() < deadline, "the destination's lockspace not joined"
        time.sleep(0.1)
    fd = sanlock.register()
    try:
        sanlock.acquire(st.sd2.encode(), snap.encode(), [(str(lease_file), 0)], slkfd=fd)
        src, dst = m.disk(st.sd, snap), m.disk(st.sd2, snap)
        reply = m.rpc.diskReplicateStart(vm_id, src, dst)
        assert code(reply) == 55, reply
        message = reply["status"]["message"]
        assert f"lease of volume {snap}" in message and "acquire lock" in message, message
        assert held_by(qemu) == {(st.sd, snap)} == xml_leases(vm_id)
        assert vms.stats(vm_id)["blockJobs"] == {}
        sanlock.release(st.sd2.encode(), snap.encode(), [(str(lease_file), 0)], slkfd=fd)
    finally:
        os.close(fd)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst))
    assert held_by(qemu) == {(st.sd, snap), (st.sd2, snap)}
    m.finish_when_ready(src, src)
