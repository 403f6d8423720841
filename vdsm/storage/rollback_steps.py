"""The table of rollback steps: stable names → idempotent undo functions, for every SPM verb.

A task persists its undo steps as ``{"name": ..., "args": {...}}``; this table is the only
way a name becomes code again, so a task file on disk can never make the daemon import or call
anything else. Every function here must succeed when run twice and when the step it undoes
never happened. The names are persisted: never rename one. A name an older daemon wrote for a
step that has since merged into another stays in the table (:data:`LEGACY_NAMES`), so the
tasks it left still roll back.

The task manager (:mod:`vdsm.storage.task.manager`) takes this table as an argument and knows
none of the names.
"""

from __future__ import annotations

import logging

from vdsm.errors import StorageDomainDoesNotExist, VolumeDoesNotExist
from vdsm.storage import image
from vdsm.storage import volume as volumes
from vdsm.storage.constants import Legality
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task.context import JSONArgs, RollbackStep
from vdsm.storage.volume import Volume

log = logging.getLogger("vdsm.storage.rollback_steps")

# The names, as task files hold them.
REMOVE_VOLUME = "volume.remove"  # args: sd_uuid, img_uuid, vol_uuid
REMOVE_IMAGE = "image.remove"  # args: sd_uuid, img_uuid
MARK_ILLEGAL = "image_copy.mark_illegal"  # args: sd_uuid, img_uuid, vol_uuid
FINISH_MOVE = "image_move.finish_move"  # args: sd_uuid, img_uuid, post_zero

# Names older daemons persisted for a step that is now another one: old name → current name.
LEGACY_NAMES = {
    # cloneImageStructure's own remove-volume step, the same undo as volume.remove.
    "image_copy.remove_volume": REMOVE_VOLUME,
}


def volume_args(vol: Volume) -> dict[str, str]:
    """The arguments of :data:`REMOVE_VOLUME` and :data:`MARK_ILLEGAL` for ``vol``."""
    return {"sd_uuid": vol.domain.sd_uuid, "img_uuid": vol.img_uuid, "vol_uuid": vol.vol_uuid}


def remove_volume(repository: StorageRepository, args: JSONArgs) -> None:
    """Undo the creation of a volume, or finish its deletion: its files, its parent's
    demotion, an empty image directory (:func:`vdsm.storage.volume.remove_if_present`).

    The volume's image was held EXCLUSIVE by the task that recorded the step, and the step was
    recorded before the volume was made (or while it was being deleted), so every file named
    after this volume is the task's to remove.
    """
    domain = _domain_or_none(repository, args, REMOVE_VOLUME)
    if domain is None:
        return
    volumes.remove_if_present(domain, args["img_uuid"], args["vol_uuid"])
    log.info("rollback: removed volume %s of image %s", args["vol_uuid"], args["img_uuid"])


def remove_image(repository: StorageRepository, args: JSONArgs) -> None:
    """Finish deleting an image: a delete interrupted half-way is completed, not undone."""
    domain = repository.domain(args["sd_uuid"])
    if image.exists(domain, args["img_uuid"]):
        image.delete(domain, args["img_uuid"])


def finish_move(repository: StorageRepository, args: JSONArgs) -> None:
    """Finish a move whose copy is durable: delete its source (zeroed first if asked).

    A move records this step, replacing all its others, only once every twin is LEGAL and
    flushed; from then on an interruption completes the move and never touches the twins.
    """
    domain = _domain_or_none(repository, args, FINISH_MOVE)
    if domain is not None and image.exists(domain, args["img_uuid"]):
        image.delete(domain, args["img_uuid"], post_zero=bool(args["post_zero"]))
        log.info("rollback: finished the move of image %s", args["img_uuid"])


def mark_illegal(repository: StorageRepository, args: JSONArgs) -> None:
    """Leave a twin whose copy did not complete (or is being reverted) ILLEGAL."""
    domain = _domain_or_none(repository, args, MARK_ILLEGAL)
    if domain is None:
        return
    vol = Volume(domain, args["img_uuid"], args["vol_uuid"])
    try:
        md = vol.metadata()
    except VolumeDoesNotExist:
        log.warning("rollback: %s is gone; nothing to mark", vol.description_for_errors)
        return
    if md.legality is not Legality.ILLEGAL:
        vol.write_metadata(md.replace(legality=Legality.ILLEGAL))
    log.info("rollback: marked %s ILLEGAL", vol.description_for_errors)


def table() -> dict[str, RollbackStep]:
    """Every step by name, the legacy names included: what the daemon's task manager runs."""
    steps: dict[str, RollbackStep] = {
        REMOVE_VOLUME: remove_volume,
        REMOVE_IMAGE: remove_image,
        MARK_ILLEGAL: mark_illegal,
        FINISH_MOVE: finish_move,
    }
    steps.update({old: steps[new] for old, new in LEGACY_NAMES.items()})
    return steps


def _domain_or_none(
    repository: StorageRepository, args: JSONArgs, step: str
) -> FileStorageDomain | None:
    try:
        return repository.domain(args["sd_uuid"])
    except StorageDomainDoesNotExist as e:
        # A domain that is gone took the volume with it. An unreachable one raises instead
        # (StorageDomainLayoutError...): the undo is still owed.
        log.warning("%s %s: %s; nothing to undo", step, dict(args), e)
        return None
