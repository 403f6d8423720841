"""Live storage migration through a real vdsmd and libvirt: errors and restart safety.

Every error code of diskReplicateStart and diskReplicateFinish (1, 13, 55, 88, 1000; 40 is
in test_lsm.py's convergence test, which needs a mirror with data to copy), then the
replication surviving the unexpected: vdsmd killed after Start (Finish then pivots under
guest writes, or aborts), QEMU killed mid-replication (55, the source intact), and a pivot
libvirt refuses (41, the record kept, and an abort still works).

The flow itself, the abort and the live snapshot: test_lsm.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.functional.daemon_helpers import new_uuid
from tests.functional.lsm_helpers import (
    Migration,
    VmFixture,
    guest_params,
    ok,
    open_files,
    qemu_pid,
    wait_writes,
)
from vdsm.storage import qemuimg
from vdsm_guest import checker
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt


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
    # (40, Finish before READY, needs a mirror with data to copy: test_lsm.py's convergence.)
    m.sync("INTERNAL")
    m.finish_when_ready(src, dst)
    assert vms.stats(vm_id)["disks"]["vda"]["domainID"] == st.sd2


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
