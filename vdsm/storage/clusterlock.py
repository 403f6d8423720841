"""sanlock: the one module that talks to the sanlock daemon (docs/design.md, "Leases").

Every storage domain is a sanlock *lockspace* named by its sdUUID: ``dom_md/ids`` holds one
delta lease per host id (1..250), renewed by the host's sanlock daemon while the host has
joined. *Resources* are paxos leases in that lockspace: the SPM lease ``SDM`` at 1 MiB in the
master domain's ``dom_md/leases`` (slot 1 of 1 MiB slots, as in VDSM), and each volume's lease
at offset 0 of ``<vol>.lease``. A resource can be held only by a process registered with a
daemon whose host has joined the lockspace; when that process dies the daemon frees it.

The binding (Debian's ``python3-sanlock``) reaches the daemon through its socket in
``$SANLOCK_RUN_DIR`` (default ``/run/sanlock``), read when each call connects: one host, one
daemon, and vdsmd inherits the variable from whoever starts it. Every binding error becomes a
VdsmError here, carrying sanlock's own reason ("Lease is held by another host"), so callers
and operators see why, not an errno.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import sanlock

from vdsm.errors import (
    AcquireHostIdFailure,
    AcquireLockFailure,
    ClusterLockInitError,
    ReleaseHostIdFailure,
    ReleaseLockFailure,
    SpmFenceError,
    VdsmError,
)

log = logging.getLogger("vdsm.storage.clusterlock")

MiB = 1024**2
# sanlock's lease alignment: one delta lease per host id in the first MiB of ids (250 hosts at
# 4 KiB sectors, 2000 at 512 bytes), one paxos lease per MiB slot in leases.
ALIGNMENT = MiB
IDS_SIZE = MiB
LEASES_SIZE = 2 * MiB
SDM_RESOURCE = "SDM"
SDM_OFFSET = 1 * MiB  # VDSM's SDM_LEASE_SLOT 1
VOLUME_LEASE_SIZE = MiB
MAX_HOST_ID = 250

# What an acquire answers when someone holds the lease now: another live host (sanlock's
# SANLK_ACQUIRE_IDLIVE, _OWNED, _OTHER) or another process of this host (EEXIST, EBUSY).
_HELD_ELSEWHERE = frozenset({243, 244, 245, errno.EEXIST, errno.EBUSY})

# get_hosts answers EAGAIN until the daemon has renewed the delta lease once after a join.
_GET_HOSTS_RETRIES = 20
_GET_HOSTS_PAUSE = 0.25


class HostState(StrEnum):
    """A host id's liveness in a lockspace, as this host's daemon sees it (sanlock HOST_*)."""

    UNKNOWN = "unknown"
    FREE = "free"
    LIVE = "live"
    FAIL = "fail"
    DEAD = "dead"


_HOST_FLAGS = {
    sanlock.HOST_UNKNOWN: HostState.UNKNOWN,
    sanlock.HOST_FREE: HostState.FREE,
    sanlock.HOST_LIVE: HostState.LIVE,
    sanlock.HOST_FAIL: HostState.FAIL,
    sanlock.HOST_DEAD: HostState.DEAD,
}


class JoinState(StrEnum):
    """Where this host is in joining a lockspace."""

    JOINED = "joined"
    JOINING = "joining"  # add_lockspace in progress (or a rem in progress)
    FREE = "free"  # not joined


@dataclass(frozen=True)
class HostInfo:
    host_id: int
    generation: int
    state: HostState


@dataclass(frozen=True)
class ResourceState:
    """A resource as stored: its lease version (lver) and its current owner, if any."""

    lver: int
    owner_id: int | None  # host id of the holder, None when free
    owner_generation: int | None


def _reason(e: sanlock.SanlockException) -> str:
    """sanlock's own words: ``(rc, 'what failed', 'why')`` → "why (rc)"."""
    args = e.args
    if len(args) >= 3:
        return f"{args[2]} (sanlock {args[1].lower()}, rc {args[0]})"
    return str(e)


