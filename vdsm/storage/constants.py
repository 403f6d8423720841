"""Storage enums and constants, with the exact strings of VDSM's metadata (docs/contract.md §7)."""

from __future__ import annotations

from enum import StrEnum

from vdsm_api.wire import BLANK_UUID as BLANK_UUID  # metadata's "no parent"


class VolumeFormat(StrEnum):
    COW = "COW"  # qcow2
    RAW = "RAW"

    @property
    def qemu_format(self) -> str:
        return "qcow2" if self is VolumeFormat.COW else "raw"


class Preallocation(StrEnum):
    SPARSE = "SPARSE"  # thin: only written data takes space
    PREALLOCATED = "PREALLOCATED"  # every byte reserved up front


class VolumeRole(StrEnum):
    LEAF = "LEAF"  # the active layer, the only writable volume of a chain
    INTERNAL = "INTERNAL"  # has a child; read-only from then on
    SHARED = "SHARED"  # a template volume shared by several images


class Legality(StrEnum):
    LEGAL = "LEGAL"
    ILLEGAL = "ILLEGAL"  # content not valid: being created, copied or deleted
    FAKE = "FAKE"


class VolumeStatus(StrEnum):
    """What getVolumeInfo reports: derived, never stored."""

    OK = "OK"
    INVALID = "INVALID"  # metadata and data disagree, or the data file is missing
    ILLEGAL = "ILLEGAL"


class DiskType(StrEnum):
    DATA = "DATA"
    ISOF = "ISOF"
    MEMD = "MEMD"
    MEMM = "MEMM"
    OVFS = "OVFS"


class DomainType(StrEnum):
    """File-based domain types; all share the directory layout of docs/contract.md §7."""

    NFS = "NFS"
    LOCALFS = "LOCALFS"
    POSIXFS = "POSIXFS"
    SHAREDFS = "SHAREDFS"


class DomainClass(StrEnum):
    DATA = "Data"
    ISO = "Iso"
    BACKUP = "Backup"


class DomainRole(StrEnum):
    REGULAR = "Regular"
    MASTER = "Master"  # holds the pool's metadata and its persisted tasks


DOMAIN_VERSION = 5
SUPPORTED_BLOCK_SIZES = (512, 4096)
VOLUME_METADATA_MAX_BYTES = 512
DESCRIPTION_MAX_LENGTH = 210
NAME_MAX_LENGTH = 50
MAX_GENERATION = 999
