"""One SPM task: an explicit state machine, persisted as JSON on every change (docs/contract.md §5).

A task lives in ``<tasks_dir>/<taskID>/task.json``, rewritten atomically on every state change
and every recorded rollback step, so a later daemon finds exactly what a dead one knew. Its
rollback steps are data — a stable name plus JSON arguments — resolved against a table the
caller passes in; nothing read from disk ever names code. What a task *does* (threads, copy
slots, stopping) is the task manager's business; this module keeps its state consistent:

    init      → running (started) | aborting (stopped before it started)
    running   → finished/success | aborting (stopped) | cleaning (the job failed)
    aborting  → cleaning
    cleaning  → finished/cleanSuccess | finished/cleanFailure (a rollback step failed)
    finished  → cleaning (revert)
    any state but finished → cleaning, when a restarted daemon rolls the task back

Each mutator checks its transition under the task's lock, so a stop racing the job's end has
exactly one winner. Readers (status) never wait for a disk write; ``saved_state`` says what
the file holds.

The file itself: what a field may hold (:class:`TaskState`, :class:`TaskResult`, a
:class:`RollbackRecord` per step), the bytes written for a task, and the checked read-back —
a later daemon trusts a task.json only if it is of our format, every field has its type, and
it names the task its directory names.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from vdsm import validation
from vdsm.errors import (
    InvalidParameter,
    TaskNotFinished,
    TaskStateError,
    UnknownTask,
    VdsmError,
)
from vdsm.storage import fileutil

log = logging.getLogger("vdsm.storage.task.state")

# At most one progress-only write per this many seconds: progress is cheap to lose, and a copy
# reports it many times a second.
PROGRESS_SAVE_INTERVAL = 1.0

T = TypeVar("T")

TASK_FILE = "task.json"
FORMAT_VERSION = 1


class TaskState(StrEnum):
    INIT = "init"  # created and persisted; not started yet (a copy may wait here for a slot)
    RUNNING = "running"  # its job is running
    ABORTING = "aborting"  # a stop was requested; the job is being interrupted
    CLEANING = "cleaning"  # its rollback steps run (after a failure, a stop, a revert, a restart)
    FINISHED = "finished"  # nothing runs any more; ``result`` says how it ended
    # In the contract's vocabulary (VDSM: a task it cannot account for). We never enter it;
    # a file that says so is treated as interrupted and rolled back.
    UNKNOWN = "unknown"


class TaskResult(StrEnum):
    NONE = ""  # not finished yet
    SUCCESS = "success"  # the job completed
    CLEAN_SUCCESS = "cleanSuccess"  # failed, stopped or reverted, and rolled back
    CLEAN_FAILURE = "cleanFailure"  # a rollback step failed too: manual cleanup may be needed


class TaskFileError(Exception):
    """A task.json that cannot be read or does not describe a task (torn, foreign, edited)."""


@dataclass(frozen=True)
class RollbackRecord:
    name: str  # a key of the rollback step table
    args: dict[str, Any]  # JSON arguments for the step


_ALLOWED: Mapping[TaskState, frozenset[TaskState]] = {
    TaskState.INIT: frozenset({TaskState.RUNNING, TaskState.ABORTING, TaskState.CLEANING}),
    TaskState.RUNNING: frozenset({TaskState.FINISHED, TaskState.ABORTING, TaskState.CLEANING}),
    TaskState.ABORTING: frozenset({TaskState.CLEANING}),
    TaskState.CLEANING: frozenset({TaskState.FINISHED}),
    TaskState.FINISHED: frozenset({TaskState.CLEANING}),  # revert
    TaskState.UNKNOWN: frozenset({TaskState.CLEANING}),  # recovery
}

_STATE_MESSAGES = {
    TaskState.INIT: "Task is initializing",
    TaskState.RUNNING: "Task is running",
}
SUCCESS_MESSAGE = "Task completed successfully"


@dataclass(frozen=True)
class TaskStatus:
    task_id: str
    verb: str
    state: TaskState
    result: TaskResult
    code: int
    message: str
    progress: float  # 0–100
    done_bytes: int | None
    total_bytes: int | None
    held_back: str = ""  # why the task's copy is held back now, "" when it is not


@dataclass(frozen=True)
class Failure:
    """Why something failed, as the contract reports it: a code and a message."""

    code: int
    message: str

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        if isinstance(error, VdsmError):
            return cls(error.code, error.message)
        # Not one of ours: a bug or an unexpected OS error. Keep its type and text.
        return cls(VdsmError.code, VdsmError(f"{type(error).__name__}: {error}").message)


class Task:
    def __init__(self, directory: Path, data: Mapping[str, Any]) -> None:
        self.directory = directory
        self.task_id: str = data["id"]
        self.verb: str = data["verb"]
        self.created: float = data["created"]
        self._state = TaskState(data["state"])
        self._result = TaskResult(data["result"])
        self._code: int = data["code"]
        self._message: str = data["message"]
        self._progress: float = data["progress"]
        self._done_bytes: int | None = data["done_bytes"]
        self._held_back = ""
        self._total_bytes: int | None = data["total_bytes"]
        self._rollback = [RollbackRecord(r["name"], r["args"]) for r in data["rollback"]]
        self._updated: float = data["updated"]
        self._retired = False  # cleared: forgotten, its directory being removed
        # _lock guards the fields (held briefly); _save_lock orders the disk writes, so a
        # reader never waits for a disk and writes land in the order the changes happened.
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._saved_state = self._state
        self._last_save = time.monotonic()

    def __repr__(self) -> str:
        return f"Task({self.task_id!r}, {self.verb!r}, {self._state})"

    @property
    def path(self) -> Path:
        return self.directory / TASK_FILE

    # --- create and load --------------------------------------------------------------------

    @classmethod
    def create(cls, tasks_dir: Path, task_id: str, verb: str) -> Task:
        """Make ``<tasks_dir>/<task_id>/`` and persist the new task (state init) in it."""
        task_id = validation.uuid(task_id, "taskID")
        if not isinstance(verb, str) or not verb:
            raise InvalidParameter("verb", verb, "expected a verb name")
        directory = tasks_dir / task_id
        tasks_dir.mkdir(parents=True, exist_ok=True)
        directory.mkdir()  # a fresh UUID: an existing directory is a bug, not a task to adopt
        fileutil.fsync_dir(tasks_dir)
        now = time.time()
        task = cls(
            directory,
            {
                "id": task_id,
                "verb": verb,
                "state": TaskState.INIT,
                "result": TaskResult.NONE,
                "code": 0,
                "message": _STATE_MESSAGES[TaskState.INIT],
                "progress": 0.0,
                "done_bytes": None,
                "total_bytes": None,
                "rollback": [],
                "created": now,
                "updated": now,
            },
        )
        task._change(lambda: None)
        return task

    @classmethod
    def load(cls, directory: Path) -> Task:
        """Read ``<directory>/task.json``; TaskFileError if it is unreadable or inconsistent."""
        return cls(directory, _read(directory))

    # --- reading ----------------------------------------------------------------------------

    @property
    def state(self) -> TaskState:
        with self._lock:
            return self._state

    @property
    def saved_state(self) -> TaskState:
        """The state task.json holds now (a change is visible in memory a moment earlier)."""
        with self._lock:
            return self._saved_state

    def status(self) -> TaskStatus:
        with self._lock:
            return TaskStatus(
                task_id=self.task_id,
                verb=self.verb,
                state=self._state,
                result=self._result,
                code=self._code,
                message=self._message,
                progress=self._progress,
                done_bytes=self._done_bytes,
                total_bytes=self._total_bytes,
                held_back=self._held_back,
            )

    def rollback_steps(self) -> list[RollbackRecord]:
        """The recorded steps, oldest first (they run newest first)."""
        with self._lock:
            return list(self._rollback)

    # --- transitions ------------------------------------------------------------------------

    def start(self) -> bool:
        """init → running; False (and no change) if a stop came first."""

        def change() -> bool:
            if self._state is TaskState.ABORTING:
                return False
            self._move(TaskState.RUNNING)
            self._message = _STATE_MESSAGES[TaskState.RUNNING]
            return True

        return self._change(change)

    def complete(self) -> bool:
        """running → finished/success; False (and no change) if a stop came first."""

        def change() -> bool:
            if self._state is TaskState.ABORTING:
                return False
            self._move(TaskState.FINISHED)
            self._result = TaskResult.SUCCESS
            self._message = SUCCESS_MESSAGE
            self._progress = 100.0
            return True

        return self._change(change)

    def abort(self, failure: Failure) -> bool:
        """init/running → aborting, recording why; False if already aborting or cleaning.

        A finished task cannot be stopped (TaskStateError, 410).
        """

        def change() -> bool:
            if self._state in (TaskState.ABORTING, TaskState.CLEANING):
                return False
            if self._state is TaskState.FINISHED:
                raise TaskStateError(f"task {self.task_id} is finished: nothing to stop")
            self._move(TaskState.ABORTING)
            self._code, self._message = failure.code, failure.message
            return True

        return self._change(change)

    def begin_cleaning(self, failure: Failure | None) -> None:
        """→ cleaning before running the rollback steps; ``failure`` (if any) is why."""

        def change() -> None:
            if self._state is not TaskState.CLEANING:  # a restart may find it cleaning already
                self._move(TaskState.CLEANING)
            if failure is not None:
                self._code, self._message = failure.code, failure.message

        self._change(change)

    def begin_revert(self) -> None:
        """finished → cleaning; any other state: TaskNotFinished (403)."""

        def change() -> None:
            if self._state is not TaskState.FINISHED:
                raise TaskNotFinished(f"task {self.task_id} is {self._state}")
            self._move(TaskState.CLEANING)
            self._result = TaskResult.NONE

        self._change(change)

    def finish_cleaning(self, *, clean: bool, code: int, message: str) -> None:
        """cleaning → finished with cleanSuccess (``clean``) or cleanFailure."""

        def change() -> None:
            self._move(TaskState.FINISHED)
            self._result = TaskResult.CLEAN_SUCCESS if clean else TaskResult.CLEAN_FAILURE
            self._code, self._message = code, message

        self._change(change)

    def retire(self) -> None:
        """Mark a finished task as cleared: no change is accepted from now on."""
        with self._save_lock, self._lock:
            if self._retired:
                raise UnknownTask(f"{self.task_id} (cleared)")
            if self._state is not TaskState.FINISHED:
                raise TaskStateError(f"task {self.task_id} is {self._state}: not finished")
            self._retired = True

    # --- what the job records ---------------------------------------------------------------

    def add_rollback(self, name: str, args: Mapping[str, Any]) -> None:
        """Record an undo step; it is on disk when this returns."""
        copied = _json_copy(name, args)

        def change() -> None:
            if self._state not in (TaskState.RUNNING, TaskState.ABORTING):
                raise TaskStateError(f"task {self.task_id} is {self._state}: no job is running")
            self._rollback.append(RollbackRecord(name, copied))

        self._change(change)

    def replace_rollback(self, name: str, args: Mapping[str, Any]) -> None:
        """Replace every recorded undo step with this one, in one write.

        For a job that passes a point of no return (a move whose copy is durable): from then
        on an interruption must finish the job, not undo it, and no crash may find the old
        steps and the new one together.
        """
        copied = _json_copy(name, args)

        def change() -> None:
            if self._state not in (TaskState.RUNNING, TaskState.ABORTING):
                raise TaskStateError(f"task {self.task_id} is {self._state}: no job is running")
            self._rollback[:] = [RollbackRecord(name, copied)]

        self._change(change)

    def drop_rollback(self, record: RollbackRecord) -> None:
        """Forget a step that ran, so a later revert or restart does not run it again."""

        def change() -> None:
            # Steps are only added while the job runs, so the one that ran is the newest.
            if not self._rollback or self._rollback[-1] != record:
                raise RuntimeError(f"task {self.task_id}: {record} is not the newest step")
            self._rollback.pop()

        self._change(change)

    def set_progress(
        self,
        percent: float,
        *,
        done_bytes: int | None = None,
        total_bytes: int | None = None,
        held_back: str | None = None,
    ) -> None:
        """Record progress; written to disk at most once per PROGRESS_SAVE_INTERVAL.

        ``held_back`` (why an adaptive copy is held back now) is kept in memory only: it is
        an observation of the moment, of no use to a task recovered after a restart."""
        percent = min(100.0, max(0.0, float(percent)))
        with self._lock:
            self._progress = percent
            if held_back is not None:
                self._held_back = held_back
            if done_bytes is not None:
                self._done_bytes = int(done_bytes)
            if total_bytes is not None:
                self._total_bytes = int(total_bytes)
            due = time.monotonic() - self._last_save >= PROGRESS_SAVE_INTERVAL
        if due:
            self._change(lambda: None)

    # --- persistence ------------------------------------------------------------------------

    def _move(self, new: TaskState) -> None:
        """Change state, refusing any transition the machine does not have (caller holds lock)."""
        if new not in _ALLOWED[self._state]:
            raise TaskStateError(f"task {self.task_id}: cannot go from {self._state} to {new}")
        log.debug("task %s: %s → %s", self.task_id, self._state, new)
        self._state = new

    def _change(self, change: Callable[[], T]) -> T:
        """Apply ``change`` under the lock, then write the resulting task to disk."""
        with self._save_lock:
            with self._lock:
                if self._retired:
                    raise UnknownTask(f"{self.task_id} (cleared)")
                result = change()
                self._updated = time.time()
                data = self._to_json()
                state = self._state
            fileutil.atomic_write(self.path, data)
            with self._lock:
                self._saved_state = state
                self._last_save = time.monotonic()
        return result

    def _to_json(self) -> bytes:
        return _encode(
            {
                "id": self.task_id,
                "verb": self.verb,
                "state": str(self._state),
                "result": str(self._result),
                "code": self._code,
                "message": self._message,
                "progress": self._progress,
                "done_bytes": self._done_bytes,
                "total_bytes": self._total_bytes,
                "rollback": [{"name": r.name, "args": r.args} for r in self._rollback],
                "created": self.created,
                "updated": self._updated,
            }
        )


# --- task.json ---------------------------------------------------------------------------------


def _json_copy(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """A rollback step's args checked and copied through JSON: what runs now is exactly what
    a later daemon would read."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"rollback step name must be a non-empty string, not {name!r}")
    if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
        raise ValueError(f"rollback step {name!r}: args must be a mapping with string keys")
    try:
        copied: dict[str, Any] = json.loads(json.dumps(args, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"rollback step {name!r}: args are not JSON: {e}") from e
    return copied


def _encode(fields: Mapping[str, Any]) -> bytes:
    """The content of task.json for a task's ``fields`` (the keys :func:`_read` checks, the
    rollback steps as ``{"name", "args"}`` objects)."""
    data = {"format": FORMAT_VERSION, **fields}
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _read(directory: Path) -> dict[str, Any]:
    """The fields of ``<directory>/task.json``; TaskFileError if it is unreadable or
    inconsistent."""
    path = directory / TASK_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_bytes())  # whatever it is, _check says
        _check(data, directory.name)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise TaskFileError(f"{path}: {type(e).__name__}: {e}") from e
    return data


# The type of every field of task.json (bool is refused where a number is expected).
_FIELD_TYPES: Mapping[str, tuple[type, ...]] = {
    **dict.fromkeys(("id", "verb", "state", "result", "message"), (str,)),
    **dict.fromkeys(("progress", "created", "updated"), (int, float)),
    **dict.fromkeys(("done_bytes", "total_bytes"), (int, type(None))),
    "code": (int,),
    "rollback": (list,),
}


def _check(data: Any, dir_name: str) -> None:
    """Refuse anything but a task.json of our format, for the task its directory names."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise ValueError(f"not a task.json of format {FORMAT_VERSION}")
    for key, kinds in _FIELD_TYPES.items():
        if isinstance(data[key], bool) or not isinstance(data[key], kinds):
            raise ValueError(f"{key}={data[key]!r} has the wrong type")
    if data["id"] != dir_name:
        raise ValueError(f"names task {data['id']!r}, its directory {dir_name!r}")
    TaskState(data["state"])
    TaskResult(data["result"])
    for step in data["rollback"]:
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            raise ValueError(f"malformed rollback step {step!r}")
        if not isinstance(step.get("args"), dict):
            raise ValueError(f"rollback step {step['name']!r} has no JSON object of args")
