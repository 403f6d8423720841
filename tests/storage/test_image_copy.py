"""cloneImageStructure and syncImageData on real file domains with real qemu-img and qemu-io:
empty twins, layer-by-layer copies that keep thin thin and preallocated preallocated, every
error code, rollback, and a copy stopped half-way."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.storage.conftest import new_uuid, qemu_io
from vdsm.errors import (
    CopyImageError,
    DestImageActionError,
    ImageDoesNotExistInSD,
    ImageIsNotLegalChain,
    NotImplementedVerb,
    SourceImageActionError,
    TaskAborted,
)
from vdsm.storage import image, image_copy, qemuimg
from vdsm.storage import volume as volumes
from vdsm.storage.constants import BLANK_UUID, Legality, VolumeFormat, VolumeRole
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.resource_locks import LockMode, ResourceLocks, image_resource
from vdsm.storage.runner import Cancellation
from vdsm.storage.volume import Volume

MiB = 1024**2
CAPACITY = 64 * MiB

MakeDomain = Callable[..., FileStorageDomain]


class RecordingTask:
    """A test double of the task running a storage operation (vdsm.storage.task_context's
    TaskContext): it records rollback steps (checked to be JSON, as the real task persists
    them) and progress, and stops when its real Cancellation is cancelled."""

    def __init__(
        self,
        on_rollback: Callable[[int], None] | None = None,
        on_progress: Callable[[RecordingTask, float], None] | None = None,
    ) -> None:
        self.task_id = new_uuid()
        self.cancellation = Cancellation()
        self.rollbacks: list[tuple[str, dict[str, Any]]] = []
        self.progress: list[tuple[float, int | None, int | None]] = []
        self._lock = threading.Lock()
        self._on_rollback = on_rollback
        self._on_progress = on_progress

    def add_rollback(self, name: str, args: Mapping[str, Any]) -> None:
        assert name in image_copy.ROLLBACK_STEPS
        self.rollbacks.append((name, json.loads(json.dumps(args))))
        if self._on_rollback is not None:
            self._on_rollback(len(self.rollbacks))

    def set_progress(
        self, percent: float, *, done_bytes: int | None = None, total_bytes: int | None = None
    ) -> None:
        with self._lock:  # called from the runner's reader thread during copies
            self.progress.append((percent, done_bytes, total_bytes))
        if self._on_progress is not None:
            self._on_progress(self, percent)

    def check_aborted(self) -> None:
        if self.cancellation.cancelled:
            raise TaskAborted(self.task_id)

    def roll_back(self, repository: StorageRepository) -> None:
        """What the task manager does after a failure: every step, newest first."""
        for name, args in reversed(self.rollbacks):
            image_copy.ROLLBACK_STEPS[name](repository, args)


@pytest.fixture
def src(make_domain: MakeDomain) -> FileStorageDomain:
    return make_domain("src")


@pytest.fixture
def dst(make_domain: MakeDomain) -> FileStorageDomain:
    return make_domain("dst")


def make_chain(
    domain: FileStorageDomain, img: str, allocation: str = "SPARSE", base_format: str = "RAW"
) -> list[Volume]:
    """base ← middle ← leaf, each layer holding its own data, as after two live snapshots.

    base: 0x11 at 0-1M and 0xa1 at 8M-9M; middle: 0x22 at 1M-2M and a zero cluster hiding
    base data at 8M-8.5M; leaf: 0x33 at 2M-3M.
    """
    chain: list[Volume] = []
    writes = [
        ["write -P 0x11 0 1M", "write -P 0xa1 8M 1M"],
        ["write -P 0x22 1M 1M", "write -z 8M 512k"],
        ["write -P 0x33 2M 1M"],
    ]
    for i, commands in enumerate(writes):
        fmt = base_format if i == 0 else "COW"
        vol = volumes.create(
            domain,
            img,
            new_uuid(),
            capacity=CAPACITY,
            volume_format=fmt,
            allocation=allocation,
            description=f"layer {i}",
            parent_uuid=chain[-1].vol_uuid if chain else BLANK_UUID,
        )
        for command in commands:
            qemu_io(vol.path, VolumeFormat(fmt).qemu_format, command)
        chain.append(vol)
    return chain


def stable_map(vol: Volume, allocation: str) -> bool:
    """Whether ``qemu-img map`` of the volume is stable. Not for a preallocated raw file:
    ext4 reports an fallocated, never written extent as data while its pages are in the page
    cache and as a hole once they are dropped (measured: `cat` then map, drop_caches then
    map), so the same file maps differently from one moment to the next. Its content is
    compared, and its allocation checked, instead."""
    return not (allocation == "PREALLOCATED" and qemu_fmt(vol) == "raw")


def qemu_fmt(vol: Volume) -> str:
    return vol.metadata().format.qemu_format


def own_extents(vol: Volume) -> list[tuple[Any, ...]]:
    """The extents a volume holds itself (depth 0), without host offsets."""
    return [
        (e["start"], e["length"], e["data"], e["zero"])
        for e in qemuimg.map(vol.path, fmt=qemu_fmt(vol))
        if e["depth"] == 0
    ]


def own_bytes(vol: Volume) -> int:
    return qemuimg.allocated_bytes(qemuimg.map(vol.path, fmt=qemu_fmt(vol)), depth=0)


def st_allocated(vol: Volume) -> int:
    return vol.path.stat().st_blocks * 512


def twin(dst: FileStorageDomain, vol: Volume) -> Volume:
    return Volume(dst, vol.img_uuid, vol.vol_uuid)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def clone(src: FileStorageDomain, dst: FileStorageDomain, img: str) -> None:
    image_copy.clone_structure(src, dst, img, RecordingTask())


# --- cloneImageStructure ----------------------------------------------------------------------


@pytest.mark.parametrize("allocation", ["SPARSE", "PREALLOCATED"])
def test_clone_creates_an_empty_twin_chain(
    src: FileStorageDomain, dst: FileStorageDomain, allocation: str
) -> None:
    img = new_uuid()
    chain = make_chain(src, img, allocation)
    src_before = tree(src.path)
    task = RecordingTask()

    image_copy.clone_structure(src, dst, img, task)

    twins = image.chain(dst, img)
    assert [v.vol_uuid for v in twins] == [v.vol_uuid for v in chain]
    for vol, copy in zip(chain, twins, strict=True):
        md, cmd = vol.metadata(), copy.metadata()
        assert (cmd.domain, cmd.image) == (dst.sd_uuid, img)
        assert (cmd.capacity, cmd.format, cmd.allocation, cmd.disk_type) == (
            md.capacity,
            md.format,
            md.allocation,
            md.disk_type,
        )
        assert (cmd.parent, cmd.description, cmd.role) == (md.parent, md.description, md.role)
        assert cmd.legality is Legality.LEGAL
    assert [v.metadata().role for v in twins] == [
        VolumeRole.INTERNAL,
        VolumeRole.INTERNAL,
        VolumeRole.LEAF,
    ]
    chain_info = qemuimg.info(twins[-1].path, fmt="qcow2", backing_chain=True)
    assert [Path(i["filename"]) for i in chain_info] == [v.path for v in reversed(twins)]
    assert [i.get("backing-filename") for i in chain_info] == [
        chain[1].vol_uuid,
        chain[0].vol_uuid,
        None,
    ]
    assert [i.get("backing-filename-format") for i in chain_info] == ["qcow2", "raw", None]
    # No data: the whole twin chain reads as zeros.
    qemu_io(twins[-1].path, "qcow2", f"read -P 0 0 {CAPACITY}")
    if allocation == "PREALLOCATED":
        assert all(st_allocated(v) >= CAPACITY for v in twins)
    else:
        assert all(own_bytes(v) <= 4096 for v in twins)  # raw: qemu-img's first block
    # One undo step per volume, recorded base first (so run leaf first); progress to 100.
    assert task.rollbacks == [
        ("image_copy.remove_volume", {"sd_uuid": dst.sd_uuid, "img_uuid": img, "vol_uuid": u})
        for u in [v.vol_uuid for v in chain]
    ]
    assert task.progress[-1][0] == 100.0
    assert tree(src.path) == src_before


def test_failed_clone_rolls_back_to_nothing(
    src: FileStorageDomain, dst: FileStorageDomain, repository: StorageRepository
) -> None:
    img = new_uuid()
    chain = make_chain(src, img)
    dst_before = tree(dst.path)

    def squat_third_volume(recorded: int) -> None:
        if recorded == 3:  # a stranger's file where the leaf's data would go
            twin(dst, chain[2]).path.write_bytes(b"not ours")

    task = RecordingTask(on_rollback=squat_third_volume)
    with pytest.raises(DestImageActionError, match=f"{chain[2].vol_uuid}.*already exists"):
        image_copy.clone_structure(src, dst, img, task)
    assert len(task.rollbacks) == 3

    task.roll_back(repository)
    assert tree(dst.path) == dst_before
    task.roll_back(repository)  # idempotent
    assert tree(dst.path) == dst_before
    # After a crash half-way through the rollback (the leaf's undo done, the middle's not),
    # a rerun still leaves nothing: the middle, now childless, was made LEAF again.
    clone(src, dst, img)
    image_copy.ROLLBACK_STEPS["image_copy.remove_volume"](repository, task.rollbacks[2][1])
    assert twin(dst, chain[1]).metadata().role is VolumeRole.LEAF
    task.roll_back(repository)
    assert tree(dst.path) == dst_before


def test_rollback_steps_tolerate_missing_domain_and_volume(
    dst: FileStorageDomain, repository: StorageRepository
) -> None:
    before = tree(dst.path)
    for step in image_copy.ROLLBACK_STEPS.values():
        step(repository, {"sd_uuid": new_uuid(), "img_uuid": new_uuid(), "vol_uuid": new_uuid()})
        step(repository, {"sd_uuid": dst.sd_uuid, "img_uuid": new_uuid(), "vol_uuid": new_uuid()})
    assert tree(dst.path) == before


# --- syncImageData ----------------------------------------------------------------------------


@pytest.mark.parametrize("base_format", ["RAW", "COW"])
@pytest.mark.parametrize("allocation", ["SPARSE", "PREALLOCATED"])
def test_sync_internal_then_leaf(
    src: FileStorageDomain, dst: FileStorageDomain, allocation: str, base_format: str
) -> None:
    img = new_uuid()
    chain = make_chain(src, img, allocation, base_format)
    clone(src, dst, img)
    twins = [twin(dst, v) for v in chain]

    task = RecordingTask()
    image_copy.sync_data(src, dst, img, "INTERNAL", task)
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

    image_copy.sync_data(src, dst, img, "LEAF", RecordingTask())
    assert qemuimg.compare(chain[2].path, twins[2].path, fmt_a="qcow2", fmt_b="qcow2")
    assert qemuimg.compare(chain[2].path, twins[2].path, fmt_a="qcow2", strict=strict)
    assert own_extents(twins[2]) == own_extents(chain[2])
    qemu_io(twins[2].path, "qcow2", "read -P 0x11 0 1M")
    qemu_io(twins[2].path, "qcow2", "read -P 0x33 2M 1M")
    qemu_io(twins[2].path, "qcow2", "read -P 0 8M 512k")
    qemu_io(twins[2].path, "qcow2", "read -P 0xa1 8704k 512k")

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


def test_sync_all(src: FileStorageDomain, dst: FileStorageDomain) -> None:
    img = new_uuid()
    chain = make_chain(src, img)
    clone(src, dst, img)
    image_copy.sync_data(src, dst, img, "ALL", RecordingTask())
    for vol in chain:
        copy = twin(dst, vol)
        assert own_extents(copy) == own_extents(vol)
        assert qemuimg.compare(vol.path, copy.path, fmt_a=qemu_fmt(vol), strict=True)
        assert copy.metadata().legality is Legality.LEGAL


def test_zero_filled_data_arrives_as_zeros_and_stays_thin(
    src: FileStorageDomain, dst: FileStorageDomain
) -> None:
    """qemu-img's zero detection (on by default, no -S 0): allocated zero *data* is not
    copied as data. In the base it stays a hole (the twin reads as zeros); in a layer over
    its parent's data it must become a zero cluster, never a hole showing the parent."""
    img = new_uuid()
    chain = make_chain(src, img)
    qemu_io(chain[0].path, "raw", "write -P 0 16M 2M")  # zeros written as data
    qemu_io(chain[1].path, "qcow2", "write -P 0 512k 256k")  # zeros over base's 0x11
    clone(src, dst, img)
    image_copy.sync_data(src, dst, img, "ALL", RecordingTask())
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
    qemu_io(leaf, "qcow2", "read -P 0x11 0 512k")  # the base's data, through the chain
    qemu_io(leaf, "qcow2", "read -P 0 512k 256k")  # the middle layer's zeros hide it
    for vol in chain:
        assert st_allocated(twin(dst, vol)) <= st_allocated(vol), f"layer {vol.vol_uuid}"


