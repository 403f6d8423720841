"""The persisted records of a VM's block jobs: a replication's and a live merge's.

Each record is a dataclass with a state enum and its allowed transitions; it lives in the
VM's durable record (vm_store.py) and is written there *before* the step it guards, so a
restarted vdsmd knows what to finish or clean up. ``to_json`` gives the same keys the daemon
has always written; ``from_json`` checks every key and its type (record_json.py), so a
malformed record is an error naming the key, never a KeyError deep in an operation. What the
jobs *do* is replication.py's and merge.py's; nothing here calls libvirt.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vdsm.errors import MergeError, ReplicationError
from vdsm.virt.drives import VolumeLink
from vdsm.virt.record_json import RecordError, enum_of, field_of, mapping_of, number_of

# --- replication ------------------------------------------------------------------------------


class ReplicaState(StrEnum):
    STARTING = "starting"  # recorded before the destination is touched; the copy may not run
    MIRRORING = "mirroring"  # the block copy job runs (libvirt's blockCopy)
    SWITCHING = "switching"  # auto mode: the background copy is cancelled, to restart it sync
    PIVOTING = "pivoting"  # blockJobAbort(PIVOT) requested; back to MIRRORING if refused
    ABORTING = "aborting"  # blockJobAbort (cancel) requested; back to MIRRORING if refused


# The end of a replication is its record's removal, from any state. Finish may find a record a
# crashed daemon left in STARTING, PIVOTING or ABORTING and request the pivot or abort again.
_REPLICA_ALLOWED: Mapping[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.STARTING: frozenset(
        {ReplicaState.MIRRORING, ReplicaState.PIVOTING, ReplicaState.ABORTING}
    ),
    ReplicaState.MIRRORING: frozenset(
        {ReplicaState.SWITCHING, ReplicaState.PIVOTING, ReplicaState.ABORTING}
    ),
    ReplicaState.SWITCHING: frozenset({ReplicaState.MIRRORING}),
    ReplicaState.PIVOTING: frozenset(
        {ReplicaState.MIRRORING, ReplicaState.PIVOTING, ReplicaState.ABORTING}
    ),
    ReplicaState.ABORTING: frozenset(
        {ReplicaState.MIRRORING, ReplicaState.PIVOTING, ReplicaState.ABORTING}
    ),
}


class CopyMode(StrEnum):
    AUTO = "auto"  # background, switched to sync when it does not converge
    BACKGROUND = "background"  # guest writes are copied later (QEMU copy-mode=background)
    SYNC = "sync"  # guest writes reach both sides before they complete (write-blocking)


Identity = tuple[str, str, str]


@dataclass(frozen=True)
class DiskRef:
    """A volume as the API names it (a DriveSpecVolume: docs/contract.md §2)."""

    domain_id: str
    image_id: str
    volume_id: str
    pool_id: str

    def identity(self) -> Identity:
        return (self.domain_id, self.image_id, self.volume_id)

    def to_json(self) -> dict[str, str]:
        return {
            "domainID": self.domain_id,
            "imageID": self.image_id,
            "volumeID": self.volume_id,
            "poolID": self.pool_id,
        }

    @classmethod
    def from_json(cls, value: object, where: str) -> DiskRef:
        data = mapping_of(value, where)
        return cls(
            domain_id=field_of(data, "domainID", str, where),
            image_id=field_of(data, "imageID", str, where),
            volume_id=field_of(data, "volumeID", str, where),
            pool_id=field_of(data, "poolID", str, where),
        )


@dataclass
class ReplicationRecord:
    """One drive's replication (docs/contract.md §3), by drive target in the VM's record."""

    src: DiskRef
    dst: DiskRef
    copy_mode: CopyMode  # the mode of the running copy: BACKGROUND or SYNC, never AUTO
    auto: bool  # started in auto mode: watched, and switched to SYNC if it does not converge
    bandwidth_mib: int  # 0: unlimited
    state: ReplicaState = ReplicaState.STARTING
    dst_chain: tuple[VolumeLink, ...] = ()  # the destination chain, base → leaf, once prepared
    started: float = field(default_factory=time.time)

    def advance(self, new: ReplicaState) -> None:
        if new not in _REPLICA_ALLOWED[self.state]:
            raise ReplicationError(f"replication cannot go from {self.state} to {new}")
        self.state = new

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "src": self.src.to_json(),
            "dst": self.dst.to_json(),
            "dst_chain": [link.to_json() for link in self.dst_chain],
            "copy_mode": self.copy_mode.value,
            "auto": self.auto,
            "bandwidth_mib": self.bandwidth_mib,
            "started": self.started,
        }

    @classmethod
    def from_json(cls, value: object, where: str) -> ReplicationRecord:
        data = mapping_of(value, where)
        chain = field_of(data, "dst_chain", list, where)
        copy_mode = enum_of(CopyMode, data, "copy_mode", where)
        if copy_mode is CopyMode.AUTO:
            raise RecordError(f"{where}.copy_mode: auto is not a running copy's mode")
        return cls(
            state=enum_of(ReplicaState, data, "state", where),
            src=DiskRef.from_json(data.get("src"), f"{where}.src"),
            dst=DiskRef.from_json(data.get("dst"), f"{where}.dst"),
            dst_chain=tuple(
                VolumeLink.from_json(link, f"{where}.dst_chain[{n}]")
                for n, link in enumerate(chain)
            ),
            copy_mode=copy_mode,
            # Records of the first daemons had no "auto": they were never watched.
            auto=field_of(data, "auto", bool, where) if "auto" in data else False,
            bandwidth_mib=field_of(data, "bandwidth_mib", int, where),
            started=number_of(data, "started", where),
        )


# --- merge ------------------------------------------------------------------------------------


class MergeState(StrEnum):
    COMMITTING = "committing"  # blockCommit started; waiting for READY (active) or completion
    PIVOTING = "pivoting"  # active commit READY, blockJobAbort(PIVOT) requested


# The end of a merge is its record's removal (done or failed), from either state.
_MERGE_ALLOWED: Mapping[MergeState, frozenset[MergeState]] = {
    MergeState.COMMITTING: frozenset({MergeState.PIVOTING}),
    # The pivot was refused (retry), or the daemon died between persisting PIVOTING and the
    # pivot's answer: the recovered watcher pivots again.
    MergeState.PIVOTING: frozenset({MergeState.COMMITTING, MergeState.PIVOTING}),
}


@dataclass
class MergeRecord:
    """One drive's live merge (merge.py), by drive target in the VM's record."""

    job_id: str  # the caller's jobUUID (or ours), shown in getVmStats' blockJobs
    base: str  # the volume merged into (top's parent)
    top: str  # the volume merged away
    active: bool  # top is the active layer: an active commit, finished by a pivot
    state: MergeState = MergeState.COMMITTING
    started: float = field(default_factory=time.time)

    def advance(self, new: MergeState) -> None:
        if new not in _MERGE_ALLOWED[self.state]:
            raise MergeError(f"merge {self.job_id} cannot go from {self.state} to {new}")
        self.state = new

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "job_id": self.job_id,
            "base": self.base,
            "top": self.top,
            "active": self.active,
            "started": self.started,
        }

    @classmethod
    def from_json(cls, value: object, where: str) -> MergeRecord:
        data = mapping_of(value, where)
        return cls(
            state=enum_of(MergeState, data, "state", where),
            job_id=field_of(data, "job_id", str, where),
            base=field_of(data, "base", str, where),
            top=field_of(data, "top", str, where),
            active=field_of(data, "active", bool, where),
            started=number_of(data, "started", where),
        )