def _rc(e: sanlock.SanlockException) -> int:
    return int(e.args[0]) if e.args else 0


def _sector(block_size: int) -> int:
    return 4096 if block_size == 4096 else 512


def _daemon_error(what: str, e: sanlock.SanlockException) -> VdsmError:
    return ClusterLockInitError(
        f"{what}: {_reason(e)}; is the sanlock daemon running (socket in $SANLOCK_RUN_DIR, "
        "default /run/sanlock)?"
    )


# --- formatting lease areas -------------------------------------------------------------------


def format_lockspace(sd_uuid: str, ids_path: Path, *, io_timeout: int, block_size: int) -> None:
    """Write an empty lockspace for ``sd_uuid`` in ``ids_path`` (no host joined)."""
    try:
        sanlock.write_lockspace(
            sd_uuid.encode(),
            str(ids_path),
            iotimeout=io_timeout,
            align=ALIGNMENT,
            sector=_sector(block_size),
        )
    except sanlock.SanlockException as e:
        raise _daemon_error(f"cannot format the lockspace {ids_path}", e) from None


def format_resource(
    sd_uuid: str, resource: str, path: Path, offset: int, *, block_size: int
) -> None:
    """Write a free paxos lease named ``resource`` at ``offset`` of ``path``."""
    try:
        sanlock.write_resource(
            sd_uuid.encode(),
            resource.encode(),
            [(str(path), offset)],
            align=ALIGNMENT,
            sector=_sector(block_size),
        )
    except sanlock.SanlockException as e:
        raise _daemon_error(f"cannot format the lease {resource} in {path}:{offset}", e) from None


def read_lockspace(ids_path: Path, *, block_size: int) -> tuple[str, int] | None:
    """(lockspace name, io_timeout) stored in ``ids_path``; None if it holds no lockspace."""
    try:
        found = sanlock.read_lockspace(str(ids_path), align=ALIGNMENT, sector=_sector(block_size))
    except sanlock.SanlockException as e:
        if _rc(e) == -223:  # SANLK_LEADER_MAGIC: the area was never formatted
            return None
        raise ClusterLockInitError(
            f"cannot read the lockspace in {ids_path}: {_reason(e)}"
        ) from None
    return found["lockspace"].decode(), int(found["iotimeout"])


def read_resource(path: Path, offset: int, *, block_size: int) -> tuple[str, str, int] | None:
    """(lockspace, resource, lver) of the lease at ``offset`` of ``path``; None if unformatted."""
    try:
        found = sanlock.read_resource(
            str(path), offset, align=ALIGNMENT, sector=_sector(block_size)
        )
    except sanlock.SanlockException as e:
        if _rc(e) == -223:
            return None
        raise ClusterLockInitError(
            f"cannot read the lease in {path}:{offset}: {_reason(e)}"
        ) from None
    return found["lockspace"].decode(), found["resource"].decode(), int(found["version"])


# --- lockspaces (host ids) --------------------------------------------------------------------


def join(sd_uuid: str, host_id: int, ids_path: Path, *, io_timeout: int) -> JoinState:
    """Start joining ``sd_uuid`` as ``host_id`` without waiting (it takes 2-3 io_timeouts)."""
    try:
        sanlock.add_lockspace(
            sd_uuid.encode(), host_id, str(ids_path), iotimeout=io_timeout, wait=False
        )
    except sanlock.SanlockException as e:
        if _rc(e) == errno.EEXIST:
            return JoinState.JOINED
        if _rc(e) == errno.EINPROGRESS:
            return JoinState.JOINING
        raise AcquireHostIdFailure(
            f"host id {host_id} in domain {sd_uuid} ({ids_path}): {_reason(e)}"
        ) from None
    return JoinState.JOINING


