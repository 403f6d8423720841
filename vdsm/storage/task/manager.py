"""The task manager: runs SPM operations as background tasks that can be stopped, reverted and
recovered after a restart (docs/contract.md §5).

Concurrency model: one thread per running task (its job, then its rollback), plain locks, no
asyncio. ``_lock`` guards the table of tasks, the copy slots and the accepting flag; each Task
guards its own fields. Lock order is always manager, then task; a Task never calls back here.
Every transition a caller must rely on (created, aborting, cleaning for a revert) is made and
persisted before the API call returns; the worker thread makes the rest.

Copies (qemu-img) are limited to ``max_concurrent_copies`` at once: a copy task waits for a
slot in state init, and a stop while it waits ends it without running the job.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdsm import validation
from vdsm.errors import (
    CommandAborted,
    InvalidParameter,
    TaskAborted,
    UnknownTask,
    VdsmError,
)
from vdsm.storage import fileutil
from vdsm.storage.repository import StorageRepository
from vdsm.storage.runner import Cancellation
from vdsm.storage.task import processes
from vdsm.storage.task.context import RollbackStep, TaskContext
from vdsm.storage.task.rollback import roll_back
from vdsm.storage.task.state import (
    Failure,
    Task,
    TaskFileError,
    TaskState,
    TaskStatus,
)

log = logging.getLogger("vdsm.storage.task.manager")

Job = Callable[[TaskContext], None]

STOP_REASON = "stopped by request"
SHUTDOWN_REASON = "the daemon is shutting down"


@dataclass(frozen=True)
class TaskInfo:
    task_id: str
    verb: str


@dataclass
class _Entry:
    """A known task and what runs it (nothing here is persisted)."""

    task: Task
    cancellation: Cancellation
    thread: threading.Thread | None = None  # the latest worker: job, revert or recovery


class _JobContext:
    """The TaskContext a job gets: its task's id, cancellation, undo log and progress."""

    def __init__(self, entry: _Entry, steps: Mapping[str, RollbackStep]) -> None:
        self._entry = entry
        self._steps = steps

    @property
    def task_id(self) -> str:
        return self._entry.task.task_id

    @property
    def cancellation(self) -> Cancellation:
        return self._entry.cancellation

    def add_rollback(self, name: str, args: Mapping[str, Any]) -> None:
        if name not in self._steps:
            raise ValueError(f"no rollback step named {name!r} (known: {sorted(self._steps)})")
        self._entry.task.add_rollback(name, args)

    def replace_rollback(self, name: str, args: Mapping[str, Any]) -> None:
        if name not in self._steps:
            raise ValueError(f"no rollback step named {name!r} (known: {sorted(self._steps)})")
        self._entry.task.replace_rollback(name, args)

    def set_progress(
        self,
        percent: float,
        *,
        done_bytes: int | None = None,
        total_bytes: int | None = None,
        held_back: str | None = None,
    ) -> None:
        self._entry.task.set_progress(
            percent, done_bytes=done_bytes, total_bytes=total_bytes, held_back=held_back
        )

    def check_aborted(self) -> None:
        if self._entry.task.state is TaskState.ABORTING or self._entry.cancellation.cancelled:
            raise TaskAborted(f"task {self.task_id}")


