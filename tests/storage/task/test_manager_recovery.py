"""The task manager with real jobs and real processes: copy slots limiting concurrent copies,
shutdown stopping what runs, and a real daemon crash (a child process killed with SIGKILL)
recovered by a new manager from the task.json files it left.

A task's life and stopping it: test_manager.py. The rollback step table and the
helpers: support.py; the fixtures: conftest.py.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.storage.support import alive, new_uuid
from tests.storage.task.support import (
    TIMEOUT,
    create_volume_job,
    on_disk,
    read_pid,
    sleeper,
    wait_for,
)
from vdsm.errors import UnknownTask, VdsmError
from vdsm.storage import fileutil, runner
from vdsm.storage import volume as volumes
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task.context import TaskContext
from vdsm.storage.task.manager import TaskManager
from vdsm.storage.task.state import Task, TaskResult, TaskState

# --- copy slots -------------------------------------------------------------------------------


def test_copy_slots_limit_concurrent_copies(
    make_manager: Callable[..., TaskManager], tasks_dir: Path
) -> None:
    manager = make_manager(max_concurrent_copies=2)
    started: queue.Queue[str] = queue.Queue()
    events: dict[str, threading.Event] = {}

    def release(task_id: str) -> threading.Event:
        # dict.setdefault is atomic: a job may start before submit() has returned its id.
        return events.setdefault(task_id, threading.Event())

    def copy(ctx: TaskContext) -> None:
        started.put(ctx.task_id)
        assert release(ctx.task_id).wait(TIMEOUT)

    ids = [
        manager.submit("syncImageData", copy, tasks_dir=tasks_dir, is_copy=True) for _ in range(3)
    ]
    first = started.get(timeout=TIMEOUT)
    second = started.get(timeout=TIMEOUT)
    (waiting,) = set(ids) - {first, second}
    assert manager.status(waiting).state is TaskState.INIT
    assert on_disk(tasks_dir, waiting)["state"] == "init"

    # A task that is not a copy does not wait for a slot.
    other = manager.submit("createVolume", lambda ctx: None, tasks_dir=tasks_dir)
    assert manager.wait(other, TIMEOUT).result is TaskResult.SUCCESS
    assert started.empty()
    assert manager.status(waiting).state is TaskState.INIT

    release(first).set()
    assert started.get(timeout=TIMEOUT) == waiting
    for task_id in (second, waiting):
        release(task_id).set()
    for task_id in ids:
        assert manager.wait(task_id, TIMEOUT).result is TaskResult.SUCCESS


def test_stop_while_waiting_for_a_slot_never_runs_the_job(
    make_manager: Callable[..., TaskManager], tasks_dir: Path
) -> None:
    manager = make_manager(max_concurrent_copies=1)
    holding, release = threading.Event(), threading.Event()
    ran = threading.Event()

    def hold(ctx: TaskContext) -> None:
        holding.set()
        release.wait(TIMEOUT)

    busy = manager.submit("syncImageData", hold, tasks_dir=tasks_dir, is_copy=True)
    assert holding.wait(TIMEOUT)
    queued = manager.submit(
        "syncImageData", lambda ctx: ran.set(), tasks_dir=tasks_dir, is_copy=True
    )
    manager.stop(queued)
    status = manager.wait(queued, TIMEOUT)
    assert (status.result, status.code) == (TaskResult.CLEAN_SUCCESS, 411)
    assert not ran.is_set()
    release.set()
    assert manager.wait(busy, TIMEOUT).result is TaskResult.SUCCESS


# --- shutdown ---------------------------------------------------------------------------------


def test_shutdown_stops_running_tasks_and_refuses_new_ones(
    manager: TaskManager, tasks_dir: Path, tmp_path: Path, kill_leftovers: Callable[[int], None]
) -> None:
    pid_file = tmp_path / "pid"

    def job(ctx: TaskContext) -> None:
        runner.run(sleeper(pid_file), cancellation=ctx.cancellation)

    task_id = manager.submit("syncImageData", job, tasks_dir=tasks_dir, is_copy=True)
    quick = manager.submit("createVolume", lambda ctx: None, tasks_dir=tasks_dir)
    pid = read_pid(pid_file)
    kill_leftovers(pid)

    assert manager.shutdown(0.1, stop_timeout=TIMEOUT)
    assert not alive(pid)
    status = manager.status(task_id)
    assert (status.state, status.result, status.code) == (
        TaskState.FINISHED,
        TaskResult.CLEAN_SUCCESS,
        411,
    )
    assert "shutting down" in status.message
    assert on_disk(tasks_dir, task_id)["state"] == "finished"
    assert manager.status(quick).result is TaskResult.SUCCESS
    with pytest.raises(VdsmError, match="shutting down"):
        manager.submit("createVolume", lambda ctx: None, tasks_dir=tasks_dir)


# --- recovery ---------------------------------------------------------------------------------

CRASHING_DAEMON = """
import sys, threading
from pathlib import Path
from vdsm.storage import runner, volume
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task.manager import TaskManager

repo_root, sd, img, vol, made, pid_file, tasks_dir = sys.argv[1:]
repository = StorageRepository(Path(repo_root))
domain = repository.domain(sd)
# This daemon only records the steps; the one that recovers has the real table.
steps = {"remove_volume": lambda r, a: None, "remove_file": lambda r, a: None}
manager = TaskManager(rollback_steps=steps, repository=repository)

