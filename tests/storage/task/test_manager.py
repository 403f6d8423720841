"""The task manager with real jobs: volumes created on a real domain, real processes stopped,
real task.json files read back. A task's life — success, failure and rollback, progress,
revert and clear — and stopping it.

Copy slots, shutdown and recovery after a real daemon crash: test_manager_recovery.py.
The rollback step table and the helpers: support.py; the fixtures: conftest.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.storage.support import alive, new_uuid
from tests.storage.task.support import (
    TIMEOUT,
    MiB,
    create_volume_job,
    on_disk,
    read_pid,
    sleeper,
)
from vdsm.errors import (
    CopyImageError,
    TaskNotFinished,
    TaskStateError,
    UnknownTask,
    VdsmError,
)
from vdsm.storage import runner
from vdsm.storage import volume as volumes
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.task.context import TaskContext
from vdsm.storage.task.manager import TaskManager
from vdsm.storage.task.state import TaskResult, TaskState

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
