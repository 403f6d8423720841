"""Live storage migration through a real vdsmd and libvirt: the flow (docs/contract.md §1–§4).

The seed's flow, verb by verb, on a 3-volume chain made by a live snapshot — snapshot;
cloneImageStructure; wait; diskReplicateStart; syncImageData(INTERNAL); wait;
diskReplicateFinish — through XML-RPC with the legacy positional arguments and through
JSON-RPC, while the tiny guest writes verifiable blocks before Start, during the sync,
between READY and Finish and across the pivot. Then the abort (srcDisk == dstDisk) and the
live clone it leaves, convergence under a writer that outruns a bandwidth-limited copy, and
the live snapshot on its own.

Every error code and restart safety (vdsmd or QEMU killed mid-replication, a refused pivot):
test_lsm_failures.py. The fixtures and ``Migration``: lsm_helpers.py.

No test here stops vdsmd: they share one daemon and pool (``pooled_vms``), each with an image
and VMs of its own, and check only their own ids.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.functional.daemon_helpers import wait_task
from tests.functional.lsm_helpers import (
    Migration,
    VmFixture,
    chain_of,
    guest_params,
    ok,
    open_files,
    wait_writes,
)
from vdsm.storage import qemuimg
from vdsm_guest import checker
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt


@pytest.fixture
def vms(pooled_vms: VmFixture) -> VmFixture:
    """The module's shared pool (conftest's ``pooled_vms``), not a daemon and pool per test."""
    return pooled_vms


def test_seed_flow_over_xmlrpc_under_guest_writes(vms: VmFixture, guest: GuestImage) -> None:
    vm_id = vms.start(**guest_params(guest, slots=64, pause=0.02))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 10)
    m = Migration(vms, vm_id)
    snap = m.live_snapshot()  # 1: a new leaf; base and the old leaf become internal
    chain = [vms.base, vms.leaf, snap]
    assert chain_of(vms.stats(vm_id)) == chain
    m.clone()  # 2–3
    src, dst = m.disk(m.st.sd, snap), m.disk(m.st.sd2, snap)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst))  # 4
    before_sync = wait_writes(console, 0)
    m.sync("INTERNAL")  # 5–6
    assert wait_writes(console, before_sync + 5) > before_sync, "the guest writes during the sync"
    m.finish_when_ready(src, dst)  # 7: pivot
    after_pivot = wait_writes(console, 0)
    wait_writes(console, after_pivot + 20)  # and keeps writing on the destination

    stats = vms.stats(vm_id)
    assert stats["status"] == "Up"
    assert stats["disks"]["vda"]["domainID"] == m.st.sd2
    assert chain_of(stats) == chain
    assert all(f"/{m.st.sd2}/images/" in v["path"] for v in stats["disks"]["vda"]["volumeChain"])
    leftovers = [f for f in open_files(vm_id) if f"/{m.st.sd}/" in f]
    assert leftovers == [], "QEMU still has source volumes open"

    dst_leaf = Path(stats["disks"]["vda"]["path"])
    result = checker.check(dst_leaf, "qcow2", console)
    assert result.ok, result.failures
    assert result.slots_verified == min(64, result.writes_logged)
    # The test of the test: the source stopped receiving writes at the pivot.
    src_leaf = dst_leaf.parents[3] / m.st.sd / "images" / m.img / snap
    src_leaf = next(Path(vms.daemon.root.parent).rglob(f"{m.st.sd}/images/{m.img}/{snap}"))
    stale = checker.check(src_leaf, "qcow2", console)
    assert not stale.ok and {f.kind for f in stale.failures} == {checker.LOST}
    # The replication record is gone; a second Finish has nothing to finish.
    assert m.rpc.diskReplicateFinish(vm_id, dst, dst)["status"]["code"] == 88


def test_seed_flow_over_jsonrpc_and_source_deletion(vms: VmFixture) -> None:
    vm_id = vms.start()
    d = vms.daemon
    m = Migration(vms, vm_id)
    snap = m.live_snapshot()
    st = m.st
    ids = {"imageID": m.img, "storagepoolID": st.sp, "storagedomainID": st.sd, "dstSdUUID": st.sd2}
    assert wait_task(d, d.jsonrpc("Image.cloneStructure", ids)["result"])["taskResult"] == "success"
    src, dst = m.disk(st.sd, snap), m.disk(st.sd2, snap)
    assert (
        d.jsonrpc(
            "VM.diskReplicateStart",
            {"vmID": vm_id, "srcDisk": src, "dstDisk": dst, "copyMode": "background"},
        )["result"]
        is None
    )
    task = d.jsonrpc("Image.syncData", {**ids, "syncType": "INTERNAL"})["result"]
    assert wait_task(d, task)["taskResult"] == "success"
    deadline = time.monotonic() + 60
    while True:
        reply = d.jsonrpc("VM.diskReplicateFinish", {"vmID": vm_id, "srcDisk": src, "dstDisk": dst})
        if "result" in reply:
            break
        assert reply["error"]["code"] == 40 and time.monotonic() < deadline, reply
        time.sleep(0.2)
    stats = vms.stats(vm_id)
    assert stats["disks"]["vda"]["domainID"] == st.sd2
    # Step 8: delete the source image; the VM keeps running on the destination.
    task = ok(m.rpc.deleteImage(st.sd, st.sp, m.img))["uuid"]
    assert wait_task(d, task)["taskResult"] == "success"
    assert vms.stats(vm_id)["status"] == "Up"
    dst_leaf = stats["disks"]["vda"]["path"]
    assert qemuimg.check(dst_leaf, fmt="qcow2", force_share=True).get("corruptions", 0) == 0


def test_abort_leaves_a_live_clone_and_the_vm_on_the_source(vms: VmFixture) -> None:
    vm_id = vms.start()
    m = Migration(vms, vm_id)
    snap = m.live_snapshot()
    m.clone()
    src, dst = m.disk(m.st.sd, snap), m.disk(m.st.sd2, snap)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst))
    m.sync("INTERNAL")
    m.finish_when_ready(src, src)  # srcDisk == dstDisk: abort
    stats = vms.stats(vm_id)
    assert stats["disks"]["vda"]["domainID"] == m.st.sd and chain_of(stats)[-1] == snap
    assert [f for f in open_files(vm_id) if f"/{m.st.sd2}/" in f] == []
    src_leaf, dst_leaf = (
        next(Path(vms.daemon.root.parent).rglob(f"{sd}/images/{m.img}/{snap}"))
        for sd in (m.st.sd, m.st.sd2)
    )
    assert qemuimg.compare(src_leaf, dst_leaf, fmt_a="qcow2", fmt_b="qcow2", force_share=True)
    # The destination is independent and no longer open: it can be deleted safely.
    task = ok(m.rpc.deleteImage(m.st.sd2, m.st.sp, m.img))["uuid"]
    assert wait_task(vms.daemon, task)["taskResult"] == "success"
    assert vms.stats(vm_id)["status"] == "Up"


def test_finish_before_ready_is_40_and_a_slow_mirror_still_converges(
    vms: VmFixture, guest: GuestImage
) -> None:
    """A guest writing ~6 MB/s against a mirror capped at 1 MiB/s: background mode never gets
    READY; auto mode notices (3 s window here) and switches to synchronous writes."""
    vm_id = vms.start(**guest_params(guest, slots=64, pause=0))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 100)  # 6+ MiB written into the leaf before the mirror starts
    m = Migration(vms, vm_id)
    m.clone()
    m.sync("INTERNAL")
    src, dst = m.disk(m.st.sd, vms.leaf), m.disk(m.st.sd2, vms.leaf)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst, True, "auto", 1))
    not_ready = m.finish_when_ready(src, dst, timeout=180)
    assert not_ready > 0, "Finish must answer 40 before the mirror is READY"
    # This VM's own switch: the module's other tests log to the same daemon.
    switched = [
        line
        for line in vms.daemon.log().splitlines()
        if f"VM {vm_id} " in line and "restarting it with synchronous writes" in line
    ]
    assert switched, "no switch to synchronous writes logged for this VM"
    m.assert_runs_on(m.st.sd2, console)


def test_live_snapshot_under_guest_writes_verifies(vms: VmFixture, guest: GuestImage) -> None:
    vm_id = vms.start(**guest_params(guest, slots=32, pause=0.02))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 10)
    snap = Migration(vms, vm_id).live_snapshot()
    wait_writes(console, wait_writes(console, 0) + 20)
    stats = vms.stats(vm_id)
    assert chain_of(stats) == [vms.base, vms.leaf, snap]
    result = checker.check(Path(stats["disks"]["vda"]["path"]), "qcow2", console)
    assert result.ok, result.failures
    ok(vms.daemon.xmlrpc().destroy(vm_id))


def test_abort_under_guest_writes_keeps_every_write_on_the_source(
    vms: VmFixture, guest: GuestImage
) -> None:
    vm_id = vms.start(**guest_params(guest, slots=32, pause=0.02))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 10)
    m = Migration(vms, vm_id)
    m.clone()
    src, dst = m.disk(m.st.sd, vms.leaf), m.disk(m.st.sd2, vms.leaf)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst))
    m.sync("INTERNAL")
    wait_writes(console, wait_writes(console, 0) + 10)
    m.finish_when_ready(src, src)
    m.assert_runs_on(m.st.sd, console)
