"""The task manager with real jobs: volumes created on a real domain, real processes stopped,
real task.json files read back, and a real daemon crash (a child process killed with SIGKILL)
recovered by a new manager."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.storage.conftest import new_uuid
from vdsm.errors import (
    CopyImageError,
    TaskNotFinished,
    TaskStateError,
    UnknownTask,
    VdsmError,
)
from vdsm.storage import fileutil, runner
from vdsm.storage import volume as volumes
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task import Task, TaskResult, TaskState
from vdsm.storage.task_context import JSONArgs, TaskContext
from vdsm.storage.task_manager import TaskManager

MiB = 1024**2
TIMEOUT = 10.0


# --- the rollback step table of these tests ---------------------------------------------------


def remove_volume(repository: StorageRepository, args: JSONArgs) -> None:
    vol = volumes.Volume(repository.domain(args["sd"]), args["img"], args["vol"])
    if vol.exists():
        volumes.delete(vol)


def remove_file(repository: StorageRepository, args: JSONArgs) -> None:
    fileutil.remove_file(Path(args["path"]))


def append_line(repository: StorageRepository, args: JSONArgs) -> None:
    """Record that it ran, with the task's state on disk at that moment."""
    state = json.loads(Path(args["task_json"]).read_text())["state"] if "task_json" in args else ""
    with open(args["path"], "a") as f:
        f.write(f"{args['line']} {state}".strip() + "\n")


def fail(repository: StorageRepository, args: JSONArgs) -> None:
    raise VdsmError(f"rollback refused: {args['why']}")


STEPS = {
    "remove_volume": remove_volume,
    "remove_file": remove_file,
    "append_line": append_line,
    "fail": fail,
}


# --- helpers ----------------------------------------------------------------------------------


def on_disk(tasks_dir: Path, task_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tasks_dir / task_id / "task.json").read_text())
    return data


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll for something only the file system or /proc can tell (a pid file, an exit)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_pid(path: Path) -> int:
    assert wait_for(lambda: path.exists() and path.read_text().endswith("\n")), f"no {path}"
    return int(path.read_text())


def sleeper(pid_file: Path) -> list[str]:
    """A real long-running command that writes its pid first (exec keeps the pid)."""
    return ["sh", "-c", f'echo $$ > "{pid_file}"; exec sleep 60']


@pytest.fixture
def kill_leftovers() -> Iterator[Callable[[int], None]]:
    pids: list[int] = []
    yield pids.append
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def tasks_dir(domain: FileStorageDomain) -> Path:
    return domain.tasks_dir