def join_state(sd_uuid: str, host_id: int, ids_path: Path) -> JoinState:
    try:
        joined = sanlock.inq_lockspace(sd_uuid.encode(), host_id, str(ids_path))
    except sanlock.SanlockException as e:
        raise _daemon_error(f"cannot inquire lockspace {sd_uuid}", e) from None
    if joined is None:
        return JoinState.JOINING
    return JoinState.JOINED if joined else JoinState.FREE


def leave(sd_uuid: str, host_id: int, ids_path: Path) -> None:
    """Leave the lockspace (waits; the daemon frees this host's delta lease)."""
    try:
        sanlock.rem_lockspace(sd_uuid.encode(), host_id, str(ids_path))
    except sanlock.SanlockException as e:
        if _rc(e) == errno.ENOENT:
            return  # not joined: nothing to leave
        raise ReleaseHostIdFailure(
            f"host id {host_id} in domain {sd_uuid} ({ids_path}): {_reason(e)}"
        ) from None


def host_info(sd_uuid: str, host_id: int) -> HostInfo | None:
    """How this host's daemon sees ``host_id`` in ``sd_uuid`` (None: not joined here)."""
    for attempt in range(_GET_HOSTS_RETRIES):
        try:
            hosts = sanlock.get_hosts(sd_uuid.encode(), host_id)
        except sanlock.SanlockException as e:
            if _rc(e) == errno.EAGAIN and attempt + 1 < _GET_HOSTS_RETRIES:
                time.sleep(_GET_HOSTS_PAUSE)
                continue
            if _rc(e) in (errno.ENOENT, errno.EAGAIN):
                return None
            raise _daemon_error(f"cannot read the hosts of lockspace {sd_uuid}", e) from None
        for host in hosts:
            if int(host["host_id"]) == host_id:
                state = _HOST_FLAGS.get(int(host["flags"]) & 0x0F, HostState.UNKNOWN)
                return HostInfo(host_id, int(host["generation"]), state)
        return HostInfo(host_id, 0, HostState.FREE)
    return None


# --- resources --------------------------------------------------------------------------------


def resource_state(
    sd_uuid: str, resource: str, path: Path, offset: int, *, block_size: int
) -> ResourceState:
    """The lease's lver and holder as stored on disk (readable without joining)."""
    sector = _sector(block_size)
    try:
        stored = sanlock.read_resource(str(path), offset, align=ALIGNMENT, sector=sector)
        owners = sanlock.read_resource_owners(
            sd_uuid.encode(),
            resource.encode(),
            [(str(path), offset)],
            align=ALIGNMENT,
            sector=sector,
        )
    except sanlock.SanlockException as e:
        raise ClusterLockInitError(
            f"cannot read the lease {resource} in {path}:{offset}: {_reason(e)}"
        ) from None
    if not owners:
        return ResourceState(int(stored["version"]), None, None)
    owner = owners[0]
    return ResourceState(int(stored["version"]), int(owner["host_id"]), int(owner["generation"]))


def request_force(sd_uuid: str, resource: str, path: Path, offset: int) -> None:
    """Ask the holder's host to give the lease up now: its daemon kills the holding process
    (sanlock's REQ_FORCE), which frees the lease in about 1.5 s at io_timeout 1."""
    try:
        sanlock.request(
            sd_uuid.encode(), resource.encode(), [(str(path), offset)], action=sanlock.REQ_FORCE
        )
    except sanlock.SanlockException as e:
        raise SpmFenceError(f"lease {resource} of domain {sd_uuid}: {_reason(e)}") from None


