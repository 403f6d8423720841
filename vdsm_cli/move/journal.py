"""The journal of a disk move: what the flow is about to do, persisted before it does it.

One JSON file per (VM, image) in the state directory (``$VDSM_MOVE_STATE_DIR``, else
``$XDG_STATE_HOME/vdsm/moves``, else ``~/.local/state/vdsm/moves``), replaced atomically
(write, fsync, rename, fsync of the directory) on every change, so a client killed at any
instant leaves either the previous state or the next one, never a torn file. The journal is
data only: step names, ids and numbers, never references to code. It is removed when the move
ends cleanly (moved, or rolled back); a journal left on disk means ``--resume`` has work to do.

A sibling ``.lock`` file, held with flock(2) for the whole run, keeps a second vdsClient from
moving the same disk at the same time; the kernel drops the lock when the process dies, so a
killed client never blocks the ``--resume`` that follows it.

``history.jsonl`` keeps the summary of every finished move: its measured rate is what
``--dry-run`` bases its time estimate on.

Version 2 records the two roles of a move (docs/contract.md §1) apart: the SPM's address, host
id and lease version (``spmAddress``, ``spmId``, ``spmLver``), the VM host's address
(``vmAddress``), every host the SPM may be looked for on after a failover (``hosts``), and the
lease version each task was submitted under (``taskLvers``), which tells a task that ended with
a dead SPM from one that merely ended; ``mode`` says whether the VM ran (``live``) or was Down
(``offline``: one moveImage task). A version-1 journal (one vdsmd, ``address``) is
converted on load: it was written by a single-host move, so that host plays both roles, and a
note says so. Any other version is refused, naming it; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdsm_cli.errors import CliError

JOURNAL_VERSION = 2
LIVE = "live"  # a running VM's disk: snapshot, mirror, pivot, merge
OFFLINE = "offline"  # a Down VM's disk: one moveImage task
NO_SPM = -1  # spmId / spmLver not known (yet): VDSM's value for "no SPM"
FORWARD = "forward"  # moving towards the destination
ROLLBACK = "rollback"  # undoing, back to the source
HISTORY = "history.jsonl"
HISTORY_KEEP = 20  # the last moves the estimate looks at


class MoveBusy(CliError):
    """Another vdsClient holds this disk's lock."""


