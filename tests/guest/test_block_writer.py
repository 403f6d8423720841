"""The host-side block writer against a real vdsmd and libvirt: its writes go through the VM's
own block layer, the checker proves them all on the disk, and fails on a stale or damaged copy;
across a live snapshot through vdsmd, the writes follow the VM into the new leaf.

The VMs boot no OS (they sit in the BIOS): the writer needs only QEMU's block layer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid
from tests.functional.lsm_helpers import VmFixture, virsh
from tests.functional.storage_helpers import ok
from vdsm.storage import qemuimg
from vdsm.storage.runner import run
from vdsm_guest import checker
from vdsm_guest.block_writer import BlockWriter
from vdsm_guest.qemu_channels import BlockWriterError

pytestmark = pytest.mark.libvirt

WRITE_SECONDS = 2.0
SLOTS = 64  # 4 MiB: a 2-second run overwrites every slot many times
NBD_SERVER_STOP = '{"execute": "nbd-server-stop"}'


@pytest.fixture
def vms(vdsmd: VdsmdProcess, tmp_path: Path) -> Iterator[VmFixture]:
    fixture = VmFixture(vdsmd, tmp_path)
    try:
        yield fixture
    finally:
        fixture.cleanup()


def chain_paths(vms: VmFixture, vm_id: str) -> list[str]:
    return [link["path"] for link in vms.stats(vm_id)["disks"]["vda"]["volumeChain"]]


def wait_writes(writer: BlockWriter, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(writer.writes) < count:
        assert writer.error is None, writer.error
        assert time.monotonic() < deadline, f"only {len(writer.writes)} of {count} writes acked"
        time.sleep(0.001)


def copy_raw(image: str, fmt: str, dest: Path) -> Path:
    """A raw copy of ``image`` read through its chain while QEMU writes it (-U)."""
    run([qemuimg.qemu_img(), "convert", "-U", "-f", fmt, "-O", "raw", image, str(dest)])
    return dest


def own_allocation(image: str) -> int:
    """Bytes of data ``image`` holds itself (not its backing chain)."""
    return qemuimg.allocated_bytes(qemuimg.map(image, force_share=True), depth=0)


def summary(writer: BlockWriter) -> str:
    lat = {k: f"{v * 1000:.3f} ms" for k, v in writer.latency_summary().items()}
    first = writer.writes[0].latency * 1000 if writer.writes else 0.0
    return (
        f"{len(writer.writes)} writes, first {first:.3f} ms, {lat}, "
        f"{writer.throughput() / 2**20:.1f} MiB/s, node {writer.node_name}"
    )


def test_every_acked_write_is_on_the_disk_and_a_stale_copy_fails(
    vms: VmFixture, tmp_path: Path
) -> None:
    vm_id = vms.start(testShareRW=True)
    leaf = chain_paths(vms, vm_id)[-1]
    writer = BlockWriter(vm_id, vms.img, slots=SLOTS)
    with writer:
        wait_writes(writer, 10)
        stale = copy_raw(leaf, "qcow2", tmp_path / "stale.raw")
        time.sleep(WRITE_SECONDS)
    print(summary(writer))

    writes = writer.writes
    assert len(writes) > 2 * SLOTS and not writer.failures
    assert [w.seq for w in writes] == list(range(1, len(writes) + 1))
    assert all(w.slot == (w.seq - 1) % SLOTS and w.latency > 0 for w in writes)

    result = writer.verify(Path(leaf), "qcow2")
    assert result.ok, result.failures
    assert result.slots_verified == SLOTS and result.last_seq == len(writes)

    # The copy taken after ~10 writes misses thousands of acknowledged ones.
    stale_result = writer.verify(stale, "raw")
    assert not stale_result.ok
    assert {f.kind for f in stale_result.failures} == {checker.LOST}
    assert len(stale_result.failures) == SLOTS

    # One flipped payload byte in a good copy is caught as corruption of that slot.
    good = copy_raw(leaf, "qcow2", tmp_path / "good.raw")
    assert writer.verify(good, "raw").ok
    with good.open("r+b") as f:
        f.seek(5 * checker.BLOCK_SIZE + 1000)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    corrupt = writer.verify(good, "raw")
    assert [(f.kind, f.slot) for f in corrupt.failures] == [(checker.CORRUPT, 5)]

    # stop() left nothing behind: a second writer can export the same disk again.
    with BlockWriter(vm_id, vms.img, slots=SLOTS, queue_depth=4, rate_limit=50 * 2**20) as again:
        wait_writes(again, 50)
    assert again.verify(Path(leaf), "qcow2").ok


def test_writes_follow_a_live_snapshot_into_the_new_leaf(vms: VmFixture) -> None:
    vm_id = vms.start(testShareRW=True)
    base, old_leaf = chain_paths(vms, vm_id)
    snap = new_uuid()
    vms.storage.create_volume(vms.img, snap, parent=vms.leaf)
    snap_drive: dict[str, Any] = {
        "domainID": vms.storage.sd,
        "imageID": vms.img,
        "baseVolumeID": vms.leaf,
        "volumeID": snap,
    }
    # 32 MiB/s: ~1 s after the snapshot rewrites every 4 MiB of slots several times.
    writer = BlockWriter(vm_id, vms.img, slots=SLOTS, rate_limit=32 * 2**20)
    with writer:
        wait_writes(writer, 2 * SLOTS)
        before = len(writer.writes)
        ok(vms.daemon.xmlrpc().snapshot(vm_id, [snap_drive]))
        snapped_at = time.monotonic()
        paths = chain_paths(vms, vm_id)
        assert paths[:-1] == [base, old_leaf] and Path(paths[-1]).name == snap
        new_leaf = paths[-1]
        # QEMU names the new top node; the export moved onto it with the device.
        assert writer.current_node() != writer.node_name
        assert writer.exported_node() == writer.current_node()
        allocated_at_snapshot = own_allocation(new_leaf)
        wait_writes(writer, len(writer.writes) + 4 * SLOTS)
    print(summary(writer))

    after = [w for w in writer.writes if w.acked > snapped_at]
    assert before > 0 and len(after) >= 4 * SLOTS and not writer.failures
    # The writes after the snapshot are in the new leaf's own clusters ...
    allocated = own_allocation(new_leaf)
    assert allocated >= SLOTS * checker.BLOCK_SIZE > allocated_at_snapshot
    # ... the whole chain holds every acknowledged write ...
    result = writer.verify(Path(new_leaf), "qcow2")
    assert result.ok, result.failures
    assert result.slots_verified == SLOTS
    # ... and the old leaf, now read-only under the new one, misses them.
    stale = writer.verify(Path(old_leaf), "qcow2")
    assert not stale.ok and {f.kind for f in stale.failures} == {checker.LOST}


def test_refusals_leave_nothing_behind(vms: VmFixture) -> None:
    # Without testShareRW the device forbids a second writer: QEMU refuses the export.
    vm_id = vms.start()
    with pytest.raises(BlockWriterError, match="block-export-add"):
        BlockWriter(vm_id, vms.img).start()
    # The failed start stopped the NBD server it had started.
    assert "NBD server not running" in virsh("qemu-monitor-command", vm_id, NBD_SERVER_STOP)
    with pytest.raises(BlockWriterError, match="no disk"):
        BlockWriter(vm_id, new_uuid()).start()
    with pytest.raises(BlockWriterError, match="no VM"):
        BlockWriter(new_uuid(), vms.img).start()
    with pytest.raises(ValueError):
        BlockWriter(vm_id, vms.img, slots=4, queue_depth=8)
    ok(vms.daemon.xmlrpc().destroy(vm_id))


def test_vm_gone_while_writing_is_an_error_and_cleans_up(vms: VmFixture) -> None:
    vm_id = vms.start(testShareRW=True)
    writer = BlockWriter(vm_id, vms.img, slots=SLOTS, queue_depth=4)
    writer.start()
    try:
        wait_writes(writer, 100)
        tmpdir = writer._tmpdir
        assert tmpdir is not None and Path(tmpdir, "nbd.sock").exists()
        ok(vms.daemon.xmlrpc().destroy(vm_id))
        deadline = time.monotonic() + 10
        while writer.error is None:
            assert time.monotonic() < deadline, "the writer did not notice QEMU is gone"
            time.sleep(0.01)
    finally:
        with pytest.raises(BlockWriterError, match="writer failed"):
            writer.stop()
    assert not Path(tmpdir).exists()
    assert writer.writes and writer.writes[-1].seq >= 100
