"""Real small file systems as the destination domain, full before the copy ends: tmpfs, and
ext4 and xfs on loop devices with 512- and 4096-byte sectors (the 4 KiB ones as domains of
block size 4096). The destination passes the move's room check, then fills up under it (as
another user's data would) to a few MiB free, less than the base's data: the sync meets a real
ENOSPC, and moveDisk rolls back (exit 1) with the cause in its error, the VM running on
its source chain, whole and LEGAL, and nothing of the image left on the destination.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.conftest import require_command
from tests.functional.daemon_helpers import VdsmdProcess, running
from tests.functional.lsm_helpers import VmFixture
from tests.functional.mover import PREFILL, Mover, assert_on_source, prefill
from vdsm_cli.move.fault import TEST_PAUSE_AT

pytestmark = pytest.mark.libvirt

MiB = 1024**2
DEVICE_BYTES = 320 * MiB  # xfs wants at least 300 MiB
FREE = PREFILL // 3  # what is left free on the destination: the sync cannot fit


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def fill(mount: Path) -> None:
    """Fill the file system at ``mount`` until FREE bytes are free, as another user would."""
    free = int(sh("df", "--output=avail", "-B1", str(mount)).split()[-1])
    with open(mount / "filler", "wb") as f:  # written, not fallocated: tmpfs counts pages
        for _ in range(max(0, free - FREE) // MiB):
            f.write(b"\1" * MiB)


@contextmanager
def small_filesystem(root: Path, kind: str, sector: int, mount: Path) -> Iterator[None]:
    """``kind`` (tmpfs, ext4, xfs) mounted at ``mount``, ext4 and xfs on a loop device of
    ``sector``-byte sectors."""
    with ExitStack() as stack:
        mount.mkdir(parents=True)
        if kind == "tmpfs":
            sh("mount", "-t", "tmpfs", "-o", f"size={DEVICE_BYTES}", "tmpfs", str(mount))
        else:
            for command in ("losetup", f"mkfs.{kind}", "mount", "umount"):
                require_command(command)
            image = root / f"{kind}.img"
            with open(image, "wb") as f:
                f.truncate(DEVICE_BYTES)
            device = sh("losetup", "--find", "--show", "--sector-size", str(sector), str(image))
            stack.callback(sh, "losetup", "-d", device.strip())
            # No blocks reserved for root (vdsmd runs as root, and would write into them).
            mkfs = (
                ["mkfs.ext4", "-q", "-F", "-m", "0"] if kind == "ext4" else ["mkfs.xfs", "-q", "-f"]
            )
            sh(*mkfs, device.strip())
            sh("mount", device.strip(), str(mount))
        stack.callback(sh, "umount", "-l", str(mount))
        yield


@pytest.mark.parametrize(
    ("kind", "sector"), [("tmpfs", 512), ("ext4", 512), ("ext4", 4096), ("xfs", 512), ("xfs", 4096)]
)
def test_a_full_small_destination_rolls_back(tmp_path: Path, kind: str, sector: int) -> None:
    with small_filesystem(tmp_path, kind, sector, tmp_path / "dst"):
        daemon = VdsmdProcess(tmp_path / "vdsmd")
        with running(daemon):
            vms = VmFixture(daemon, tmp_path, dst_block_size=sector)
            try:
                prefill(vms, tmp_path)
                m = Mover(vms, vms.start(), tmp_path)
                # Past the preflight's room check (which refuses a destination too small at
                # the start), the destination fills up under the move, before the sync.
                client = m.start(**{TEST_PAUSE_AT: "sync"})
                client.wait_paused()
                fill(tmp_path / "dst")
                client.signal(signal.SIGCONT)
                code, out = client.finish()
                assert code == 1, out
                assert "rolled back" in out and "No space left" in out, out
                assert_on_source(m)
            finally:
                vms.cleanup()
