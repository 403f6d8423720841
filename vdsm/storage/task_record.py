"""task.json, the persisted record of a task (contract §5): its vocabulary and its JSON form.

What a field of the file may hold (:class:`TaskState`, :class:`TaskResult`, a
:class:`RollbackRecord` per step), the bytes written for a task, and the checked read-back: a
later daemon trusts a task.json only if it is of our format, every field has its type, and it
names the task its directory names. The state machine that changes these fields is
:mod:`vdsm.storage.task`'s; nothing here decides a transition.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

TASK_FILE = "task.json"
FORMAT_VERSION = 1


class TaskState(StrEnum):
    INIT = "init"  # created and persisted; not started yet (a copy may wait here for a slot)
    RUNNING = "running"  # its job is running
    ABORTING = "aborting"  # a stop was requested; the job is being interrupted
    CLEANING = "cleaning"  # its rollback steps run (after a failure, a stop, a revert, a restart)
    FINISHED = "finished"  # nothing runs any more; ``result`` says how it ended
    # In the contract's vocabulary (VDSM: a task it cannot account for). We never enter it;
    # a file that says so is treated as interrupted and rolled back.
    UNKNOWN = "unknown"


class TaskResult(StrEnum):
    NONE = ""  # not finished yet
    SUCCESS = "success"  # the job completed
    CLEAN_SUCCESS = "cleanSuccess"  # failed, stopped or reverted, and rolled back
    CLEAN_FAILURE = "cleanFailure"  # a rollback step failed too: manual cleanup may be needed


class TaskFileError(Exception):
    """A task.json that cannot be read or does not describe a task (torn, foreign, edited)."""


@dataclass(frozen=True)
class RollbackRecord:
    name: str  # a key of the rollback step table
    args: dict[str, Any]  # JSON arguments for the step


def encode(fields: Mapping[str, Any]) -> bytes:
    """The content of task.json for a task's ``fields`` (the keys :func:`read` checks, the
    rollback steps as ``{"name", "args"}`` objects)."""
    data = {"format": FORMAT_VERSION, **fields}
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def read(directory: Path) -> dict[str, Any]:
    """The fields of ``<directory>/task.json``; TaskFileError if it is unreadable or
    inconsistent."""
    path = directory / TASK_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_bytes())  # whatever it is, _check says
        _check(data, directory.name)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise TaskFileError(f"{path}: {type(e).__name__}: {e}") from e
    return data


# The type of every field of task.json (bool is refused where a number is expected).
_FIELD_TYPES: Mapping[str, tuple[type, ...]] = {
    **dict.fromkeys(("id", "verb", "state", "result", "message"), (str,)),
    **dict.fromkeys(("progress", "created", "updated"), (int, float)),
    **dict.fromkeys(("done_bytes", "total_bytes"), (int, type(None))),
    "code": (int,),
    "rollback": (list,),
}


def _check(data: Any, dir_name: str) -> None:
    """Refuse anything but a task.json of our format, for the task its directory names."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise ValueError(f"not a task.json of format {FORMAT_VERSION}")
    for key, kinds in _FIELD_TYPES.items():
        if isinstance(data[key], bool) or not isinstance(data[key], kinds):
            raise ValueError(f"{key}={data[key]!r} has the wrong type")
    if data["id"] != dir_name:
        raise ValueError(f"names task {data['id']!r}, its directory {dir_name!r}")
    TaskState(data["state"])
    TaskResult(data["result"])
    for step in data["rollback"]:
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            raise ValueError(f"malformed rollback step {step!r}")
        if not isinstance(step.get("args"), dict):
            raise ValueError(f"rollback step {step['name']!r} has no JSON object of args")
