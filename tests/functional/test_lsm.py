"""Live storage migration through a real vdsmd and libvirt (lsm-contract §1–§4).

The seed's flow, verb by verb, on a 3-volume chain made by a live snapshot — snapshot;
cloneImageStructure; wait; diskReplicateStart; syncImageData(INTERNAL); wait;
diskReplicateFinish — through XML-RPC with the legacy positional arguments and through
JSON-RPC, while the tiny guest writes verifiable blocks before Start, during the sync,
between READY and Finish and across the pivot. Then every error code, restart safety,
convergence under a writer that outruns a bandwidth-limited copy, and the live clone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import VdsmdProcess, new_uuid, running, wait_task
from tests.functional.test_storage_api import ok
from tests.functional.test_vms import VmFixture, chain_of, qemu_pid
from vdsm.storage import qemuimg
from vdsm_guest import checker
from vdsm_guest.build import GuestImage, ensure_guest

pytestmark = pytest.mark.libvirt


@pytest.fixture(scope="session")
def guest() -> GuestImage:
    return ensure_guest()


@pytest.fixture
def lsm_vdsmd(tmp_path: Path) -> Iterator[VdsmdProcess]:
    """vdsmd with a short convergence window, so a test sees the switch to sync quickly."""
    daemon = VdsmdProcess(tmp_path / "vdsmd", ["--replication-convergence-window", "3"])
    with running(daemon):
        yield daemon


@pytest.fixture
def vms(lsm_vdsmd: VdsmdProcess, tmp_path: Path) -> Iterator[VmFixture]:
    fixture = VmFixture(lsm_vdsmd, tmp_path)
    try:
        yield fixture
    finally:
        fixture.cleanup()


class Migration:
    """One disk's live migration, driven verb by verb as an engine would."""

    def __init__(self, vms: VmFixture, vm_id: str) -> None:
        self.vms, self.vm_id = vms, vm_id
        self.rpc = vms.daemon.xmlrpc()
        self.st = vms.storage
        self.img = vms.img

    def disk(self, sd: str, vol: str) -> dict[str, str]:
        return {
            "device": "disk",
            "domainID": sd,
            "poolID": self.st.sp,
            "imageID": self.img,
            "volumeID": vol,
        }

    def live_snapshot(self) -> str:
        leaf = chain_of(self.vms.stats(self.vm_id))[-1]
        snap = new_uuid()
        self.st.create_volume(self.img, snap, parent=leaf)
        ok(
            self.rpc.snapshot(
                self.vm_id,
                [
                    {
                        "domainID": self.st.sd,
                        "imageID": self.img,
                        "baseVolumeID": leaf,
                        "volumeID": snap,
                    }
                ],
            )
        )
        return snap

    def clone(self) -> None:
        task = ok(self.rpc.cloneImageStructure(self.st.sp, self.st.sd, self.img, self.st.sd2))
        assert wait_task(self.vms.daemon, task["uuid"])["taskResult"] == "success"

    def sync(self, sync_type: str = "INTERNAL") -> None:
        task = ok(self.rpc.syncImageData(self.st.sp, self.st.sd, self.img, self.st.sd2, sync_type))
        assert wait_task(self.vms.daemon, task["uuid"])["taskResult"] == "success"

    def finish_when_ready(
        self, src: dict[str, Any], dst: dict[str, Any], timeout: float = 120
    ) -> int:
        """Call Finish until it stops answering 40; return how many 40s it answered."""
        deadline, not_ready = time.monotonic() + timeout, 0
        while True:
            reply = self.rpc.diskReplicateFinish(self.vm_id, src, dst)
            if reply["status"]["code"] != 40:
                ok(reply)
                return not_ready
            not_ready += 1
            assert time.monotonic() < deadline, f"mirror never READY: {reply}"
            time.sleep(0.2)


def guest_params(guest: GuestImage, **cmdline: Any) -> dict[str, Any]:
    return {
        "kernel": str(guest.kernel),
        "initrd": str(guest.initrd),
        "kernelArgs": guest.kernel_cmdline(**cmdline),
        "memSize": 128,
    }