class LeaseHolder:
    """This process as a sanlock client: one registration, the resources it holds on it.

    sanlock frees every resource of a registered process when its connection closes (the
    process died), so the registration is made once and kept for the life of vdsmd. A daemon
    that restarted has forgotten us: :meth:`held` then fails and the caller treats every
    lease as lost.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        # One request at a time for this process: on the registration's socket two threads
        # read each other's answers (garbage return codes, seen with four copies starting at
        # once), and requests made by pid instead are refused with EBUSY while another runs
        # (measured). So an acquire that blocks inside sanlock (a dead host's lease) holds up
        # this process's other lease requests until it returns.
        self._calls = threading.Lock()

    def _registration(self) -> int:
        with self._lock:
            if self._fd is None:
                try:
                    self._fd = sanlock.register()
                except sanlock.SanlockException as e:
                    raise _daemon_error("cannot register with sanlock", e) from None
            return self._fd

    def acquire(
        self, sd_uuid: str, resource: str, path: Path, offset: int, *, version: int | None = None
    ) -> int:
        """Acquire the lease for this process; returns its new lver. Refusals (another
        host holds it, a stale ``version``, this host not joined) raise 651 with
        sanlock's reason."""
        fd = self._registration()
        disks = [(str(path), offset)]
        try:
            with self._calls:
                if version is None:
                    sanlock.acquire(sd_uuid.encode(), resource.encode(), disks, slkfd=fd)
                else:
                    sanlock.acquire(
                        sd_uuid.encode(), resource.encode(), disks, slkfd=fd, version=version
                    )
        except sanlock.SanlockException as e:
            reason = _reason(e)
            if _rc(e) == errno.ENOSPC:
                reason = f"this host has not joined the lockspace of domain {sd_uuid} ({reason})"
            raise AcquireLockFailure(f"lease {resource} of domain {sd_uuid}: {reason}") from None
        for held in self.held():
            if held[0] == sd_uuid and held[1] == resource:
                return held[2]
        raise AcquireLockFailure(f"lease {resource} of domain {sd_uuid}: not held after acquire")

    def release(self, sd_uuid: str, resource: str, path: Path, offset: int) -> None:
        fd = self._registration()
        try:
            with self._calls:
                sanlock.release(
                    sd_uuid.encode(), resource.encode(), [(str(path), offset)], slkfd=fd
                )
        except sanlock.SanlockException as e:
            raise ReleaseLockFailure(
                f"lease {resource} of domain {sd_uuid}: {_reason(e)}"
            ) from None

    def clear_stale(self, sd_uuid: str, resource: str, path: Path, offset: int) -> bool:
        """Write free a lease whose release failed on this host. sanlock forgets a lease it
        failed to release (the write of the free leader met an I/O error), but the lease on
        the storage still names this host as its owner, and this host is alive: every other
        host is refused it ("held by another host") for as long as this host lives. This host
        may acquire it again (sanlock: it is already the owner) and release it, which writes
        it free. True when done; False when it is not this host's to clear any more (another
        host or another process here holds it now, or its file is gone); AcquireLockFailure
        or ReleaseLockFailure while the storage still fails (try again later)."""
        fd = self._registration()
        disks = [(str(path), offset)]
        try:
            with self._calls:
                sanlock.acquire(sd_uuid.encode(), resource.encode(), disks, slkfd=fd)
        except sanlock.SanlockException as e:
            if abs(_rc(e)) in _HELD_ELSEWHERE or abs(_rc(e)) == errno.ENOENT:
                return False
            raise AcquireLockFailure(
                f"lease {resource} of domain {sd_uuid}: {_reason(e)}"
            ) from None
        self.release(sd_uuid, resource, path, offset)
        return True

    def held(self) -> list[tuple[str, str, int]]:
        """(lockspace, resource, lver) of every lease this process holds, from the daemon."""
        fd = self._registration()
        try:
            with self._calls:
                found: list[dict[str, Any]] = sanlock.inquire(slkfd=fd)
        except sanlock.SanlockException as e:
            raise ClusterLockInitError(
                f"cannot inquire this process's leases: {_reason(e)}"
            ) from None
        return [(r["lockspace"].decode(), r["resource"].decode(), int(r["version"])) for r in found]
