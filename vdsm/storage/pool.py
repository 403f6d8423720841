"""Storage pools: a set of storage domains, one of them the master.

As in VDSM, the pool has no file of its own: its name, member list and master version live in
the master domain's ``dom_md/metadata``, and every member domain records the pool's UUID. The
pool is found again after a restart by looking for the master domain among the host's domains.
Member domains are written before the master, so a create interrupted half-way leaves no pool,
only domains that name a pool which does not exist and may be attached again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vdsm import validation
from vdsm.errors import (
    InvalidParameter,
    StorageDomainAlreadyAttached,
    StorageDomainNotInPool,
    StoragePoolAlreadyExists,
    StoragePoolUnknown,
)
from vdsm.storage.constants import NAME_MAX_LENGTH, DomainRole
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository

log = logging.getLogger("vdsm.storage.pool")

ACTIVE = "Active"


@dataclass(frozen=True)
class PoolInfo:
    sp_uuid: str
    name: str
    master_uuid: str
    master_version: int
    domains: dict[str, str]  # sdUUID → status


class StoragePool:
    """An open pool: its master domain and the repository to find its members in."""

    def __init__(self, repository: StorageRepository, master: FileStorageDomain) -> None:
        self.repository = repository
        self.master = master

    @property
    def sp_uuid(self) -> str:
        return self.master.metadata.pool_uuid

    def __repr__(self) -> str:
        return f"StoragePool({self.sp_uuid!r}, master={self.master.sd_uuid!r})"

    @classmethod
    def open(cls, repository: StorageRepository, sp_uuid: str) -> StoragePool:
        sp_uuid = validation.uuid(sp_uuid, "spUUID")
        for domain in repository.domains():
            md = domain.metadata
            if md.pool_uuid == sp_uuid and md.role is DomainRole.MASTER:
                return cls(repository, domain)
        raise StoragePoolUnknown(sp_uuid)

    @classmethod
    def create(
        cls,
        repository: StorageRepository,
        sp_uuid: str,
        name: str,
        master_sd_uuid: str,
        domain_uuids: list[str],
        master_version: int = 1,
    ) -> StoragePool:
        sp_uuid = validation.uuid(sp_uuid, "spUUID")
        name = validation.text(name, "poolName", max_length=NAME_MAX_LENGTH)
        master_sd_uuid = validation.uuid(master_sd_uuid, "masterDom")
        members = [validation.uuid(sd, "domList") for sd in domain_uuids]
        if isinstance(master_version, bool) or not isinstance(master_version, int):
            raise InvalidParameter("masterVersion", master_version, "expected an integer")
        if master_sd_uuid not in members:
            members.append(master_sd_uuid)
        members = sorted(set(members))
        try:
            cls.open(repository, sp_uuid)
        except StoragePoolUnknown:
            pass
        else:
            raise StoragePoolAlreadyExists(sp_uuid)

        domains = [repository.domain(sd) for sd in members]  # 358 for an unknown one
        for domain in domains:
            owner = domain.metadata.pool_uuid
            if owner and owner != sp_uuid:
                raise StorageDomainAlreadyAttached(f"domain {domain.sd_uuid} is in pool {owner}")
        master = next(d for d in domains if d.sd_uuid == master_sd_uuid)
        for domain in domains:
            if domain is not master:
                domain.write_metadata(
                    domain.metadata.replace(pool_uuid=sp_uuid, role=DomainRole.REGULAR)
                )
        master.write_metadata(
            master.metadata.replace(
                pool_uuid=sp_uuid,
                role=DomainRole.MASTER,
                pool_name=name,
                pool_domains=tuple(f"{sd}:{ACTIVE}" for sd in members),
                master_version=master_version,
            )
        )
        log.info("created pool %s (%s) with master %s", sp_uuid, name, master_sd_uuid)
        return cls(repository, master)

    def member_uuids(self) -> list[str]:
        return [entry.split(":", 1)[0] for entry in self.master.metadata.pool_domains]

    def domain(self, sd_uuid: str) -> FileStorageDomain:
        """A member domain; 358 if unknown to this host, 353 if not in this pool."""
        sd_uuid = validation.uuid(sd_uuid, "sdUUID")
        domain = self.repository.domain(sd_uuid)
        if sd_uuid not in self.member_uuids():
            raise StorageDomainNotInPool(f"domain {sd_uuid}, pool {self.sp_uuid}")
        return domain

    def attach(self, sd_uuid: str) -> None:
        sd_uuid = validation.uuid(sd_uuid, "sdUUID")
        domain = self.repository.domain(sd_uuid)
        owner = domain.metadata.pool_uuid
        if owner == self.sp_uuid and sd_uuid in self.member_uuids():
            return  # attaching twice is harmless
        if owner and owner != self.sp_uuid:
            raise StorageDomainAlreadyAttached(f"domain {sd_uuid} is in pool {owner}")
        domain.write_metadata(
            domain.metadata.replace(pool_uuid=self.sp_uuid, role=DomainRole.REGULAR)
        )
        entries = set(self.master.metadata.pool_domains) | {f"{sd_uuid}:{ACTIVE}"}
        self.master.write_metadata(
            self.master.metadata.replace(pool_domains=tuple(sorted(entries)))
        )
        log.info("attached domain %s to pool %s", sd_uuid, self.sp_uuid)

    def info(self) -> PoolInfo:
        md = self.master.metadata
        statuses = dict(entry.split(":", 1) for entry in md.pool_domains)
        return PoolInfo(
            sp_uuid=md.pool_uuid,
            name=md.pool_name,
            master_uuid=self.master.sd_uuid,
            master_version=md.master_version,
            domains=statuses,
        )
