"""A VM's drives: which image and volume chain each disk runs on, prepared from storage.

A Drive is data (it is persisted with the VM and rebuilt from the live domain after a
restart); the chain lists every volume base → leaf with its path and qemu format, so the
domain XML can spell the whole chain out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vdsm import validation
from vdsm.errors import InvalidParameter
from vdsm.storage import image
from vdsm.storage.host_storage import HostStorage
from vdsm.virt.record_json import RecordError, field_of, mapping_of
from vdsm.virt.vm_spec import DiskSpec


@dataclass(frozen=True)
class VolumeLink:
    volume_id: str
    path: str
    format: str  # qemu's: "qcow2" or "raw"

    def to_json(self) -> dict[str, str]:
        return {"volume_id": self.volume_id, "path": self.path, "format": self.format}

    @classmethod
    def from_json(cls, value: object, where: str) -> VolumeLink:
        data = mapping_of(value, where)
        return cls(
            volume_id=field_of(data, "volume_id", str, where),
            path=field_of(data, "path", str, where),
            format=field_of(data, "format", str, where),
        )


@dataclass(frozen=True)
class Drive:
    target: str  # vda, vdb, ...
    domain_id: str
    pool_id: str
    image_id: str
    chain: tuple[VolumeLink, ...]  # base → leaf; the leaf is the active layer
    readonly: bool = False
    cache: str = "none"

    @property
    def volume_id(self) -> str:
        return self.chain[-1].volume_id

    @property
    def path(self) -> str:
        return self.chain[-1].path

    def identity(self) -> tuple[str, str, str]:
        """(domainID, imageID, volumeID): how the API names a drive (docs/contract.md §2)."""
        return (self.domain_id, self.image_id, self.volume_id)

    def with_chain(self, domain_id: str, chain: tuple[VolumeLink, ...]) -> Drive:
        return replace(self, domain_id=domain_id, chain=chain)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["chain"] = [link.to_json() for link in self.chain]
        return data

    @classmethod
    def from_json(cls, value: object, where: str) -> Drive:
        data = mapping_of(value, where)
        links = field_of(data, "chain", list, where)
        if not links:
            raise RecordError(f"{where}.chain: empty")
        return cls(
            target=field_of(data, "target", str, where),
            domain_id=field_of(data, "domain_id", str, where),
            pool_id=field_of(data, "pool_id", str, where),
            image_id=field_of(data, "image_id", str, where),
            chain=tuple(
                VolumeLink.from_json(link, f"{where}.chain[{n}]") for n, link in enumerate(links)
            ),
            readonly=field_of(data, "readonly", bool, where),
            cache=field_of(data, "cache", str, where),
        )


def prepare_chain(
    storage: HostStorage, pool_id: str, domain_id: str, image_id: str, volume_id: str
) -> tuple[VolumeLink, ...]:
    """Resolve and check (LEGAL, present) a volume's chain: 309/353/358, 268, 201, 227."""
    domain = storage.pool_domain(pool_id, domain_id)
    prepared = image.prepare(domain, image_id, volume_id)
    return tuple(
        VolumeLink(
            volume_id=vol.vol_uuid,
            path=str(vol.path),
            format=vol.metadata().format.qemu_format,
        )
        for vol in prepared.chain
    )


def prepare(storage: HostStorage, disk: DiskSpec) -> Drive:
    chain = prepare_chain(storage, disk.pool_id, disk.domain_id, disk.image_id, disk.volume_id)
    return Drive(
        target=disk.target,
        domain_id=disk.domain_id,
        pool_id=disk.pool_id,
        image_id=disk.image_id,
        chain=chain,
        readonly=disk.readonly,
        cache=disk.cache,
    )


def parse_volume_path(path: str) -> tuple[str, str, str] | None:
    """(sdUUID, imgUUID, volUUID) of a path in a file domain's layout, else None."""
    parts = Path(path).parts
    if len(parts) < 4 or parts[-3] != "images":
        return None
    try:
        return (
            validation.uuid(parts[-4], "sdUUID"),
            validation.uuid(parts[-2], "imgUUID"),
            validation.uuid(parts[-1], "volUUID"),
        )
    except InvalidParameter:
        return None


def drive_spec(value: object, param: str) -> tuple[str, str, str]:
    """A DriveSpecVolume (already type-checked by the schema) as (domainID, imageID, volumeID);
    poolID is not part of the match (docs/contract.md §2)."""
    if not isinstance(value, dict):
        raise InvalidParameter(param, value, "expected a DriveSpecVolume mapping")
    return (
        validation.uuid(value.get("domainID"), f"{param}.domainID"),
        validation.uuid(value.get("imageID"), f"{param}.imageID"),
        validation.uuid(value.get("volumeID"), f"{param}.volumeID"),
    )
