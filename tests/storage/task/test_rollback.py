"""Running a task's rollback steps (vdsm.storage.task.rollback): newest first, each dropped
from the task once it ran, the rest kept on a failure, an unknown name reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.storage.task.support import task_json
from vdsm.errors import VdsmError
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task.rollback import roll_back
from vdsm.storage.task.state import Task


def test_roll_back_newest_first_and_stops_at_failure(task: Task, tmp_path: Path) -> None:
    ran: list[str] = []

    def record(repository: StorageRepository, args: Any) -> None:
        ran.append(args["name"])

    def fail(repository: StorageRepository, args: Any) -> None:
        raise VdsmError("cannot undo")

    task.start()
    for name in ("a", "b"):
        task.add_rollback("record", {"name": name})
    task.add_rollback("fail", {})
    task.add_rollback("record", {"name": "c"})
    steps = {"record": record, "fail": fail}
    repository = StorageRepository(tmp_path / "repo")

    problem = roll_back(task, steps, repository)
    assert ran == ["c"]
    assert problem is not None and "'fail'" in problem.message and "cannot undo" in problem.message
    # The failed step and the older ones stay recorded, on disk too, for a retry.
    assert [r.name for r in task.rollback_steps()] == ["record", "record", "fail"]
    assert len(task_json(task)["rollback"]) == 3

    steps["fail"] = lambda repository, args: ran.append("fixed")
    assert roll_back(task, steps, repository) is None
    assert ran == ["c", "fixed", "b", "a"]
    assert task.rollback_steps() == []


def test_roll_back_unknown_step(task: Task, tmp_path: Path) -> None:
    task.start()
    task.add_rollback("mystery", {"x": 1})
    problem = roll_back(task, {}, StorageRepository(tmp_path / "repo"))
    assert problem is not None
    assert "'mystery'" in problem.message and "unknown" in problem.message