def default_state_dir() -> Path:
    explicit = os.environ.get("VDSM_MOVE_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vdsm" / "moves"


@dataclass
class Journal:
    """Everything a later run needs to finish or undo this move (camelCase on disk)."""

    vm_id: str
    image_id: str
    pool_id: str
    src_domain: str
    dst_domain: str
    target: str  # the drive (vda) when the move started
    original_chain: list[str]  # volUUIDs base → leaf before the move
    leaf_capacity: int  # bytes: the auto-snapshot gets the leaf's capacity
    snapshot_volume: str  # chosen before it is created, so a crash can never lose it
    merge_job: str  # the live merge's job id on the destination, chosen up front too
    options: dict[str, Any]  # keepSource, merge, bandwidth, copyMode, readyTimeout
    spm_address: str  # the pool's SPM, HOST:PORT: createVolume, clone, sync, deletes, tasks
    vm_address: str  # the VM's host: snapshot, diskReplicateStart/Finish, merge, VM stats
    hosts: list[str] = field(default_factory=list)  # where to look for the SPM after a failover
    spm_id: int = NO_SPM  # the SPM's host id when last seen (sanlock's lease owner)
    spm_lver: int = NO_SPM  # the SPM lease's version when last seen: +1 on every new SPM
    mode: str = LIVE  # LIVE or OFFLINE (absent from the journals written before it: LIVE)
    direction: str = FORWARD
    step: str = ""  # the step persisted before it runs (FORWARD or ROLLBACK list)
    tasks: dict[str, str] = field(default_factory=dict)  # step → vdsmd task id
    # step → spmLver its task was submitted under: a later SPM (another lver) rolled it back.
    task_lvers: dict[str, int] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)  # steps finished, in order
    seconds: dict[str, float] = field(default_factory=dict)  # step → time it took
    copied: dict[str, int] = field(default_factory=dict)  # sync, mirror, merge: bytes copied
    pivot_seconds: float | None = None  # duration of the successful diskReplicateFinish
    stopped_at: str = ""  # the forward step the move stopped at, when it turned to rollback
    cause: str = ""  # why it is rolling back (or stopped)
    notes: list[str] = field(default_factory=list)  # what was left on purpose, for the user
    started: float = field(default_factory=time.time)
    updated: float = 0.0
    pid: int = 0
    version: int = JOURNAL_VERSION

    @property
    def leaf(self) -> str:
        return self.original_chain[-1]

    def to_json(self) -> dict[str, Any]:
        return {_wire_name(k): v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Journal:
        """The journal of ``data``: version 2 as is, version 1 converted; ValueError for
        anything else (another version, unknown keys)."""
        version = data.get("version")
        if version == 1:
            data = _from_version_1(data)
        elif version != JOURNAL_VERSION:
            what = "no version" if version is None else f"version {version!r}"
            if isinstance(version, int) and version > JOURNAL_VERSION:
                what += ", written by a newer vdsClient: resume it with that one"
            raise ValueError(
                f"not a move journal this vdsClient can read ({what}; it reads versions 1 "
                f"and {JOURNAL_VERSION})"
            )
        if data.get("mode", LIVE) not in (LIVE, OFFLINE):
            raise ValueError(
                f"not a move journal: mode {data.get('mode')!r} is neither {LIVE} nor {OFFLINE}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        values = {_field_name(k): v for k, v in data.items()}
        unknown = set(values) - names
        if unknown:
            raise ValueError(
                f"not a version-{JOURNAL_VERSION} move journal (unknown keys {sorted(unknown)})"
            )
        return cls(**values)


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 journal as version 2. Version 1 knew one vdsmd (``address``), which was
    both the SPM and the VM's host; its SPM's id and lver were never recorded (NO_SPM), so no
    task of it counts as submitted under another SPM: they are looked up as before."""
    old = dict(data)
    address = old.pop("address", None)
    if not isinstance(address, str) or not address:
        raise ValueError("a version-1 move journal without its vdsmd address")
    notes = list(old.get("notes") or [])
    notes.append(f"converted from a version-1 journal: {address} is both the SPM and the VM host")
    return {
        **old,
        "spmAddress": address,
        "vmAddress": address,
        "hosts": [address],
        "notes": notes,
        "version": JOURNAL_VERSION,
    }


# On disk, ids are spelt as VDSM spells them; every other field is plain camelCase.
_WIRE_NAMES = {
    "image_id": "imageID",
    "pool_id": "poolID",
    "src_domain": "srcDomainID",
    "dst_domain": "dstDomainID",
    "snapshot_volume": "snapshotVolumeID",
    "merge_job": "mergeJobID",
}
_FIELD_NAMES = {wire: name for name, wire in _WIRE_NAMES.items()}


def _wire_name(name: str) -> str:
    if name in _WIRE_NAMES:
        return _WIRE_NAMES[name]
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _field_name(wire: str) -> str:
    if wire in _FIELD_NAMES:
        return _FIELD_NAMES[wire]
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in wire)


class DiskLock:
    """flock(2) on ``<vm>--<img>.lock``, refusing at once (never waiting) if it is held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise MoveBusy(
                    f"another vdsClient (pid {holder}) is moving this disk right now "
                    f"(lock {self.path})"
                ) from None
            # The previous holder may have unlinked the file between our open and flock:
            # then we locked a file nobody else will ever see; take the one on disk instead.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                self._fd = fd
                return
            os.close(fd)

    def release(self, remove: bool) -> None:
        if self._fd is None:
            return
        if remove:  # unlinked while still held: see the inode check in acquire()
            remove_file(self.path)
        os.close(self._fd)
        self._fd = None


class JournalStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, vm_id: str, image_id: str) -> Path:
        return self.directory / f"{vm_id}--{image_id}.json"

    def lock(self, vm_id: str, image_id: str) -> DiskLock:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = DiskLock(self.directory / f"{vm_id}--{image_id}.lock")
        lock.acquire()
        return lock

    def load(self, vm_id: str, image_id: str) -> Journal | None:
        path = self.path(vm_id, image_id)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise CliError(f"cannot read the move journal {path}: {e}") from None
        try:
            return Journal.from_json(data)
        except (TypeError, ValueError) as e:
            raise CliError(f"{path}: {e}") from None

    def images_of(self, vm_id: str) -> list[str]:
        """The images of a VM that have a journal (moves to resume)."""
        if not self.directory.is_dir():
            return []
        prefix = f"{vm_id}--"
        return sorted(
            p.name[len(prefix) : -len(".json")]
            for p in self.directory.glob(f"{prefix}*.json")
            if not p.name.startswith(".")
        )

    def save(self, journal: Journal) -> None:
        journal.updated = time.time()
        journal.pid = os.getpid()
        data = json.dumps(journal.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(self.path(journal.vm_id, journal.image_id), data)

    def remove(self, journal: Journal) -> None:
        remove_file(self.path(journal.vm_id, journal.image_id))
        fsync_dir(self.directory)

    def record_history(self, summary: dict[str, Any]) -> None:
        """Append a finished move's summary; keep the last HISTORY_KEEP (best effort)."""
        path = self.directory / HISTORY
        try:
            lines = path.read_text().splitlines()[-(HISTORY_KEEP - 1) :] if path.exists() else []
            lines.append(json.dumps(summary, sort_keys=True))
            atomic_write(path, ("\n".join(lines) + "\n").encode())
        except OSError:
            pass

    def measured_rates(self) -> list[float]:
        """Average copy rates (bytes/s) of the recent moves, oldest first."""
        path = self.directory / HISTORY
        rates = []
        try:
            text = path.read_text()
        except OSError:
            return []
        for line in text.splitlines():
            try:
                rate = float(json.loads(line).get("averageRate") or 0)
            except (ValueError, AttributeError):
                continue
            if rate > 0:
                rates.append(rate)
        return rates


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) atomically and durably: a hidden temporary
    sibling (``.NAME.tmp-XXXX``, never taken for a journal) written and fsynced, renamed over
    ``path``, then the directory fsynced so the rename itself is durable."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        remove_file(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(path: Path) -> None:
    """Remove ``path`` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
