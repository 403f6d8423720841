"""VMs under a real libvirt, through a real vdsmd: create on a volume chain, stats, live
snapshot, destroy; recovery after kill -9 of vdsmd; QEMU killed behind vdsmd's back; and the
refusals of bad input, which leave nothing running.

These VMs boot no OS (they sit in the BIOS), which is all the block layer needs; the tests
with a writing guest are in test_guest_vms.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid
from tests.functional.lsm_helpers import (
    VmFixture,
    chain_of,
    disk,
    ok,
    qemu_pid,
    restart_libvirtd,
    virsh,
)

pytestmark = pytest.mark.libvirt
GiB = 1024**3


@pytest.fixture
def vms(vdsmd: VdsmdProcess, tmp_path: Path) -> Iterator[VmFixture]:
    fixture = VmFixture(vdsmd, tmp_path)
    try:
        yield fixture
    finally:
        fixture.cleanup()


def test_create_stats_snapshot_destroy(vms: VmFixture) -> None:
    rpc = vms.daemon.xmlrpc()
    vm_id = vms.start()
    stats = vms.stats(vm_id)
    assert stats["status"] == "Up"
    assert chain_of(stats) == [vms.base, vms.leaf]
    assert int(stats["disks"]["vda"]["readBytes"]) >= 0
    listed = ok(rpc.list())["vmList"]
    assert {"vmId": vm_id, "vmName": f"test-{vm_id[:8]}", "status": "Up"} in listed

    # Libvirt describes the whole chain with formats: nothing is probed.
    xml = virsh("dumpxml", vm_id)
    assert f"images/{vms.img}/{vms.base}" in xml and "<format type='raw'/>" in xml

    snap = new_uuid()
    vms.storage.create_volume(vms.img, snap, parent=vms.leaf)
    ok(
        rpc.snapshot(
            vm_id,
            [
                {
                    "domainID": vms.storage.sd,
                    "imageID": vms.img,
                    "baseVolumeID": vms.leaf,
                    "volumeID": snap,
                }
            ],
        )
    )
    assert chain_of(vms.stats(vm_id)) == [vms.base, vms.leaf, snap]
    assert f"images/{vms.img}/{snap}'" in virsh("dumpxml", vm_id)

    ok(rpc.destroy(vm_id))
    assert vm_id not in virsh("list", "--uuid")
    assert ok(rpc.list())["vmList"] == []
    assert rpc.destroy(vm_id)["status"]["code"] == 1


def test_create_over_jsonrpc_and_capabilities(vms: VmFixture) -> None:
    params = vms.params()
    vms.started.append(params["vmId"])
    reply = vms.daemon.jsonrpc("VM.create", {"vmID": params["vmId"], "vmParams": params})
    assert reply["result"]["status"] == "Up"
    stats = vms.daemon.jsonrpc("VM.getStats", {"vmID": params["vmId"]})["result"][0]
    assert chain_of(stats) == [vms.base, vms.leaf]
    caps = vms.daemon.jsonrpc("Host.getCapabilities")["result"]
    assert caps["domainType"] in ("kvm", "qemu") and caps["qemuVersion"].count(".") == 2
    assert vms.daemon.jsonrpc("Host.getVMList", {"onlyUUID": True})["result"] == [params["vmId"]]


def test_snapshot_refusals_leave_the_vm_on_its_chain(vms: VmFixture) -> None:
    rpc = vms.daemon.xmlrpc()
    vm_id = vms.start()
    sd, img = vms.storage.sd, vms.img
    unknown = new_uuid()
    assert rpc.snapshot(unknown, [])["status"]["code"] == 1
    # Not the drive's current leaf.
    reply = rpc.snapshot(
        vm_id, [{"domainID": sd, "imageID": img, "baseVolumeID": vms.base, "volumeID": unknown}]
    )
    assert reply["status"]["code"] == 13
    # The new volume does not exist.
    reply = rpc.snapshot(
        vm_id, [{"domainID": sd, "imageID": img, "baseVolumeID": vms.leaf, "volumeID": unknown}]
    )
    assert reply["status"]["code"] == 201
    # An ILLEGAL new leaf cannot be used.
    snap = new_uuid()
    vms.storage.create_volume(vms.img, snap, parent=vms.leaf)
    meta = next(Path(vms.daemon.root.parent).rglob(f"{snap}.meta"))
    meta.write_text(meta.read_text().replace("LEGALITY=LEGAL", "LEGALITY=ILLEGAL"))
    reply = rpc.snapshot(
        vm_id, [{"domainID": sd, "imageID": img, "baseVolumeID": vms.leaf, "volumeID": snap}]
    )
    assert reply["status"]["code"] == 227
    assert chain_of(vms.stats(vm_id)) == [vms.base, vms.leaf]


def test_bad_create_leaves_nothing_running(vms: VmFixture) -> None:
    rpc = vms.daemon.xmlrpc()
    unknown = new_uuid()
    cases = [
        ({"vmId": "not-a-uuid"}, 1000),
        ({**vms.params(), "memSize": -1}, 1000),
        ({**vms.params(), "devices": [{**disk(vms.storage, vms.img, unknown)}]}, 201),
        ({**vms.params(), "devices": [{**disk(vms.storage, unknown, unknown)}]}, 268),
        ({**vms.params(), "kernel": "/no/such/kernel"}, 1000),
        (
            {**vms.params(), "devices": [{**disk(vms.storage, vms.img, vms.leaf), "iface": "ide"}]},
            1000,
        ),
    ]
    huge = {**vms.params(), "memSize": 1024 * 1024}  # more than the host has
    tried = {str(params["vmId"]) for params, _ in cases} | {huge["vmId"]}
    for params, expected in cases:
        reply = rpc.create(params)
        assert reply["status"]["code"] == expected, (params, reply)
    # libvirt refuses the domain: its reason comes back, and nothing is left defined.
    reply = rpc.create(huge)
    assert reply["status"]["code"] in (9, 1000), reply
    # None of them is defined or running (other processes' VMs may come and go meanwhile).
    assert not tried & set(virsh("list", "--all", "--uuid").split())
    assert ok(rpc.list())["vmList"] == []
    assert list((vms.daemon.state_dir / "vms").glob("*.json")) == []

    vm_id = vms.start()
    assert rpc.create(vms.params(vm_id))["status"]["code"] == 4


def test_kill_9_of_vdsmd_recovers_every_vm(vms: VmFixture) -> None:
    first = vms.start()
    img2, vol2 = new_uuid(), new_uuid()
    vms.storage.create_volume(img2, vol2, fmt="RAW")
    second = vms.start(devices=[disk(vms.storage, img2, vol2)])
    snap = new_uuid()
    vms.storage.create_volume(vms.img, snap, parent=vms.leaf)
    rpc = vms.daemon.xmlrpc()
    ok(
        rpc.snapshot(
            first,
            [
                {
                    "domainID": vms.storage.sd,
                    "imageID": vms.img,
                    "baseVolumeID": vms.leaf,
                    "volumeID": snap,
                }
            ],
        )
    )
    before = {vm_id: vms.stats(vm_id) for vm_id in (first, second)}
    pids = {vm_id: qemu_pid(vm_id) for vm_id in (first, second)}

    vms.daemon.kill()
    vms.daemon.restart()

    for vm_id in (first, second):
        after = vms.stats(vm_id)
        assert after["status"] == "Up"
        assert after["vmName"] == before[vm_id]["vmName"]
        assert chain_of(after) == chain_of(before[vm_id])
        assert qemu_pid(vm_id) == pids[vm_id], "the VM must not notice the restart"
    assert chain_of(vms.stats(first)) == [vms.base, vms.leaf, snap]
    assert chain_of(vms.stats(second)) == [vol2]


def test_qemu_killed_behind_vdsmds_back_is_reported_down(vms: VmFixture) -> None:
    vm_id = vms.start()
    pid = qemu_pid(vm_id)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while vms.stats(vm_id)["status"] != "Down":
        assert time.monotonic() < deadline, "VM not reported Down"
        time.sleep(0.1)
    assert vms.stats(vm_id)["exitMessage"]

    # And across a restart of vdsmd while QEMU is gone.
    other = vms.start()
    vms.daemon.kill()
    os.kill(qemu_pid(other), signal.SIGKILL)
    time.sleep(0.5)
    vms.daemon.restart()
    stats = vms.stats(other)
    assert stats["status"] == "Down" and "gone" in stats["exitMessage"]
    ok(vms.daemon.xmlrpc().destroy(other))


def test_vdsmd_reconnects_when_libvirtd_restarts(vms: VmFixture) -> None:
    """libvirtd restarted under a running vdsmd: the VMs (QEMU outlives libvirtd) and vdsmd's
    connection, events included, come back."""
    vm_id = vms.start()
    pid = qemu_pid(vm_id)
    restart_libvirtd()
    assert vms.stats(vm_id)["status"] == "Up"
    assert qemu_pid(vm_id) == pid
    # Events flow again: a QEMU killed now is seen as Down.
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while vms.stats(vm_id)["status"] != "Down":
        assert time.monotonic() < deadline, "VM not reported Down after the reconnection"
        time.sleep(0.1)
    # The reason comes from libvirt's lifecycle event, received on the new connection.
    deadline = time.monotonic() + 10
    while vms.stats(vm_id)["exitMessage"] == "not running":
        assert time.monotonic() < deadline, "no lifecycle event after the reconnection"
        time.sleep(0.1)


def test_a_malformed_vm_record_is_reported_by_file_and_key(vms: VmFixture) -> None:
    """A record vdsmd wrote reads back as it was; one edited behind its back is refused at
    recovery with the file and the key at fault, and the other VMs still recover."""
    img2, vol2 = new_uuid(), new_uuid()
    vms.storage.create_volume(img2, vol2, fmt="RAW")
    good, bad = vms.start(), vms.start(devices=[disk(vms.storage, img2, vol2)])
    vms.daemon.kill()
    path = vms.daemon.state_dir / "vms" / f"{bad}.json"
    record = json.loads(path.read_text())
    record["replications"] = {"vda": {"state": "mirroring", "src": {"domainID": "x"}}}
    path.write_text(json.dumps(record))
    vms.daemon.restart()
    log = vms.daemon.log()
    assert f"ignoring unreadable VM record {path}" in log
    assert "record.replications.vda" in log and "KeyError" not in log
    assert vms.stats(good)["status"] == "Up"
    assert vms.daemon.xmlrpc().getVmStats(bad)["status"]["code"] == 1
