"""Running a task's rollback steps: looked up by name, newest first, each dropped once done.

A step is an idempotent function registered under a stable name (the table the daemon passes
to the task manager); the task holds only names and JSON arguments. A name this daemon does
not know is a failure like any other, reported with the step and its arguments.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from vdsm.errors import VdsmError
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task.context import RollbackStep
from vdsm.storage.task.state import Failure, Task

log = logging.getLogger("vdsm.storage.task.rollback")


def roll_back(
    task: Task, steps: Mapping[str, RollbackStep], repository: StorageRepository
) -> Failure | None:
    """Run the task's rollback steps newest first; None when all ran, else what failed.

    Each step that ran is dropped from the task at once. On the first failure the rest stay
    recorded (older steps may depend on the failed one being undone first), so a revert can
    retry them — steps are idempotent.
    """
    while records := task.rollback_steps():
        record = records[-1]
        where = f"rollback step {record.name!r} {json.dumps(record.args, sort_keys=True)}"
        step = steps.get(record.name)
        if step is None:
            log.error("task %s: %s is unknown to this daemon", task.task_id, where)
            return Failure(VdsmError.code, f"{where} is unknown to this daemon")
        try:
            step(repository, record.args)
        except Exception as e:
            failure = Failure.of(e)
            log.exception("task %s: %s failed", task.task_id, where)
            return Failure(failure.code, f"{where} failed: {failure.message}")
        log.info("task %s: %s done", task.task_id, where)
        task.drop_rollback(record)
    return None
