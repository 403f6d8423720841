"""Live merge through a real vdsmd and libvirt: active (the leaf into its parent, with pivot)
and internal (a middle volume into its parent), under guest writes, then deleting the merged
volume; and the refusals.

No test here stops vdsmd: they share one daemon and pool (``pooled_vms``), each with an image
and VMs of its own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.functional.daemon_helpers import new_uuid, wait_task
from tests.functional.lsm_helpers import (
    Migration,
    VmFixture,
    chain_of,
    guest_params,
    ok,
    wait_writes,
)
from vdsm_guest import checker
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt


@pytest.fixture
def vms(pooled_vms: VmFixture) -> VmFixture:
    """The module's shared pool (conftest's ``pooled_vms``), not a daemon and pool per test."""
    return pooled_vms


def wait_merged(vms: VmFixture, vm_id: str, top: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = vms.stats(vm_id)
        if top not in chain_of(stats) and not stats["blockJobs"]:
            return stats
        assert time.monotonic() < deadline, f"merge not done: {stats['blockJobs']}"
        time.sleep(0.1)


def volume_info(vms: VmFixture, vol: str) -> dict[str, Any]:
    st = vms.storage
    info: dict[str, Any] = ok(vms.daemon.xmlrpc().getVolumeInfo(st.sd, st.sp, vms.img, vol))["info"]
    return info


def test_active_merge_under_writes_then_delete_top(vms: VmFixture, guest: GuestImage) -> None:
    vm_id = vms.start(**guest_params(guest, slots=32, pause=0.02))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 5)
    m = Migration(vms, vm_id)
    snap = m.live_snapshot()
    wait_writes(console, wait_writes(console, 0) + 10)  # writes land in the snapshot
    job = new_uuid()
    drive = m.disk(m.st.sd, snap)
    ok(m.rpc.merge(vm_id, drive, vms.leaf, snap, 0, job))
    stats = wait_merged(vms, vm_id, snap)
    assert chain_of(stats) == [vms.base, vms.leaf]
    assert volume_info(vms, snap)["legality"] == "ILLEGAL"
    wait_writes(console, wait_writes(console, 0) + 10)  # and now into the old leaf again
    task = ok(m.rpc.deleteVolume(m.st.sd, m.st.sp, vms.img, [snap]))["uuid"]
    assert wait_task(vms.daemon, task)["taskResult"] == "success"
    assert m.st.chain(vms.img) == [vms.base, vms.leaf]
    assert volume_info(vms, vms.leaf)["voltype"] == "LEAF"
    result = checker.check(Path(stats["disks"]["vda"]["path"]), "qcow2", console)
    assert result.ok, result.failures


def test_internal_merge_rewires_the_chain(vms: VmFixture) -> None:
    vm_id = vms.start()
    m = Migration(vms, vm_id)
    snap = m.live_snapshot()  # base <- leaf <- snap(active)
    ok(m.rpc.merge(vm_id, m.disk(m.st.sd, snap), vms.base, vms.leaf, 0, new_uuid()))
    stats = wait_merged(vms, vm_id, vms.leaf)
    assert chain_of(stats) == [vms.base, snap]
    assert volume_info(vms, snap)["parent"] == vms.base
    task = ok(m.rpc.deleteVolume(m.st.sd, m.st.sp, vms.img, [vms.leaf]))["uuid"]
    assert wait_task(vms.daemon, task)["taskResult"] == "success"
    assert m.st.chain(vms.img) == [vms.base, snap]
    assert volume_info(vms, vms.base)["voltype"] == "INTERNAL"  # snap still hangs on it


def test_merge_refusals(vms: VmFixture) -> None:
    vm_id = vms.start()
    m = Migration(vms, vm_id)
    rpc = m.rpc
    drive = m.disk(m.st.sd, vms.leaf)
    assert rpc.merge(new_uuid(), drive, vms.base, vms.leaf)["status"]["code"] == 1
    assert rpc.merge(vm_id, m.disk(m.st.sd, new_uuid()), vms.base, vms.leaf)["status"]["code"] == 13
    assert rpc.merge(vm_id, drive, vms.leaf, vms.base)["status"]["code"] == 52  # base has no parent
    assert rpc.merge(vm_id, drive, new_uuid(), vms.leaf)["status"]["code"] == 52
    m.clone()
    ok(rpc.diskReplicateStart(vm_id, drive, m.disk(m.st.sd2, vms.leaf)))
    reply = rpc.merge(vm_id, drive, vms.base, vms.leaf)
    assert reply["status"]["code"] == 52 and "busy" in reply["status"]["message"]
    m.finish_when_ready(drive, drive)
    assert chain_of(vms.stats(vm_id)) == [vms.base, vms.leaf]
