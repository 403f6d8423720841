"""The qemu-img adapter against the real qemu-img (and qemu-io to write data) on real files:
what changes or checks an image — convert (sparseness, per-layer copies into existing twins,
rate limit, progress, cancellation), rebase, compare and check.

create, info, measure, map and the adapter's own guards: test_qemuimg_info.py. The shared
helpers: qemuimg_support.py.
"""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.storage.qemuimg_support import (
    FORMATS,
    RAW_FIRST_BLOCK,
    SIZE,
    MiB,
    make_chain,
    own_extents,
    reads,
    st_allocated,
    write,
)
from vdsm.errors import CommandAborted, CommandError
from vdsm.storage import qemuimg
from vdsm.storage.runner import Cancellation

# Every test here runs qemu-img: checked (or skipped) by the qemu_io fixture.
pytestmark = pytest.mark.usefixtures("qemu_io")


# --- convert --------------------------------------------------------------------------------


@pytest.mark.parametrize("dst_fmt", FORMATS)
@pytest.mark.parametrize("src_fmt", FORMATS)
def test_convert_keeps_sparseness(tmp_path: Path, qemu_io: str, src_fmt: str, dst_fmt: str) -> None:
    src = tmp_path / f"src.{src_fmt}"
    dst = tmp_path / f"dst.{dst_fmt}"
    qemuimg.create(src, src_fmt, SIZE)
    write(qemu_io, src, src_fmt, "write -P 0xab 4M 1M")
    qemuimg.convert(src, dst, src_format=src_fmt, dst_format=dst_fmt)
    assert MiB <= qemuimg.allocated_bytes(qemuimg.map(dst, fmt=dst_fmt)) <= MiB + RAW_FIRST_BLOCK
    # The file itself: 1 MiB of data plus, for qcow2, a little metadata.
    assert MiB <= st_allocated(dst) < 2 * MiB
    assert qemuimg.compare(src, dst, fmt_a=src_fmt, fmt_b=dst_fmt)


@pytest.mark.parametrize("base_fmt", FORMATS)
def test_copy_each_layer_into_existing_twin(tmp_path: Path, qemu_io: str, base_fmt: str) -> None:
    src_chain = make_chain(qemu_io, tmp_path / "src", base_fmt)
    dst_chain = make_chain(qemu_io, tmp_path / "dst", base_fmt, data=False)
    links = [qemuimg.info(path, fmt="qcow2").get("backing-filename") for path in dst_chain[1:]]

    # The base has no backing file and its fresh twin reads as zeros: skip the zeros.
    qemuimg.convert(
        src_chain[0],
        dst_chain[0],
        src_format=base_fmt,
        dst_format=base_fmt,
        target_exists=True,
        target_is_zero=True,
    )
    # Each overlay: only its own layer, the twin keeping its backing link.
    for i, (src, dst) in enumerate(zip(src_chain[1:], dst_chain[1:], strict=True)):
        parent = dst_chain[i]
        qemuimg.convert(
            src,
            dst,
            src_format="qcow2",
            dst_format="qcow2",
            target_exists=True,
            backing=parent.name,
            backing_format="qcow2" if parent.suffix == ".qcow2" else base_fmt,
        )

    assert [qemuimg.info(path, fmt="qcow2").get("backing-filename") for path in dst_chain[1:]] == (
        links
    )
    for src, dst in zip(src_chain, dst_chain, strict=True):
        fmt = "qcow2" if src.suffix == ".qcow2" else base_fmt
        assert own_extents(dst, fmt) == own_extents(src, fmt), f"layer {dst.name} differs"
        assert qemuimg.compare(src, dst, fmt_a=fmt, fmt_b=fmt, strict=True)
    # Holes stayed holes: each layer holds about what it was given.
    assert st_allocated(dst_chain[0]) < 3 * MiB
    assert st_allocated(dst_chain[1]) < 2 * MiB
    assert st_allocated(dst_chain[2]) < 2 * MiB


