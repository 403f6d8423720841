"""What a person would use instead of vdsm: qemu-img convert of the chain, cp, and the raw
storage speed (qemu-img bench and dd, with direct I/O).

Every copy here is timed until its data is on disk (the output file fsynced), as a migration
must be: a copy still in the page cache is not a copy yet.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.disks import MiB

# Flag sets tried for the baseline convert; the fastest one is "the best flags".
CONVERT_FLAGS: dict[str, list[str]] = {
    "default": [],
    "-W": ["-W"],
    "-m 16": ["-m", "16"],
    "-W -m 16": ["-W", "-m", "16"],
    "-T none": ["-T", "none"],
    "-t none -T none": ["-t", "none", "-T", "none"],
}


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def convert_chain(leaf: Path, out: Path, flags: list[str]) -> float:
    """Seconds to flatten the chain under ``leaf`` into a new qcow2 ``out``, on disk.

    -U: the chain may be in use by the bench's VM (the copy is for timing, not for use)."""
    start = time.monotonic()
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", *flags, str(leaf), str(out)],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    fsync(out)
    return time.monotonic() - start


def cp_files(files: list[Path], out_dir: Path) -> float:
    """Seconds for ``cp --sparse=always`` of the chain's files (what one would do offline)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    subprocess.run(
        ["cp", "--sparse=always", *map(str, files), str(out_dir)],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    for f in files:
        fsync(out_dir / f.name)
    return time.monotonic() - start


def _data_extents(fd: int) -> list[tuple[int, int]]:
    """(offset, length) of every allocated extent of the open file (SEEK_DATA/SEEK_HOLE)."""
    size = os.fstat(fd).st_size
    extents: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after offset
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, end - start))
        offset = end
    return extents


def _read_extents(path: Path, counted: list[int]) -> None:
    chunk = 4 * MiB
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    whole = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        total = 0
        for start, length in _data_extents(fd):
            # O_DIRECT offsets are block-aligned; an extent's start and end are.
            offset, end = start, start + length
            while offset < end:
                n = os.preadv(fd, [whole[: min(chunk, end - offset)]], offset)
                if n <= 0:
                    break
                total += n
                offset += n
        counted.append(total)
    finally:
        os.close(fd)
        whole.release()
        buf.close()


def read_data(files: list[Path], *, at_once: bool) -> tuple[int, float]:
    """(bytes, seconds) to read the allocated data of ``files`` with O_DIRECT, 4 MiB reads:
    what the storage delivers of exactly the data a copy of them reads. ``at_once``: one
    reader per file, all together (as the copies at once read a chain); else one file after
    another."""
    counted: list[int] = []
    start = time.monotonic()
    if at_once:
        readers = [threading.Thread(target=_read_extents, args=(f, counted)) for f in files]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
    else:
        for f in files:
            _read_extents(f, counted)
    seconds = time.monotonic() - start
    if not files or len(counted) != len(files) or not sum(counted):
        raise RuntimeError(
            f"reading the data of {files} failed (no files, a reader failed, or no data)"
        )
    return sum(counted), seconds


@dataclass(frozen=True)
class BenchRun:
    tool: str
    mode: str  # "read" or "write"
    depth: int
    seconds: float
    mib_s: float


def qemu_img_bench(path: Path, size: int, *, write: bool, depth: int) -> BenchRun:
    """qemu-img bench with O_DIRECT and native AIO, 4 MiB requests, over ``size`` bytes."""
    count = size // (4 * MiB)
    argv = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-i", "native", "-s", "4M"]
    argv += ["-c", str(count), "-d", str(depth)]
    if write:
        argv += ["-w", "--pattern=165"]  # not zeros
    start = time.monotonic()
    subprocess.run([*argv, str(path)], check=True, capture_output=True, timeout=1800)
    seconds = time.monotonic() - start
    return BenchRun(
        "qemu-img bench",
        "write" if write else "read",
        depth,
        seconds,
        count * 4 * MiB / seconds / MiB,
    )


def read_and_write_at_once(src: Path, dst: Path, size: int, *, depth: int) -> BenchRun:
    """qemu-img bench reading ``src`` and another writing ``dst``, started together: the rate
    at which this storage reads and writes ``size`` bytes each at the same time, i.e. what a
    copy whose reads and writes overlapped perfectly could reach (on one disk they compete)."""
    count = size // (4 * MiB)
    argv = ["qemu-img", "bench", "-f", "raw", "-t", "none", "-i", "native", "-s", "4M"]
    argv += ["-c", str(count), "-d", str(depth)]
    start = time.monotonic()
    reader = subprocess.Popen([*argv, str(src)], stdout=subprocess.DEVNULL)
    writer = subprocess.Popen([*argv, "-w", "--pattern=165", str(dst)], stdout=subprocess.DEVNULL)
    codes = (reader.wait(timeout=1800), writer.wait(timeout=1800))
    seconds = time.monotonic() - start
    if codes != (0, 0):
        raise RuntimeError(f"qemu-img bench read/write at once exited {codes}")
    return BenchRun("qemu-img bench", "read+write", depth, seconds, size / seconds / MiB)


def dd(src: str, dst: str, size: int, *, iflag: str, oflag: str, mode: str) -> BenchRun:
    argv = ["dd", f"if={src}", f"of={dst}", "bs=4M", f"count={size // (4 * MiB)}", "status=none"]
    argv += [f"iflag={iflag}"] if iflag else []
    argv += [f"oflag={oflag}", "conv=notrunc,fsync"] if oflag else []
    start = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=1800)
    seconds = time.monotonic() - start
    return BenchRun("dd", mode, 1, seconds, size / seconds / MiB)
