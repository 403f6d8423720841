"""The rollback steps of a disk move, what each one does: back to the source, leaving nothing
behind.

Run in this order, each persisted before it runs and checking the real state first, so a
rollback interrupted at any point can be run again from its recorded step:

1. ``abort_replication``: diskReplicateFinish(src, src). 0, 88 (nothing to abort), 55 (the
   mirror had ended; vdsmd cleaned up) and 1 (the VM is gone) all mean no mirror writes to the
   destination any more. Anything else (41: libvirt refused the abort) stops the rollback —
   the destination is then kept, since a running mirror may still write to it
   (docs/contract.md §8.8).
2. ``delete_destination``: stop the sync task, let the clone task end, check once more that no
   copy job runs on the drive, then deleteImage on the destination (if the image is there).
3. ``unsnapshot_merge``: merge the auto-snapshot back into the original leaf on the source
   (live merge), so the chain has its old shape again; skipped with ``--no-merge``.
4. ``unsnapshot_delete``: delete the auto-snapshot volume — only when no data can be lost: it
   was merged (ILLEGAL), or the VM never wrote to it (it never became the active layer).
"""

from __future__ import annotations

from collections.abc import Callable

from vdsm import errors
from vdsm_cli.errors import ApiError
from vdsm_cli.move.context import ON_DESTINATION, MoveContext, StepFailed, Stuck
from vdsm_cli.move.steps import (
    ABORT_REPLICATION,
    CLONE,
    CREATE_SNAPSHOT,
    DELETE_DESTINATION,
    SYNC,
    UNSNAPSHOT_DELETE,
    UNSNAPSHOT_MERGE,
)


def abort_replication(ctx: MoveContext) -> None:
    j = ctx.journal
    vm = ctx.vm()
    drive = ctx.drive(vm)
    if vm is None or drive is None:
        return  # no VM, no mirror
    if drive.domain_id != j.src_domain:
        raise Stuck(f"will not abort: the drive already runs in domain {drive.domain_id}")
    try:
        ctx.vm_host.replicate_finish(j.vm_id, drive.spec(), drive.spec())
    except ApiError as e:
        if e.code == errors.ReplicationError.code:
            ctx.note(f"the mirror had already ended; vdsmd cleaned it up: {e.text}")
        elif e.code == errors.DriveNotFound.code and ctx.locate() == ON_DESTINATION:
            # An interrupted pivot call that vdsmd completed after all.
            raise Stuck("the pivot completed after all: --resume finishes the move") from None
        elif e.code not in (errors.ReplicationNotInProgress.code, errors.NoSuchVM.code):
            raise Stuck(
                f"aborting the replication failed ({e.message}); the destination image is "
                "kept, as the mirror may still write to it"
            ) from None
    ctx.issued(ABORT_REPLICATION)
    _no_mirror(ctx)


def delete_destination(ctx: MoveContext) -> None:
    ctx.await_recorded_task(SYNC, {"syncImageData"}, stop=True)
    ctx.await_recorded_task(CLONE, {"cloneImageStructure"})
    if ctx.locate() == ON_DESTINATION:
        raise Stuck("will not delete the destination: the VM's drive runs on it")
    _no_mirror(ctx)
    ctx.delete_destination_image()


def unsnapshot_merge(ctx: MoveContext) -> None:
    j = ctx.journal
    vm = ctx.vm()
    drive = ctx.drive(vm)
    if vm is None or drive is None or j.snapshot_volume not in drive.chain:
        return
    if not j.options.get("merge", True):
        ctx.note(f"the auto-snapshot {j.snapshot_volume} stays in the chain (--no-merge)")
        return
    try:
        ctx.merge_snapshot(j.src_domain, UNSNAPSHOT_MERGE)
    except StepFailed as e:
        # The VM runs on the source either way; a snapshot left in its chain loses nothing.
        ctx.note(f"the auto-snapshot {j.snapshot_volume} stays in the chain: {e.message}")


def unsnapshot_delete(ctx: MoveContext) -> None:
    j = ctx.journal
    ctx.await_recorded_task(CREATE_SNAPSHOT, {"createVolume"})
    if j.snapshot_volume not in ctx.volumes(j.src_domain):
        return
    vm = ctx.vm()
    drive = ctx.drive(vm)
    if drive is not None and j.snapshot_volume in drive.chain:
        return  # still the active layer (noted by unsnapshot_merge)
    try:
        info = ctx.spm.volume_info(j.src_domain, j.pool_id, j.image_id, j.snapshot_volume)
    except ApiError as e:
        if e.code == errors.VolumeDoesNotExist.code:
            return
        raise
    merged = info.get("legality") == "ILLEGAL"
    never_used = drive is not None and drive.volume_id == j.leaf
    if not (merged or never_used):
        ctx.note(
            f"the auto-snapshot volume {j.snapshot_volume} is kept in domain {j.src_domain}: "
            "the VM is gone and it may hold its last writes"
        )
        return
    ctx.run_task(
        UNSNAPSHOT_DELETE,
        "deleteVolume",
        lambda: ctx.spm.delete_volumes(j.src_domain, j.pool_id, j.image_id, [j.snapshot_volume]),
    )


def _no_mirror(ctx: MoveContext) -> None:
    """Refuse to go on while a copy job runs on the drive: it may write to the destination."""
    vm = ctx.vm()
    drive = ctx.drive(vm)
    if vm is None or drive is None:
        return
    job = vm.jobs.get(drive.target)
    if job and job.get("blockJobType") == "copy":
        raise Stuck(
            f"a copy job still runs on drive {drive.target} after the abort: the destination "
            "is kept, as the mirror may still write to it"
        )


ROLLBACK_ACTIONS: dict[str, Callable[[MoveContext], None]] = {
    ABORT_REPLICATION: abort_replication,
    DELETE_DESTINATION: delete_destination,
    UNSNAPSHOT_MERGE: unsnapshot_merge,
    UNSNAPSHOT_DELETE: unsnapshot_delete,
}
