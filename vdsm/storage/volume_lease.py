"""Volume leases: which sanlock lease guards a volume, and vdsmd holding them while it writes.

Every volume has a lease: resource ``volUUID`` in its domain's lockspace, at offset 0 of
``<vol>.lease`` (volume.py formats it when it creates the volume). Whoever writes a volume holds
its lease, so sanlock refuses a second writer anywhere in the pool:

- a running VM's QEMU process holds its top volume's lease (libvirt's sanlock lock manager;
  vdsm/virt/vm_leases.py decides which, and moves them with the disk);
- vdsmd holds, on its own sanlock registration (the one the SPM lease uses), the lease of every
  volume a task writes, for the whole write: the twins syncImageData copies into, the volumes a
  delete removes. A volume that a VM runs on elsewhere is then refused ("held by another host")
  before anything is changed.

A release that fails (the storage failed the write that frees the lease) leaves the lease on
the storage owned by this host, which sanlock has forgotten: no other host can take it while
this one lives, so a rollback's delete on the SPM would be refused for ever. :class:`StaleLeases`
keeps each such lease and writes it free (acquire again, release) once the storage works.

Leases are on where ``volume_leases`` is set (the default) and the volume's domain is one whose
lockspace this host joined (connectStoragePool): sanlock needs the join to acquire anything, and
says so only as ENOSPC, so the join is checked first and named in the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vdsm.errors import AcquireHostIdFailure, AcquireLockFailure, VdsmError
from vdsm.storage import clusterlock, volume
from vdsm.storage.clusterlock import JoinState, LeaseHolder
from vdsm.storage.domain import VOLUME_LEASE_SUFFIX
from vdsm.storage.pool_connection import PoolConnections
from vdsm.storage.volume import Volume

log = logging.getLogger("vdsm.storage.volume_lease")

# Seconds between two tries to write free the leases whose release failed.
STALE_RETRY_INTERVAL = 1.0

# Seconds a lease step waits for this host to finish joining a connected domain's lockspace
# (a join takes 2-3 io_timeouts: 30 s covers io_timeout 10), bounded so no verb hangs.
JOIN_WAIT = 30.0


@dataclass(frozen=True)
class VolumeLease:
    """Where one volume's lease lives: lockspace (sdUUID), resource (volUUID), file, offset."""

    sd_uuid: str
    vol_uuid: str
    path: Path
    offset: int = 0

    @classmethod
    def of(cls, vol: Volume) -> VolumeLease:
        return cls(vol.domain.sd_uuid, vol.vol_uuid, vol.lease_path)

    @classmethod
    def of_data_path(cls, sd_uuid: str, vol_uuid: str, data_path: str) -> VolumeLease:
        """The lease of the volume whose data file is ``data_path`` (file domains keep the
        lease beside it)."""
        return cls(sd_uuid, vol_uuid, Path(data_path + VOLUME_LEASE_SUFFIX))

    def describe(self) -> str:
        return f"lease of volume {self.vol_uuid} (domain {self.sd_uuid})"


class StaleLeases:
    """Leases whose release failed on this host, written free by a thread of their own as soon
    as the storage lets it (:meth:`LeaseHolder.clear_stale`), every ``interval`` seconds. In
    memory only: a vdsmd that restarts before the storage works again forgets them (the
    lease then stays owned by this host until the host leaves the lockspace)."""

    def __init__(self, holder: LeaseHolder, interval: float = STALE_RETRY_INTERVAL) -> None:
        self._holder = holder
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: dict[VolumeLease, str] = {}  # the lease, and why its release failed
        self._thread: threading.Thread | None = None

    def add(self, lease: VolumeLease, why: str) -> None:
        with self._lock:
            self._pending[lease] = why
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stale-leases", daemon=True)
                self._thread.start()
        log.warning(
            "%s: its release failed (%s); it is written free once the storage lets it",
            lease.describe(),
            why,
        )

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                leases = list(self._pending)
                if not leases:
                    self._thread = None
                    return
            for lease in leases:
                self._try(lease)

    def _try(self, lease: VolumeLease) -> None:
        try:
            cleared = self._holder.clear_stale(
                lease.sd_uuid, lease.vol_uuid, lease.path, lease.offset
            )
        except VdsmError as e:
            log.debug("%s: still cannot be written free: %s", lease.describe(), e.message)
            return
        with self._lock:
            self._pending.pop(lease, None)
        if cleared:
            log.info("%s: written free (its release had failed)", lease.describe())
        else:
            log.info("%s: held elsewhere now, or gone: nothing to write free", lease.describe())