def test_leaves_may_differ_except_for_all(src: FileStorageDomain, dst: FileStorageDomain) -> None:
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
        image_copy.sync_data(src, dst, img, "ALL", RecordingTask())
    image_copy.sync_data(src, dst, img, "INTERNAL", RecordingTask())
    image_copy.sync_data(src, dst, img, "LEAF", RecordingTask())
    assert qemuimg.compare(chain[2].path, other_leaf.path, fmt_a="qcow2", strict=True)


def test_stop_during_copy_aborts_and_leaves_the_twin_illegal(
    src: FileStorageDomain, dst: FileStorageDomain, repository: StorageRepository
) -> None:
    img = new_uuid()
    base = volumes.create(
        src, img, new_uuid(), capacity=256 * MiB, volume_format="RAW", allocation="SPARSE"
    )
    qemu_io(base.path, "raw", "write -P 0x5a 0 256M")
    clone(src, dst, img)

    def stop_midway(task: RecordingTask, percent: float) -> None:
        if 0 < percent < 100:
            task.cancellation.cancel()  # what Task.stop does, from another thread

    task = RecordingTask(on_progress=stop_midway)
    with pytest.raises(TaskAborted):
        image_copy.sync_data(src, dst, img, "ALL", task)
    assert 0 < task.progress[-1][0] < 100
    assert twin(dst, base).metadata().legality is Legality.ILLEGAL
    task.roll_back(repository)
    assert twin(dst, base).metadata().legality is Legality.ILLEGAL


