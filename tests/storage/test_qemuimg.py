"""The qemu-img adapter against the real qemu-img (and qemu-io to write data) on real files."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vdsm.errors import CommandAborted, CommandError
from vdsm.storage import qemuimg, runner
from vdsm.storage.runner import Cancellation

MiB = 1 << 20
SIZE = 64 * MiB

FORMATS = ["raw", "qcow2"]

# qemu-img allocates the first 4 KiB of every raw image it creates (so that later O_DIRECT
# opens can probe the alignment): a sparse raw image has that much data at offset 0.
RAW_FIRST_BLOCK = 4096


@pytest.fixture(autouse=True)
def qemu_io(require_command: Callable[[str], str]) -> str:
    """qemu-io's path; with qemu-img checked too (skip, or fail under CI, when missing)."""
    require_command("qemu-img")
    return require_command("qemu-io")


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


# --- create, info ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_create(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"disk.{fmt}"
    qemuimg.create(path, fmt, 1 << 30)
    image = qemuimg.info(path, fmt=fmt)
    assert image["format"] == fmt
    assert image["virtual-size"] == 1 << 30
    assert image["filename"] == str(path)
    assert "backing-filename" not in image
    if fmt == "qcow2":
        assert image["format-specific"]["data"]["compat"] == "1.1"


@pytest.mark.parametrize("fmt", FORMATS)
def test_create_sparse_and_preallocated(tmp_path: Path, fmt: str) -> None:
    sparse = tmp_path / f"sparse.{fmt}"
    full = tmp_path / f"full.{fmt}"
    qemuimg.create(sparse, fmt, SIZE)
    qemuimg.create(full, fmt, SIZE, preallocation="falloc")
    assert qemuimg.info(sparse, fmt=fmt)["actual-size"] < MiB
    assert qemuimg.info(full, fmt=fmt)["actual-size"] >= SIZE
    assert st_allocated(full) >= SIZE


def test_create_with_backing_requires_its_format(tmp_path: Path) -> None:
    qemuimg.create(tmp_path / "base.raw", "raw", SIZE)
    with pytest.raises(ValueError, match="backing_format"):
        qemuimg.create(tmp_path / "top.qcow2", "qcow2", backing="base.raw")
    assert not (tmp_path / "top.qcow2").exists()


@pytest.mark.parametrize("base_fmt", FORMATS)
def test_info_backing_chain(tmp_path: Path, qemu_io: str, base_fmt: str) -> None:
    base, mid, top = make_chain(qemu_io, tmp_path, base_fmt, data=False)
    chain = qemuimg.info(top, fmt="qcow2", backing_chain=True)
    assert [image["filename"] for image in chain] == [str(top), str(mid), str(base)]
    assert [image["format"] for image in chain] == ["qcow2", "qcow2", base_fmt]
    assert all(image["virtual-size"] == SIZE for image in chain)
    assert chain[0]["backing-filename"] == "mid.qcow2"
    assert chain[0]["full-backing-filename"] == str(mid)
    assert chain[0]["backing-filename-format"] == "qcow2"
    assert chain[1]["backing-filename"] == base.name
    assert chain[1]["backing-filename-format"] == base_fmt
    assert "backing-filename" not in chain[2]


@pytest.mark.parametrize("base_fmt", FORMATS)
def test_data_reads_back_through_chain(tmp_path: Path, qemu_io: str, base_fmt: str) -> None:
    _, _, top = make_chain(qemu_io, tmp_path, base_fmt)
    assert reads(qemu_io, top, "qcow2", 0xAA, 0, MiB)
    assert reads(qemu_io, top, "qcow2", 0xBB, MiB, MiB)
    assert reads(qemu_io, top, "qcow2", 0xCC, 2 * MiB, MiB)
    assert reads(qemu_io, top, "qcow2", 0x00, 8 * MiB, MiB // 2)
    assert reads(qemu_io, top, "qcow2", 0xA1, 8 * MiB + MiB // 2, MiB // 2)
    assert not reads(qemu_io, top, "qcow2", 0xAA, MiB, MiB)


def test_info_of_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CommandError) as e:
        qemuimg.info(tmp_path / "missing.qcow2", fmt="qcow2")
    assert "No such file or directory" in str(e.value)


def test_binary_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(qemuimg.QEMU_IMG_ENV, str(tmp_path / "no-qemu-img"))
    with pytest.raises(CommandError, match="cannot start"):
        qemuimg.info(tmp_path / "x.raw", fmt="raw")


def test_version() -> None:
    major, minor, micro = qemuimg.version()
    assert major >= 5


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
        qemuimg.convert(
            a, b, src_format="raw", dst_format="raw", target_exists=True, preallocation="full"
        )
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


# --- measure, map ---------------------------------------------------------------------------


def test_measure(tmp_path: Path, qemu_io: str) -> None:
    empty = qemuimg.measure(size=1 << 30, out_format="qcow2")
    assert empty["required"] < MiB
    assert empty["fully-allocated"] > 1 << 30
    src = tmp_path / "src.raw"
    qemuimg.create(src, "raw", SIZE)
    write(qemu_io, src, "raw", "write -P 0xab 0 1M")
    copy = qemuimg.measure(src=src, src_format="raw", out_format="qcow2")
    assert MiB < copy["required"] < 2 * MiB
    with pytest.raises(ValueError):
        qemuimg.measure(out_format="qcow2")


@pytest.mark.parametrize("fmt", FORMATS)
def test_map(tmp_path: Path, qemu_io: str, fmt: str) -> None:
    path = tmp_path / f"disk.{fmt}"
    qemuimg.create(path, fmt, SIZE)
    write(qemu_io, path, fmt, "write -P 0xab 2M 1M")
    extents = qemuimg.map(path, fmt=fmt)
    assert extents[0]["start"] == 0
    assert sum(e["length"] for e in extents) == SIZE
    data = [(e["start"], e["length"]) for e in extents if e["data"]]
    if fmt == "raw":
        assert data.pop(0) == (0, RAW_FIRST_BLOCK)
    assert data == [(2 * MiB, MiB)]
    assert all(e["zero"] for e in extents if not e["data"])
    assert qemuimg.allocated_bytes(extents) == MiB + (RAW_FIRST_BLOCK if fmt == "raw" else 0)


def test_map_of_chain_by_depth(tmp_path: Path, qemu_io: str) -> None:
    _, _, top = make_chain(qemu_io, tmp_path, "raw")
    extents = qemuimg.map(top, fmt="qcow2")
    assert qemuimg.allocated_bytes(extents, depth=0) == MiB  # top's own 2M-3M
    assert qemuimg.allocated_bytes(extents, depth=1) == MiB  # mid's 1M-2M
    assert qemuimg.allocated_bytes(extents, depth=2) == MiB + MiB // 2  # base minus hidden


def test_filename_that_looks_like_a_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative name such as "json:{...}" or "-f" must stay a plain file name.
    monkeypatch.chdir(tmp_path)
    for name in ("json:x.raw", "-f.raw"):
        qemuimg.create(name, "raw", MiB)
        assert (tmp_path / name).exists()
        assert qemuimg.info(name, fmt="raw")["virtual-size"] == MiB


def test_missing_key_names_the_key() -> None:
    # qemu-img's output cannot be made to lack a key without faking qemu-img, so the check
    # itself is exercised on a real result.
    result = runner.run(["true"])
    with pytest.raises(qemuimg.QemuImgError, match="'virtual-size'"):
        qemuimg._checked(["qemu-img", "info"], result, {"format": "raw"}, ["virtual-size"])
