"""Volumes and images on a real file domain with real qemu-img and qemu-io: chains, info,
legality, deletion, and every bad input refused without leaving a file behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage.support import new_uuid, run_qemu_io
from vdsm.errors import (
    IllegalVolumePrepare,
    IllegalVolumeSnapshot,
    ImageDoesNotExistInSD,
    ImageIsNotLegalChain,
    IncorrectFormat,
    InvalidParameter,
    VolumeAlreadyExists,
    VolumeCreationError,
    VolumeDoesNotExist,
    VolumeImageHasChildren,
)
from vdsm.storage import image, qemuimg
from vdsm.storage import volume as volumes
from vdsm.storage.constants import (
    BLANK_UUID,
    Legality,
    Preallocation,
    VolumeFormat,
    VolumeRole,
    VolumeStatus,
)
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.volume import Volume

MiB = 1024**2
CAPACITY = 64 * MiB


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def make_chain(domain: FileStorageDomain, img: str) -> list[Volume]:
    """A raw base and two qcow2 overlays, each holding its own data, as after two snapshots."""
    base = volumes.create(
        domain,
        img,
        new_uuid(),
        capacity=CAPACITY,
        volume_format="RAW",
        allocation="SPARSE",
        description="base",
    )
    run_qemu_io(base.path, "raw", "write -P 0x11 0 1M")
    middle = volumes.create(
        domain,
        img,
        new_uuid(),
        capacity=CAPACITY,
        volume_format="COW",
        allocation="SPARSE",
        parent_uuid=base.vol_uuid,
    )
    run_qemu_io(middle.path, "qcow2", "write -P 0x22 1M 1M")
    leaf = volumes.create(
        domain,
        img,
        new_uuid(),
        capacity=CAPACITY,
        volume_format="COW",
        allocation="SPARSE",
        parent_uuid=middle.vol_uuid,
    )
    run_qemu_io(leaf.path, "qcow2", "write -P 0x33 2M 1M")
    return [base, middle, leaf]


def test_three_volume_chain_matches_qemu_img_backing_chain(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base, middle, leaf = make_chain(domain, img)

    assert [v.vol_uuid for v in image.chain(domain, img)] == [
        base.vol_uuid,
        middle.vol_uuid,
        leaf.vol_uuid,
    ]
    assert [v.metadata().role for v in (base, middle, leaf)] == [
        VolumeRole.INTERNAL,
        VolumeRole.INTERNAL,
        VolumeRole.LEAF,
    ]
    assert [v.metadata().parent for v in (base, middle, leaf)] == [
        BLANK_UUID,
        base.vol_uuid,
        middle.vol_uuid,
    ]

    chain_info = qemuimg.info(leaf.path, fmt="qcow2", backing_chain=True)
    assert [Path(i["filename"]).name for i in chain_info] == [
        leaf.vol_uuid,
        middle.vol_uuid,
        base.vol_uuid,
    ]
    assert [i["format"] for i in chain_info] == ["qcow2", "qcow2", "raw"]
    # Backing links are relative volUUIDs with their format recorded: never probed.
    assert chain_info[0]["backing-filename"] == middle.vol_uuid
    assert chain_info[0]["backing-filename-format"] == "qcow2"
    assert chain_info[1]["backing-filename"] == base.vol_uuid
    assert chain_info[1]["backing-filename-format"] == "raw"
    assert all(i["virtual-size"] == CAPACITY for i in chain_info)

    # Data written into each layer reads back through the leaf; the rest reads as zeros.
    run_qemu_io(leaf.path, "qcow2", "read -P 0x11 0 1M")
    run_qemu_io(leaf.path, "qcow2", "read -P 0x22 1M 1M")
    run_qemu_io(leaf.path, "qcow2", "read -P 0x33 2M 1M")
    run_qemu_io(leaf.path, "qcow2", "read -P 0 3M 61M")


def test_volume_info_reports_every_key(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base, middle, leaf = make_chain(domain, img)
    info = middle.info()
    md = info.metadata
    assert info.uuid == middle.vol_uuid
    assert (md.domain, md.image, md.parent) == (domain.sd_uuid, img, base.vol_uuid)
    assert md.capacity == CAPACITY
    assert md.format is VolumeFormat.COW and md.allocation is Preallocation.SPARSE
    assert md.role is VolumeRole.INTERNAL and md.legality is Legality.LEGAL
    assert md.generation == 0 and md.ctime > 1_600_000_000
    assert info.status is VolumeStatus.OK
    assert info.children == [leaf.vol_uuid]
    assert info.apparent_size == middle.path.stat().st_size
    assert info.true_size == middle.path.stat().st_blocks * 512
    # Thin: 1 MiB written of 64 MiB.
    assert MiB <= info.true_size < 4 * MiB
    assert base.info().children == [middle.vol_uuid]
    assert leaf.info().children == []


@pytest.mark.parametrize("fmt", ["RAW", "COW"])
def test_preallocated_volumes_take_their_capacity(domain: FileStorageDomain, fmt: str) -> None:
    vol = volumes.create(
        domain,
        new_uuid(),
        new_uuid(),
        capacity=CAPACITY,
        volume_format=fmt,
        allocation="PREALLOCATED",
    )
    assert vol.info().true_size >= CAPACITY
    sparse = volumes.create(
        domain, new_uuid(), new_uuid(), capacity=CAPACITY, volume_format=fmt, allocation="SPARSE"
    )
    assert sparse.info().true_size < MiB


def test_preallocated_child_over_a_parent(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base = volumes.create(
        domain, img, new_uuid(), capacity=CAPACITY, volume_format="RAW", allocation="SPARSE"
    )
    child = volumes.create(
        domain,
        img,
        new_uuid(),
        capacity=CAPACITY,
        volume_format="COW",
        allocation="PREALLOCATED",
        parent_uuid=base.vol_uuid,
    )
    assert child.info().true_size >= CAPACITY
    assert qemuimg.info(child.path, fmt="qcow2")["backing-filename"] == base.vol_uuid


def test_legality_and_status(domain: FileStorageDomain) -> None:
    img = new_uuid()
    vol = volumes.create(
        domain, img, new_uuid(), capacity=CAPACITY, volume_format="COW", allocation="SPARSE"
    )
    vol.set_legality(Legality.ILLEGAL)
    assert vol.info().status is VolumeStatus.ILLEGAL
    with pytest.raises(IllegalVolumePrepare, match=vol.vol_uuid):
        image.prepare(domain, img, vol.vol_uuid)
    with pytest.raises(IllegalVolumeSnapshot, match=vol.vol_uuid):
        volumes.create(
            domain,
            img,
            new_uuid(),
            capacity=CAPACITY,
            volume_format="COW",
            allocation="SPARSE",
            parent_uuid=vol.vol_uuid,
        )
    vol.set_legality(Legality.LEGAL)
    assert image.prepare(domain, img, vol.vol_uuid).path == vol.path
    vol.path.unlink()
    assert vol.info().status is VolumeStatus.INVALID


def test_prepare_returns_the_chain_up_to_the_volume(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base, middle, leaf = make_chain(domain, img)
    prepared = image.prepare(domain, img, middle.vol_uuid)
    assert prepared.path == middle.path
    assert [v.vol_uuid for v in prepared.chain] == [base.vol_uuid, middle.vol_uuid]
    with pytest.raises(VolumeDoesNotExist):
        image.prepare(domain, img, new_uuid())


def test_delete_leaf_makes_parent_leaf_again(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base, middle, leaf = make_chain(domain, img)
    with pytest.raises(VolumeImageHasChildren, match=middle.vol_uuid):
        volumes.delete(middle)
    volumes.delete(leaf)
    assert not leaf.path.exists() and not leaf.meta_path.exists() and not leaf.lease_path.exists()
    assert middle.metadata().role is VolumeRole.LEAF
    assert [v.vol_uuid for v in image.chain(domain, img)] == [base.vol_uuid, middle.vol_uuid]
    volumes.delete(middle)
    volumes.delete(base)
    assert not domain.image_dir(img).exists()


def test_leaf_first_deletes_children_before_parents(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base, middle, leaf = make_chain(domain, img)
    order = []
    for vol in volumes.leaf_first(domain, img, [base.vol_uuid, middle.vol_uuid, leaf.vol_uuid]):
        order.append(vol.vol_uuid)
        volumes.delete(vol)
    assert order == [leaf.vol_uuid, middle.vol_uuid, base.vol_uuid]
    assert not domain.image_dir(img).exists()


def test_leaf_first_offers_a_parent_whose_child_stays(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base, middle, leaf = make_chain(domain, img)
    offered = list(volumes.leaf_first(domain, img, [base.vol_uuid, middle.vol_uuid]))
    assert offered[0].vol_uuid == base.vol_uuid  # none is childless: the first, as asked
    with pytest.raises(VolumeImageHasChildren):
        volumes.delete(offered[0])


def test_delete_image_removes_everything(domain: FileStorageDomain) -> None:
    img = new_uuid()
    make_chain(domain, img)
    before = tree(domain.path)
    image.delete(domain, img)
    assert not domain.image_dir(img).exists()
    assert tree(domain.path) == [p for p in before if img not in p]
    with pytest.raises(ImageDoesNotExistInSD, match=img):
        image.delete(domain, img)
    assert domain.image_uuids() == []


def test_broken_chains_are_reported(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base, middle, leaf = make_chain(domain, img)
    with pytest.raises(ImageDoesNotExistInSD):
        image.chain(domain, new_uuid())
    # A second leaf on the same parent: the chain forks.
    fork = Volume(domain, img, new_uuid())
    fork.write_metadata(leaf.metadata())
    with pytest.raises(ImageIsNotLegalChain, match="2 leaves"):
        image.chain(domain, img)
    fork.meta_path.unlink()
    # A missing parent: the base's metadata is gone.
    base.meta_path.unlink()
    with pytest.raises(ImageIsNotLegalChain, match=f"parent volume {base.vol_uuid} is missing"):
        image.chain(domain, img)
    # A broken chain can still be deleted.
    base.path.unlink()
    base.lease_path.unlink()
    image.delete(domain, img)
    assert not domain.image_dir(img).exists()


GOOD = {
    "capacity": CAPACITY,
    "volume_format": "COW",
    "allocation": "SPARSE",
}


@pytest.mark.parametrize(
    "img, vol, changes, error, names",
    [
        ("../../../etc", None, {}, InvalidParameter, "imgUUID"),
        (None, "/absolute/path", {}, InvalidParameter, "volUUID"),
        (None, "..", {}, InvalidParameter, "volUUID"),
        (None, BLANK_UUID, {}, InvalidParameter, "volUUID"),
        (None, None, {"capacity": 0}, InvalidParameter, "size"),
        (None, None, {"capacity": -512}, InvalidParameter, "size"),
        (None, None, {"capacity": 1000}, InvalidParameter, "size"),
        (None, None, {"capacity": "lots"}, InvalidParameter, "size"),
        (None, None, {"capacity": 1.5}, InvalidParameter, "size"),
        (None, None, {"volume_format": "VMDK"}, InvalidParameter, "volFormat"),
        (None, None, {"allocation": "THICK"}, InvalidParameter, "preallocate"),
        (None, None, {"disk_type": "FLOPPY"}, InvalidParameter, "diskType"),
        (None, None, {"description": "x" * 211}, InvalidParameter, "desc"),
        (None, None, {"description": "a\nFORMAT=RAW"}, InvalidParameter, "desc"),
        (None, None, {"description": "é" * 210}, InvalidParameter, "desc"),
        (None, None, {"parent_uuid": "../x"}, InvalidParameter, "srcVolUUID"),
        (
            None,
            None,
            {"parent_uuid": "11111111-2222-3333-4444-555555555555"},
            VolumeDoesNotExist,
            "parent",
        ),
        # qemu-img itself refuses: the error carries its reason, and no file stays behind.
        (
            None,
            None,
            {"capacity": 2**50, "volume_format": "RAW", "allocation": "PREALLOCATED"},
            VolumeCreationError,
            "too large",
        ),
    ],
)
def test_bad_create_is_refused_and_leaves_nothing(
    domain: FileStorageDomain,
    img: str | None,
    vol: str | None,
    changes: dict[str, object],
    error: type[Exception],
    names: str,
) -> None:
    before = tree(domain.path)
    args = {**GOOD, **changes}
    with pytest.raises(error, match=names):
        volumes.create(domain, img or new_uuid(), vol or new_uuid(), **args)  # type: ignore[arg-type]
    assert tree(domain.path) == before


def test_bad_child_is_refused_and_leaves_chain_untouched(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base, middle, leaf = make_chain(domain, img)
    before = tree(domain.path)
    roles = [v.metadata() for v in (base, middle, leaf)]

    def child(**changes: object) -> None:
        volumes.create(domain, img, new_uuid(), **{**GOOD, "parent_uuid": leaf.vol_uuid, **changes})  # type: ignore[arg-type]

    with pytest.raises(IncorrectFormat, match="volFormat"):
        child(volume_format="RAW")
    with pytest.raises(InvalidParameter, match="smaller than the parent"):
        child(capacity=CAPACITY // 2)
    with pytest.raises(VolumeCreationError, match="cannot branch"):
        child(parent_uuid=middle.vol_uuid)
    with pytest.raises(VolumeCreationError, match="fork the chain"):
        child(parent_uuid=BLANK_UUID)
    with pytest.raises(VolumeAlreadyExists, match=leaf.vol_uuid):
        volumes.create(domain, img, leaf.vol_uuid, **GOOD)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter, match="own parent"):
        volumes.create(domain, img, leaf.vol_uuid, **{**GOOD, "parent_uuid": leaf.vol_uuid})  # type: ignore[arg-type]
    assert tree(domain.path) == before
    assert [v.metadata() for v in (base, middle, leaf)] == roles


def test_uppercase_uuids_name_the_same_volume(domain: FileStorageDomain) -> None:
    img, vol = new_uuid(), new_uuid()
    created = volumes.create(domain, img.upper(), vol.upper(), **GOOD)  # type: ignore[arg-type]
    assert created.path == domain.path / "images" / img / vol


def test_remove_if_present_undoes_create_from_any_state(domain: FileStorageDomain) -> None:
    img = new_uuid()
    base, middle, leaf = make_chain(domain, img)
    # As a crash after the data file was made leaves it: the data file gone already, the
    # metadata still there and ILLEGAL, the parent already INTERNAL.
    leaf.set_legality(Legality.ILLEGAL)
    leaf.path.unlink()
    volumes.remove_if_present(domain, img, leaf.vol_uuid)
    assert not leaf.meta_path.exists() and not leaf.lease_path.exists()
    assert middle.metadata().role is VolumeRole.LEAF
    volumes.remove_if_present(domain, img, leaf.vol_uuid)  # a second run is harmless
    assert [v.vol_uuid for v in image.chain(domain, img)] == [base.vol_uuid, middle.vol_uuid]
    with pytest.raises(VolumeImageHasChildren):
        volumes.remove_if_present(domain, img, base.vol_uuid)
    volumes.remove_if_present(domain, img, middle.vol_uuid)
    volumes.remove_if_present(domain, img, base.vol_uuid)
    assert not domain.image_dir(img).exists()
