"""The copy's rate in a real vdsmd.

- copy_rate_limit reaches the copy: with the rate not adaptive, syncImageData's qemu-img runs
  with ``-r`` and the copy is still exact (that ``-r`` caps the rate is
  tests/storage/test_qemuimg.py's, and what the cap buys a busy guest is the bench's);
- the adaptive rate sees a real guest: syncImageData of a two-volume image under the tiny
  guest's own writes, counted by QEMU for its drive and read through libvirt, says it is held
  back while the guest writes (at least one volume starts held back, in a qemu-storage-daemon
  mirror job) and is not once the guest is paused; the cap is never exceeded (the copy takes
  at least size / cap), the twins exact;
- the adaptive rate (vdsm/copy_governor.py) reacts to a writer it hurts: the uncapped mirror
  under a guest-like writer as fast as the disk acknowledges (vdsm_guest.block_writer, through
  the VM's block layer; its counters reach vdsmd by the TEST-ONLY hook of
  vdsm/virt/unaccounted_io.py, since QEMU counts no NBD export's I/O for the drive) is held
  back, at full speed once the writer stops, READY, pivoted, every acknowledged write on the
  destination. Directions and bounds only: what it buys the guest is measured by the bench.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, running, wait_task
from tests.functional.lsm_helpers import Migration, VmFixture, guest_params, virsh, wait_writes
from tests.functional.storage_helpers import Storage, ok
from tests.storage.support import run_qemu_io
from vdsm.copy_governor import FLOOR
from vdsm.storage import qemuimg
from vdsm.virt import unaccounted_io
from vdsm_guest.block_writer import BlockWriter
from vdsm_guest.build import GuestImage

MiB = 1024**2
# In the active layer before the mirror starts, far from the writer's slots: 8 s at the cap,
# more held back (uncapped, this machine mirrors it from the page cache before a first look).
MIRROR_DATA = 256 * MiB
MIRROR_DATA_OFFSET = 128 * MiB
MIRROR_CAP_MIB = 32


SYNC_DATA = 96 * MiB  # what the adaptive syncImageData copies: 6 s at the cap, at least
SYNC_CAP_MIB = 16


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[VdsmdProcess]:
    args = ["--copy-rate-limit", "1", "--no-adaptive-copy-rate"]
    with running(VdsmdProcess(tmp_path / "vdsmd", extra_args=args)) as d:
        yield d


@pytest.fixture
def capped_vms(tmp_path: Path) -> Iterator[VmFixture]:
    """VMs on a vdsmd whose copies adapt to the guests (the default), under a cap."""
    args = ["--copy-rate-limit", str(SYNC_CAP_MIB)]
    with running(VdsmdProcess(tmp_path / "vdsmd", extra_args=args)) as daemon:
        fixture = VmFixture(daemon, tmp_path)
        try:
            yield fixture
        finally:
            fixture.cleanup()


def qemu_img_argvs(needle: str) -> list[list[str]]:
    """The argv of every running qemu-img whose arguments mention ``needle``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue  # gone meanwhile
        if argv and argv[0].endswith("qemu-img") and any(needle in arg for arg in argv):
            found.append(argv)
    return found


