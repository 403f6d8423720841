"""Shared by the qemu-img adapter tests (test_qemuimg.py, test_qemuimg_info.py): the image
sizes and formats they use, qemu-io writes and pattern reads through a chain, and a three-layer
chain with known data in every layer. Their ``qemu_io`` fixture (qemu-io's path) is in
conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vdsm.errors import CommandError
from vdsm.storage import qemuimg, runner

MiB = 1 << 20
SIZE = 64 * MiB

FORMATS = ["raw", "qcow2"]

# qemu-img allocates the first 4 KiB of every raw image it creates (so that later O_DIRECT
# opens can probe the alignment): a sparse raw image has that much data at offset 0.
RAW_FIRST_BLOCK = 4096


def write(qemu_io: str, path: Path, fmt: str, *cmds: str) -> None:
    """Run qemu-io commands (e.g. ``write -P 0xab 0 1M``) on an image, through its chain."""
    argv = [qemu_io, "-f", fmt]
    for cmd in cmds:
        argv += ["-c", cmd]
    runner.run([*argv, str(path)], timeout=120)


def reads(qemu_io: str, path: Path, fmt: str, pattern: int, offset: int, length: int) -> bool:
    """True when ``length`` bytes at ``offset`` read as ``pattern`` through the chain."""
    argv = [qemu_io, "-f", fmt, "-c", f"read -P {pattern:#x} {offset} {length}", str(path)]
    try:
        result = runner.run(argv, timeout=60)
    except CommandError:
        return False
    return b"Pattern verification failed" not in result.stdout


def own_extents(path: Path, fmt: str) -> list[tuple[Any, ...]]:
    """The extents ``path`` allocates itself (depth 0), without host offsets."""
    extents = qemuimg.map(path, fmt=fmt)
    return [(e["start"], e["length"], e["data"], e["zero"]) for e in extents if e["depth"] == 0]


def make_chain(qemu_io: str, directory: Path, base_fmt: str, *, data: bool = True) -> list[Path]:
    """base <- mid.qcow2 <- top.qcow2, backing names relative; with data in every layer.

    base: 0xaa at 0-1M and 0xa1 at 8M-9M; mid: 0xbb at 1M-2M and zeros over 8M-8.5M
    (a zero cluster hiding base data); top: 0xcc at 2M-3M.
    """
    directory.mkdir(exist_ok=True)
    base = directory / f"base.{base_fmt}"
    mid = directory / "mid.qcow2"
    top = directory / "top.qcow2"
    qemuimg.create(base, base_fmt, SIZE)
    qemuimg.create(mid, "qcow2", backing=base.name, backing_format=base_fmt)
    qemuimg.create(top, "qcow2", backing=mid.name, backing_format="qcow2")
    if data:
        write(qemu_io, base, base_fmt, "write -P 0xaa 0 1M", "write -P 0xa1 8M 1M")
        write(qemu_io, mid, "qcow2", "write -P 0xbb 1M 1M", "write -z 8M 512k")
        write(qemu_io, top, "qcow2", "write -P 0xcc 2M 1M")
    return [base, mid, top]


def st_allocated(path: Path) -> int:
    return path.stat().st_blocks * 512
