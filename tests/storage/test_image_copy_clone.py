"""cloneImageStructure on real file domains with real qemu-img and qemu-io: empty twins, and
the rollback of a failed clone. Then what both verbs (cloneImageStructure and syncImageData)
check before they touch anything — every error code — and the locks they take.

syncImageData's copies: test_image_copy.py. ``RecordingTask`` and the chain:
image_copy_support.py; the ``src`` and ``dst`` fixtures: conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.image_copy_support import (
    CAPACITY,
    RecordingTask,
    clone,
    make_chain,
    own_bytes,
    st_allocated,
    tree,
    twin,
)
from tests.storage.support import new_uuid, run_qemu_io
from vdsm.errors import (
    DestImageActionError,
    ImageDoesNotExistInSD,
    ImageIsNotLegalChain,
    NotImplementedVerb,
    SourceImageActionError,
)
from vdsm.storage import image, image_copy, qemuimg, rollback_steps
from vdsm.storage import volume as volumes
from vdsm.storage.constants import Legality, VolumeRole
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.resource_locks import LockMode, ResourceLocks, image_resource

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
    run_qemu_io(twins[-1].path, "qcow2", f"read -P 0 0 {CAPACITY}")
    if allocation == "PREALLOCATED":
        assert all(st_allocated(v) >= CAPACITY for v in twins)
    else:
        assert all(own_bytes(v) <= 4096 for v in twins)  # raw: qemu-img's first block
    # One undo step per volume, recorded base first (so run leaf first); progress to 100.
    assert task.rollbacks == [
        ("volume.remove", {"sd_uuid": dst.sd_uuid, "img_uuid": img, "vol_uuid": u})
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
    rollback_steps.remove_volume(repository, task.rollbacks[2][1])
    assert twin(dst, chain[1]).metadata().role is VolumeRole.LEAF
    task.roll_back(repository)
    assert tree(dst.path) == dst_before


def test_rollback_steps_tolerate_missing_domain_and_volume(
    dst: FileStorageDomain, repository: StorageRepository
) -> None:
    before = tree(dst.path)
    for step in (rollback_steps.remove_volume, rollback_steps.mark_illegal):
        step(repository, {"sd_uuid": new_uuid(), "img_uuid": new_uuid(), "vol_uuid": new_uuid()})
        step(repository, {"sd_uuid": dst.sd_uuid, "img_uuid": new_uuid(), "vol_uuid": new_uuid()})
    assert tree(dst.path) == before


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


def test_of_two_unreadable_sources_the_first_in_the_chain_is_the_error(
    src: FileStorageDomain, dst: FileStorageDomain
) -> None:
    """The volumes are mapped at once (copy_plan.plan_all); the error is still the first
    volume's, in chain order, whichever qemu-img map fails first, and nothing is written."""
    img = new_uuid()
    chain = make_chain(src, img)
    clone(src, dst, img)
    for vol in chain[1:]:  # the two qcow2 layers: qemu-img map of either fails
        vol.path.write_bytes(b"not an image")
    first = chain[1]
    dst_before = tree(dst.path)
    with pytest.raises(SourceImageActionError, match=first.vol_uuid) as caught:
        image_copy.sync_data(src, dst, img, "ALL", RecordingTask())
    assert caught.value.code == 259
    assert tree(dst.path) == dst_before


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