class VolumeLeases:
    """This host's view of volume leases: on or off, joined or not, and vdsmd's own holds."""

    def __init__(
        self,
        holder: LeaseHolder,
        connections: PoolConnections,
        *,
        enabled: bool = True,
        join_wait: float = JOIN_WAIT,
    ) -> None:
        self._holder = holder
        self._connections = connections
        self.enabled = enabled
        self.join_wait = join_wait
        self.stale = StaleLeases(holder)

    def host_id(self, sd_uuid: str) -> int:
        """This host's id in the domain's lockspace; 661 if this host has not joined it."""
        try:
            host_id, state = self._connections.join_state(sd_uuid)
        except VdsmError:
            raise AcquireHostIdFailure(
                f"this host has not joined the lockspace of domain {sd_uuid}: connect its "
                "pool first (connectStoragePool), volume leases need it"
            ) from None
        if state is JoinState.JOINED:
            return host_id
        # A domain of a connected pool is being joined (its monitor joins it: 2-3 io_timeouts
        # after connectStoragePool or attachStorageDomain): wait for it, a bounded while, as
        # VDSM's lease verbs wait for their host id.
        try:
            self._connections.monitor(sd_uuid).wait_joined(self.join_wait)
        except AcquireHostIdFailure as e:
            raise AcquireHostIdFailure(
                f"this host (host id {host_id}) has not joined the lockspace of domain "
                f"{sd_uuid} yet: volume leases need it; retry once repoStats shows the domain "
                f"acquired ({e.message})"
            ) from None
        return host_id

    def owner(self, lease: VolumeLease, block_size: int) -> int | None:
        """The host id holding ``lease`` now, as stored in the lease (None: free)."""
        state = clusterlock.resource_state(
            lease.sd_uuid, lease.vol_uuid, lease.path, lease.offset, block_size=block_size
        )
        return state.owner_id

    @contextmanager
    def held(self, vols: Sequence[Volume], purpose: str) -> Iterator[HeldLeases]:
        """Hold every volume's lease in vdsmd for the body (all acquired before it starts, so
        a refusal changes nothing); 651 naming the volume when one is held elsewhere. The body
        may release one early (before it removes the volume's lease file)."""
        if not self.enabled:
            yield HeldLeases(self._holder, [], self.stale)
            return
        acquired: list[VolumeLease] = []
        held = HeldLeases(self._holder, acquired, self.stale)
        try:
            for vol in vols:
                lease = VolumeLease.of(vol)
                self.host_id(lease.sd_uuid)
                ensure_formatted(vol)
                try:
                    self._holder.acquire(lease.sd_uuid, lease.vol_uuid, lease.path, lease.offset)
                except AcquireLockFailure as e:
                    raise AcquireLockFailure(
                        f"cannot {purpose} {vol.description_for_errors}: its lease is not free "
                        f"(a VM or a task uses the volume): {e.message}"
                    ) from None
                acquired.append(lease)
            yield held
        finally:
            for lease in reversed(list(acquired)):
                held.release_lease(lease)


class HeldLeases:
    """The leases one :meth:`VolumeLeases.held` block holds."""

    def __init__(self, holder: LeaseHolder, leases: list[VolumeLease], stale: StaleLeases) -> None:
        self._holder = holder
        self._leases = leases
        self._stale = stale

    def release(self, vol: Volume) -> None:
        """Release ``vol``'s lease now, if this block holds it."""
        lease = VolumeLease.of(vol)
        if lease in self._leases:
            self.release_lease(lease)

    def release_lease(self, lease: VolumeLease) -> None:
        self._leases.remove(lease)
        try:
            self._holder.release(lease.sd_uuid, lease.vol_uuid, lease.path, lease.offset)
        except VdsmError as e:
            self._stale.add(lease, e.message)


def ensure_formatted(vol: Volume) -> None:
    """Give a volume made before volume leases existed its lease (an empty or missing
    ``.lease`` file is one nobody can hold yet); refuse a lease file naming another volume."""
    path = vol.lease_path
    block_size = vol.domain.metadata.block_size
    if path.exists() and path.stat().st_size > 0:
        stored = clusterlock.read_resource(path, 0, block_size=block_size)
        if stored is not None and stored[:2] == (vol.domain.sd_uuid, vol.vol_uuid):
            return
        if stored is not None:
            raise AcquireLockFailure(
                f"{vol.description_for_errors}: its lease file {path} holds the lease of "
                f"{stored[1]} in lockspace {stored[0]}"
            )
    path.unlink(missing_ok=True)
    volume.create_lease(vol)
    log.info("%s: formatted its lease (made before volume leases)", vol.description_for_errors)