@pytest.fixture
def make_manager(repository: StorageRepository) -> Iterator[Callable[..., TaskManager]]:
    made: list[TaskManager] = []

    def make(**kwargs: Any) -> TaskManager:
        manager = TaskManager(rollback_steps=STEPS, repository=repository, **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.shutdown(0, stop_timeout=TIMEOUT)


@pytest.fixture
def manager(make_manager: Callable[..., TaskManager]) -> TaskManager:
    return make_manager()


def create_volume_job(
    domain: FileStorageDomain, img: str, vol: str
) -> Callable[[TaskContext], None]:
    def job(ctx: TaskContext) -> None:
        ctx.add_rollback("remove_volume", {"sd": domain.sd_uuid, "img": img, "vol": vol})
        volumes.create(domain, img, vol, capacity=MiB, volume_format="COW", allocation="SPARSE")

    return job


# --- success, failure, rollback ---------------------------------------------------------------


def test_create_volume_succeeds_then_revert_and_clear(
    manager: TaskManager, domain: FileStorageDomain, tasks_dir: Path
) -> None:
    img, vol = new_uuid(), new_uuid()
    task_id = manager.submit(
        "createVolume", create_volume_job(domain, img, vol), tasks_dir=tasks_dir
    )

    status = manager.wait(task_id, TIMEOUT)
    assert (status.state, status.result, status.code) == (TaskState.FINISHED, TaskResult.SUCCESS, 0)
    assert status.progress == 100.0 and status.verb == "createVolume"
    assert volumes.Volume(domain, img, vol).exists()
    data = on_disk(tasks_dir, task_id)
    assert (data["state"], data["result"]) == ("finished", "success")
    assert data["rollback"] == [
        {"name": "remove_volume", "args": {"sd": domain.sd_uuid, "img": img, "vol": vol}}
    ]
    assert manager.info(task_id).verb == "createVolume"
    assert set(manager.all_info()) == {task_id}
    assert manager.all_statuses()[task_id] == status

    manager.revert(task_id)
    status = manager.wait(task_id, TIMEOUT)
    assert (status.state, status.result, status.code) == (
        TaskState.FINISHED,
        TaskResult.CLEAN_SUCCESS,
        0,
    )
    assert "reverted" in status.message
    assert not volumes.Volume(domain, img, vol).exists()
    assert on_disk(tasks_dir, task_id)["result"] == "cleanSuccess"

    manager.clear(task_id)
    assert not (tasks_dir / task_id).exists()
    with pytest.raises(UnknownTask):
        manager.status(task_id)


def test_failing_job_is_rolled_back_with_its_error(
    manager: TaskManager, domain: FileStorageDomain, tasks_dir: Path
) -> None:
    img, vol = new_uuid(), new_uuid()
    create = create_volume_job(domain, img, vol)

    def job(ctx: TaskContext) -> None:
        create(ctx)
        raise CopyImageError("qemu-img convert: No space left on device")

    task_id = manager.submit("syncImageData", job, tasks_dir=tasks_dir)
    status = manager.wait(task_id, TIMEOUT)
    assert (status.state, status.result, status.code) == (
        TaskState.FINISHED,
        TaskResult.CLEAN_SUCCESS,
        261,
    )
    assert "No space left on device" in status.message
    assert not volumes.Volume(domain, img, vol).exists()
    assert not domain.image_dir(img).exists()
    data = on_disk(tasks_dir, task_id)
    assert (data["result"], data["code"], data["rollback"]) == ("cleanSuccess", 261, [])


def test_unexpected_exception_is_code_100_naming_it(
    manager: TaskManager, tasks_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def job(ctx: TaskContext) -> None:
        raise KeyError("imgUUID")

    task_id = manager.submit("createVolume", job, tasks_dir=tasks_dir)
    status = manager.wait(task_id, TIMEOUT)
    assert (status.result, status.code) == (TaskResult.CLEAN_SUCCESS, 100)
    assert "KeyError" in status.message and "imgUUID" in status.message
    assert any(r.exc_info for r in caplog.records), "the traceback must be logged"


def test_rollback_runs_newest_first_while_cleaning(
    manager: TaskManager, tasks_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ran"

    def job(ctx: TaskContext) -> None:
        task_json = str(tasks_dir / ctx.task_id / "task.json")
        for line in ("first", "second", "third"):
            ctx.add_rollback(
                "append_line", {"path": str(out), "line": line, "task_json": task_json}
            )
            # add_rollback returns only once the step is on disk.
            assert on_disk(tasks_dir, ctx.task_id)["rollback"][-1]["args"]["line"] == line
        assert on_disk(tasks_dir, ctx.task_id)["state"] == "running"
        raise VdsmError("boom")

    task_id = manager.submit("createVolume", job, tasks_dir=tasks_dir)
    manager.wait(task_id, TIMEOUT)
    assert out.read_text().splitlines() == ["third cleaning", "second cleaning", "first cleaning"]


def test_failing_rollback_is_clean_failure(
    manager: TaskManager, tasks_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ran"

    def job(ctx: TaskContext) -> None:
        ctx.add_rollback("append_line", {"path": str(out), "line": "older"})
        ctx.add_rollback("fail", {"why": "volume busy"})
        raise CopyImageError("disk full")

    task_id = manager.submit("syncImageData", job, tasks_dir=tasks_dir)
    status = manager.wait(task_id, TIMEOUT)
    assert (status.result, status.code) == (TaskResult.CLEAN_FAILURE, 261)
    assert "disk full" in status.message  # the original failure is kept...
    assert "rollback step 'fail'" in status.message  # ...and the failing step named
    assert "volume busy" in status.message
    assert not out.exists()  # older steps wait until the failed one can be undone
    assert on_disk(tasks_dir, task_id)["result"] == "cleanFailure"


def test_add_rollback_refuses_unknown_step_and_non_json(
    manager: TaskManager, tasks_dir: Path
) -> None:
    def unknown(ctx: TaskContext) -> None:
        ctx.add_rollback("format_disk", {})

    def not_json(ctx: TaskContext) -> None:
        ctx.add_rollback("remove_file", {"path": Path("/x")})

    first = manager.submit("createVolume", unknown, tasks_dir=tasks_dir)
    second = manager.submit("createVolume", not_json, tasks_dir=tasks_dir)
    status = manager.wait(first, TIMEOUT)
    assert status.code == 100 and "format_disk" in status.message
    status = manager.wait(second, TIMEOUT)
    assert status.code == 100 and "not JSON" in status.message
    assert on_disk(tasks_dir, second)["rollback"] == []


def test_progress(manager: TaskManager, tasks_dir: Path) -> None:
    reported, release = threading.Event(), threading.Event()

    def job(ctx: TaskContext) -> None:
        ctx.set_progress(40.0, done_bytes=4 * MiB, total_bytes=10 * MiB)
        reported.set()
        release.wait(TIMEOUT)

    task_id = manager.submit("syncImageData", job, tasks_dir=tasks_dir)
    assert reported.wait(TIMEOUT)
    status = manager.status(task_id)
    assert (status.state, status.progress, status.done_bytes, status.total_bytes) == (
        TaskState.RUNNING,
        40.0,
        4 * MiB,
        10 * MiB,
    )
    release.set()
    assert manager.wait(task_id, TIMEOUT).progress == 100.0


# --- stop -------------------------------------------------------------------------------------


def test_stop_kills_the_running_command_and_rolls_back(
    manager: TaskManager, tasks_dir: Path, tmp_path: Path, kill_leftovers: Callable[[int], None]
) -> None:
    made, pid_file = tmp_path / "made", tmp_path / "pid"

    def job(ctx: TaskContext) -> None:
        ctx.add_rollback("remove_file", {"path": str(made)})
        made.write_text("partial copy")
        runner.run(sleeper(pid_file), cancellation=ctx.cancellation)

    task_id = manager.submit("syncImageData", job, tasks_dir=tasks_dir, is_copy=True)
    pid = read_pid(pid_file)
    kill_leftovers(pid)
    # The child is tagged with its task, for recovery after a crash. (While the shell execs
    # sleep, /proc/PID/environ reads empty for a moment: read until the new image shows.)
    deadline = time.monotonic() + 10
    while not (environ := Path(f"/proc/{pid}/environ").read_bytes()):
        assert time.monotonic() < deadline, "environ never readable"
        time.sleep(0.01)
    assert f"VDSM_TASK_ID={task_id}".encode() in environ.split(b"\0")

    started = time.monotonic()
    manager.stop(task_id)
    assert manager.status(task_id).state in (
        TaskState.ABORTING,
        TaskState.CLEANING,
        TaskState.FINISHED,
    )
    status = manager.wait(task_id, TIMEOUT)
    assert time.monotonic() - started < 3
    assert not alive(pid)
    assert (status.state, status.result, status.code) == (
        TaskState.FINISHED,
        TaskResult.CLEAN_SUCCESS,
        411,
    )
    assert status.message.startswith("Task is aborted") and "stopped by request" in status.message
    assert not made.exists()
    assert on_disk(tasks_dir, task_id)["code"] == 411


def test_stop_is_seen_by_check_aborted(
    manager: TaskManager, tasks_dir: Path, tmp_path: Path
) -> None:
    running = threading.Event()
    out = tmp_path / "ran"

    def job(ctx: TaskContext) -> None:
        task_json = str(tasks_dir / ctx.task_id / "task.json")
        ctx.add_rollback("append_line", {"path": str(out), "line": "undo", "task_json": task_json})
        running.set()
        while True:
            ctx.check_aborted()
            time.sleep(0.01)  # a job's own work between checks

    task_id = manager.submit("cloneImageStructure", job, tasks_dir=tasks_dir)
    assert running.wait(TIMEOUT)
    manager.stop(task_id)
    assert on_disk(tasks_dir, task_id)["state"] in ("aborting", "cleaning", "finished")
    status = manager.wait(task_id, TIMEOUT)
    assert (status.result, status.code) == (TaskResult.CLEAN_SUCCESS, 411)
    assert out.read_text() == "undo cleaning\n"


def test_task_verbs_refuse_wrong_states(manager: TaskManager, tasks_dir: Path) -> None:
    release = threading.Event()

    def job(ctx: TaskContext) -> None:
        release.wait(TIMEOUT)

    task_id = manager.submit("createVolume", job, tasks_dir=tasks_dir)
    with pytest.raises(TaskStateError):
        manager.clear(task_id)
    with pytest.raises(TaskNotFinished):
        manager.revert(task_id)
    release.set()
    manager.wait(task_id, TIMEOUT)
    with pytest.raises(TaskStateError):
        manager.stop(task_id)

    for verb in (manager.status, manager.stop, manager.clear, manager.revert, manager.info):
        with pytest.raises(UnknownTask):
            verb(new_uuid())
        with pytest.raises(UnknownTask):
            verb("../../etc")


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
from vdsm.storage.task_manager import TaskManager

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
    assert alive(orphan), "the copy outlives the daemon: it has its own session"
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
