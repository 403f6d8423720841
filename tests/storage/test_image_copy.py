"""syncImageData on real file domains with real qemu-img and qemu-io: layer-by-layer copies
into the empty twins that keep thin thin and preallocated preallocated, zero-filled data
arriving as zeros, leaves that may differ, and a copy stopped half-way or failing.

cloneImageStructure, the checks both verbs make (every error code) and their locks:
test_image_copy_clone.py. ``RecordingTask`` and the chain: image_copy_support.py; the
``src`` and ``dst`` fixtures: conftest.py.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.storage.image_copy_support import (
    CAPACITY,
    COPY_RATES,
    MiB,
    RecordingTask,
    clone,
    make_chain,
    own_bytes,
    own_extents,
    qemu_fmt,
    st_allocated,
    stable_map,
    twin,
)
from tests.storage.support import new_uuid, run_qemu_io
from vdsm.copy_governor import GuestIo
from vdsm.errors import CopyImageError, ImageIsNotLegalChain, TaskAborted
from vdsm.storage import image_copy, mirror_copy, qemuimg
from vdsm.storage import volume as volumes
from vdsm.storage.constants import Legality
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository

# --- syncImageData ----------------------------------------------------------------------------


@pytest.fixture(params=sorted(COPY_RATES))
def rate(request: pytest.FixtureRequest) -> image_copy.CopyRate:
    """Each test runs with both ways of copying a volume: they must leave the same twins."""
    return COPY_RATES[request.param]


@pytest.mark.parametrize("base_format", ["RAW", "COW"])
@pytest.mark.parametrize("allocation", ["SPARSE", "PREALLOCATED"])
def test_sync_internal_then_leaf(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    allocation: str,
    base_format: str,
    rate: image_copy.CopyRate,
) -> None:
    img = new_uuid()
    chain = make_chain(src, img, allocation, base_format)
    clone(src, dst, img)
    twins = [twin(dst, v) for v in chain]

    task = RecordingTask()
    image_copy.sync_data(src, dst, img, "INTERNAL", task, rate=rate)
    # Strict compares also the allocation status: a preallocated twin's zero clusters come
    # out unallocated where the source's are allocated (the data is the same).
    strict = allocation == "SPARSE"
    for vol, copy in zip(chain[:2], twins[:2], strict=True):
        if stable_map(vol, allocation):
            assert own_extents(copy) == own_extents(vol), f"layer {vol.vol_uuid}"
        assert qemuimg.compare(vol.path, copy.path, fmt_a=qemu_fmt(vol), strict=strict)
    assert own_bytes(twins[2]) == 0  # the leaf is the mirror's job in INTERNAL
    # Progress is weighted by bytes: it climbs to the sum of what the two layers hold.
    percent, done, total = task.progress[-1]
    assert percent == 100.0 and done == total
    if stable_map(chain[0], allocation):
        assert total == own_bytes(chain[0]) + own_bytes(chain[1])
    assert [p[0] for p in task.progress] == sorted(p[0] for p in task.progress)
    assert task.rollbacks == [
        ("image_copy.mark_illegal", {"sd_uuid": dst.sd_uuid, "img_uuid": img, "vol_uuid": u})
        for u in [v.vol_uuid for v in chain[:2]]
    ]

    image_copy.sync_data(src, dst, img, "LEAF", RecordingTask(), rate=rate)
    assert qemuimg.compare(chain[2].path, twins[2].path, fmt_a="qcow2", fmt_b="qcow2")
    assert qemuimg.compare(chain[2].path, twins[2].path, fmt_a="qcow2", strict=strict)
    assert own_extents(twins[2]) == own_extents(chain[2])
    run_qemu_io(twins[2].path, "qcow2", "read -P 0x11 0 1M")
    run_qemu_io(twins[2].path, "qcow2", "read -P 0x33 2M 1M")
    run_qemu_io(twins[2].path, "qcow2", "read -P 0 8M 512k")
    run_qemu_io(twins[2].path, "qcow2", "read -P 0xa1 8704k 512k")

    for vol, copy in zip(chain, twins, strict=True):
        md = copy.metadata()
        assert md.legality is Legality.LEGAL
        assert md.parent == vol.metadata().parent
        if allocation == "PREALLOCATED":
            assert st_allocated(copy) >= CAPACITY, f"layer {vol.vol_uuid} lost its allocation"
        else:
            # Thin stays thin: each layer holds what its source holds, give or take 5%.
            assert own_bytes(copy) <= 1.05 * own_bytes(vol)
            assert st_allocated(copy) <= 1.05 * st_allocated(vol), f"layer {vol.vol_uuid}"
    info = qemuimg.info(twins[2].path, fmt="qcow2", backing_chain=True)
    assert [i.get("backing-filename") for i in info] == [
        chain[1].vol_uuid,
        chain[0].vol_uuid,
        None,
    ]


def sync_all_and_check(
    src: FileStorageDomain, dst: FileStorageDomain, rate: image_copy.CopyRate
) -> list[volumes.Volume]:
    """Sync ALL of a fresh chain from ``src`` to ``dst``; every twin reads as its source,
    allocates what it does, and is LEGAL. Returns the source chain."""
    img = new_uuid()
    chain = make_chain(src, img)
    clone(src, dst, img)
    image_copy.sync_data(src, dst, img, "ALL", RecordingTask(), rate=rate)
    for vol in chain:
        copy = twin(dst, vol)
        assert own_extents(copy) == own_extents(vol)
        assert qemuimg.compare(vol.path, copy.path, fmt_a=qemu_fmt(vol), strict=True)
        assert copy.metadata().legality is Legality.LEGAL
    return chain


def test_sync_all(
    src: FileStorageDomain, dst: FileStorageDomain, rate: image_copy.CopyRate
) -> None:
    sync_all_and_check(src, dst, rate)


@pytest.fixture
def other_device(tmp_path: Path, repository: StorageRepository) -> Iterator[FileStorageDomain]:
    """A destination domain on a file system of its own: ext4 on a loop device."""
    image, mount = tmp_path / "other-device.img", tmp_path / "mnt-other"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(128 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield repository.create_domain(mount, new_uuid(), "other")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def sync_recording_cache_modes(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    rate: image_copy.CopyRate,
    monkeypatch: pytest.MonkeyPatch,
) -> list[bool]:
    """Sync a fresh chain from ``src`` to ``dst``, check the twins, and return for each
    volume's copy whether it opened its ends with O_DIRECT (spies: they call through)."""
    opened: list[bool] = []
    convert, job_for = qemuimg.convert, mirror_copy.job_for

    def spy_convert(*args: Any, **kwargs: Any) -> None:
        assert kwargs["src_direct"] == kwargs["dst_direct"]
        convert(*args, **kwargs)
        opened.append(kwargs["dst_direct"])  # a copy that made the twin (not one stopped)

    def spy_job_for(copy: Any) -> mirror_copy.MirrorJob:
        job = job_for(copy)
        direct = job.target["cache"]["direct"]
        assert job.source["file"].get("cache", {"direct": False})["direct"] == direct
        opened.append(direct)
        return job

    monkeypatch.setattr(qemuimg, "convert", spy_convert)
    monkeypatch.setattr(mirror_copy, "job_for", spy_job_for)
    chain = sync_all_and_check(src, dst, rate)
    assert len(opened) == len(chain), opened
    return opened


