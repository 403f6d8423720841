"""The host's storage repository: where each known storage domain lives.

Domains may sit in any directory (a local disk, several NFS mounts), so the host keeps one
symbolic link per domain, ``<repository>/domains/<sdUUID> → <root>/<sdUUID>``, as VDSM keeps
its links under ``/rhev/data-center``. The links survive a daemon restart; a domain is looked
up by UUID only, and the UUID is validated before it becomes part of a path.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from vdsm import validation
from vdsm.errors import (
    InvalidParameter,
    StorageDomainAlreadyExists,
    StorageDomainDoesNotExist,
    VdsmError,
)
from vdsm.storage import fileutil
from vdsm.storage.constants import DOMAIN_VERSION, DomainClass, DomainType
from vdsm.storage.domain import DEFAULT_IO_TIMEOUT, FileStorageDomain
from vdsm.storage.domain_health import DEFAULT_PROBE_TIMEOUT, DomainHealth

log = logging.getLogger("vdsm.storage.repository")

DOMAINS = "domains"


class StorageRepository:
    def __init__(self, root: Path, health: DomainHealth | None = None) -> None:
        self.root = root
        self.links_dir = root / DOMAINS
        self.links_dir.mkdir(parents=True, exist_ok=True)
        # What the domain monitors saw; a domain that does not answer is refused, not touched.
        self.health = health or DomainHealth(DEFAULT_PROBE_TIMEOUT)

    def create_domain(
        self,
        root: Path,
        sd_uuid: str,
        name: str,
        *,
        domain_type: DomainType = DomainType.LOCALFS,
        domain_class: DomainClass = DomainClass.DATA,
        block_size: int = 512,
        version: int = DOMAIN_VERSION,
        io_timeout: int = DEFAULT_IO_TIMEOUT,
    ) -> FileStorageDomain:
        """Create a domain under ``root`` and make it known to this host."""
        sd_uuid = validation.uuid(sd_uuid, "sdUUID")
        if self._link(sd_uuid).is_symlink():
            # Known here already, possibly in another directory: one UUID, one domain.
            raise StorageDomainAlreadyExists(
                f"domain {sd_uuid} is already known at {os.readlink(self._link(sd_uuid))}"
            )
        domain = FileStorageDomain.create(
            root,
            sd_uuid,
            name,
            domain_type=domain_type,
            domain_class=domain_class,
            block_size=block_size,
            version=version,
            io_timeout=io_timeout,
        )
        try:
            self._link_new(domain)
        except StorageDomainAlreadyExists:
            # Another creator took the UUID meanwhile: the directory just made is ours alone.
            shutil.rmtree(domain.path, ignore_errors=True)
            raise
        return domain

    def _link_new(self, domain: FileStorageDomain) -> None:
        """The link of a new domain: created, never replacing one (a second creator fails)."""
        link = self._link(domain.sd_uuid)
        try:
            os.symlink(domain.path, link)
        except FileExistsError:
            raise StorageDomainAlreadyExists(
                f"domain {domain.sd_uuid} is already known at {os.readlink(link)}"
            ) from None
        fileutil.fsync_dir(self.links_dir)
        log.info("domain %s is at %s", domain.sd_uuid, domain.path)

    def adopt_domain(self, path: Path) -> FileStorageDomain:
        """Make the existing domain at ``path`` (``<dir>/<sdUUID>``, made by this host or by
        another one sharing the storage) known to this host: its link is created, never
        replacing one. Already known at ``path``: nothing to do. Known at another path: 365,
        since one UUID is one domain."""
        sd_uuid = validation.uuid(path.name, "sdUUID")
        if sd_uuid != path.name:
            raise InvalidParameter("sdUUID", path.name, "a domain directory is named in lower case")
        domain = FileStorageDomain.open(path)
        link = self._link(sd_uuid)
        try:
            os.symlink(domain.path, link)
        except FileExistsError:
            known = Path(os.readlink(link))
            if known == domain.path or known.resolve() == domain.path.resolve():
                return domain
            raise StorageDomainAlreadyExists(
                f"domain {sd_uuid} is already known at {known}, not at {domain.path}"
            ) from None
        fileutil.fsync_dir(self.links_dir)
        log.info("domain %s is at %s (adopted)", sd_uuid, domain.path)
        return domain

    def forget_domain(self, sd_uuid: str, path: Path) -> bool:
        """Remove the link of ``sd_uuid`` if it leads to ``path``; the domain itself is left
        alone. Returns whether a link was removed."""
        sd_uuid = validation.uuid(sd_uuid, "sdUUID")
        link = self._link(sd_uuid)
        try:
            if Path(os.readlink(link)) != path:
                return False
            link.unlink()
        except FileNotFoundError:
            return False
        fileutil.fsync_dir(self.links_dir)
        log.info("domain %s at %s is no longer known here", sd_uuid, path)
        return True

    def domain_links(self) -> dict[str, Path]:
        """sdUUID → the directory its link leads to, for every known domain (reachable or
        not)."""
        found = {}
        for sd_uuid in self.domain_uuids():
            try:
                found[sd_uuid] = Path(os.readlink(self._link(sd_uuid)))
            except OSError:
                continue  # removed meanwhile, or not a link
        return found

    def domain(self, sd_uuid: str) -> FileStorageDomain:
        """Open a known domain; 358 if this host knows no such domain or it is gone, 379 if
        its storage does not answer (nothing of it is touched then; a probe first when its last
        answer is old: see domain_health)."""
        sd_uuid = validation.uuid(sd_uuid, "sdUUID")
        target = self.domain_dir(sd_uuid)
        self.health.check(sd_uuid)
        if not target.is_dir():
            raise StorageDomainDoesNotExist(f"{sd_uuid}: its directory {target} is gone")
        return FileStorageDomain.open(target)

    def domain_dir(self, sd_uuid: str) -> Path:
        """Where a known domain lives, from its link alone (the domain is not touched); 358
        if this host knows no such domain."""
        sd_uuid = validation.uuid(sd_uuid, "sdUUID")
        try:
            return Path(os.readlink(self._link(sd_uuid)))
        except OSError:
            raise StorageDomainDoesNotExist(sd_uuid) from None

    def domain_uuids(self) -> list[str]:
        found = []
        for entry in self.links_dir.iterdir():
            try:
                found.append(validation.uuid(entry.name, "sdUUID"))
            except VdsmError:
                continue  # a temporary link being renamed into place
        return sorted(found)

    def domains(self) -> list[FileStorageDomain]:
        """Every known domain that can be opened now (unreachable ones are skipped)."""
        opened = []
        for sd_uuid in self.domain_uuids():
            try:
                opened.append(self.domain(sd_uuid))
            except VdsmError as e:
                log.warning("domain %s unavailable: %s", sd_uuid, e)
        return opened

    def _link(self, sd_uuid: str) -> Path:
        return self.links_dir / sd_uuid
