"""The table of rollback steps: stable names → idempotent undo functions.

A task persists its undo steps as ``{"name": ..., "args": {...}}``; this table is the only
way a name becomes code again, so a task file on disk can never make the daemon import or call
anything else. Every function here must succeed when run twice and when the step it undoes
never happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vdsm.storage import image, image_copy
from vdsm.storage import volume as volumes
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task_context import RollbackStep

REMOVE_VOLUME = "volume.remove"
REMOVE_IMAGE = "image.remove"


def remove_volume(repository: StorageRepository, args: Mapping[str, Any]) -> None:
    domain = repository.domain(args["sd_uuid"])
    volumes.remove_if_present(domain, args["img_uuid"], args["vol_uuid"])


def remove_image(repository: StorageRepository, args: Mapping[str, Any]) -> None:
    domain = repository.domain(args["sd_uuid"])
    if image.exists(domain, args["img_uuid"]):
        image.delete(domain, args["img_uuid"])


def table() -> dict[str, RollbackStep]:
    steps: dict[str, RollbackStep] = {
        REMOVE_VOLUME: remove_volume,
        REMOVE_IMAGE: remove_image,
    }
    steps.update(image_copy.ROLLBACK_STEPS)
    return steps
