"""The forward steps of a disk move (docs/contract.md §1): what each one does, by step name.

Each function acts through the API and checks first what is already done, so that the
steps after the pivot (the only ones ever run again: before the pivot a resume rolls back)
can be repeated safely after a crash. The journal is written by the caller
(:meth:`MoveContext.run_step`) before each of them runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vdsm import errors
from vdsm_cli.api import Drive
from vdsm_cli.errors import ApiError
from vdsm_cli.move.context import ON_DESTINATION, MoveContext, StepFailed, Stuck
from vdsm_cli.move.steps import (
    CLONE,
    CREATE_SNAPSHOT,
    DELETE_SNAPSHOT,
    DELETE_SOURCE,
    MERGE,
    PIVOT,
    REPLICATE,
    SNAPSHOT,
    SYNC,
    WAIT_READY,
)

PIVOT_RETRIES = 3  # a pivot libvirt refused (41) is retried this often before giving up
PIVOT_RETRY_DELAY = 1.0
JOB_GONE_GRACE = 5.0  # seconds without a mirror job before it counts as gone


def create_snapshot(ctx: MoveContext) -> None:
    j = ctx.journal
    if j.snapshot_volume in ctx.volumes(j.src_domain):
        return
    ctx.run_task(
        CREATE_SNAPSHOT,
        "createVolume",
        lambda: ctx.spm.create_volume(
            j.src_domain,
            j.pool_id,
            j.image_id,
            j.snapshot_volume,
            j.leaf_capacity,
            parent=j.leaf,
            description=f"auto-snapshot: moving to {j.dst_domain}",
        ),
    )


def snapshot(ctx: MoveContext) -> None:
    j = ctx.journal
    drive = ctx.drive()
    if drive is not None and drive.volume_id == j.snapshot_volume:
        return
    try:
        ctx.vm_host.snapshot(j.vm_id, j.src_domain, j.image_id, j.leaf, j.snapshot_volume)
    except ApiError as e:
        raise StepFailed(f"live snapshot failed: {e.message}") from None
    ctx.issued(SNAPSHOT)


def clone(ctx: MoveContext) -> None:
    j = ctx.journal
    ctx.run_task(
        CLONE,
        "cloneImageStructure",
        lambda: ctx.spm.clone_structure(j.pool_id, j.src_domain, j.image_id, j.dst_domain),
    )


def replicate(ctx: MoveContext) -> None:
    j = ctx.journal
    try:
        ctx.vm_host.replicate_start(
            j.vm_id,
            ctx.spec(j.src_domain, j.snapshot_volume),
            ctx.spec(j.dst_domain, j.snapshot_volume),
            str(j.options.get("copyMode") or "auto"),
            int(j.options.get("bandwidth") or 0),
        )
    except ApiError as e:
        raise StepFailed(f"replication did not start: {e.message}") from None
    ctx.issued(REPLICATE)


def sync(ctx: MoveContext) -> None:
    j = ctx.journal

    def on_status(status: dict[str, Any]) -> None:
        try:
            done, total = int(status.get("bytesDone") or 0), int(status.get("bytesTotal") or 0)
        except (TypeError, ValueError):
            return
        if total:
            j.copied["sync"] = total
            # vdsmd's adaptive rate says when and why it holds the copy back.
            ctx.reporter.progress(done, total, held_back=str(status.get("heldBack") or ""))

    ctx.run_task(
        SYNC,
        "syncImageData",
        lambda: ctx.spm.sync_data(j.pool_id, j.src_domain, j.image_id, j.dst_domain, "INTERNAL"),
        on_status,
    )
    j.copied.setdefault("sync", 0)


def wait_ready(ctx: MoveContext) -> None:
    """Watch the mirror until libvirt says READY (never cur == end alone), with a bound."""
    j = ctx.journal
    timeout = float(j.options.get("readyTimeout") or 600)
    deadline = ctx.clock() + timeout
    missing_since: float | None = None
    last: tuple[int, int] = (0, 0)
    poller = ctx.vm_host.poller()
    while True:
        vm = ctx.vm()
        drive = ctx.drive(vm)
        if vm is None or drive is None:
            raise StepFailed(f"VM {j.vm_id} is gone")
        if vm.status != "Up":
            raise StepFailed(f"VM {j.vm_id} is {vm.status}: the mirror cannot complete")
        job = vm.jobs.get(drive.target)
        now = ctx.clock()
        if job and job.get("blockJobType") == "copy":
            missing_since = None
            last = (int(job.get("cur") or 0), int(job.get("end") or 0))
            j.copied["mirror"] = last[1]
            if last[1]:
                # vdsmd's adaptive rate says when and why it holds the mirror back.
                ctx.reporter.progress(*last, held_back=str(job.get("heldBack") or ""))
            if job.get("ready"):
                return
        else:
            # In auto mode vdsmd restarts a slow mirror with synchronous writes: the job is
            # briefly absent. Only a lasting absence means it is gone (abort reports why).
            missing_since = now if missing_since is None else missing_since
            if now - missing_since >= JOB_GONE_GRACE:
                raise StepFailed(f"the mirror job of drive {drive.target} is gone")
        if now >= deadline:
            raise StepFailed(
                f"the mirror was not READY after {timeout:g}s ({last[0]} of {last[1]} bytes "
                "copied); the guest may write faster than the copy: retry with --sync-writes "
                "or a larger --ready-timeout"
            )
        poller.pause()


def pivot(ctx: MoveContext) -> None:
    """diskReplicateFinish(src, dst), retried while it answers 40 (not ready yet)."""
    j = ctx.journal
    if ctx.locate() == ON_DESTINATION:
        return  # a previous run pivoted, and died before recording it
    src = ctx.spec(j.src_domain, j.snapshot_volume)
    dst = ctx.spec(j.dst_domain, j.snapshot_volume)
    deadline = ctx.clock() + float(j.options.get("readyTimeout") or 600)
    refused = 0
    poller = ctx.vm_host.poller()
    while True:
        started = ctx.clock()
        try:
            ctx.vm_host.replicate_finish(j.vm_id, src, dst)
        except ApiError as e:
            if e.code == errors.ReplicationNotReady.code and ctx.clock() < deadline:
                poller.pause()
                continue
            if e.code == errors.DriveSwitchFailed.code and refused < PIVOT_RETRIES:
                refused += 1  # libvirt refused; vdsmd kept the replication: try again
                ctx.vm_host.sleep(PIVOT_RETRY_DELAY)
                continue
            gone = (errors.ReplicationNotInProgress.code, errors.DriveNotFound.code)
            if e.code in gone and ctx.locate() == ON_DESTINATION:
                break  # an attempt whose answer was lost did pivot
            raise StepFailed(f"diskReplicateFinish answered {e.message}") from None
        j.pivot_seconds = ctx.clock() - started
        break
    ctx.issued(PIVOT)


def delete_source(ctx: MoveContext) -> None:
    j = ctx.journal
    # A VM that is gone after a recorded pivot ran on the destination: the source is free.
    _require_on_destination(ctx, "delete the source image")
    ctx.await_recorded_task(DELETE_SOURCE, {"deleteImage"})
    if j.image_id not in ctx.spm.images(j.src_domain):
        return
    ctx.run_task(
        DELETE_SOURCE,
        "deleteImage",
        lambda: ctx.spm.delete_image(j.src_domain, j.pool_id, j.image_id),
    )


def merge(ctx: MoveContext) -> None:
    ctx.merge_snapshot(ctx.journal.dst_domain, MERGE)


def delete_snapshot(ctx: MoveContext) -> None:
    j = ctx.journal
    drive = _require_on_destination(ctx, "delete the merged auto-snapshot")
    if drive is None:
        raise StepFailed(f"VM {j.vm_id} is gone: the auto-snapshot was not merged")
    if j.snapshot_volume in drive.chain:
        raise Stuck(f"the auto-snapshot {j.snapshot_volume} is still in the drive's chain")
    ctx.await_recorded_task(DELETE_SNAPSHOT, {"deleteVolume"})
    if j.snapshot_volume not in ctx.volumes(j.dst_domain):
        return
    ctx.run_task(
        DELETE_SNAPSHOT,
        "deleteVolume",
        lambda: ctx.spm.delete_volumes(j.dst_domain, j.pool_id, j.image_id, [j.snapshot_volume]),
    )


def _require_on_destination(ctx: MoveContext, what: str) -> Drive | None:
    """Never delete anything of a disk the VM might still use: check where it runs first.
    The drive, or None when the VM is gone after a recorded pivot."""
    drive = ctx.drive()
    if drive is not None and drive.domain_id != ctx.journal.dst_domain:
        raise Stuck(f"will not {what}: the VM's drive is in domain {drive.domain_id}")
    if drive is None and PIVOT not in ctx.journal.done:
        raise Stuck(f"will not {what}: the VM is gone and the pivot is not recorded")
    return drive


FORWARD_ACTIONS: dict[str, Callable[[MoveContext], None]] = {
    CREATE_SNAPSHOT: create_snapshot,
    SNAPSHOT: snapshot,
    CLONE: clone,
    REPLICATE: replicate,
    SYNC: sync,
    WAIT_READY: wait_ready,
    PIVOT: pivot,
    DELETE_SOURCE: delete_source,
    MERGE: merge,
    DELETE_SNAPSHOT: delete_snapshot,
}
