"""Shared by the task manager tests (test_task_manager.py, test_task_manager_recovery.py): the
rollback step table their managers run, reading a task.json back, watching a real process
(a pid file, /proc), the fixtures (a tasks directory, managers shut down at teardown, pids
killed at teardown) and a job that creates a real volume.

Not a test module: tests/storage/conftest.py registers it for pytest's assert rewriting, so a
failed check here shows its values; a test module imports the fixtures by name (and lists them
in ``__all__``) so that pytest finds them there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vdsm.errors import VdsmError
from vdsm.storage import fileutil
from vdsm.storage import volume as volumes
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
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