def test_sync_copies_with_o_direct_only_into_another_device(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    other_device: FileStorageDomain,
    rate: image_copy.CopyRate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between two domains of one file system through the page cache (faster there); into
    another device with O_DIRECT at both ends (docs/benchmarks.md, 12 and the tuning)."""
    assert not any(sync_recording_cache_modes(src, dst, rate, monkeypatch))
    monkeypatch.undo()
    assert all(sync_recording_cache_modes(src, other_device, rate, monkeypatch))


def test_sync_goes_through_the_page_cache_where_o_direct_is_refused(
    src: FileStorageDomain,
    other_device: FileStorageDomain,
    rate: image_copy.CopyRate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # FAKE: a file system that refuses O_DIRECT (EINVAL: tmpfs before Linux 6.6, some FUSE
    # file systems); none on this machine refuses it on demand. The copy into another device
    # must then go through the page cache and still leave identical twins.
    monkeypatch.setattr(FileStorageDomain, "supports_direct_io", lambda self: False)
    assert not any(sync_recording_cache_modes(src, other_device, rate, monkeypatch))


# Idle guests (a fake of libvirt's counters, as BusyGuests): an adaptive copy starts at full
# speed, as one that does not adapt.
AT_FULL_SPEED = {
    "not adaptive": image_copy.UNLIMITED,
    "adaptive, guests idle": image_copy.CopyRate(guest_io=lambda: GuestIo(0, 0, 0)),
}


@pytest.mark.parametrize("name", sorted(AT_FULL_SPEED))
def test_sync_into_another_device_copies_the_volumes_at_once(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    other_device: FileStorageDomain,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At full speed into another device every layer's qemu-img runs at the same time (each
    twin opened alone, so none locks another out) and the twins are whole; between two
    domains of one device they run one after another."""
    rate = AT_FULL_SPEED[name]
    convert = qemuimg.convert
    lock, in_flight, most = threading.Lock(), [0], [0]
    together = threading.Barrier(3, timeout=30)  # the chain's three layers

    def spy_convert(*args: Any, **kwargs: Any) -> None:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            if kwargs["dst_direct"]:  # into the other device: all three must be here at once
                together.wait()
            convert(*args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(qemuimg, "convert", spy_convert)
    sync_all_and_check(src, dst, rate)
    assert most[0] == 1
    sync_all_and_check(src, other_device, rate)
    assert most[0] == 3


def test_copies_at_once_stop_when_the_first_look_finds_the_guests_busy(
    src: FileStorageDomain, other_device: FileStorageDomain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adaptive copy into another device starts at once and looks at the guests as it
    runs; busy, it stops the copies and makes them again one by one, held back (mirror jobs),
    leaving whole twins."""
    convert, job_for = qemuimg.convert, mirror_copy.job_for
    started: list[str] = []
    mirrored: list[str] = []

    def outlasting_convert(*args: Any, **kwargs: Any) -> None:
        # FAKE: a copy still running at the first look (these small layers take ~30 ms).
        started.append(str(args[1]))
        deadline = time.monotonic() + 30
        while not kwargs["cancellation"].cancelled and time.monotonic() < deadline:
            time.sleep(0.01)  # until the look stops it
        convert(*args, **kwargs)  # stopped: raises CommandAborted without starting

    def spy_job_for(copy: Any) -> mirror_copy.MirrorJob:
        mirrored.append(copy.dst.vol_uuid)
        return job_for(copy)

    monkeypatch.setattr(qemuimg, "convert", outlasting_convert)
    monkeypatch.setattr(mirror_copy, "job_for", spy_job_for)
    chain = sync_all_and_check(src, other_device, COPY_RATES["mirror"])
    assert len(started) == len(chain) == len(mirrored)
    assert mirrored == [vol.vol_uuid for vol in chain]


def sync_into_a_broken_middle_twin(
    src: FileStorageDomain, dst: FileStorageDomain, sync_type: str, rate: image_copy.CopyRate
) -> tuple[list[volumes.Volume], RecordingTask, CopyImageError]:
    """Sync a fresh chain whose middle twin is not a qcow2 image (garbage): the chain, the
    task and the sync's error."""
    img = new_uuid()
    chain = make_chain(src, img)
    clone(src, dst, img)
    twin(dst, chain[1]).path.write_bytes(b"garbage" * 100)
    task = RecordingTask()
    with pytest.raises(CopyImageError) as caught:
        image_copy.sync_data(src, dst, img, sync_type, task, rate=rate)
    return chain, task, caught.value


def test_a_failure_among_copies_at_once_is_the_tasks_error_and_all_roll_back(
    src: FileStorageDomain, other_device: FileStorageDomain, repository: StorageRepository
) -> None:
    chain, task, error = sync_into_a_broken_middle_twin(
        src, other_device, "ALL", image_copy.UNLIMITED
    )
    assert error.code == 261
    assert chain[1].vol_uuid in error.message
    assert "qemu-img: Could not open" in error.message
    # None is LEGAL before all are whole: the others were stopped or finished, unmarked.
    assert {twin(other_device, vol).metadata().legality for vol in chain} == {Legality.ILLEGAL}
    task.roll_back(repository)
    assert {twin(other_device, vol).metadata().legality for vol in chain} == {Legality.ILLEGAL}


def test_zero_filled_data_arrives_as_zeros_and_stays_thin(
    src: FileStorageDomain, dst: FileStorageDomain, rate: image_copy.CopyRate
) -> None:
    """qemu-img's zero detection (on by default, no -S 0): allocated zero *data* is not
    copied as data. In the base it stays a hole (the twin reads as zeros); in a layer over
    its parent's data it must become a zero cluster, never a hole showing the parent."""
    img = new_uuid()
    chain = make_chain(src, img)
    run_qemu_io(chain[0].path, "raw", "write -P 0 16M 2M")  # zeros written as data
    run_qemu_io(chain[1].path, "qcow2", "write -P 0 512k 256k")  # zeros over base's 0x11
    clone(src, dst, img)
    image_copy.sync_data(src, dst, img, "ALL", RecordingTask(), rate=rate)
    # Same content; not `strict`: the allocation differs, which is the point.
    assert qemuimg.compare(chain[2].path, twin(dst, chain[2]).path)
    base_extents = qemuimg.map(twin(dst, chain[0]).path, fmt="raw")
    assert not any(
        e["data"] and e["start"] <= 16 * MiB < e["start"] + e["length"] for e in base_extents
    ), base_extents
    middle = [e for e in qemuimg.map(twin(dst, chain[1]).path, fmt="qcow2") if e["depth"] == 0]
    assert any(
        e["zero"] and not e["data"] and e["start"] <= 512 * 1024 < e["start"] + e["length"]
        for e in middle
    ), middle
    leaf = twin(dst, chain[2]).path
    run_qemu_io(leaf, "qcow2", "read -P 0x11 0 512k")  # the base's data, through the chain
    run_qemu_io(leaf, "qcow2", "read -P 0 512k 256k")  # the middle layer's zeros hide it
    for vol in chain:
        assert st_allocated(twin(dst, vol)) <= st_allocated(vol), f"layer {vol.vol_uuid}"


def test_leaves_may_differ_except_for_all(
    src: FileStorageDomain, dst: FileStorageDomain, rate: image_copy.CopyRate
) -> None:
    img = new_uuid()
    chain = make_chain(src, img)
    clone(src, dst, img)
    # The destination's leaf is another volume on the same parent (as a mirror target may be).
    volumes.delete(twin(dst, chain[2]))
    other_leaf = volumes.create(
        dst,
        img,
        new_uuid(),
        capacity=CAPACITY,
        volume_format="COW",
        allocation="SPARSE",
        parent_uuid=chain[1].vol_uuid,
    )
    with pytest.raises(ImageIsNotLegalChain, match=other_leaf.vol_uuid):
        image_copy.sync_data(src, dst, img, "ALL", RecordingTask(), rate=rate)
    image_copy.sync_data(src, dst, img, "INTERNAL", RecordingTask(), rate=rate)
    image_copy.sync_data(src, dst, img, "LEAF", RecordingTask(), rate=rate)
    assert qemuimg.compare(chain[2].path, other_leaf.path, fmt_a="qcow2", strict=True)


def test_stop_during_copy_aborts_and_leaves_the_twin_illegal(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    repository: StorageRepository,
    rate: image_copy.CopyRate,
) -> None:
    img = new_uuid()
    base = volumes.create(
        src, img, new_uuid(), capacity=256 * MiB, volume_format="RAW", allocation="SPARSE"
    )
    run_qemu_io(base.path, "raw", "write -P 0x5a 0 256M")
    clone(src, dst, img)

    def stop_midway(task: RecordingTask, percent: float) -> None:
        if 0 < percent < 100:
            task.cancellation.cancel()  # what Task.stop does, from another thread

    task = RecordingTask(on_progress=stop_midway)
    with pytest.raises(TaskAborted):
        # Capped, so the copy is still running at its first report (4 s for 256 MiB).
        image_copy.sync_data(src, dst, img, "ALL", task, rate=replace(rate, limit=64 * MiB))
    assert 0 < task.progress[-1][0] < 100
    assert twin(dst, base).metadata().legality is Legality.ILLEGAL
    task.roll_back(repository)
    assert twin(dst, base).metadata().legality is Legality.ILLEGAL


def test_copy_failure_carries_qemu_img_reason(
    src: FileStorageDomain,
    dst: FileStorageDomain,
    repository: StorageRepository,
    rate: image_copy.CopyRate,
) -> None:
    chain, task, error = sync_into_a_broken_middle_twin(src, dst, "INTERNAL", rate)
    middle = twin(dst, chain[1])
    assert error.code == 261
    assert chain[1].vol_uuid in error.message
    # QEMU's reason, in its words: not a qcow2 image.
    if rate.guest_io is None:
        assert "qemu-img: Could not open" in error.message
    else:
        assert "blockdev-add: Image is not in qcow2 format" in error.message
    assert "qcow2" in error.message
    assert twin(dst, chain[0]).metadata().legality is Legality.LEGAL
    assert middle.metadata().legality is Legality.ILLEGAL
    task.roll_back(repository)  # a failed sync leaves every twin it touched ILLEGAL
    assert twin(dst, chain[0]).metadata().legality is Legality.ILLEGAL