def test_copy_failure_carries_qemu_img_reason(
    src: FileStorageDomain, dst: FileStorageDomain, repository: StorageRepository
) -> None:
    img = new_uuid()
    chain = make_chain(src, img)
    clone(src, dst, img)
    middle = twin(dst, chain[1])
    middle.path.write_bytes(b"garbage" * 100)

    task = RecordingTask()
    with pytest.raises(CopyImageError) as caught:
        image_copy.sync_data(src, dst, img, "INTERNAL", task)
    assert caught.value.code == 261
    assert chain[1].vol_uuid in caught.value.message
    assert "qemu-img: Could not open" in caught.value.message
    assert "qcow2" in caught.value.message  # qemu-img's reason: not a qcow2 image
    assert twin(dst, chain[0]).metadata().legality is Legality.LEGAL
    assert middle.metadata().legality is Legality.ILLEGAL
    task.roll_back(repository)  # a failed sync leaves every twin it touched ILLEGAL
    assert twin(dst, chain[0]).metadata().legality is Legality.ILLEGAL


# --- errors -----------------------------------------------------------------------------------


def test_unknown_sync_type_is_checked_first(src: FileStorageDomain, dst: FileStorageDomain) -> None:
    with pytest.raises(NotImplementedVerb, match="BOGUS") as caught:
        image_copy.sync_data(src, dst, new_uuid(), "BOGUS", RecordingTask())
    assert caught.value.code == 2000
    with pytest.raises(NotImplementedVerb):
        image_copy.check_sync(src, dst, new_uuid(), "all")


