"""vdsmd's copy_rate_limit reaches the copy: syncImageData's qemu-img runs with ``-r`` and the
copy is still exact. Only the daemon's setting is under test here; that ``-r`` caps the rate
is tests/storage/test_qemuimg.py's, and what the cap buys a busy guest is the bench's."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, running, wait_task
from tests.functional.storage_helpers import Storage, ok
from vdsm.storage import qemuimg

MiB = 1024**2


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
