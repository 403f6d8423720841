"""One existing volume of a file domain, as its files show it: paths, metadata, info.

A :class:`Volume` names a volume's three files in its image directory (the data, ``<vol>.meta``
and ``<vol>.lease``), reads and rewrites its metadata one field at a time, finds its children
and reports :class:`VolumeInfo`; :func:`image_volumes` lists every volume of an image. Nothing
here creates or removes a file: making and deleting volumes, in a crash-safe order, is
:mod:`vdsm.storage.volume`'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vdsm import validation
from vdsm.errors import InvalidParameter
from vdsm.storage import volume_metadata
from vdsm.storage.constants import Legality, VolumeRole, VolumeStatus
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.volume_metadata import VolumeMetadata

META_SUFFIX = ".meta"
LEASE_SUFFIX = ".lease"


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
