"""This host's storage: the repository of domains, the image locks, and its SPM roles.

In a pool one host, the SPM, alone changes metadata (creates, deletes, copies volumes). vdsm
runs one host per pool today: creating a pool makes this host its SPM, and after a restart it
takes the role again for every pool whose master domain it can reach (``auto_spm``).
``spmStop`` gives the role up, and SPM verbs then answer 654, as on a host that is not the SPM.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from vdsm import validation
from vdsm.errors import SpmStatusError, StorageDomainDoesNotExist
from vdsm.storage.constants import DomainRole
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.pool import StoragePool
from vdsm.storage.repository import StorageRepository
from vdsm.storage.resource_locks import ResourceLocks
from vdsm.storage.storage_roots import StorageRoots

log = logging.getLogger("vdsm.storage.host_storage")


METADATA_LOCK_FILE = "metadata.lock"


class HostStorage:
    def __init__(
        self,
        repository: StorageRepository,
        *,
        storage_roots: StorageRoots | None = None,
        auto_spm: bool = True,
    ) -> None:
        self.repository = repository
        # None: anywhere (the storage unit tests); vdsmd always passes its configured roots.
        self.roots = storage_roots
        self.locks = ResourceLocks()
        self._metadata_mutex = threading.Lock()
        self._spm_lock = threading.Lock()
        self._spm_pools: set[str] = set()
        if auto_spm:
            for sp_uuid in self.pool_uuids():
                self._spm_pools.add(sp_uuid)
                log.info("this host is SPM of pool %s", sp_uuid)

    @contextmanager
    def metadata_lock(self) -> Iterator[None]:
        """Held around every change of pool or domain metadata (create a domain or a pool,
        attach a domain): each reads the metadata, decides, then writes it, and two at once
        would both decide on the old state (two masters, a lost member, one domain in two
        pools). A mutex for this daemon's threads, and flock on a file in the repository for
        any other process that shares it."""
        with self._metadata_mutex:
            fd = os.open(
                self.repository.root / METADATA_LOCK_FILE,
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def pool_uuids(self) -> list[str]:
        """Pools whose master domain this host can reach."""
        return sorted(
            d.metadata.pool_uuid
            for d in self.repository.domains()
            if d.metadata.role is DomainRole.MASTER and d.metadata.pool_uuid
        )

    def pool(self, sp_uuid: str) -> StoragePool:
        return StoragePool.open(self.repository, sp_uuid)

    def pool_domain(self, sp_uuid: str, sd_uuid: str) -> FileStorageDomain:
        """A domain of a pool: 309 unknown pool, 358 unknown domain, 353 not in that pool."""
        pool = self.pool(sp_uuid)
        return pool.domain(sd_uuid)

    def spm_pool(self, sp_uuid: str) -> StoragePool:
        """The pool, if this host is its SPM; 654 otherwise."""
        pool = self.pool(sp_uuid)
        with self._spm_lock:
            if pool.sp_uuid not in self._spm_pools:
                raise SpmStatusError(f"this host is not the SPM of pool {pool.sp_uuid}")
        return pool

    def is_spm(self, sp_uuid: str) -> bool:
        with self._spm_lock:
            return validation.uuid(sp_uuid, "spUUID") in self._spm_pools

    def spm_start(self, sp_uuid: str) -> None:
        pool = self.pool(sp_uuid)
        with self._spm_lock:
            self._spm_pools.add(pool.sp_uuid)
        log.info("this host is SPM of pool %s", pool.sp_uuid)

    def spm_stop(self, sp_uuid: str) -> None:
        pool = self.pool(sp_uuid)
        with self._spm_lock:
            self._spm_pools.discard(pool.sp_uuid)
        log.info("this host is no longer SPM of pool %s", pool.sp_uuid)

    def master_tasks_dirs(self) -> list[tuple[str, FileStorageDomain]]:
        """(pool, master domain) for every reachable pool: where its tasks are persisted."""
        found = []
        for sp_uuid in self.pool_uuids():
            try:
                found.append((sp_uuid, self.pool(sp_uuid).master))
            except StorageDomainDoesNotExist:
                continue
        return found
