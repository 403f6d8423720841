"""Volume metadata (the ``<volUUID>.meta`` file): the typed record and its exact text form.

The text form is docs/contract.md §7 to the letter: the twelve keys below, sorted, one
``KEY=VALUE`` a line, then ``EOF``, at most 512 bytes. Reading refuses anything else with
VolumeMetadataReadError, so a torn or foreign file is reported, never half-trusted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from vdsm import validation
from vdsm.errors import (
    InvalidParameter,
    VolumeDoesNotExist,
    VolumeMetadataReadError,
    VolumeMetadataWriteError,
)
from vdsm.storage import fileutil, kvfile, os_errors
from vdsm.storage.constants import (
    DESCRIPTION_MAX_LENGTH,
    MAX_GENERATION,
    VOLUME_METADATA_MAX_BYTES,
    DiskType,
    Legality,
    Preallocation,
    VolumeFormat,
    VolumeRole,
)

KEYS = (
    "CAP",
    "CTIME",
    "DESCRIPTION",
    "DISKTYPE",
    "DOMAIN",
    "FORMAT",
    "GEN",
    "IMAGE",
    "LEGALITY",
    "PUUID",
    "TYPE",
    "VOLTYPE",
)


@dataclass(frozen=True)
class VolumeMetadata:
    domain: str
    image: str
    parent: str  # the parent's volUUID, or BLANK_UUID for a base volume
    capacity: int
    format: VolumeFormat
    allocation: Preallocation
    role: VolumeRole
    disk_type: DiskType
    description: str
    legality: Legality
    ctime: int
    generation: int

    def replace(self, **changes: object) -> VolumeMetadata:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_text(self) -> str:
        text = kvfile.dump(
            {
                "CAP": str(self.capacity),
                "CTIME": str(self.ctime),
                "DESCRIPTION": self.description,
                "DISKTYPE": self.disk_type.value,
                "DOMAIN": self.domain,
                "FORMAT": self.format.value,
                "GEN": str(self.generation),
                "IMAGE": self.image,
                "LEGALITY": self.legality.value,
                "PUUID": self.parent,
                "TYPE": self.allocation.value,
                "VOLTYPE": self.role.value,
            }
        )
        size = len(text.encode("utf-8"))
        if size > VOLUME_METADATA_MAX_BYTES:
            raise VolumeMetadataWriteError(
                f"metadata of a volume in image {self.image} would take {size} bytes, "
                f"more than {VOLUME_METADATA_MAX_BYTES} (shorten the description)"
            )
        return text

    @classmethod
    def from_text(cls, text: str, where: str) -> VolumeMetadata:
        """Parse ``text``; ``where`` names the file in any error."""
        try:
            values = kvfile.load(text)
        except kvfile.KVFormatError as e:
            raise VolumeMetadataReadError(f"{where}: {e}") from None
        missing = [key for key in KEYS if key not in values]
        unknown = sorted(set(values) - set(KEYS))
        if missing or unknown:
            raise VolumeMetadataReadError(f"{where}: missing keys {missing}, unknown {unknown}")
        try:
            return cls(
                domain=validation.uuid(values["DOMAIN"], "DOMAIN"),
                image=validation.uuid(values["IMAGE"], "IMAGE"),
                parent=validation.uuid(values["PUUID"], "PUUID", allow_blank=True),
                capacity=_integer(values["CAP"], "CAP"),
                format=validation.enum_value(values["FORMAT"], VolumeFormat, "FORMAT"),
                allocation=validation.enum_value(values["TYPE"], Preallocation, "TYPE"),
                role=validation.enum_value(values["VOLTYPE"], VolumeRole, "VOLTYPE"),
                disk_type=validation.enum_value(values["DISKTYPE"], DiskType, "DISKTYPE"),
                description=validation.text(
                    values["DESCRIPTION"], "DESCRIPTION", max_length=DESCRIPTION_MAX_LENGTH
                ),
                legality=validation.enum_value(values["LEGALITY"], Legality, "LEGALITY"),
                ctime=_integer(values["CTIME"], "CTIME"),
                generation=_integer(values["GEN"], "GEN", maximum=MAX_GENERATION),
            )
        except InvalidParameter as e:
            raise VolumeMetadataReadError(f"{where}: bad value {e.detail}") from None


def _integer(value: str, key: str, maximum: int | None = None) -> int:
    return validation.integer(
        value, key, low=0, high=validation.INT64_MAX if maximum is None else maximum
    )


def read(path: Path, what: str) -> VolumeMetadata:
    """Read a ``.meta`` file; ``what`` names the volume in errors."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise VolumeDoesNotExist(what) from None
    except OSError as e:
        if e.errno in os_errors.RESOURCE_ERRNOS:  # nothing wrong with the metadata
            raise os_errors.general("read", path, e) from None
        raise VolumeMetadataReadError(f"{what}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VolumeMetadataReadError(f"{what}: not UTF-8 text") from None
    return VolumeMetadata.from_text(text, what)


def write(path: Path, metadata: VolumeMetadata, what: str) -> None:
    """Write a ``.meta`` file atomically (temporary file, fsync, rename, fsync of the dir)."""
    data = metadata.to_text().encode("utf-8")
    try:
        fileutil.atomic_write(path, data)
    except OSError as e:
        if e.errno in os_errors.RESOURCE_ERRNOS:
            raise os_errors.general("write", path, e) from None
        raise VolumeMetadataWriteError(f"{what}: {e.strerror}", errno=e.errno) from None