def test_sync_runs_qemu_img_with_the_rate_limit(capped: VdsmdProcess, tmp_path: Path) -> None:
    storage = Storage(capped, tmp_path)
    img, base, leaf = new_uuid(), new_uuid(), new_uuid()
    storage.create_volume(img, base, fmt="RAW")
    storage.create_volume(img, leaf, parent=base)
    base_path = tmp_path / "src" / storage.sd / "images" / img / base
    with open(base_path, "r+b") as f:
        f.write(os.urandom(4 * MiB))  # 4 MiB at 1 MiB/s: a few seconds to catch it running
    clone = ok(storage.rpc.cloneImageStructure(storage.sp, storage.sd, img, storage.sd2))
    assert wait_task(capped, clone["uuid"])["taskResult"] == "success"

    sync = ok(storage.rpc.syncImageData(storage.sp, storage.sd, img, storage.sd2, "INTERNAL"))
    seen: list[list[str]] = []
    deadline = time.monotonic() + 60
    while not seen and time.monotonic() < deadline:
        seen = qemu_img_argvs(base)
        time.sleep(0.05)
    assert seen, "syncImageData's qemu-img convert was never seen running"
    argv = seen[0]
    assert argv[1] == "convert" and argv[argv.index("-r") + 1] == str(MiB), argv
    # Both domains on one file system: the copy goes through the page cache (faster there
    # than O_DIRECT; into another device it is O_DIRECT, tests/storage/test_image_copy.py).
    assert "-t" not in argv and "-T" not in argv, argv
    assert wait_task(capped, sync["uuid"])["taskResult"] == "success"
    twin = tmp_path / "dst" / storage.sd2 / "images" / img / base
    assert qemuimg.compare(base_path, twin, fmt_a="raw", fmt_b="raw", strict=True)


def blockjob(vms: VmFixture, vm_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] | None = vms.stats(vm_id)["blockJobs"].get("vda")
    return job


@pytest.fixture
def writer_vms(tmp_path: Path) -> Iterator[tuple[VmFixture, Path]]:
    """VMs on a vdsmd whose copy governors also see the guest-like writer's counters (the
    TEST-ONLY hook of vdsm/virt/unaccounted_io.py), and the file the writer publishes them in."""
    counters = tmp_path / "guest-io.json"
    env = {unaccounted_io.ENV: str(counters)}
    with running(VdsmdProcess(tmp_path / "vdsmd", env=env)) as daemon:
        fixture = VmFixture(daemon, tmp_path)
        try:
            yield fixture, counters
        finally:
            fixture.cleanup()


@pytest.mark.libvirt
def test_the_mirror_yields_to_a_writing_guest_and_takes_full_speed_back(
    writer_vms: tuple[VmFixture, Path], tmp_path: Path
) -> None:
    """A real writer competing with the mirror for the disk (64 KiB writes as fast as they are
    acknowledged, through the VM's block layer): the mirror is held back below the operator's
    bandwidth while it writes, at that bandwidth (never above) once it stops, and the move
    completes with every write."""
    vms, counters = writer_vms
    image_dir = tmp_path / "src" / vms.storage.sd / "images" / vms.img
    run_qemu_io(image_dir / vms.leaf, "qcow2", f"write -P 0x5a {MIRROR_DATA_OFFSET} {MIRROR_DATA}")
    vm_id = vms.start(testShareRW=True)
    m = Migration(vms, vm_id)
    m.clone()
    m.sync("INTERNAL")
    src, dst = m.disk(m.st.sd, vms.leaf), m.disk(m.st.sd2, vms.leaf)
    writer = BlockWriter(vm_id, vms.img, slots=256)  # 16 MiB, far below the mirror's data
    with writer, writer.publishing(counters):
        while len(writer.writes) < 200:
            assert writer.error is None, writer.error
            time.sleep(0.01)
        ok(m.rpc.diskReplicateStart(vm_id, src, dst, True, "auto", MIRROR_CAP_MIB))
        cap = MIRROR_CAP_MIB * MiB
        seen: list[int] = []
        # The writer writes: the mirror is held back below the cap, and getVmStats says why.
        deadline = time.monotonic() + 30
        while not ((job := blockjob(vms, vm_id)) and job.get("heldBack")):
            assert job is not None and not job["ready"], f"never held back: {job}"
            assert time.monotonic() < deadline, f"never held back: {job}"
            time.sleep(0.05)
        assert "guests busy" in job["heldBack"], job
        assert FLOOR <= int(job["rateLimit"]) < cap, job
        seen.append(int(job["rateLimit"]))
    # The writer stopped: back at the operator's bandwidth, nothing held back.
    deadline = time.monotonic() + 30
    while (job := blockjob(vms, vm_id)) and job.get("heldBack"):
        seen.append(int(job["rateLimit"]))
        assert time.monotonic() < deadline, f"still held back: {job}"
        time.sleep(0.05)
    assert job is not None and job.get("rateLimit") == str(cap), job
    assert max(seen) <= cap, seen
    m.finish_when_ready(src, dst)
    leaf = tmp_path / "dst" / m.st.sd2 / "images" / vms.img / vms.leaf
    assert writer.verify(leaf, "qcow2").ok, "a write acknowledged during the mirror is missing"


