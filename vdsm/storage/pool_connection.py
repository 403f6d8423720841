"""Pool connections: this host in a pool, with the host id the engine gave it.

``connectStoragePool(spUUID, hostID, scsiKey, msdUUID, masterVersion)`` checks the master and
its version, formats lease areas a pre-lease domain lacks, persists the connection (atomic
write, fsync, rename) *before* joining, and starts one :class:`DomainMonitor` per member
domain, which joins the domain's lockspace in the background: the call returns at once, and
``repoStats`` shows per domain whether the id is acquired yet. A restarted vdsmd reads the
persisted connections and rejoins with the same host id (the seed's reconnect information).
``disconnectStoragePool`` stops the monitors, leaves the lockspaces and forgets the pool.

Host ids are the engine's to assign (1..250, unique per pool); two hosts given one id would
both be refused by sanlock's delta lease on ``ids`` or fence each other, as in VDSM.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from vdsm import validation
from vdsm.errors import (
    InvalidParameter,
    StoragePoolNotConnected,
    StoragePoolWrongMaster,
    VdsmError,
)
from vdsm.storage import clusterlock, fileutil
from vdsm.storage.clusterlock import JoinState
from vdsm.storage.domain_monitor import DomainMonitor, DomainStatus
from vdsm.storage.pool import StoragePool
from vdsm.storage.repository import StorageRepository

log = logging.getLogger("vdsm.storage.pool_connection")

POOLS_DIR = "pools"


@dataclass(frozen=True)
class PoolConnection:
    """What connectStoragePool was given, as persisted."""

    sp_uuid: str
    host_id: int
    master_uuid: str
    master_version: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> PoolConnection:
        try:
            values = json.loads(data)
            return cls(
                sp_uuid=validation.uuid(values["sp_uuid"], "sp_uuid"),
                host_id=check_host_id(values["host_id"]),
                master_uuid=validation.uuid(values["master_uuid"], "master_uuid"),
                master_version=int(values["master_version"]),
            )
        except (ValueError, KeyError, TypeError, InvalidParameter) as e:
            raise VdsmError(f"{where}: unreadable pool connection: {e}") from None


def check_host_id(host_id: object) -> int:
    if isinstance(host_id, bool) or not isinstance(host_id, int):
        raise InvalidParameter("hostID", host_id, "expected an integer")
    if not 1 <= host_id <= clusterlock.MAX_HOST_ID:
        raise InvalidParameter("hostID", host_id, f"must be 1 to {clusterlock.MAX_HOST_ID}")
    return host_id


class PoolConnections:
    """The pools this host is connected to, their monitors, and their persisted records."""

    def __init__(
        self,
        repository: StorageRepository,
        *,
        io_timeout: int = 10,
        monitor_interval: float = 10.0,
    ) -> None:
        self._repository = repository
        self._dir = repository.root / POOLS_DIR
        self._dir.mkdir(parents=True, exist_ok=True)
        self._io_timeout = io_timeout
        self._monitor_interval = monitor_interval
        self._lock = threading.Lock()
        self._pools: dict[str, PoolConnection] = {}
        self._monitors: dict[str, DomainMonitor] = {}  # sdUUID → monitor

    # --- connect and disconnect -------------------------------------------------------------

    def connect(
        self, sp_uuid: str, host_id: object, master_uuid: str, master_version: object
    ) -> PoolConnection:
        sp_uuid = validation.uuid(sp_uuid, "spUUID")
        host_id = check_host_id(host_id)
        master_uuid = validation.uuid(master_uuid, "msdUUID")
        if isinstance(master_version, bool) or not isinstance(master_version, int):
            raise InvalidParameter("masterVersion", master_version, "expected an integer")
        pool = StoragePool.open(self._repository, sp_uuid)  # 309 if no master is reachable
        info = pool.info()
        if info.master_uuid != master_uuid or info.master_version != master_version:
            raise StoragePoolWrongMaster(
                f"pool {sp_uuid}: the master is {info.master_uuid} version "
                f"{info.master_version}, not {master_uuid} version {master_version}"
            )
        connection = PoolConnection(sp_uuid, host_id, master_uuid, master_version)
        with self._lock:
            known = self._pools.get(sp_uuid)
            if known is not None and known.host_id != host_id:
                raise InvalidParameter(
                    "hostID", host_id, f"pool {sp_uuid} is connected with host id {known.host_id}"
                )
            for sd_uuid in pool.member_uuids():
                self._repository.domain(sd_uuid).ensure_leases(self._io_timeout)
            # Persisted before joining: a crash in between rejoins at the next start.
            fileutil.write_state(
                self._path(sp_uuid), connection.to_json(), "the pool connection record"
            )
            self._pools[sp_uuid] = connection
            self._watch(pool.member_uuids(), host_id)
        log.info("connected to pool %s as host id %d", sp_uuid, host_id)
        return connection

    def disconnect(self, sp_uuid: str, host_id: object) -> None:
        sp_uuid = validation.uuid(sp_uuid, "spUUID")
        host_id = check_host_id(host_id)
        with self._lock:
            connection = self._pools.get(sp_uuid)
            if connection is None:
                raise StoragePoolNotConnected(f"pool {sp_uuid}")
            if connection.host_id != host_id:
                raise InvalidParameter(
                    "hostID", host_id, f"pool {sp_uuid} is connected as host id "
                    f"{connection.host_id}",
                )  # fmt: skip
            del self._pools[sp_uuid]
            members = [sd for sd, m in self._monitors.items() if m.host_id == host_id]
            stopping = [self._monitors.pop(sd) for sd in members if not self._wanted(sd)]
            fileutil.remove_file(self._path(sp_uuid))
            fileutil.fsync_dir(self._dir)
        for monitor in stopping:
            monitor.stop(leave=True)
        log.info("disconnected from pool %s", sp_uuid)

    def reconnect_all(self) -> list[str]:
        """At daemon start: rejoin every persisted pool with its host id."""
        found = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                connection = PoolConnection.from_json(path.read_bytes(), path)
                pool = StoragePool.open(self._repository, connection.sp_uuid)
            except (VdsmError, OSError) as e:
                log.error("cannot reconnect %s: %s", path, e)
                continue
            with self._lock:
                self._pools[connection.sp_uuid] = connection
                self._watch(pool.member_uuids(), connection.host_id)
            found.append(connection.sp_uuid)
            log.info("reconnected to pool %s as host id %d", connection.sp_uuid, connection.host_id)
        return found

    def add_member(self, sp_uuid: str, sd_uuid: str) -> None:
        """A domain attached to a connected pool: format what it lacks and join it too."""
        with self._lock:
            connection = self._pools.get(sp_uuid)
            if connection is None:
                return
            self._repository.domain(sd_uuid).ensure_leases(self._io_timeout)
            self._watch([sd_uuid], connection.host_id)

    def shutdown(self) -> None:
        """Stop every monitor and keep the lockspaces: the next vdsmd rejoins at once."""
        with self._lock:
            monitors = list(self._monitors.values())
            self._monitors.clear()
        for monitor in monitors:
            monitor.stop(leave=False)

    # --- queries ----------------------------------------------------------------------------

    def connection(self, sp_uuid: str) -> PoolConnection:
        """This host's connection to the pool; 313 if it is not connected."""
        sp_uuid = validation.uuid(sp_uuid, "spUUID")
        with self._lock:
            connection = self._pools.get(sp_uuid)
        if connection is None:
            raise StoragePoolNotConnected(
                f"pool {sp_uuid}: this host is not connected to it (connectStoragePool)"
            )
        return connection

    def is_connected(self, sp_uuid: str) -> bool:
        with self._lock:
            return sp_uuid in self._pools

    def monitor(self, sd_uuid: str) -> DomainMonitor:
        with self._lock:
            monitor = self._monitors.get(sd_uuid)
        if monitor is None:
            raise StoragePoolNotConnected(f"domain {sd_uuid} is in no pool this host connected")
        return monitor

    def join_state(self, sd_uuid: str) -> tuple[int, JoinState]:
        """(this host's id, where its join stands) in a connected domain's lockspace, from
        sanlock itself (the monitor's last check may lag a join that just finished); 313 if
        no connected pool has the domain."""
        monitor = self.monitor(sd_uuid)
        domain = self._repository.domain(sd_uuid)
        return monitor.host_id, clusterlock.join_state(sd_uuid, monitor.host_id, domain.ids_path)

    def statuses(self) -> dict[str, DomainStatus]:
        with self._lock:
            monitors = list(self._monitors.values())
        return {m.sd_uuid: m.status() for m in monitors}

    def connected_domains(self) -> set[str]:
        with self._lock:
            return set(self._monitors)

    # --- helpers (caller holds _lock) --------------------------------------------------------

    def _watch(self, sd_uuids: list[str], host_id: int) -> None:
        for sd_uuid in sd_uuids:
            if sd_uuid in self._monitors:
                continue
            monitor = DomainMonitor(self._repository, sd_uuid, host_id, self._monitor_interval)
            self._monitors[sd_uuid] = monitor
            monitor.start()

    def _wanted(self, sd_uuid: str) -> bool:
        """Whether a pool still connected has this domain (a domain is in one pool at most)."""
        for connection in self._pools.values():
            try:
                if sd_uuid in StoragePool.open(self._repository, connection.sp_uuid).member_uuids():
                    return True
            except VdsmError:
                continue
        return False

    def _path(self, sp_uuid: str) -> Path:
        return self._dir / f"{sp_uuid}.json"
