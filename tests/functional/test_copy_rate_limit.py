"""The copy's rate in a real vdsmd.

- copy_rate_limit reaches the copy: syncImageData's qemu-img runs with ``-r`` and the copy is
  still exact (that ``-r`` caps the rate is tests/storage/test_qemuimg.py's, and what the cap
  buys a busy guest is the bench's);
- the adaptive rate (virt/copy_governor.py) of the mirror under the tiny guest's writes: held
  back while the guest writes, at full speed again (the operator's bandwidth, never exceeded)
  once it stops, the mirror still READY and
  every acknowledged write on the destination after the pivot. Directions and bounds only:
  what it buys the guest is measured by the bench.
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
from vdsm.storage import qemuimg
from vdsm.virt.copy_governor import FLOOR
from vdsm_guest.build import GuestImage

MiB = 1024**2
LEAF_DATA = 64 * MiB  # in the active layer before the mirror starts: seconds at the cap
CAP_MIB = 16  # the operator's bandwidth: local disks copy 64 MiB in less than a look
LEAF_DATA_OFFSET = 512 * MiB  # far from the guest's slots


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[VdsmdProcess]:
    with running(VdsmdProcess(tmp_path / "vdsmd", extra_args=["--copy-rate-limit", "1"])) as d:
        yield d


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
    assert wait_task(capped, sync["uuid"])["taskResult"] == "success"
    twin = tmp_path / "dst" / storage.sd2 / "images" / img / base
    assert qemuimg.compare(base_path, twin, fmt_a="raw", fmt_b="raw", strict=True)


def blockjob(vms: VmFixture, vm_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] | None = vms.stats(vm_id)["blockJobs"].get("vda")
    return job


@pytest.mark.libvirt
def test_the_mirror_yields_to_a_writing_guest_and_takes_full_speed_back(
    vms: VmFixture, guest: GuestImage, tmp_path: Path
) -> None:
    image_dir = tmp_path / "src" / vms.storage.sd / "images" / vms.img
    run_qemu_io(image_dir / vms.leaf, "qcow2", f"write -P 0x5a {LEAF_DATA_OFFSET} {LEAF_DATA}")
    vm_id = vms.start(**guest_params(guest, slots=64, pause=0))  # as fast as it can
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 20)
    m = Migration(vms, vm_id)
    m.clone()
    m.sync("INTERNAL")
    src, dst = m.disk(m.st.sd, vms.leaf), m.disk(m.st.sd2, vms.leaf)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst, True, "auto", CAP_MIB))
    seen: list[int] = []

    # The guest writes: the mirror is held back below the cap, at the floor at first.
    deadline = time.monotonic() + 30
    while not ((job := blockjob(vms, vm_id)) and job.get("heldBack")):
        assert job is not None and not job["ready"], f"never held back: {job}"
        assert time.monotonic() < deadline, f"never held back: {job}"
        time.sleep(0.1)
    assert "guests busy" in job["heldBack"], job
    assert FLOOR <= int(job["rateLimit"]) < CAP_MIB * MiB, job
    seen.append(int(job["rateLimit"]))

    # The guest stops (paused: no I/O at all): full speed again, nothing held back.
    virsh("suspend", vm_id)
    deadline = time.monotonic() + 30
    while (job := blockjob(vms, vm_id)) and job.get("heldBack"):
        seen.append(int(job["rateLimit"]))
        assert time.monotonic() < deadline, f"still held back: {job}"
        time.sleep(0.1)
    assert job is not None and job.get("rateLimit") == str(CAP_MIB * MiB), job
    assert max(seen) <= CAP_MIB * MiB, seen  # the operator's cap, never exceeded
    virsh("resume", vm_id)

    m.finish_when_ready(src, dst)
    m.assert_runs_on(m.st.sd2, console)
