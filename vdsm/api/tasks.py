"""Task verbs: status, info, stop, clear, revert, and the all-tasks views."""

from __future__ import annotations

from typing import Any

from vdsm.storage.task.manager import TaskManager
from vdsm.storage.task.state import TaskStatus


def status_payload(status: TaskStatus) -> dict[str, Any]:
    """VDSM's TaskStatus, plus our progress and byte counts."""
    return {
        "taskID": status.task_id,
        "taskState": str(status.state),
        "taskResult": str(status.result),
        "code": status.code,
        "message": status.message,
        "progress": status.progress,
        "bytesDone": str(status.done_bytes) if status.done_bytes is not None else "",
        "bytesTotal": str(status.total_bytes) if status.total_bytes is not None else "",
        # The adaptive copy rate (vdsm.copy_governor): why the copy is held back now.
        "heldBack": status.held_back,
    }


class TasksAPI:
    def __init__(self, tasks: TaskManager) -> None:
        self._tasks = tasks

    def status(self, task_id: str) -> dict[str, Any]:
        return status_payload(self._tasks.status(task_id))

    def all_statuses(self) -> dict[str, Any]:
        return {tid: status_payload(s) for tid, s in self._tasks.all_statuses().items()}

    def info(self, task_id: str) -> dict[str, Any]:
        info = self._tasks.info(task_id)
        return {"id": info.task_id, "verb": info.verb}

    def all_info(self) -> dict[str, Any]:
        return {
            tid: {"id": info.task_id, "verb": info.verb}
            for tid, info in self._tasks.all_info().items()
        }

    def stop(self, task_id: str) -> None:
        self._tasks.stop(task_id)

    def clear(self, task_id: str) -> None:
        self._tasks.clear(task_id)

    def revert(self, task_id: str) -> None:
        self._tasks.revert(task_id)
