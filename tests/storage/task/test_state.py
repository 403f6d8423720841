"""The Task state machine and its task.json, on real files: checked transitions, what is on
disk after every change, and the files a loader must refuse (vdsm.storage.task.state)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.storage.support import new_uuid
from tests.storage.task.support import task_json
from vdsm.errors import TaskNotFinished, TaskStateError, UnknownTask
from vdsm.storage.task import state
from vdsm.storage.task.state import Failure, Task, TaskFileError, TaskResult, TaskState


def test_new_task_is_persisted_in_init(task: Task, tmp_path: Path) -> None:
    assert task.path == tmp_path / "tasks" / task.task_id / "task.json"
    data = task_json(task)
    assert data["state"] == "init"
    assert data["result"] == ""
    assert data["code"] == 0
    assert data["message"] == "Task is initializing"
    assert data["verb"] == "createVolume"
    assert data["rollback"] == []
    assert task.saved_state is TaskState.INIT


def test_every_transition_is_on_disk(task: Task) -> None:
    assert task.start()
    assert task_json(task)["state"] == "running"
    task.add_rollback("remove_volume", {"vol": "v1", "n": 1})
    assert task_json(task)["rollback"] == [{"name": "remove_volume", "args": {"vol": "v1", "n": 1}}]
    assert task.abort(Failure(411, "Task is aborted: test"))
    data = task_json(task)
    assert (data["state"], data["code"], data["message"]) == (
        "aborting",
        411,
        "Task is aborted: test",
    )
    task.begin_cleaning(None)
    assert task_json(task)["state"] == "cleaning"
    task.finish_cleaning(clean=True, code=411, message="done")
    data = task_json(task)
    assert (data["state"], data["result"], data["message"]) == ("finished", "cleanSuccess", "done")


def test_success(task: Task) -> None:
    task.start()
    assert task.complete()
    status = task.status()
    assert (status.state, status.result, status.code, status.progress) == (
        TaskState.FINISHED,
        TaskResult.SUCCESS,
        0,
        100.0,
    )
    assert task_json(task)["result"] == "success"


def test_illegal_transitions_raise(task: Task) -> None:
    with pytest.raises(TaskStateError):
        task.complete()  # init → finished
    with pytest.raises(TaskStateError):
        task.finish_cleaning(clean=True, code=0, message="")  # init → finished
    with pytest.raises(TaskNotFinished):
        task.begin_revert()
    with pytest.raises(TaskStateError):
        task.add_rollback("x", {})  # no job runs in init
    task.start()
    task.complete()
    with pytest.raises(TaskStateError):
        task.abort(Failure(411, "late"))
    with pytest.raises(TaskStateError):
        task.start()
    # A refused change leaves memory and disk as they were.
    assert task.state is TaskState.FINISHED
    assert task_json(task)["state"] == "finished"


def test_stop_before_start_wins(task: Task) -> None:
    assert task.abort(Failure(411, "stopped"))
    assert not task.start()
    assert not task.abort(Failure(411, "again"))  # already aborting: nothing to do
    assert task.state is TaskState.ABORTING


def test_stop_before_completion_wins(task: Task) -> None:
    task.start()
    task.abort(Failure(411, "stopped"))
    assert not task.complete()
    assert task.state is TaskState.ABORTING


@pytest.mark.parametrize("args", [{"f": object()}, {"n": float("nan")}, {1: "x"}, ["a"]])
def test_rollback_args_must_be_json(task: Task, args: Any) -> None:
    task.start()
    with pytest.raises(ValueError):
        task.add_rollback("step", args)
    assert task_json(task)["rollback"] == []


def test_rollback_args_are_copied(task: Task) -> None:
    task.start()
    args = {"paths": ["a"]}
    task.add_rollback("step", args)
    args["paths"].append("b")
    assert task.rollback_steps()[0].args == {"paths": ["a"]}


def test_progress_is_throttled_on_disk(task: Task, monkeypatch: pytest.MonkeyPatch) -> None:
    task.start()
    task.set_progress(150, done_bytes=5, total_bytes=10)
    status = task.status()
    assert (status.progress, status.done_bytes, status.total_bytes) == (100.0, 5, 10)
    assert task_json(task)["progress"] == 0.0  # the last write was just now
    monkeypatch.setattr(state, "PROGRESS_SAVE_INTERVAL", 0.0)
    task.set_progress(42.5)
    assert task_json(task)["progress"] == 42.5


def test_load_round_trip(task: Task) -> None:
    task.start()
    task.add_rollback("remove_file", {"path": "/x"})
    loaded = Task.load(task.directory)
    assert loaded.status() == task.status()
    assert loaded.rollback_steps() == task.rollback_steps()
    assert loaded.created == task.created


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: "{torn",
        lambda d: json.dumps({**d, "state": "dancing"}),
        lambda d: json.dumps({**d, "id": new_uuid()}),
        lambda d: json.dumps({**d, "format": 99}),
        lambda d: json.dumps({**d, "rollback": [{"name": 3}]}),
        lambda d: json.dumps({k: v for k, v in d.items() if k != "verb"}),
        lambda d: json.dumps([d]),
    ],
    ids=["torn", "bad-state", "other-id", "format", "bad-step", "missing-key", "not-object"],
)
def test_load_refuses_bad_files(task: Task, edit: Any) -> None:
    task.path.write_text(edit(task_json(task)))
    with pytest.raises(TaskFileError):
        Task.load(task.directory)


def test_retired_task_accepts_no_change(task: Task) -> None:
    with pytest.raises(TaskStateError):
        task.retire()  # not finished
    task.start()
    task.complete()
    task.retire()
    with pytest.raises(UnknownTask):
        task.begin_revert()


def test_failure_of_foreign_exception_names_it() -> None:
    failure = Failure.of(KeyError("vol"))
    assert failure.code == 100
    assert "KeyError" in failure.message and "vol" in failure.message
    assert Failure.of(TaskNotFinished("t")) == Failure(403, "Task not finished: t")
