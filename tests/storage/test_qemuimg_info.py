"""The qemu-img adapter against the real qemu-img (and qemu-io to write data) on real files:
what describes an image — create, info, measure and map — and the adapter's own guards (the
binary, protocol-like file names, a missing key).

convert, rebase, compare and check: test_qemuimg.py. The shared helpers: qemuimg_support.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.qemuimg_support import (
    FORMATS,
    RAW_FIRST_BLOCK,
    SIZE,
    MiB,
    make_chain,
    reads,
    st_allocated,
    write,
)
from vdsm.errors import CommandError, QemuImgError
from vdsm.storage import qemuimg

# Every test here runs qemu-img: checked (or skipped) by the qemu_io fixture.
pytestmark = pytest.mark.usefixtures("qemu_io")


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


def test_missing_key_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real qemu-img always prints every key: a qemu-img that does not is a stand-in, named
    # by the adapter's own override ($VDSM_QEMU_IMG), that prints JSON lacking one.
    fake = tmp_path / "qemu-img"
    fake.write_text('#!/bin/sh\necho \'{"format": "raw"}\'\n')
    fake.chmod(0o755)
    monkeypatch.setenv(qemuimg.QEMU_IMG_ENV, str(fake))
    with pytest.raises(QemuImgError, match="'virtual-size'"):
        qemuimg.info(tmp_path / "any.raw", fmt="raw")
