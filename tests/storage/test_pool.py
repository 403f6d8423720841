"""Storage pools: creation over real domains, info, attach, and the refusals that keep a
domain in one pool only."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.storage.support import new_uuid
from vdsm.errors import (
    InvalidParameter,
    StorageDomainAlreadyAttached,
    StorageDomainDoesNotExist,
    StorageDomainNotInPool,
    StoragePoolAlreadyExists,
    StoragePoolUnknown,
)
from vdsm.storage.constants import DomainRole
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.pool import StoragePool
from vdsm.storage.repository import StorageRepository

MakeDomain = Callable[..., FileStorageDomain]


def test_create_pool_and_read_it_back(
    repository: StorageRepository, make_domain: MakeDomain
) -> None:
    master, other = make_domain("master"), make_domain("other")
    sp = new_uuid()
    StoragePool.create(repository, sp, "dc1", master.sd_uuid, [other.sd_uuid], master_version=3)

    pool = StoragePool.open(StorageRepository(repository.root), sp)  # as after a restart
    info = pool.info()
    assert info.sp_uuid == sp and info.name == "dc1"
    assert info.master_uuid == master.sd_uuid and info.master_version == 3
    assert info.domains == {master.sd_uuid: "Active", other.sd_uuid: "Active"}
    assert pool.domain(other.sd_uuid).metadata.role is DomainRole.REGULAR
    assert pool.master.metadata.role is DomainRole.MASTER
    assert pool.master.tasks_dir.is_dir()


def test_attach_adds_a_domain_once(repository: StorageRepository, make_domain: MakeDomain) -> None:
    master, extra = make_domain("master"), make_domain("extra")
    sp = new_uuid()
    pool = StoragePool.create(repository, sp, "dc1", master.sd_uuid, [])
    with pytest.raises(StorageDomainNotInPool, match=extra.sd_uuid):
        pool.domain(extra.sd_uuid)
    pool.attach(extra.sd_uuid)
    pool.attach(extra.sd_uuid)
    assert sorted(pool.member_uuids()) == sorted([master.sd_uuid, extra.sd_uuid])
    assert repository.domain(extra.sd_uuid).metadata.pool_uuid == sp


def test_a_domain_belongs_to_one_pool(
    repository: StorageRepository, make_domain: MakeDomain
) -> None:
    a, b = make_domain("a"), make_domain("b")
    sp1, sp2 = new_uuid(), new_uuid()
    StoragePool.create(repository, sp1, "one", a.sd_uuid, [])
    with pytest.raises(StorageDomainAlreadyAttached, match=sp1):
        StoragePool.create(repository, sp2, "two", b.sd_uuid, [a.sd_uuid])
    # The refused create changed nothing on b.
    assert repository.domain(b.sd_uuid).metadata.pool_uuid == ""
    pool2 = StoragePool.create(repository, sp2, "two", b.sd_uuid, [])
    with pytest.raises(StorageDomainAlreadyAttached):
        pool2.attach(a.sd_uuid)
    with pytest.raises(StoragePoolAlreadyExists, match=sp2):
        StoragePool.create(repository, sp2, "again", b.sd_uuid, [])


def test_unknown_things_are_named(repository: StorageRepository, make_domain: MakeDomain) -> None:
    master = make_domain("master")
    missing_sd, missing_sp = new_uuid(), new_uuid()
    with pytest.raises(StoragePoolUnknown, match=missing_sp):
        StoragePool.open(repository, missing_sp)
    with pytest.raises(StorageDomainDoesNotExist, match=missing_sd):
        StoragePool.create(repository, new_uuid(), "x", master.sd_uuid, [missing_sd])
    with pytest.raises(InvalidParameter, match="spUUID"):
        StoragePool.open(repository, "../../pools")
    with pytest.raises(InvalidParameter, match="poolName"):
        StoragePool.create(repository, new_uuid(), "x" * 51, master.sd_uuid, [])
    assert repository.domain(master.sd_uuid).metadata.pool_uuid == ""
