"""File storage domains: creation, opening, the directory layout (docs/contract.md §7), space.

A file domain is the directory ``<root>/<sdUUID>`` on any POSIX file system (local disk, an NFS
mount, ...)::

    dom_md/metadata                     KEY=VALUE domain (and, on the master, pool) metadata
    dom_md/ids                          the domain's sanlock lockspace: one delta lease per host id
    dom_md/leases                       sanlock resources; SDM (the SPM lease) at 1 MiB
    dom_md/{inbox,outbox}               reserved for messaging
    images/<imgUUID>/<volUUID>[.meta|.lease]   data, metadata, the volume's sanlock lease
    master/tasks/<taskID>/              persisted SPM tasks (used on the master domain)

Every path is built from validated UUIDs only. Creation assembles the domain in a hidden
temporary directory, lease areas formatted, and renames it into place, so a failed or
interrupted create never leaves a half-made domain under its real name. A domain made before
leases existed (empty ``ids``/``leases``) is upgraded by :meth:`FileStorageDomain.ensure_leases`
before any host joins it; a lease area that belongs to another domain is refused.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vdsm import validation
from vdsm.errors import (
    InvalidParameter,
    StorageDomainAlreadyExists,
    StorageDomainCreationError,
    StorageDomainLayoutError,
    StorageDomainMetadataNotFound,
)
from vdsm.storage import clusterlock, fileutil, kvfile, os_errors
from vdsm.storage.constants import (
    DOMAIN_VERSION,
    NAME_MAX_LENGTH,
    SUPPORTED_BLOCK_SIZES,
    DomainClass,
    DomainRole,
    DomainType,
)

log = logging.getLogger("vdsm.storage.domain")

DOM_MD = "dom_md"
IMAGES = "images"
MASTER = "master"
TASKS = "tasks"
IDS_FILE = "ids"
LEASES_FILE = "leases"
RESERVED_DOM_MD_FILES = ("inbox", "outbox")
METADATA_FILE = "metadata"
VOLUME_LEASE_SUFFIX = ".lease"  # volume.LEASE_SUFFIX (volume imports this module)
# sanlock's io_timeout written into a new lockspace: VDSM's production value. Every host that
# joins uses the value stored in the lockspace, so one domain has one timeout.
DEFAULT_IO_TIMEOUT = 10


@dataclass(frozen=True)
class DomainMetadata:
    sd_uuid: str
    name: str
    domain_type: DomainType
    domain_class: DomainClass
    version: int
    block_size: int
    remote_path: str  # the directory the domain was created in, as given
    pool_uuid: str = ""  # empty while the domain belongs to no pool
    role: DomainRole = DomainRole.REGULAR
    # The pool's own metadata lives on its master domain only.
    pool_name: str = ""
    pool_domains: tuple[str, ...] = ()
    master_version: int = 0

    def replace(self, **changes: object) -> DomainMetadata:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_text(self) -> str:
        return kvfile.dump(
            {
                "BLOCK_SIZE": str(self.block_size),
                "CLASS": self.domain_class.value,
                "DESCRIPTION": self.name,
                "MASTER_VERSION": str(self.master_version),
                "POOL_DESCRIPTION": self.pool_name,
                "POOL_DOMAINS": ",".join(self.pool_domains),
                "POOL_UUID": self.pool_uuid,
                "REMOTE_PATH": self.remote_path,
                "ROLE": self.role.value,
                "SDUUID": self.sd_uuid,
                "TYPE": self.domain_type.value,
                "VERSION": str(self.version),
            }
        )

    @classmethod
    def from_text(cls, text: str, where: str) -> DomainMetadata:
        try:
            values = kvfile.load(text)
            pool_domains = values["POOL_DOMAINS"]
            return cls(
                sd_uuid=validation.uuid(values["SDUUID"], "SDUUID"),
                name=values["DESCRIPTION"],
                domain_type=validation.enum_value(values["TYPE"], DomainType, "TYPE"),
                domain_class=validation.enum_value(values["CLASS"], DomainClass, "CLASS"),
                version=int(values["VERSION"]),
                block_size=int(values["BLOCK_SIZE"]),
                remote_path=values["REMOTE_PATH"],
                pool_uuid=values["POOL_UUID"],
                role=validation.enum_value(values["ROLE"], DomainRole, "ROLE"),
                pool_name=values["POOL_DESCRIPTION"],
                pool_domains=tuple(pool_domains.split(",")) if pool_domains else (),
                master_version=int(values["MASTER_VERSION"]),
            )
        except (kvfile.KVFormatError, KeyError, ValueError, InvalidParameter) as e:
            raise StorageDomainLayoutError(f"{where}: unreadable domain metadata: {e}") from None


@dataclass(frozen=True)
class DomainStats:
    total_bytes: int
    used_bytes: int
    free_bytes: int


class FileStorageDomain:
    """An open file storage domain: its metadata and the paths of everything inside it."""

    def __init__(self, path: Path, metadata: DomainMetadata) -> None:
        self.path = path
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"FileStorageDomain({self.sd_uuid!r}, {str(self.path)!r})"

    @property
    def sd_uuid(self) -> str:
        return self.metadata.sd_uuid

    # --- paths (callers pass validated UUIDs; the checks here are a second guard) -----------

    @property
    def metadata_path(self) -> Path:
        return self.path / DOM_MD / METADATA_FILE

    @property
    def images_dir(self) -> Path:
        return self.path / IMAGES

    @property
    def ids_path(self) -> Path:
        return self.path / DOM_MD / IDS_FILE

    @property
    def leases_path(self) -> Path:
        return self.path / DOM_MD / LEASES_FILE

    @property
    def tasks_dir(self) -> Path:
        return self.path / MASTER / TASKS

    def image_dir(self, img_uuid: str) -> Path:
        return self.images_dir / validation.uuid(img_uuid, "imgUUID")

    def volume_path(self, img_uuid: str, vol_uuid: str) -> Path:
        return self.image_dir(img_uuid) / validation.uuid(vol_uuid, "volUUID")

    # --- contents ---------------------------------------------------------------------------

    def image_uuids(self) -> list[str]:
        """Images of this domain: directories under ``images/`` named by a UUID."""
        found = []
        for entry in self.images_dir.iterdir():
            try:
                img_uuid = validation.uuid(entry.name, "imgUUID")
            except InvalidParameter:
                continue  # a temporary or foreign entry is not an image
            if entry.is_dir() and img_uuid == entry.name:
                found.append(img_uuid)
        return sorted(found)

    def stats(self) -> DomainStats:
        """Space of the file system that holds the domain, as an unprivileged writer sees it."""
        st = os.statvfs(self.path)
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        return DomainStats(total_bytes=total, used_bytes=total - free, free_bytes=free)

    def supports_direct_io(self) -> bool:
        """Whether the domain's file system opens files with O_DIRECT (tmpfs before Linux
        6.6, for one, does not: EINVAL). Probed on the metadata file, which every domain has;
        a domain that cannot be read at all says no, and whatever then uses it meets the
        error itself."""
        try:
            fd = os.open(self.metadata_path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            return False
        os.close(fd)
        return True

    def shares_device_with(self, other: FileStorageDomain) -> bool:
        """Whether the two domains are on one file system (one device, as far as this host
        can tell: the same st_dev). A domain that cannot be stat'ed counts as sharing."""
        try:
            return os.stat(self.path).st_dev == os.stat(other.path).st_dev
        except OSError:
            return True

    def write_metadata(self, metadata: DomainMetadata) -> None:
        fileutil.atomic_write(self.metadata_path, metadata.to_text().encode("utf-8"))
        self.metadata = metadata

    def reload(self) -> FileStorageDomain:
        """The domain as stored now: another host (the SPM) may have changed its metadata."""
        return FileStorageDomain.open(self.path)

    # --- leases -----------------------------------------------------------------------------

    def lockspace_io_timeout(self) -> int:
        """The io_timeout stored in this domain's lockspace (hosts join with it)."""
        found = clusterlock.read_lockspace(self.ids_path, block_size=self.metadata.block_size)
        if found is None:
            raise StorageDomainLayoutError(
                f"domain {self.sd_uuid}: {self.ids_path} holds no sanlock lockspace"
            )
        return found[1]

    def ensure_leases(self, io_timeout: int = DEFAULT_IO_TIMEOUT) -> list[str]:
        """Make sure the lockspace, the SDM lease and every volume lease exist, formatting
        those never formatted (a domain made before leases). Returns what it formatted.

        Held under flock on ``ids``, so two hosts upgrading at once format each area once;
        an area already formatted is never rewritten (hosts may have joined it). A lockspace
        or lease that names another domain is a layout error."""
        block_size = self.metadata.block_size
        formatted: list[str] = []
        with _locked(self.ids_path):
            # An empty file was never formatted (sanlock cannot even read it).
            found = (
                clusterlock.read_lockspace(self.ids_path, block_size=block_size)
                if os.stat(self.ids_path).st_size
                else None
            )
            if found is None:
                os.truncate(self.ids_path, clusterlock.IDS_SIZE)
                clusterlock.format_lockspace(
                    self.sd_uuid, self.ids_path, io_timeout=io_timeout, block_size=block_size
                )
                formatted.append(IDS_FILE)
            elif found[0] != self.sd_uuid:
                raise StorageDomainLayoutError(
                    f"{self.ids_path} holds the lockspace of domain {found[0]}"
                )
            if self._ensure_resource(
                clusterlock.SDM_RESOURCE,
                self.leases_path,
                clusterlock.SDM_OFFSET,
                clusterlock.LEASES_SIZE,
            ):
                formatted.append(f"{LEASES_FILE}:{clusterlock.SDM_RESOURCE}")
            for img_uuid in self.image_uuids():
                for lease in sorted(self.image_dir(img_uuid).glob(f"*{VOLUME_LEASE_SUFFIX}")):
                    vol_uuid = lease.name[: -len(VOLUME_LEASE_SUFFIX)]
                    try:
                        validation.uuid(vol_uuid, "volUUID")
                    except InvalidParameter:
                        continue  # not a volume's lease
                    if self._ensure_resource(vol_uuid, lease, 0, clusterlock.VOLUME_LEASE_SIZE):
                        formatted.append(f"{img_uuid}/{lease.name}")
        if formatted:
            log.info("domain %s: formatted lease areas %s", self.sd_uuid, formatted)
        return formatted

    def _ensure_resource(self, resource: str, path: Path, offset: int, size: int) -> bool:
        block_size = self.metadata.block_size
        found = (
            clusterlock.read_resource(path, offset, block_size=block_size)
            if os.stat(path).st_size > offset
            else None
        )
        if found is not None:
            if found[:2] != (self.sd_uuid, resource):
                raise StorageDomainLayoutError(
                    f"{path}:{offset} holds lease {found[1]} of domain {found[0]}, "
                    f"not {resource} of {self.sd_uuid}"
                )
            return False
        if os.stat(path).st_size < size:
            os.truncate(path, size)
        clusterlock.format_resource(self.sd_uuid, resource, path, offset, block_size=block_size)
        return True

    # --- life cycle -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> FileStorageDomain:
        """Open the domain at ``path`` (``<root>/<sdUUID>``), checking its layout."""
        metadata_path = path / DOM_MD / METADATA_FILE
        try:
            text = metadata_path.read_text("utf-8")
        except FileNotFoundError:
            raise StorageDomainMetadataNotFound(f"no {metadata_path}") from None
        except UnicodeDecodeError as e:
            raise StorageDomainLayoutError(f"{metadata_path}: {e}") from None
        except OSError as e:
            # Only some errnos mean a damaged layout; EMFILE, EIO... are not the domain's fault.
            if e.errno in os_errors.LAYOUT_ERRNOS:
                raise StorageDomainLayoutError(f"{metadata_path}: {e.strerror}") from None
            raise os_errors.general("open", metadata_path, e) from None
        metadata = DomainMetadata.from_text(text, str(metadata_path))
        if metadata.sd_uuid != path.name:
            raise StorageDomainLayoutError(
                f"{path}: metadata names domain {metadata.sd_uuid}, the directory {path.name}"
            )
        if not (path / IMAGES).is_dir():
            raise StorageDomainLayoutError(f"{path}: no {IMAGES}/ directory")
        return cls(path, metadata)

    @classmethod
    def create(
        cls,
        root: Path,
        sd_uuid: str,
        name: str,
        *,
        domain_type: DomainType = DomainType.LOCALFS,
        domain_class: DomainClass = DomainClass.DATA,
        version: int = DOMAIN_VERSION,
        block_size: int = 512,
        io_timeout: int = DEFAULT_IO_TIMEOUT,
    ) -> FileStorageDomain:
        """Create a domain in the existing directory ``root``, its lockspace and SDM lease
        formatted with sanlock's ``io_timeout`` (seconds)."""
        sd_uuid = validation.uuid(sd_uuid, "sdUUID")
        name = validation.text(name, "domainName", max_length=NAME_MAX_LENGTH)
        if version != DOMAIN_VERSION:
            raise InvalidParameter("domVersion", version, f"only version {DOMAIN_VERSION}")
        if block_size not in SUPPORTED_BLOCK_SIZES:
            raise InvalidParameter("blockSize", block_size, f"one of {SUPPORTED_BLOCK_SIZES}")
        if not root.is_absolute():
            raise InvalidParameter("typeSpecificArg", str(root), "must be an absolute path")
        if not root.is_dir():
            raise StorageDomainCreationError(f"{root} is not an existing directory")
        final = root / sd_uuid
        if final.exists() or final.is_symlink():
            raise StorageDomainAlreadyExists(f"domain {sd_uuid} already exists in {root}")

        metadata = DomainMetadata(
            sd_uuid=sd_uuid,
            name=name,
            domain_type=domain_type,
            domain_class=domain_class,
            version=version,
            block_size=block_size,
            remote_path=str(root),
        )
        staging = root / f".{sd_uuid}.creating-{secrets.token_hex(4)}"
        try:
            (staging / DOM_MD).mkdir(parents=True)
            (staging / IMAGES).mkdir()
            (staging / MASTER / TASKS).mkdir(parents=True)
            for reserved in RESERVED_DOM_MD_FILES:
                fileutil.create_empty(staging / DOM_MD / reserved)
            _format_lease_areas(staging / DOM_MD, sd_uuid, io_timeout, block_size)
            fileutil.atomic_write(staging / DOM_MD / METADATA_FILE, metadata.to_text().encode())
            if final.exists():
                raise StorageDomainAlreadyExists(f"domain {sd_uuid} already exists in {root}")
            os.rename(staging, final)
            fileutil.fsync_dir(root)
        except BaseException as e:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(e, OSError):
                raise StorageDomainCreationError(f"domain {sd_uuid} in {root}: {e}") from None
            raise
        return cls(final, metadata)


def _format_lease_areas(dom_md: Path, sd_uuid: str, io_timeout: int, block_size: int) -> None:
    """A new domain's ``ids`` (its empty lockspace) and ``leases`` (a free SDM lease)."""
    ids, leases = dom_md / IDS_FILE, dom_md / LEASES_FILE
    for path, size in ((ids, clusterlock.IDS_SIZE), (leases, clusterlock.LEASES_SIZE)):
        fileutil.create_empty(path)
        os.truncate(path, size)  # sparse: sanlock writes only the sectors it uses
    clusterlock.format_lockspace(sd_uuid, ids, io_timeout=io_timeout, block_size=block_size)
    clusterlock.format_resource(
        sd_uuid, clusterlock.SDM_RESOURCE, leases, clusterlock.SDM_OFFSET, block_size=block_size
    )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """flock(LOCK_EX) on a file for a with-block: other processes (other hosts' vdsmd on this
    machine, or NFS clients through its lock manager) wait."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock
