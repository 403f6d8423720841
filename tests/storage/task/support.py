"""Shared by the task tests (tests/storage/task/): the rollback step table their managers run,
reading a task.json back, watching a real process (a pid file, /proc) and a job that creates a
real volume. The fixtures are in tests/storage/task/conftest.py.

Not a test module: tests/storage/conftest.py registers it for pytest's assert rewriting, so a
failed check here shows its values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vdsm.errors import VdsmError
from vdsm.storage import fileutil
from vdsm.storage import volume as volumes
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task.context import JSONArgs, TaskContext
from vdsm.storage.task.state import Task

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
    """The task.json of task ``task_id`` under ``tasks_dir``, as a later daemon reads it."""
    data: dict[str, Any] = json.loads((tasks_dir / task_id / "task.json").read_text())
    return data


def task_json(task: Task) -> dict[str, Any]:
    """The task.json of ``task``, as it is on disk now."""
    return on_disk(task.directory.parent, task.task_id)


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


def create_volume_job(
    domain: FileStorageDomain, img: str, vol: str
) -> Callable[[TaskContext], None]:
    def job(ctx: TaskContext) -> None:
        ctx.add_rollback("remove_volume", {"sd": domain.sd_uuid, "img": img, "vol": vol})
        volumes.create(domain, img, vol, capacity=MiB, volume_format="COW", allocation="SPARSE")

    return job