def test_a_twin_opened_alone_is_copied_while_its_parent_is_written(
    tmp_path: Path, qemu_io: str
) -> None:
    """Why copies at once open each twin alone (dst_alone): a copy into a twin opens its
    backing chain and wants the parent's write lock, which a copy into the parent holds. Here
    qemu-io holds it, open for writing until its stdin closes."""
    src_chain = make_chain(qemu_io, tmp_path / "src", "qcow2")
    dst_chain = make_chain(qemu_io, tmp_path / "dst", "qcow2", data=False)
    src, dst, parent = src_chain[1], dst_chain[1], dst_chain[0]
    layer = {
        "src_format": "qcow2",
        "dst_format": "qcow2",
        "target_exists": True,
        "backing": parent.name,
        "backing_format": "qcow2",
    }
    holder = subprocess.Popen(
        [qemu_io, "-f", "qcow2", str(parent)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(b"info\n")  # answered once the parent is open, its lock taken
        holder.stdin.flush()
        assert b"format name: qcow2" in holder.stdout.readline()
        with pytest.raises(CommandError, match='Failed to get shared "write" lock'):
            qemuimg.convert(src, dst, **layer)
        qemuimg.convert(src, dst, dst_alone=True, **layer)
    finally:
        holder.communicate(b"quit\n", timeout=10)
    assert own_extents(dst, "qcow2") == own_extents(src, "qcow2")
    qemuimg.convert(
        src_chain[0],
        parent,
        src_format="qcow2",
        dst_format="qcow2",
        target_exists=True,
        target_is_zero=True,
    )
    assert qemuimg.compare(src, dst, fmt_a="qcow2", fmt_b="qcow2", strict=True)
    with pytest.raises(ValueError, match="dst_alone needs target_exists"):
        qemuimg.convert(src, dst, src_format="qcow2", dst_format="qcow2", dst_alone=True)


def test_copy_layer_without_backing_collapses_the_chain(tmp_path: Path, qemu_io: str) -> None:
    # Why per-layer copies pass backing (-B): without it qemu-img copies what the source
    # reads through its whole chain, so the base's data lands in the layer.
    src_chain = make_chain(qemu_io, tmp_path / "src", "raw")
    dst_chain = make_chain(qemu_io, tmp_path / "dst", "raw", data=False)
    qemuimg.convert(
        src_chain[1], dst_chain[1], src_format="qcow2", dst_format="qcow2", target_exists=True
    )
    own = qemuimg.allocated_bytes(qemuimg.map(dst_chain[1], fmt="qcow2"), depth=0)
    assert own == 2 * MiB + MiB // 2  # base 0-1M and 8.5M-9M copied along with mid's 1M-2M


def test_copy_into_preallocated_twin_keeps_allocation(tmp_path: Path, qemu_io: str) -> None:
    src = tmp_path / "src.raw"
    dst = tmp_path / "dst.raw"
    qemuimg.create(src, "raw", SIZE)
    write(qemu_io, src, "raw", "write -P 0xab 0 1M")
    qemuimg.create(dst, "raw", SIZE, preallocation="falloc")
    qemuimg.convert(
        src, dst, src_format="raw", dst_format="raw", target_exists=True, target_is_zero=True
    )
    assert st_allocated(dst) >= SIZE
    assert qemuimg.compare(src, dst, fmt_a="raw", fmt_b="raw")


def test_convert_option_misuse(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(ValueError):
        qemuimg.convert(a, b, src_format="raw", dst_format="raw", target_is_zero=True)
    with pytest.raises(ValueError):
        qemuimg.convert(a, b, src_format="qcow2", dst_format="qcow2", backing="base")
    for bad_rate in (0, -1):
        with pytest.raises(ValueError, match="rate_limit"):
            qemuimg.convert(a, b, src_format="raw", dst_format="raw", rate_limit=bad_rate)
    assert not b.exists()


def test_convert_rate_limit_caps_the_copy(tmp_path: Path, qemu_io: str) -> None:
    """-r: 3 MiB at 1 MiB/s. Only a lower bound on the time is asserted: a slow machine can
    make a copy longer, never shorter (qemu-img lets the first slice through at once)."""
    src, dst = tmp_path / "src.raw", tmp_path / "dst.qcow2"
    qemuimg.create(src, "raw", 3 * MiB)
    write(qemu_io, src, "raw", "write -P 0x3c 0 3M")
    start = time.monotonic()
    qemuimg.convert(src, dst, src_format="raw", dst_format="qcow2", rate_limit=MiB)
    assert time.monotonic() - start >= 1.5
    assert qemuimg.compare(src, dst, fmt_a="raw", fmt_b="qcow2")


@pytest.fixture
def big_image(tmp_path: Path, qemu_io: str) -> Path:
    """A 256 MiB raw image full of data, so that a copy takes a while."""
    path = tmp_path / "big.raw"
    qemuimg.create(path, "raw", 256 * MiB)
    write(qemu_io, path, "raw", "write -P 0x5a 0 256M")
    return path


def test_convert_progress(tmp_path: Path, big_image: Path) -> None:
    values: list[float] = []
    dst = tmp_path / "dst.qcow2"
    qemuimg.convert(big_image, dst, src_format="raw", dst_format="qcow2", on_progress=values.append)
    assert len(values) >= 3
    assert values == sorted(values)
    assert values[-1] == 100.0


def test_convert_cancelled_midway(tmp_path: Path, big_image: Path) -> None:
    cancellation = Cancellation()
    values: list[float] = []

    def on_progress(percent: float) -> None:
        values.append(percent)
        if percent > 0:
            cancellation.cancel()

    with pytest.raises(CommandAborted):
        qemuimg.convert(
            big_image,
            tmp_path / "dst.qcow2",
            src_format="raw",
            dst_format="qcow2",
            on_progress=on_progress,
            cancellation=cancellation,
        )
    assert values and values[-1] < 100.0


# --- rebase, compare ------------------------------------------------------------------------


def test_rebase_safe_keeps_content(tmp_path: Path, qemu_io: str) -> None:
    base, mid, top = make_chain(qemu_io, tmp_path, "raw")
    flat = tmp_path / "flat.raw"
    qemuimg.convert(top, flat, src_format="qcow2", dst_format="raw")
    qemuimg.rebase(top, base.name, "raw")  # drops mid: its data moves into top
    assert qemuimg.info(top, fmt="qcow2")["backing-filename"] == base.name
    assert qemuimg.compare(top, flat, fmt_a="qcow2", fmt_b="raw")
    qemuimg.rebase(top, None, None)  # standalone
    assert "backing-filename" not in qemuimg.info(top, fmt="qcow2")
    assert qemuimg.compare(top, flat, fmt_a="qcow2", fmt_b="raw")


def test_rebase_unsafe_renames_backing(tmp_path: Path, qemu_io: str) -> None:
    base, mid, top = make_chain(qemu_io, tmp_path, "raw")
    mid.rename(tmp_path / "renamed.qcow2")
    qemuimg.rebase(top, "renamed.qcow2", "qcow2", unsafe=True)
    chain = qemuimg.info(top, fmt="qcow2", backing_chain=True)
    assert chain[1]["filename"] == str(tmp_path / "renamed.qcow2")
    assert reads(qemu_io, top, "qcow2", 0xBB, MiB, MiB)


def test_compare(tmp_path: Path, qemu_io: str) -> None:
    a, b = tmp_path / "a.raw", tmp_path / "b.qcow2"
    qemuimg.create(a, "raw", SIZE)
    write(qemu_io, a, "raw", "write -P 0x11 0 1M")
    qemuimg.convert(a, b, src_format="raw", dst_format="qcow2")
    assert qemuimg.compare(a, b, fmt_a="raw", fmt_b="qcow2")
    write(qemu_io, b, "qcow2", "write -P 0x12 4096 512")
    assert not qemuimg.compare(a, b, fmt_a="raw", fmt_b="qcow2")
    with pytest.raises(CommandError) as e:
        qemuimg.compare(a, tmp_path / "missing", fmt_a="raw", fmt_b="raw")
    assert e.value.rc == 2


# --- check ----------------------------------------------------------------------------------


def test_check_healthy(tmp_path: Path, qemu_io: str) -> None:
    path = tmp_path / "disk.qcow2"
    qemuimg.create(path, "qcow2", SIZE)
    write(qemu_io, path, "qcow2", "write -P 0xab 0 1M")
    report = qemuimg.check(path, fmt="qcow2")
    assert report["check-errors"] == 0
    assert report.get("corruptions", 0) == 0
    assert report.get("leaks", 0) == 0


def test_check_bad_magic_raises(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2"
    qemuimg.create(path, "qcow2", SIZE)
    with path.open("r+b") as f:
        f.write(b"XXXX")
    with pytest.raises(CommandError) as e:
        qemuimg.check(path, fmt="qcow2")
    assert e.value.rc == 1
    assert "not in qcow2 format" in str(e.value)


def set_refcount(path: Path, cluster: int, refcount: int) -> None:
    """Overwrite one 16-bit refcount in the first refcount block of a qcow2 image."""
    with path.open("r+b") as f:
        header = f.read(104)
        (refcount_table,) = struct.unpack(">Q", header[48:56])
        (refcount_order,) = struct.unpack(">I", header[96:100])
        assert refcount_order == 4, "expected 16-bit refcounts"
        f.seek(refcount_table)
        (block,) = struct.unpack(">Q", f.read(8))
        f.seek(block + 2 * cluster)
        f.write(struct.pack(">H", refcount))


def test_check_reports_corruptions_and_leaks(tmp_path: Path, qemu_io: str) -> None:
    path = tmp_path / "disk.qcow2"
    qemuimg.create(path, "qcow2", SIZE, cluster_size=65536)
    write(qemu_io, path, "qcow2", "write -P 0xab 0 1M")
    # A leak: one cluster past the end, counted as used but referenced by nothing.
    end_cluster = path.stat().st_size // 65536
    with path.open("ab") as f:
        f.write(bytes(65536))
    set_refcount(path, end_cluster, 1)
    report = qemuimg.check(path, fmt="qcow2")
    assert report["leaks"] == 1
    assert report.get("corruptions", 0) == 0
    # A corruption: a data cluster in use whose refcount says free.
    data_cluster = qemuimg.map(path, fmt="qcow2")[0]["offset"] // 65536
    set_refcount(path, data_cluster, 0)
    assert qemuimg.check(path, fmt="qcow2")["corruptions"] > 0


def test_check_raw_is_not_supported(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    qemuimg.create(path, "raw", SIZE)
    with pytest.raises(CommandError) as e:
        qemuimg.check(path, fmt="raw")
    assert e.value.rc == 63
