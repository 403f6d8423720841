"""The daemon's table of rollback steps (vdsm.storage.rollback_steps) run by a real task
manager: one remove-volume step, and a task an older daemon persisted under the step's old
name still rolled back after a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.storage.support import new_uuid
from vdsm.storage import rollback_steps
from vdsm.storage import volume as volumes
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task.manager import TaskManager
from vdsm.storage.task.state import TaskResult

MiB = 1024**2


def test_one_remove_volume_step_under_every_name_it_had() -> None:
    steps = rollback_steps.table()
    assert steps[rollback_steps.REMOVE_VOLUME] is rollback_steps.remove_volume
    for old, new in rollback_steps.LEGACY_NAMES.items():
        assert steps[old] is steps[new]
    removers = [name for name, step in steps.items() if step is rollback_steps.remove_volume]
    assert sorted(removers) == ["image_copy.remove_volume", "volume.remove"]


def write_running_task(tasks_dir: Path, step: str, args: dict[str, str]) -> str:
    """A task.json as a daemon that died while the task was running left it."""
    task_id = new_uuid()
    (tasks_dir / task_id).mkdir(parents=True)
    now = time.time()
    record = {
        "format": 1,
        "id": task_id,
        "verb": "cloneImageStructure",
        "state": "running",
        "result": "",
        "code": 0,
        "message": "Task is running",
        "progress": 50.0,
        "done_bytes": None,
        "total_bytes": None,
        "rollback": [{"name": step, "args": args}],
        "created": now,
        "updated": now,
    }
    (tasks_dir / task_id / "task.json").write_text(json.dumps(record))
    return task_id


def test_task_of_an_older_daemon_rolls_back_under_the_old_name(
    domain: FileStorageDomain, repository: StorageRepository
) -> None:
    img, vol = new_uuid(), new_uuid()
    made = volumes.create(domain, img, vol, capacity=MiB, volume_format="COW", allocation="SPARSE")
    task_id = write_running_task(
        domain.tasks_dir, "image_copy.remove_volume", rollback_steps.volume_args(made)
    )
    manager = TaskManager(rollback_steps=rollback_steps.table(), repository=repository)
    try:
        assert manager.recover([domain.tasks_dir]) == [task_id]
        status = manager.wait(task_id, timeout=10)
        assert status.result is TaskResult.CLEAN_SUCCESS, status
        assert not made.exists() and not made.path.exists()
        assert not made.image_dir.exists()
    finally:
        manager.shutdown(0, stop_timeout=10)