class TaskManager:
    def __init__(
        self,
        *,
        rollback_steps: Mapping[str, RollbackStep],
        repository: StorageRepository,
        max_concurrent_copies: int = 2,
    ) -> None:
        if max_concurrent_copies < 1:
            raise ValueError(f"max_concurrent_copies must be at least 1: {max_concurrent_copies}")
        self._steps = dict(rollback_steps)
        self._repository = repository
        self._lock = threading.Lock()
        # Notified whenever a task is persisted finished, a copy slot frees, a stop arrives or
        # a submit completes: everything wait(), the copy queue and shutdown() wait for.
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._free_copy_slots = max_concurrent_copies
        self._accepting = True
        self._submitting = 0  # submits past the accepting check, not yet in _entries

    # --- the verbs --------------------------------------------------------------------------

    def submit(self, verb: str, job: Job, *, tasks_dir: Path, is_copy: bool = False) -> str:
        """Create and persist a task, start ``job`` in its own thread, return the task id."""
        with self._lock:
            if not self._accepting:
                raise VdsmError(f"cannot start {verb}: the task manager is shutting down")
            self._submitting += 1
        try:
            try:
                task = Task.create(tasks_dir, str(uuid.uuid4()), verb)
            except OSError as e:
                raise VdsmError(f"cannot persist a new {verb} task in {tasks_dir}: {e}") from e
            entry = _Entry(task, Cancellation(label=task.task_id))
            with self._lock:
                self._entries[task.task_id] = entry
                self._start(entry, self._run_job, job, is_copy)
        finally:
            with self._lock:
                self._submitting -= 1
                self._changed.notify_all()
        log.info("task %s: %s submitted%s", task.task_id, verb, " (copy)" if is_copy else "")
        return task.task_id

    def stop(self, task_id: str) -> None:
        """Abort a task: kill its running commands, then roll it back (in its thread)."""
        self._stop(self._entry(task_id), STOP_REASON)

    def clear(self, task_id: str) -> None:
        """Forget a finished task and remove its directory; 410 if it is not finished."""
        with self._lock:
            entry = self._entry_locked(task_id)
            entry.task.retire()
            del self._entries[entry.task.task_id]
        try:
            # task.json first: a directory left half-removed is never loaded as a task again.
            fileutil.remove_file(entry.task.path)
            shutil.rmtree(entry.task.directory)
        except OSError as e:
            log.error("task %s: cleared, but its directory was not fully removed: %s", task_id, e)
        log.info("task %s: cleared", task_id)

    def revert(self, task_id: str) -> None:
        """Run a finished task's remaining rollback steps (403 if it is not finished)."""
        entry = self._entry(task_id)
        entry.task.begin_revert()
        with self._lock:
            self._start(entry, self._run_revert)
        log.info("task %s: reverting", task_id)

    def status(self, task_id: str) -> TaskStatus:
        return self._entry(task_id).task.status()

    def all_statuses(self) -> dict[str, TaskStatus]:
        with self._lock:
            entries = list(self._entries.values())
        return {e.task.task_id: e.task.status() for e in entries}

    def info(self, task_id: str) -> TaskInfo:
        task = self._entry(task_id).task
        return TaskInfo(task.task_id, task.verb)

    def all_info(self) -> dict[str, TaskInfo]:
        with self._lock:
            return {i: TaskInfo(i, e.task.verb) for i, e in self._entries.items()}

    def wait(self, task_id: str, timeout: float | None = None) -> TaskStatus:
        """Wait until the task is finished on disk (or ``timeout``); return its status."""
        entry = self._entry(task_id)
        with self._lock:
            self._changed.wait_for(lambda: entry.task.saved_state is TaskState.FINISHED, timeout)
        return entry.task.status()

    # --- daemon life cycle ------------------------------------------------------------------

    def recover(self, tasks_dirs: Iterable[Path]) -> list[str]:
        """Load the tasks persisted under ``tasks_dirs`` (call once at daemon start).

        Finished tasks are kept as they are. Every other task was interrupted by the restart:
        in its own thread, its leftover processes are killed and it is rolled back. Returns
        the ids of the tasks loaded. A torn or foreign task.json is logged and left alone.
        """
        loaded = []
        for tasks_dir in tasks_dirs:
            if not tasks_dir.is_dir():
                continue
            for task_dir in sorted(tasks_dir.iterdir()):
                task = self._load(task_dir)
                if task is None:
                    continue
                with self._lock:
                    if task.task_id in self._entries:
                        log.error("task %s: also found in %s, ignored", task.task_id, task_dir)
                        continue
                    entry = _Entry(task, Cancellation(label=task.task_id))
                    self._entries[task.task_id] = entry
                    state = task.state
                    if state is not TaskState.FINISHED:
                        self._start(entry, self._run_recovery)
                loaded.append(task.task_id)
                log.info("task %s: %s found in state %s", task.task_id, task.verb, state)
        return loaded

    def unfinished_in(self, tasks_dir: Path) -> list[str]:
        """Ids of the tasks persisted under ``tasks_dir`` that are not finished yet."""
        with self._lock:
            return sorted(
                e.task.task_id
                for e in self._entries.values()
                if e.task.directory.parent == tasks_dir and e.task.state is not TaskState.FINISHED
            )

    def forget(self, tasks_dir: Path) -> list[str]:
        """Drop from memory the finished tasks of ``tasks_dir``, keeping their files: an SPM
        that stepped down no longer answers for the master's tasks; the next SPM loads them.
        Refuses (ValueError) while one of them is not finished."""
        with self._lock:
            mine = [e for e in self._entries.values() if e.task.directory.parent == tasks_dir]
            running = [e.task.task_id for e in mine if e.task.state is not TaskState.FINISHED]
            if running:
                raise ValueError(f"tasks still running in {tasks_dir}: {running}")
            for entry in mine:
                del self._entries[entry.task.task_id]
        return sorted(e.task.task_id for e in mine)

    def shutdown(self, grace: float, *, stop_timeout: float = 30.0) -> bool:
        """Refuse new tasks, let running ones finish for ``grace`` seconds, then stop (and roll
        back) the rest; wait up to ``stop_timeout`` s for them. False if some thread outlived
        it (its task is then recovered at the next start)."""
        with self._lock:
            self._accepting = False
            self._changed.wait_for(lambda: self._submitting == 0 and self._idle(), grace)
            self._changed.wait_for(lambda: self._submitting == 0, stop_timeout)
            entries = list(self._entries.values())
        for entry in entries:
            if entry.task.state is not TaskState.FINISHED:
                self._stop(entry, SHUTDOWN_REASON)
        deadline = time.monotonic() + stop_timeout
        for entry in entries:
            if entry.thread is not None:
                entry.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [e.task.task_id for e in entries if e.thread is not None and e.thread.is_alive()]
        if alive:
            log.error("tasks still running after shutdown: %s", alive)
        return not alive

    # --- workers ----------------------------------------------------------------------------

    def _run_job(self, entry: _Entry, job: Job, is_copy: bool) -> None:
        task = entry.task
        failure: Failure | None = None
        if is_copy and not self._take_copy_slot(task):
            self._clean_up(entry, None, "")  # stopped while waiting for a slot
            return
        try:
            if task.start():
                log.info("task %s: %s started", task.task_id, task.verb)
                try:
                    job(_JobContext(entry, self._steps))
                except BaseException as e:  # whatever happens, never leave it half-done
                    failure = self._job_failed(task, e)
                else:
                    if task.complete():
                        log.info("task %s: %s succeeded", task.task_id, task.verb)
                        return
        finally:
            if is_copy:
                self._release_copy_slot()
        self._clean_up(entry, failure, "")

    def _job_failed(self, task: Task, error: BaseException) -> Failure | None:
        """Why the job failed; None when it only gave way to a stop (the stop is the reason)."""
        failure = Failure.of(error)
        if isinstance(error, (TaskAborted, CommandAborted)) and task.state is TaskState.ABORTING:
            log.info("task %s: %s aborted: %s", task.task_id, task.verb, failure.message)
            return None
        if isinstance(error, VdsmError):
            log.error("task %s: %s failed: %s", task.task_id, task.verb, failure.message)
        else:
            log.exception("task %s: %s failed unexpectedly", task.task_id, task.verb)
        return failure

    def _run_revert(self, entry: _Entry) -> None:
        self._clean_up(entry, None, "reverted on request")

    def _run_recovery(self, entry: _Entry) -> None:
        task = entry.task
        # A copy the dead daemon started may still write into what is about to be removed.
        processes.kill_tagged(task.task_id)
        status = task.status()
        failure = None
        if status.code == 0 and status.state is not TaskState.CLEANING:
            # It was working when the daemon died (a task found cleaning was being reverted).
            failure = Failure.of(TaskAborted(f"the daemon restarted while it was {status.state}"))
        self._clean_up(entry, failure, "rolled back after a daemon restart")

    def _clean_up(self, entry: _Entry, job_failure: Failure | None, note: str) -> None:
        """Roll the task back and finish it: cleanSuccess, or cleanFailure if a step failed.

        The task's code and message keep the first reason (an abort's 411, else the job's
        failure); ``note`` and any rollback failure are appended to the message.
        """
        task = entry.task
        status = task.status()
        failure = job_failure
        if status.state is TaskState.ABORTING:
            # The stop is the reason (411); a job error other than the abort itself is kept.
            extra = f"; {job_failure.message}" if job_failure is not None else ""
            failure = Failure(status.code, status.message + extra)
        task.begin_cleaning(failure)
        problem = roll_back(task, self._steps, self._repository)
        status = task.status()
        message = f"{status.message}; {note}" if note else status.message
        if problem is None:
            task.finish_cleaning(clean=True, code=status.code, message=message)
        else:
            code = status.code or problem.code
            task.finish_cleaning(clean=False, code=code, message=f"{message}; {problem.message}")
        log.info("task %s: finished %s: %s", task.task_id, task.status().result, message)

    # --- helpers ----------------------------------------------------------------------------

    def _start(self, entry: _Entry, target: Callable[..., None], *args: object) -> None:
        """Start a worker thread for ``entry`` (caller holds _lock)."""

        def work() -> None:
            try:
                target(entry, *args)
            except Exception:
                # Only a failure to persist gets here; the file keeps the last good state,
                # and the next daemon start recovers the task from it.
                log.exception("task %s: worker failed", entry.task.task_id)
            finally:
                with self._lock:
                    self._changed.notify_all()

        name = f"task-{entry.task.task_id[:8]}"
        entry.thread = threading.Thread(target=work, name=name, daemon=True)
        entry.thread.start()

    def _stop(self, entry: _Entry, reason: str) -> None:
        failure = Failure.of(TaskAborted(f"task {entry.task.task_id} {reason}"))
        if entry.task.abort(failure):
            log.info("task %s: stopping: %s", entry.task.task_id, reason)
            entry.cancellation.cancel()
            with self._lock:
                self._changed.notify_all()  # a copy waiting for a slot gives up

    def _take_copy_slot(self, task: Task) -> bool:
        """Wait for a copy slot while the task is in init; False if it was stopped first."""
        with self._lock:
            self._changed.wait_for(
                lambda: self._free_copy_slots > 0 or task.state is not TaskState.INIT
            )
            if task.state is not TaskState.INIT:
                return False
            self._free_copy_slots -= 1
            return True

    def _release_copy_slot(self) -> None:
        with self._lock:
            self._free_copy_slots += 1
            self._changed.notify_all()

    def _idle(self) -> bool:
        return all(e.task.state is TaskState.FINISHED for e in self._entries.values())

    def _entry(self, task_id: str) -> _Entry:
        with self._lock:
            return self._entry_locked(task_id)

    def _entry_locked(self, task_id: str) -> _Entry:
        try:
            key = validation.uuid(task_id, "taskID")
        except InvalidParameter:
            raise UnknownTask(repr(task_id)) from None
        entry = self._entries.get(key)
        if entry is None:
            raise UnknownTask(key)
        return entry

    def _load(self, task_dir: Path) -> Task | None:
        if task_dir.name.startswith(".") or not task_dir.is_dir():
            return None
        try:
            validation.uuid(task_dir.name, "taskID")
        except InvalidParameter:
            log.warning("not a task directory, ignored: %s", task_dir)
            return None
        fileutil.remove_stale_temps(task_dir)
        if fileutil.remove_dir_if_empty(task_dir):
            # Created by a submit that died before its first write: no one knows its id.
            log.info("removed empty task directory %s", task_dir)
            return None
        try:
            task = Task.load(task_dir)
        except TaskFileError as e:
            log.error("cannot load task, left alone: %s", e)
            return None
        unknown = {r.name for r in task.rollback_steps()} - self._steps.keys()
        if unknown:
            log.error("task %s: unknown rollback steps %s", task.task_id, sorted(unknown))
        return task
