"""The SPM role: this host changes a pool's metadata only while it holds the pool's SDM lease.

The lease is sanlock's resource ``SDM`` in the master domain's ``dom_md/leases`` (1 MiB), held
by vdsmd's own registration (clusterlock.LeaseHolder). Per pool the role is a small state
machine, persisted (atomic write, fsync, rename) before each step it guards::

    Free ──spmStart──▶ Contend ──lease acquired──▶ SPM ──spmStop──▶ Stopping ──▶ Free
                          └──refused (651)───────▶ Free

spmStart follows VDSM's order: join the master's lockspace (wait up to host_id_timeout, else
661), acquire SDM (another holder: 651 with sanlock's reason), persist SPM with the lease's
lver, load the master's persisted tasks and roll back every one a previous SPM left
unfinished, and only then allow SPM verbs (everything else answers 654). A record found at
start saying SPM or Contend belonged to a dead process, whose lease sanlock freed with it.

A watchdog asks sanlock every ``watchdog_interval`` seconds whether this process still holds
each SDM it believes it holds; a lease gone (forced away by another host's fenceSpmStorage,
the lockspace lost, the daemon restarted) calls ``on_lease_lost``, which in vdsmd ends the
process at once, as VDSM's SPM watchdog panics: its copies die with it, and nothing is rolled
back or written without the lease; the next SPM rolls the tasks back.

``getSpmStatus`` answers from sanlock on every host: the lease's lver as stored and its holder
if that host is alive in the lockspace (a dead or restarted holder's lease counts as free).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from vdsm import validation
from vdsm.errors import (
    InvalidParameter,
    IsSpm,
    SpmStartError,
    SpmStatusError,
    SpmStopError,
    VdsmError,
)
from vdsm.storage import clusterlock, fileutil
from vdsm.storage.clusterlock import HostState, LeaseHolder
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.pool import StoragePool
from vdsm.storage.pool_connection import PoolConnections
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task.manager import TaskManager

log = logging.getLogger("vdsm.storage.spm")

SPM_DIR = "spm"
NO_SPM = -1


class SpmState(StrEnum):
    FREE = "Free"
    CONTEND = "Contend"
    SPM = "SPM"
    STOPPING = "Stopping"


@dataclass(frozen=True)
class SpmRecord:
    sp_uuid: str
    state: SpmState
    host_id: int
    lver: int
    changed: float

    def to_json(self) -> bytes:
        data = asdict(self)
        data["state"] = self.state.value
        return json.dumps(data, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class SpmStatus:
    """getSpmStatus: this host's role, and the pool's SPM and lver as sanlock stores them."""

    state: SpmState
    spm_id: int
    lver: int


LeaseLost = Callable[[str, str], None]  # (spUUID, why)


class SpmRoles:
    """This host's SPM role in every pool it is connected to."""

    def __init__(
        self,
        repository: StorageRepository,
        connections: PoolConnections,
        tasks: TaskManager,
        *,
        holder: LeaseHolder | None = None,
        host_id_timeout: float = 180.0,
        watchdog_interval: float = 5.0,
        on_lease_lost: LeaseLost,
    ) -> None:
        self._repository = repository
        self._connections = connections
        self._tasks = tasks
        self._holder = LeaseHolder() if holder is None else holder
        self._host_id_timeout = host_id_timeout
        self._watchdog_interval = watchdog_interval
        self._on_lease_lost = on_lease_lost
        self._dir = repository.root / SPM_DIR
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, SpmRecord] = {}
        # The master domain of each pool this host became SPM of: the watchdog needs only its
        # UUID, and must not touch the storage to learn it (a hung member would hang it).
        self._masters: dict[str, str] = {}
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._forget_dead_roles()

    # --- the verbs --------------------------------------------------------------------------

    def start(self, sp_uuid: str, prev_id: int = NO_SPM, prev_lver: int = NO_SPM) -> int:
        """Become the pool's SPM (run inside the spmStart task); returns the new lver."""
        sp_uuid = validation.uuid(sp_uuid, "spUUID")
        connection = self._connections.connection(sp_uuid)  # 313 when not connected
        with self._lock:
            current = self._state(sp_uuid)
            if current is SpmState.SPM:
                raise IsSpm(f"this host is already the SPM of pool {sp_uuid}")
            if current is not SpmState.FREE:
                raise SpmStartError(f"pool {sp_uuid}: this host is already {current.value}")
            self._persist(sp_uuid, SpmState.CONTEND, connection.host_id, 0)
        try:
            master = StoragePool.open(self._repository, sp_uuid).master
            self._connections.monitor(master.sd_uuid).wait_joined(self._host_id_timeout)
            before = self._resource(master)
            if prev_id != before.owner_id or prev_lver != before.lver:
                # VDSM documents both as obsolete and only logs a mismatch: the lease decides.
                log.info(
                    "pool %s: engine expects previous SPM %s lver %s; sanlock has %s lver %d",
                    sp_uuid, prev_id, prev_lver, before.owner_id, before.lver,
                )  # fmt: skip
            lver = self._holder.acquire(
                master.sd_uuid, clusterlock.SDM_RESOURCE, master.leases_path, clusterlock.SDM_OFFSET
            )
        except BaseException:
            with self._lock:
                self._persist(sp_uuid, SpmState.FREE, connection.host_id, 0)
            raise
        log.info("pool %s: acquired the SPM lease (host id %d, lver %d)", sp_uuid,
                 connection.host_id, lver)  # fmt: skip
        # The master's tasks are loaded, and the unfinished ones set rolling back, before any
        # SPM verb is allowed: no new task can meet a half-done one of the previous SPM.
        recovered = self._tasks.recover([master.tasks_dir])
        if recovered:
            log.info("pool %s: loaded the master's tasks %s", sp_uuid, recovered)
        with self._lock:
            self._masters[sp_uuid] = master.sd_uuid
            self._persist(sp_uuid, SpmState.SPM, connection.host_id, lver)
        self._start_watchdog()
        return lver

    def stop(self, sp_uuid: str) -> None:
        """Give the role up: 653 while SPM tasks run; then release the lease."""
        sp_uuid = validation.uuid(sp_uuid, "spUUID")
        with self._lock:
            record = self._records.get(sp_uuid)
            if record is None or record.state is SpmState.FREE:
                return  # not SPM: nothing to give up (VDSM answers success too)
            if record.state is not SpmState.SPM:
                raise SpmStopError(f"pool {sp_uuid}: this host is {record.state.value}")
            master = StoragePool.open(self._repository, sp_uuid).master
            running = self._tasks.unfinished_in(master.tasks_dir)
            if running:
                raise SpmStopError(f"pool {sp_uuid}: tasks still running: {', '.join(running)}")
            # Stopping first: SPM verbs are refused from here on, and a crash before the
            # release leaves a record a restart reads as "the lease died with us".
            self._persist(sp_uuid, SpmState.STOPPING, record.host_id, record.lver)
            self._tasks.forget(master.tasks_dir)
        try:
            self._holder.release(
                master.sd_uuid, clusterlock.SDM_RESOURCE, master.leases_path, clusterlock.SDM_OFFSET
            )
        finally:
            with self._lock:
                self._persist(sp_uuid, SpmState.FREE, record.host_id, record.lver)
        log.info("pool %s: released the SPM lease (lver %d)", sp_uuid, record.lver)

    def fence(self, sp_uuid: str) -> None:
        """Force the SDM lease from its holder (sanlock REQ_FORCE): the holder's daemon kills
        the holding vdsmd, freeing the lease; spmStart can then take it."""
        master = StoragePool.open(self._repository, validation.uuid(sp_uuid, "spUUID")).master
        self._connections.connection(sp_uuid)
        if self.is_spm(sp_uuid):
            raise IsSpm(f"this host is the SPM of pool {sp_uuid}: spmStop instead of fencing it")
        clusterlock.request_force(
            master.sd_uuid, clusterlock.SDM_RESOURCE, master.leases_path, clusterlock.SDM_OFFSET
        )
        log.warning("pool %s: requested the SPM lease by force", sp_uuid)

    def status(self, sp_uuid: str) -> SpmStatus:
        sp_uuid = validation.uuid(sp_uuid, "spUUID")
        master = StoragePool.open(self._repository, sp_uuid).master
        stored = self._resource(master)
        spm_id = NO_SPM
        if stored.owner_id is not None:
            host = clusterlock.host_info(master.sd_uuid, stored.owner_id)
            if host is None:
                spm_id = stored.owner_id  # this host has not joined: it cannot judge liveness
            elif host.state not in (HostState.DEAD, HostState.FREE) and (
                host.generation == stored.owner_generation
            ):
                spm_id = stored.owner_id
        with self._lock:
            state = self._state(sp_uuid)
        return SpmStatus(state, spm_id, stored.lver)

    def check(self, sp_uuid: str) -> None:
        """654 unless this host is the pool's SPM now."""
        if not self.is_spm(sp_uuid):
            raise SpmStatusError(f"this host is not the SPM of pool {sp_uuid}")

    def is_spm(self, sp_uuid: str) -> bool:
        key = validation.uuid(sp_uuid, "spUUID")
        with self._lock:
            return self._state(key) is SpmState.SPM

    def shutdown(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=30)

    # --- the watchdog -----------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        with self._lock:
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="spm-watchdog", daemon=True
                )
                self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._watchdog_interval):
            self.check_leases()

    def check_leases(self) -> None:
        """Compare the pools this host is SPM of with the SDM leases sanlock says it holds."""
        with self._lock:
            spm = {sp: r for sp, r in self._records.items() if r.state is SpmState.SPM}
            masters = dict(self._masters)
        if not spm:
            return
        try:
            held = {(ls, res): lver for ls, res, lver in self._holder.held()}
            problem = ""
        except VdsmError as e:
            held, problem = {}, e.message
        for sp_uuid, record in spm.items():
            master_sd = masters.get(sp_uuid)
            if master_sd is None:
                try:
                    master_sd = StoragePool.open(self._repository, sp_uuid).master.sd_uuid
                except VdsmError as e:
                    self._lost(sp_uuid, record, f"the master domain is unreachable: {e}")
                    continue
            # A master that stops answering fails sanlock's renewals: the lease is then lost,
            # and sanlock says so here.
            lver = held.get((master_sd, clusterlock.SDM_RESOURCE))
            if lver is None:
                self._lost(sp_uuid, record, problem or "sanlock no longer lists it as held")
            elif lver != record.lver:
                self._lost(sp_uuid, record, f"it is held at lver {lver}, not {record.lver}")

    def _lost(self, sp_uuid: str, record: SpmRecord, why: str) -> None:
        with self._lock:
            if self._state(sp_uuid) is not SpmState.SPM:
                return  # stopped meanwhile: released on purpose
            # Refuse SPM verbs at once, in memory (writing the record could block on the
            # same storage that lost the lease); the dead role is forgotten at the next start.
            self._records[sp_uuid] = SpmRecord(
                sp_uuid, SpmState.FREE, record.host_id, record.lver, time.time()
            )
        log.critical("pool %s: lost the SPM lease (lver %d): %s", sp_uuid, record.lver, why)
        self._on_lease_lost(sp_uuid, why)

    # --- helpers ----------------------------------------------------------------------------

    def _resource(self, master: FileStorageDomain) -> clusterlock.ResourceState:
        return clusterlock.resource_state(
            master.sd_uuid,
            clusterlock.SDM_RESOURCE,
            master.leases_path,
            clusterlock.SDM_OFFSET,
            block_size=master.metadata.block_size,
        )

    def _state(self, sp_uuid: str) -> SpmState:
        record = self._records.get(sp_uuid)
        return SpmState.FREE if record is None else record.state

    def _persist(self, sp_uuid: str, state: SpmState, host_id: int, lver: int) -> None:
        record = SpmRecord(sp_uuid, state, host_id, lver, time.time())
        fileutil.write_state(self._path(sp_uuid), record.to_json(), "the SPM record")
        self._records[sp_uuid] = record

    def _forget_dead_roles(self) -> None:
        for path in sorted(self._dir.glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
                sp_uuid = validation.uuid(data["sp_uuid"], "sp_uuid")
                state = SpmState(data["state"])
                host_id, lver = int(data["host_id"]), int(data["lver"])
            except (ValueError, KeyError, TypeError, OSError, InvalidParameter) as e:
                log.error("unreadable SPM record %s, ignored: %s", path, e)
                continue
            if state is not SpmState.FREE:
                log.warning(
                    "pool %s: this host was %s (lver %d) before vdsmd restarted; that lease "
                    "died with the old process",
                    sp_uuid, state.value, lver,
                )  # fmt: skip
            self._persist(sp_uuid, SpmState.FREE, host_id, lver)

    def _path(self, sp_uuid: str) -> Path:
        return self._dir / f"{sp_uuid}.json"