def wait_writes(console: Path, count: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        if "VDSMW ready" in text:
            logged = checker.parse_log(text).writes
            if len(logged) >= count:
                return len(logged)
        time.sleep(0.1)
    raise AssertionError(f"the guest did not log {count} writes: {console.read_text()[-2000:]}")


def open_files(vm_id: str) -> list[str]:
    fd_dir = Path(f"/proc/{qemu_pid(vm_id)}/fd")
    found = []
    for fd in fd_dir.iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:
            continue
    return found


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


def test_every_error_code(vms: VmFixture) -> None:
    vm_id = vms.start()
    m = Migration(vms, vm_id)
    rpc, st = m.rpc, m.st
    # The destination: an empty clone of the VM's 2-volume chain.
    m.clone()
    src, dst = m.disk(st.sd, vms.leaf), m.disk(st.sd2, vms.leaf)
    unknown = new_uuid()

    assert rpc.diskReplicateStart(unknown, src, dst)["status"]["code"] == 1
    assert rpc.diskReplicateStart(vm_id, m.disk(st.sd, unknown), dst)["status"]["code"] == 13
    assert rpc.diskReplicateFinish(vm_id, src, dst)["status"]["code"] == 88
    assert rpc.diskReplicateFinish(unknown, src, dst)["status"]["code"] == 1
    bad = rpc.diskReplicateStart(vm_id, src, {**dst, "volumeID": "../etc"})
    assert bad["status"]["code"] == 1000 and "dstDisk.volumeID" in bad["status"]["message"]
    # A destination that does not exist: 55, and nothing is left recorded.
    reply = rpc.diskReplicateStart(vm_id, src, m.disk(st.sd2, unknown))
    assert reply["status"]["code"] == 55 and unknown in reply["status"]["message"]
    assert rpc.diskReplicateFinish(vm_id, src, dst)["status"]["code"] == 88

    ok(rpc.diskReplicateStart(vm_id, src, dst, True, "background", 1))
    assert rpc.diskReplicateStart(vm_id, src, dst)["status"]["code"] == 55  # already running
    # (40, Finish before READY, needs a mirror with data to copy: see the convergence test.)
    m.sync("INTERNAL")
    m.finish_when_ready(src, dst)
    assert vms.stats(vm_id)["disks"]["vda"]["domainID"] == st.sd2


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
    assert "restarting it with synchronous writes" in vms.daemon.log()
    wait_writes(console, wait_writes(console, 0) + 20)
    stats = vms.stats(vm_id)
    assert stats["disks"]["vda"]["domainID"] == m.st.sd2
    result = checker.check(Path(stats["disks"]["vda"]["path"]), "qcow2", console)
    assert result.ok, result.failures


def test_vdsmd_killed_after_start_then_finish_pivots(vms: VmFixture, guest: GuestImage) -> None:
    vm_id = vms.start(**guest_params(guest, slots=32, pause=0.02))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 5)
    m = Migration(vms, vm_id)
    m.clone()
    src, dst = m.disk(m.st.sd, vms.leaf), m.disk(m.st.sd2, vms.leaf)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst))
    pid = qemu_pid(vm_id)
    vms.daemon.kill()
    vms.daemon.restart()
    m.rpc = vms.daemon.xmlrpc()
    m.sync("INTERNAL")
    m.finish_when_ready(src, dst)
    assert qemu_pid(vm_id) == pid
    wait_writes(console, wait_writes(console, 0) + 10)
    stats = vms.stats(vm_id)
    assert stats["disks"]["vda"]["domainID"] == m.st.sd2
    result = checker.check(Path(stats["disks"]["vda"]["path"]), "qcow2", console)
    assert result.ok, result.failures


def test_vdsmd_killed_after_start_then_finish_aborts(vms: VmFixture) -> None:
    vm_id = vms.start()
    m = Migration(vms, vm_id)
    m.clone()
    src, dst = m.disk(m.st.sd, vms.leaf), m.disk(m.st.sd2, vms.leaf)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst))
    vms.daemon.kill()
    vms.daemon.restart()
    m.rpc = vms.daemon.xmlrpc()
    m.finish_when_ready(src, src)
    assert vms.stats(vm_id)["disks"]["vda"]["domainID"] == m.st.sd
    assert [f for f in open_files(vm_id) if f"/{m.st.sd2}/" in f] == []


def test_qemu_killed_during_replication_is_55_and_the_source_is_intact(vms: VmFixture) -> None:
    vm_id = vms.start()
    m = Migration(vms, vm_id)
    m.clone()
    src, dst = m.disk(m.st.sd, vms.leaf), m.disk(m.st.sd2, vms.leaf)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst))
    os.kill(qemu_pid(vm_id), 9)
    deadline = time.monotonic() + 30
    while vms.stats(vm_id)["status"] != "Down":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    reply = m.rpc.diskReplicateFinish(vm_id, src, dst)
    assert reply["status"]["code"] == 55 and "not running" in reply["status"]["message"]
    assert m.rpc.diskReplicateFinish(vm_id, src, dst)["status"]["code"] == 88  # cleaned up
    leaf = next(Path(vms.daemon.root.parent).rglob(f"{m.st.sd}/images/{m.img}/{vms.leaf}"))
    report = qemuimg.check(leaf, fmt="qcow2")
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0
    info = ok(m.rpc.getVolumeInfo(m.st.sd, m.st.sp, m.img, vms.leaf))["info"]
    assert info["legality"] == "LEGAL"


def test_refused_pivot_is_41_and_keeps_the_replication(vms: VmFixture) -> None:
    """libvirt opens a shallow copy's destination backing chain only at pivot: with the
    destination base gone, it refuses the pivot. The record must survive (41), and an abort
    must then work and leave the VM on the source."""
    vm_id = vms.start()
    m = Migration(vms, vm_id)
    m.clone()
    src, dst = m.disk(m.st.sd, vms.leaf), m.disk(m.st.sd2, vms.leaf)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst))
    m.sync("INTERNAL")
    dst_base = next(Path(vms.daemon.root.parent).rglob(f"{m.st.sd2}/images/{m.img}/{vms.base}"))
    hidden = dst_base.with_name("hidden")
    dst_base.rename(hidden)
    try:
        deadline = time.monotonic() + 60
        while (reply := m.rpc.diskReplicateFinish(vm_id, src, dst))["status"]["code"] == 40:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert reply["status"]["code"] == 41, reply
        assert "libvirt" in reply["status"]["message"]
        assert vms.stats(vm_id)["disks"]["vda"]["domainID"] == m.st.sd
        # Still recorded: a second pivot attempt is 41 again, not 88.
        assert m.rpc.diskReplicateFinish(vm_id, src, dst)["status"]["code"] == 41
    finally:
        hidden.rename(dst_base)
    m.finish_when_ready(src, src)  # the caller's way out: abort
    assert vms.stats(vm_id)["disks"]["vda"]["domainID"] == m.st.sd
    assert m.rpc.diskReplicateFinish(vm_id, src, src)["status"]["code"] == 88


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
    wait_writes(console, wait_writes(console, 0) + 20)
    stats = vms.stats(vm_id)
    assert stats["disks"]["vda"]["domainID"] == m.st.sd
    result = checker.check(Path(stats["disks"]["vda"]["path"]), "qcow2", console)
    assert result.ok, result.failures
