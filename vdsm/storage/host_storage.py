"""This host's storage: the repository of domains, the image locks, its pool connections and
its SPM roles.

In a pool one host, the SPM, alone changes metadata (creates, deletes, copies volumes), and
only while it holds the pool's sanlock lease (vdsm.storage.spm). Every SPM verb asks
:meth:`HostStorage.spm_pool` first: 654 on any host that does not hold the lease now.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from vdsm.storage.clusterlock import LeaseHolder
from vdsm.storage.constants import DomainRole
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.pool import StoragePool
from vdsm.storage.pool_connection import PoolConnections
from vdsm.storage.repository import StorageRepository
from vdsm.storage.resource_locks import ResourceLocks
from vdsm.storage.spm import SpmRoles
from vdsm.storage.storage_roots import StorageRoots
from vdsm.storage.volume_lease import VolumeLeases

log = logging.getLogger("vdsm.storage.host_storage")


METADATA_LOCK_FILE = "metadata.lock"
HSM_TASKS_DIR = "tasks"


class HostStorage:
    def __init__(
        self,
        repository: StorageRepository,
        connections: PoolConnections,
        spm: SpmRoles,
        *,
        storage_roots: StorageRoots | None = None,
        io_timeout: int = 10,
        leases: VolumeLeases | None = None,
    ) -> None:
        self.repository = repository
        self.connections = connections
        self.spm = spm
        # None: anywhere (the storage unit tests); vdsmd always passes its configured roots.
        self.roots = storage_roots
        # sanlock io_timeout of the lockspaces of domains this host creates.
        self.io_timeout = io_timeout
        self.locks = ResourceLocks()
        # Volume leases (volume_lease.py); vdsmd passes its own, sharing the SPM's sanlock
        # registration. None: off (the storage unit tests, which join no lockspace).
        self.leases = (
            leases
            if leases is not None
            else VolumeLeases(LeaseHolder(), connections, enabled=False)
        )
        # This host's own tasks (spmStart), apart from any pool's: they are not SPM tasks,
        # and no other host may recover them.
        self.hsm_tasks_dir = repository.root / HSM_TASKS_DIR
        self._metadata_mutex = threading.Lock()

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
        """The pool, if this host is its SPM (holds its lease) now; 654 otherwise."""
        pool = self.pool(sp_uuid)
        self.spm.check(pool.sp_uuid)
        return pool

    def is_spm(self, sp_uuid: str) -> bool:
        return self.spm.is_spm(sp_uuid)