def test_image_missing_on_source(src: FileStorageDomain, dst: FileStorageDomain) -> None:
    img = new_uuid()
    with pytest.raises(ImageDoesNotExistInSD, match=img) as caught:
        image_copy.clone_structure(src, dst, img, RecordingTask())
    assert caught.value.code == 268
    with pytest.raises(ImageDoesNotExistInSD, match=src.sd_uuid):
        image_copy.sync_data(src, dst, img, "ALL", RecordingTask())


def test_destination_image_problems(src: FileStorageDomain, dst: FileStorageDomain) -> None:
    img = new_uuid()
    make_chain(src, img)
    with pytest.raises(
        DestImageActionError, match=f"{img} in destination domain {dst.sd_uuid} does not exist"
    ) as e:
        image_copy.sync_data(src, dst, img, "INTERNAL", RecordingTask())
    assert e.value.code == 260
    clone(src, dst, img)
    dst_before = tree(dst.path)
    task = RecordingTask()
    with pytest.raises(DestImageActionError, match=f"{img} already exists in domain {dst.sd_uuid}"):
        image_copy.clone_structure(src, dst, img, task)
    with pytest.raises(DestImageActionError):
        image_copy.check_clone(src, dst, img)
    assert task.rollbacks == [] and tree(dst.path) == dst_before