def job(ctx):
    ctx.add_rollback("remove_volume", {"sd": sd, "img": img, "vol": vol})
    volume.create(domain, img, vol, capacity=1 << 20, volume_format="COW", allocation="SPARSE")
    ctx.add_rollback("remove_file", {"path": made})
    Path(made).write_text("partial")
    argv = ["sh", "-c", f'echo $$ > "{pid_file}"; exec sleep 60']
    runner.run(argv, cancellation=ctx.cancellation)

print(manager.submit("syncImageData", job, tasks_dir=Path(tasks_dir), is_copy=True), flush=True)
threading.Event().wait()
"""


def test_recover_after_a_crash_kills_orphans_and_rolls_back(
    repository: StorageRepository,
    domain: FileStorageDomain,
    tasks_dir: Path,
    tmp_path: Path,
    make_manager: Callable[..., TaskManager],
    kill_leftovers: Callable[[int], None],
) -> None:
    img, vol = new_uuid(), new_uuid()
    made, pid_file = tmp_path / "made", tmp_path / "pid"
    argv = [sys.executable, "-c", CRASHING_DAEMON, str(repository.root), domain.sd_uuid, img, vol]
    daemon = subprocess.Popen(
        [*argv, str(made), str(pid_file), str(tasks_dir)], stdout=subprocess.PIPE, text=True
    )
    kill_leftovers(daemon.pid)
    try:
        assert daemon.stdout is not None
        task_id = daemon.stdout.readline().strip()
        orphan = read_pid(pid_file)
        kill_leftovers(orphan)
        daemon.kill()  # SIGKILL: no cleanup of any kind runs
        daemon.wait(TIMEOUT)
    finally:
        daemon.kill()
        daemon.wait(TIMEOUT)
        if daemon.stdout is not None:
            daemon.stdout.close()
    # The copy dies with the daemon (PR_SET_PDEATHSIG), though it has a session of its own.
    assert wait_for(lambda: not alive(orphan)), "the copy outlived the daemon"
    assert volumes.Volume(domain, img, vol).exists() and made.exists()
    assert on_disk(tasks_dir, task_id)["state"] == "running"

    manager = make_manager()
    assert manager.recover([tasks_dir]) == [task_id]
    status = manager.wait(task_id, TIMEOUT)
    assert not alive(orphan)
    assert (status.state, status.result, status.code) == (
        TaskState.FINISHED,
        TaskResult.CLEAN_SUCCESS,
        411,
    )
    assert "daemon restart" in status.message
    assert not volumes.Volume(domain, img, vol).exists()
    assert not domain.image_dir(img).exists()
    assert not made.exists()
    data = on_disk(tasks_dir, task_id)
    assert (data["state"], data["result"], data["rollback"]) == ("finished", "cleanSuccess", [])


def test_recover_keeps_finished_tasks_and_survives_bad_files(
    manager: TaskManager,
    make_manager: Callable[..., TaskManager],
    domain: FileStorageDomain,
    tasks_dir: Path,
) -> None:
    img, vol = new_uuid(), new_uuid()
    done = manager.submit("createVolume", create_volume_job(domain, img, vol), tasks_dir=tasks_dir)
    manager.wait(done, TIMEOUT)
    # A write that died before its rename leaves a hidden temporary file.
    stale = fileutil.temp_path_for(tasks_dir / done / "task.json")
    stale.write_text("{half")
    torn = tasks_dir / new_uuid()
    torn.mkdir()
    (torn / "task.json").write_text('{"format": 1, "id": ')
    empty = tasks_dir / new_uuid()  # a submit that died before its first write
    empty.mkdir()
    (tasks_dir / "README").write_text("not a task")

    restarted = make_manager()
    assert restarted.recover([tasks_dir, tasks_dir.parent / "no-such-dir"]) == [done]
    status = restarted.status(done)
    assert (status.state, status.result) == (TaskState.FINISHED, TaskResult.SUCCESS)
    assert not stale.exists()
    assert (torn / "task.json").exists(), "a torn task is left alone for a person to look at"
    assert not empty.exists()
    with pytest.raises(UnknownTask):
        restarted.status(torn.name)
    # The restarted daemon can still revert what the old one did.
    restarted.revert(done)
    assert restarted.wait(done, TIMEOUT).result is TaskResult.CLEAN_SUCCESS
    assert not volumes.Volume(domain, img, vol).exists()


def test_recover_with_an_unknown_step_ends_in_clean_failure(
    make_manager: Callable[..., TaskManager], tasks_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ran"
    # A task a dead daemon left running, with a step this daemon does not know.
    task = Task.create(tasks_dir, new_uuid(), "syncImageData")
    task.start()
    task.add_rollback("append_line", {"path": str(out), "line": "older"})
    task.add_rollback("reformat_disk", {"how": "fast"})

    manager = make_manager()
    manager.recover([tasks_dir])
    status = manager.wait(task.task_id, TIMEOUT)
    assert status.result is TaskResult.CLEAN_FAILURE
    assert "'reformat_disk'" in status.message and "unknown" in status.message
    assert not out.exists()
    assert on_disk(tasks_dir, task.task_id)["result"] == "cleanFailure"