def held_back_while_running(daemon: VdsmdProcess, task_id: str, want: bool) -> dict[str, Any]:
    """Poll the task until its heldBack is set (``want``) or empty; fail if it ends first.
    Often: a copy the guests do not hurt is held back only from its start to its first look
    (a few tenths of a second), then runs at the cap."""
    rpc = daemon.xmlrpc()
    deadline = time.monotonic() + 30
    while True:
        status: dict[str, Any] = ok(rpc.getTaskStatus(task_id))["taskStatus"]
        assert status["taskState"] == "running", f"ended before heldBack was {want}: {status}"
        if bool(status["heldBack"]) == want and (want or float(status["progress"]) > 0):
            return status
        assert time.monotonic() < deadline, f"heldBack never became {want}: {status}"
        time.sleep(0.01)


@pytest.mark.libvirt
def test_the_sync_yields_to_a_writing_guest_and_takes_full_speed_back(
    capped_vms: VmFixture, guest: GuestImage, tmp_path: Path
) -> None:
    st = capped_vms.storage
    # An image of its own (no VM uses it), copied while the guest writes to its disk: two
    # volumes, so that whichever way the first one's copy starts (its first look is 0.1 s of
    # a guest that writes a few dozen blocks a second), what the guest did during it holds
    # the second one back.
    img, base, leaf = new_uuid(), new_uuid(), new_uuid()
    st.create_volume(img, base, fmt="RAW")
    st.create_volume(img, leaf, fmt="COW", parent=base)
    image_dir = tmp_path / "src" / st.sd / "images" / img
    half = SYNC_DATA // 2
    run_qemu_io(image_dir / base, "raw", f"write -P 0x5a 0 {half}")
    run_qemu_io(image_dir / leaf, "qcow2", f"write -P 0x6b {half} {half}")
    vm_id = capped_vms.start(**guest_params(guest, slots=64, pause=0))  # as fast as it can
    console = Path(capped_vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 20)
    clone = ok(st.rpc.cloneImageStructure(st.sp, st.sd, img, st.sd2))
    assert wait_task(st.daemon, clone["uuid"])["taskResult"] == "success"

    started = time.monotonic()
    sync = ok(st.rpc.syncImageData(st.sp, st.sd, img, st.sd2, "ALL"))["uuid"]
    # The guest writes: the copy is held back, and says why.
    status = held_back_while_running(st.daemon, sync, want=True)
    assert "guests busy" in status["heldBack"], status
    # The guest stops (paused: no I/O at all): the copy is no longer held back.
    virsh("suspend", capped_vms.started[-1])
    held_back_while_running(st.daemon, sync, want=False)
    virsh("resume", vm_id)
    assert wait_task(st.daemon, sync)["taskResult"] == "success"
    # Never above the operator's cap: not even the guest's pause made it faster than that.
    assert time.monotonic() - started >= SYNC_DATA / (SYNC_CAP_MIB * MiB), "cap exceeded"
    twin = tmp_path / "dst" / st.sd2 / "images" / img / leaf
    assert qemuimg.compare(image_dir / leaf, twin, fmt_a="qcow2", fmt_b="qcow2", strict=True)
    wait_writes(console, 40)  # the guest still writes after its pause
