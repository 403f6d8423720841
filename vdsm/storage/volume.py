"""Volumes of a file domain: one volume's files and metadata, and creating and deleting them.

A volume is three files in its image directory: the data (qcow2 or raw), ``<vol>.meta`` and the
reserved ``<vol>.lease``. A :class:`Volume` names those files, reads and rewrites its metadata
one field at a time, finds its children and reports :class:`VolumeInfo`; :func:`image_volumes`
lists every volume of an image.

Creation is ordered so that a crash at any point leaves either nothing or a volume marked
ILLEGAL that rollback can recognise and remove:

    image dir → .meta (ILLEGAL) → .lease → data → parent becomes INTERNAL → .meta LEGAL

and a failed create undoes every step it took (no data file, no .meta, no empty image dir).
Deletion goes leaf first (:func:`leaf_first`), each volume marked ILLEGAL before its files go.
Callers hold the image lock EXCLUSIVE around create and delete (see resource_locks).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vdsm import validation
from vdsm.errors import (
    CannotDeleteVolume,
    CommandAborted,
    IllegalVolumeSnapshot,
    IncorrectFormat,
    InvalidParameter,
    VdsmError,
    VolumeAlreadyExists,
    VolumeCreationError,
    VolumeDoesNotExist,
    VolumeImageHasChildren,
    VolumeMetadataWriteError,
)
from vdsm.storage import clusterlock, fileutil, qemuimg, volume_metadata
from vdsm.storage.constants import (
    BLANK_UUID,
    DESCRIPTION_MAX_LENGTH,
    DiskType,
    Legality,
    Preallocation,
    VolumeFormat,
    VolumeRole,
    VolumeStatus,
)
from vdsm.storage.domain import VOLUME_LEASE_SUFFIX, FileStorageDomain
from vdsm.storage.runner import Cancellation
from vdsm.storage.volume_metadata import VolumeMetadata

log = logging.getLogger("vdsm.storage.volume")

META_SUFFIX = ".meta"
LEASE_SUFFIX = VOLUME_LEASE_SUFFIX


class Volume:
    """A view of one volume: where its files are and how to read and change its metadata."""

    def __init__(self, domain: FileStorageDomain, img_uuid: str, vol_uuid: str) -> None:
        self.domain = domain
        self.img_uuid = validation.uuid(img_uuid, "imgUUID")
        self.vol_uuid = validation.uuid(vol_uuid, "volUUID")

    def __repr__(self) -> str:
        return f"Volume({self.description_for_errors})"

    @property
    def description_for_errors(self) -> str:
        return f"volume {self.vol_uuid} of image {self.img_uuid} in domain {self.domain.sd_uuid}"

    @property
    def image_dir(self) -> Path:
        return self.domain.image_dir(self.img_uuid)

    @property
    def path(self) -> Path:
        return self.image_dir / self.vol_uuid

    @property
    def meta_path(self) -> Path:
        return self.image_dir / (self.vol_uuid + META_SUFFIX)

    @property
    def lease_path(self) -> Path:
        return self.image_dir / (self.vol_uuid + LEASE_SUFFIX)

    def exists(self) -> bool:
        return self.meta_path.exists()

    def metadata(self) -> VolumeMetadata:
        return volume_metadata.read(self.meta_path, self.description_for_errors)

    def write_metadata(self, metadata: VolumeMetadata) -> None:
        volume_metadata.write(self.meta_path, metadata, self.description_for_errors)

    def set_legality(self, legality: Legality) -> None:
        self.write_metadata(self.metadata().replace(legality=legality))

    def set_role(self, role: VolumeRole) -> None:
        self.write_metadata(self.metadata().replace(role=role))

    def set_parent(self, parent_uuid: str) -> None:
        """Record a new parent (after a merge removed the old one from the chain)."""
        self.write_metadata(self.metadata().replace(parent=parent_uuid))

    def children(self) -> list[str]:
        """volUUIDs of the volumes of this image whose parent is this volume."""
        return sorted(
            vol_uuid
            for vol_uuid, md in image_volumes(self.domain, self.img_uuid).items()
            if md.parent == self.vol_uuid
        )

    def info(self) -> VolumeInfo:
        md = self.metadata()
        try:
            st = os.stat(self.path)
            apparent, true = st.st_size, st.st_blocks * 512
        except FileNotFoundError:
            apparent = true = 0
        if md.legality is Legality.ILLEGAL:
            status = VolumeStatus.ILLEGAL
        elif not self.path.exists():
            status = VolumeStatus.INVALID
        else:
            status = VolumeStatus.OK
        return VolumeInfo(
            uuid=self.vol_uuid,
            metadata=md,
            apparent_size=apparent,
            true_size=true,
            status=status,
            children=self.children(),
            path=self.path,
        )


@dataclass(frozen=True)
class VolumeInfo:
    uuid: str
    metadata: VolumeMetadata
    apparent_size: int  # bytes, as ``ls -l`` shows
    true_size: int  # bytes allocated on the file system, as ``du`` shows
    status: VolumeStatus
    children: list[str]
    path: Path


def image_volumes(domain: FileStorageDomain, img_uuid: str) -> dict[str, VolumeMetadata]:
    """Metadata of every volume in an image directory, by volUUID (empty if no such image)."""
    image_dir = domain.image_dir(img_uuid)
    found: dict[str, VolumeMetadata] = {}
    try:
        entries = list(image_dir.iterdir())
    except FileNotFoundError:
        return found
    for entry in entries:
        stem, suffix = entry.name[: -len(META_SUFFIX)], entry.name[-len(META_SUFFIX) :]
        if suffix != META_SUFFIX:
            continue
        try:
            vol_uuid = validation.uuid(stem, "volUUID")
        except InvalidParameter:
            continue  # temporary files and strangers are not volumes
        if vol_uuid == stem:
            found[vol_uuid] = Volume(domain, img_uuid, vol_uuid).metadata()
    return found


# --- creating and deleting volumes ---------------------------------------------------------


@dataclass(frozen=True)
class VolumePlan:
    """A checked request to create a volume: what create() will make, and on which parent."""

    volume: Volume
    metadata: VolumeMetadata  # as first written: ILLEGAL until the data exists
    parent: Volume | None


def plan_create(
    domain: FileStorageDomain,
    img_uuid: object,
    vol_uuid: object,
    *,
    capacity: object,
    volume_format: object,
    allocation: object,
    disk_type: object = DiskType.DATA,
    description: object = "",
    parent_uuid: object = BLANK_UUID,
) -> VolumePlan:
    """Check a create request against the domain as it is now, creating nothing.

    The API layer calls this before it starts a task, so bad input is answered at once;
    create() calls it again under the image lock.
    """
    img_uuid = validation.uuid(img_uuid, "imgUUID")
    vol_uuid = validation.uuid(vol_uuid, "volUUID")
    parent_uuid = validation.uuid(parent_uuid, "srcVolUUID", allow_blank=True)
    capacity = validation.size_bytes(capacity, "size")
    fmt = validation.enum_value(volume_format, VolumeFormat, "volFormat")
    alloc = validation.enum_value(allocation, Preallocation, "preallocate")
    dtype = validation.enum_value(disk_type, DiskType, "diskType")
    desc = validation.text(description, "desc", max_length=DESCRIPTION_MAX_LENGTH)
    if vol_uuid == parent_uuid:
        raise InvalidParameter("srcVolUUID", parent_uuid, "a volume cannot be its own parent")

    vol = Volume(domain, img_uuid, vol_uuid)
    if vol.exists() or vol.path.exists():
        raise VolumeAlreadyExists(vol.description_for_errors)
    existing = image_volumes(domain, img_uuid)
    parent = _checked_parent(domain, img_uuid, parent_uuid, existing, fmt, capacity)

    metadata = VolumeMetadata(
        domain=domain.sd_uuid,
        image=img_uuid,
        parent=parent_uuid,
        capacity=capacity,
        format=fmt,
        allocation=alloc,
        role=VolumeRole.LEAF,
        disk_type=dtype,
        description=desc,
        legality=Legality.ILLEGAL,
        ctime=int(time.time()),
        generation=0,
    )
    try:
        metadata.to_text()  # refuse an oversized description before any file exists
    except VolumeMetadataWriteError:
        raise InvalidParameter("desc", desc, "too long for the 512-byte metadata") from None
    return VolumePlan(volume=vol, metadata=metadata, parent=parent)


def create_lease(vol: Volume) -> None:
    """The volume's sanlock lease: resource volUUID in the domain's lockspace, at offset 0 of
    ``<vol>.lease`` (sparse, 1 MiB), free until a writer acquires it."""
    fileutil.create_empty(vol.lease_path)
    os.truncate(vol.lease_path, clusterlock.VOLUME_LEASE_SIZE)
    clusterlock.format_resource(
        vol.domain.sd_uuid,
        vol.vol_uuid,
        vol.lease_path,
        0,
        block_size=vol.domain.metadata.block_size,
    )


def create(
    domain: FileStorageDomain,
    img_uuid: object,
    vol_uuid: object,
    *,
    capacity: object,
    volume_format: object,
    allocation: object,
    disk_type: object = DiskType.DATA,
    description: object = "",
    parent_uuid: object = BLANK_UUID,
    cancellation: Cancellation | None = None,
) -> Volume:
    """Create a volume: a base when ``parent_uuid`` is blank, else a qcow2 child of the leaf.

    ``cancellation`` (a task's) lets a stop kill qemu-img and tags it with the task's id.
    """
    plan = plan_create(
        domain,
        img_uuid,
        vol_uuid,
        capacity=capacity,
        volume_format=volume_format,
        allocation=allocation,
        disk_type=disk_type,
        description=description,
        parent_uuid=parent_uuid,
    )
    vol, metadata, parent = plan.volume, plan.metadata, plan.parent
    fmt, alloc = metadata.format, metadata.allocation
    made_dir = False
    made_files: list[Path] = []
    parent_demoted = False
    try:
        if not vol.image_dir.exists():
            vol.image_dir.mkdir()
            made_dir = True
            fileutil.fsync_dir(domain.images_dir)
        made_files.append(vol.meta_path)
        vol.write_metadata(metadata)
        made_files.append(vol.lease_path)
        create_lease(vol)
        made_files.append(vol.path)
        _create_data(vol, metadata, parent, cancellation)
        if parent is not None:
            parent_demoted = True
            parent.set_role(VolumeRole.INTERNAL)
        vol.write_metadata(metadata.replace(legality=Legality.LEGAL))
    except BaseException as e:
        log.warning("creating %s failed, undoing: %s", vol.description_for_errors, e)
        if parent_demoted and parent is not None:
            parent.set_role(VolumeRole.LEAF)
        for path in reversed(made_files):
            fileutil.remove_file(path)
        if made_dir:
            fileutil.remove_dir_if_empty(vol.image_dir)
        if isinstance(e, CommandAborted):
            raise  # a stopped task: not a creation error
        if isinstance(e, (VdsmError, OSError)):
            raise VolumeCreationError(f"{vol.description_for_errors}: {e}") from e
        raise
    log.info(
        "created %s (%s %s, %d bytes)", vol.description_for_errors, fmt, alloc, metadata.capacity
    )
    return vol


def _checked_parent(
    domain: FileStorageDomain,
    img_uuid: str,
    parent_uuid: str,
    existing: dict[str, VolumeMetadata],
    fmt: VolumeFormat,
    capacity: int,
) -> Volume | None:
    """The parent volume a new volume may be created on, or None for a new base."""
    if parent_uuid == BLANK_UUID:
        if existing:
            raise VolumeCreationError(
                f"image {img_uuid} in domain {domain.sd_uuid} already has volumes; "
                "a second base volume would fork the chain (pass srcVolUUID)"
            )
        return None
    parent = Volume(domain, img_uuid, parent_uuid)
    if parent_uuid not in existing:
        raise VolumeDoesNotExist(f"parent {parent.description_for_errors}")
    parent_md = existing[parent_uuid]
    if parent_md.legality is Legality.ILLEGAL:
        raise IllegalVolumeSnapshot(parent.description_for_errors)
    if parent_md.role is not VolumeRole.LEAF:
        raise VolumeCreationError(
            f"parent {parent.description_for_errors} is {parent_md.role}, not LEAF: "
            "a chain cannot branch"
        )
    if fmt is not VolumeFormat.COW:
        raise IncorrectFormat(f"volFormat {fmt}: a volume with a parent must be COW (qcow2)")
    if capacity < parent_md.capacity:
        raise InvalidParameter(
            "size", capacity, f"smaller than the parent's capacity {parent_md.capacity}"
        )
    return parent


def _create_data(
    vol: Volume,
    metadata: VolumeMetadata,
    parent: Volume | None,
    cancellation: Cancellation | None,
) -> None:
    preallocated = metadata.allocation is Preallocation.PREALLOCATED
    options: dict[str, str] = {}
    backing = backing_format = None
    if parent is not None:
        # Relative to the image directory, so the chain survives being mounted elsewhere.
        backing = parent.vol_uuid
        backing_format = parent.metadata().format.qemu_format
        if preallocated:
            # qcow2 refuses preallocation over a backing file unless clusters are split in
            # sub-clusters; extended L2 entries are what make the two compatible.
            options["extended_l2"] = "on"
    qemuimg.create(
        str(vol.path),
        metadata.format.qemu_format,
        metadata.capacity,
        backing=backing,
        backing_format=backing_format,
        preallocation="falloc" if preallocated else None,
        options=options or None,
        cancellation=cancellation,
    )


def check_delete(vol: Volume) -> VolumeMetadata:
    """Refuse to delete a volume with children or a shared one; return its metadata."""
    md = vol.metadata()
    children = vol.children()
    if children:
        raise VolumeImageHasChildren(f"{vol.description_for_errors} has children {children}")
    if md.role is VolumeRole.SHARED:
        raise CannotDeleteVolume(f"{vol.description_for_errors} is a shared (template) volume")
    return md


def delete(vol: Volume, *, release_lease: Callable[[Volume], None] | None = None) -> None:
    """Delete a leaf volume; its parent becomes the leaf again.

    The volume is first marked ILLEGAL, so a crash half-way leaves a volume that is visibly
    not to be used, and its ``.meta`` goes last, so the volume never becomes an orphan data file.
    ``release_lease``: the caller holds the volume's lease; it is called once the data is gone
    and before the lease file goes (sanlock cannot release a lease whose file is gone, and
    would keep the name taken for a later volume with the same UUID).
    """
    md = check_delete(vol)
    try:
        try:
            vol.write_metadata(md.replace(legality=Legality.ILLEGAL))
        except VolumeMetadataWriteError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full domain has no room for the new .meta (it is written beside the old one,
            # then renamed over it): the data goes first to make room. A crash in between
            # leaves a volume without data, which the delete, run again, finishes.
            log.warning("%s: the domain is full: data deleted first", vol.description_for_errors)
            fileutil.remove_file(vol.path)
            vol.write_metadata(md.replace(legality=Legality.ILLEGAL))
        fileutil.remove_file(vol.path)
        if release_lease is not None:
            release_lease(vol)
        fileutil.remove_file(vol.lease_path)
        fileutil.remove_file(vol.meta_path)
        fileutil.fsync_dir(vol.image_dir)
    except OSError as e:
        raise CannotDeleteVolume(f"{vol.description_for_errors}: {e}") from e
    if md.parent != BLANK_UUID:
        parent = Volume(vol.domain, vol.img_uuid, md.parent)
        # Another child may point at it (after a merge rewired a chain): then it stays INTERNAL.
        if parent.exists() and not parent.children():
            parent.set_role(VolumeRole.LEAF)
    fileutil.remove_dir_if_empty(vol.image_dir)
    log.info("deleted %s", vol.description_for_errors)


def leaf_first(
    domain: FileStorageDomain, img_uuid: str, vol_uuids: Iterable[str]
) -> Iterator[Volume]:
    """The volumes ``vol_uuids`` of an image in the order to delete them: each after its children.

    The caller deletes each volume before it asks for the next: the next is the first of those
    left that has no child then. When every one left has a child (one not in ``vol_uuids``, or
    a cycle), it is the first left, which :func:`delete` refuses (VolumeImageHasChildren).
    """
    pending = list(vol_uuids)
    while pending:
        childless = [v for v in pending if not Volume(domain, img_uuid, v).children()]
        chosen = (childless or pending)[0]
        yield Volume(domain, img_uuid, chosen)
        pending.remove(chosen)


def remove_if_present(domain: FileStorageDomain, img_uuid: str, vol_uuid: str) -> None:
    """Undo create() from whatever state a failure or a crash left: idempotent.

    Removes the volume's files if any are there (metadata last), then repairs the image: a
    volume left INTERNAL without a child (its child was this volume) becomes the LEAF again.
    Refuses, like delete(), to remove a volume that has children.
    """
    vol = Volume(domain, img_uuid, vol_uuid)
    if vol.meta_path.exists() and vol.children():
        raise VolumeImageHasChildren(f"{vol.description_for_errors} has children")
    for path in (vol.path, vol.lease_path, vol.meta_path):
        fileutil.remove_file(path)
    if not vol.image_dir.exists():
        return
    fileutil.fsync_dir(vol.image_dir)
    remaining = image_volumes(domain, vol.img_uuid)
    parents = {md.parent for md in remaining.values()}
    for other_uuid, md in remaining.items():
        if md.role is VolumeRole.INTERNAL and other_uuid not in parents:
            Volume(domain, vol.img_uuid, other_uuid).set_role(VolumeRole.LEAF)
    fileutil.remove_stale_temps(vol.image_dir)
    fileutil.remove_dir_if_empty(vol.image_dir)