def test_mismatched_chains(src: FileStorageDomain, dst: FileStorageDomain) -> None:
    img = new_uuid()
    chain = make_chain(src, img)
    clone(src, dst, img)
    # One volume more on the destination: ALL compares whole chains.
    extra = volumes.create(
        dst,
        img,
        new_uuid(),
        capacity=CAPACITY,
        volume_format="COW",
        allocation="SPARSE",
        parent_uuid=chain[2].vol_uuid,
    )
    with pytest.raises(ImageIsNotLegalChain, match=extra.vol_uuid) as caught:
        image_copy.sync_data(src, dst, img, "ALL", RecordingTask())
    assert caught.value.code == 262
    # INTERNAL drops the leaves: [base, middle] against [base, middle, leaf] still differ.
    with pytest.raises(ImageIsNotLegalChain, match="leaves excluded"):
        image_copy.sync_data(src, dst, img, "INTERNAL", RecordingTask())

    # A destination image with the same imgUUID but other volumes.
    other = new_uuid()
    make_chain(src, other)
    make_chain(dst, other)
    with pytest.raises(ImageIsNotLegalChain):
        image_copy.sync_data(src, dst, other, "INTERNAL", RecordingTask())

    # A broken source chain (a lost middle) cannot be cloned.
    broken = new_uuid()
    broken_chain = make_chain(src, broken)
    broken_chain[1].meta_path.unlink()
    with pytest.raises(ImageIsNotLegalChain, match="2 leaves"):
        image_copy.clone_structure(src, dst, broken, RecordingTask())


def test_illegal_source_volume(src: FileStorageDomain, dst: FileStorageDomain) -> None:
    img = new_uuid()
    chain = make_chain(src, img)
    clone(src, dst, img)
    chain[1].set_legality(Legality.ILLEGAL)
    with pytest.raises(SourceImageActionError, match=f"{chain[1].vol_uuid}.*ILLEGAL") as caught:
        image_copy.sync_data(src, dst, img, "INTERNAL", RecordingTask())
    assert caught.value.code == 259
    image.delete(dst, img)
    with pytest.raises(SourceImageActionError, match=chain[1].vol_uuid):
        image_copy.clone_structure(src, dst, img, RecordingTask())
    assert not image.exists(dst, img)


# --- locks ------------------------------------------------------------------------------------


def test_lock_requests(src: FileStorageDomain, dst: FileStorageDomain) -> None:
    img = new_uuid()
    requests = image_copy.lock_requests(src, dst, img.upper())
    assert requests == [
        (image_resource(src.sd_uuid, img), LockMode.SHARED),
        (image_resource(dst.sd_uuid, img), LockMode.EXCLUSIVE),
    ]
    locks = ResourceLocks()
    with locks.hold(requests):
        assert locks.held() == {
            image_resource(src.sd_uuid, img): "SHARED",
            image_resource(dst.sd_uuid, img): "EXCLUSIVE",
        }
