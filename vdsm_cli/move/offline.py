"""The offline move of a Down VM's disk: one moveImage task on the SPM, and recovery from the
storage's own state.

A VM that is Down has no QEMU to mirror through, so the move is the SPM's alone: moveImage
(``MOVE``, or ``COPY`` with ``--keep-source``) copies every volume of the chain into its twin on
the destination and, once every twin is durable and LEGAL, deletes the source. The task holds
the lease of every source volume from start to end, so a VM started meanwhile, on any host, is
refused by sanlock and never runs on a half-moved disk. The task has its own point of no return
(docs/contract.md §4): before it, a failure, a stop or a vdsmd crash removes the twins; after
it, the move is finished, even by a restarted or a new SPM.

The client's part is small, and the same as the live move's where it can be: the journal
records the step and the task before they run, progress comes from the task's bytes, Ctrl-C
stops the task, ``--resume`` waits for the task a killed client left and then looks. Whatever
happened, the outcome is read from the storage, never guessed:

- the destination holds the whole chain, LEGAL, and the source nothing (or, ``--keep-source``,
  its whole chain too) → moved (exit 0);
- the source holds the whole chain, LEGAL → rolled back (exit 1; 130 after Ctrl-C), after
  deleting whatever a failed task left on the destination;
- anything else → :class:`~vdsm_cli.move.context.Stuck` (exit 4), saying what is where; nothing
  is deleted on a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vdsm import errors
from vdsm_cli.errors import ApiError
from vdsm_cli.move import driver
from vdsm_cli.move.context import MoveContext, Stuck
from vdsm_cli.move.driver import finished, reason, recovery_failed, rolled_back
from vdsm_cli.move.journal import ROLLBACK
from vdsm_cli.move.steps import DELETE_DESTINATION, MOVE_IMAGE, TITLES

MOVE, COPY = "MOVE", "COPY"  # moveImage's operations

# What the storage says of the image (see the module's docstring).
MOVED = "moved"
ON_SOURCE = "on the source"
MIXED = "neither"


@dataclass(frozen=True)
class Sides:
    """The image's volumes on each side, and whether each side holds the whole chain, LEGAL."""

    source: list[str]
    destination: list[str]
    source_whole: bool
    destination_whole: bool

    def outcome(self, keep_source: bool) -> str:
        # A COPY leaves the source as it was; a MOVE leaves nothing of it.
        source_done = self.source_whole if keep_source else not self.source
        if self.destination_whole and source_done:
            return MOVED
        if self.source_whole:
            return ON_SOURCE
        return MIXED


def operation(ctx: MoveContext) -> str:
    return COPY if ctx.journal.options.get("keepSource") else MOVE


def execute(ctx: MoveContext, *, resume: bool) -> str:
    """Run (or resume) one offline move to its end; a one-line outcome, or a CliError."""
    j = ctx.journal
    if resume:
        return recover(ctx, cause=None, interrupted=False, find_spm=True)
    try:
        ctx.run_step(MOVE_IMAGE, TITLES[MOVE_IMAGE], move_image)
        return moved(ctx)
    except KeyboardInterrupt:
        return recover(ctx, cause="interrupted (Ctrl-C)", interrupted=True)
    except Stuck as e:
        raise Stuck(f"{e.message}. {leftovers(ctx)}") from None
    except Exception as e:  # any failure, even a bug, ends in a recovery from the real state
        return recover(ctx, cause=f"step {j.step}: {reason(e)}", interrupted=False)


def moved(ctx: MoveContext) -> str:
    """The move's end, as the live one's, with what the user must know of the Down VM."""
    j = ctx.journal
    # vdsmd's record of the Down VM still names the old domain: whoever starts the VM again
    # (the engine, with VM.create) must name the new one.
    if j.options.get("keepSource"):
        ctx.note(f"VM {j.vm_id} is Down; its disk is in both domains (--keep-source)")
    else:
        ctx.note(f"VM {j.vm_id} is Down: start it with its disk in domain {j.dst_domain}")
    return finished(ctx)


def move_image(ctx: MoveContext) -> None:
    """The forward step: moveImage, waited for with its progress; then the storage must say
    moved (a task that says success over a disk that is not whole would be a bug: Stuck)."""
    j = ctx.journal
    if sides(ctx).outcome(j.options.get("keepSource", False)) == MOVED:
        return  # a previous run's task finished it
    ctx.run_task(
        MOVE_IMAGE,
        "moveImage",
        lambda: ctx.spm.move_image(
            j.pool_id, j.src_domain, j.dst_domain, j.image_id, j.vm_id, operation(ctx)
        ),
        lambda status: _progress(ctx, status),
    )
    now = sides(ctx)
    if now.outcome(j.options.get("keepSource", False)) != MOVED:
        raise Stuck(f"moveImage succeeded but {describe(now)}")


def _progress(ctx: MoveContext, status: dict[str, Any]) -> None:
    try:
        done, total = int(status.get("bytesDone") or 0), int(status.get("bytesTotal") or 0)
    except (TypeError, ValueError):
        return
    if total:
        ctx.journal.copied["sync"] = total
        ctx.reporter.progress(done, total, held_back=str(status.get("heldBack") or ""))


def recover(
    ctx: MoveContext, *, cause: str | None, interrupted: bool, find_spm: bool = False
) -> str:
    """End the move from wherever it stopped: let (or, after Ctrl-C, make) the task end, then
    decide from the storage (the module's docstring)."""
    j = ctx.journal
    try:
        if find_spm:
            ctx.spm.refresh()
        settle_task(ctx, stop=interrupted)
        state = sides(ctx)
        outcome = state.outcome(j.options.get("keepSource", False))
        if outcome == MOVED:
            if interrupted:
                ctx.note("interrupted past moveImage's point of no return: the move finished")
            return moved(ctx)
        if outcome == MIXED:
            raise Stuck(f"{cause + '; ' if cause else ''}{describe(state)}")
        if j.direction != ROLLBACK:
            j.direction, j.stopped_at = ROLLBACK, j.step
            j.cause = cause or j.cause or f"resumed after it stopped at {j.step or 'the start'}"
            ctx.save()
        if state.destination:
            ctx.run_step(DELETE_DESTINATION, TITLES[DELETE_DESTINATION], delete_destination)
    except (KeyboardInterrupt, Exception) as e:
        raise recovery_failed(e, cause, j.step, leftovers(ctx)) from None
    rolled_back(
        ctx,
        interrupted,
        f"The disk is whole in the source domain {j.src_domain}; the destination "
        f"{j.dst_domain} is clean",
    )


def settle_task(ctx: MoveContext, *, stop: bool) -> None:
    """Let the moveImage task of this move end (stopping it first if ``stop``): only then
    does the storage say how the move ended."""
    ctx.await_recorded_task(
        MOVE_IMAGE, {"moveImage"}, stop=stop, on_status=lambda s: _progress(ctx, s)
    )


def delete_destination(ctx: MoveContext) -> None:
    """What a failed task left on the destination, deleted: only ever with the source whole
    and LEGAL (checked again here), and no moveImage task running."""
    settle_task(ctx, stop=True)
    if not sides(ctx).source_whole:
        raise Stuck("will not delete the destination: the source does not hold the whole chain")
    ctx.delete_destination_image()


def sides(ctx: MoveContext) -> Sides:
    """The image on both sides, from the SPM: volumes, and whether each side is the whole
    original chain with every volume LEGAL."""
    j = ctx.journal
    source, destination = ctx.volumes(j.src_domain), ctx.volumes(j.dst_domain)
    return Sides(
        source,
        destination,
        _whole(ctx, j.src_domain, source),
        _whole(ctx, j.dst_domain, destination),
    )


def _whole(ctx: MoveContext, domain_id: str, volumes: list[str]) -> bool:
    j = ctx.journal
    if sorted(volumes) != sorted(j.original_chain):
        return False
    for volume_id in volumes:
        try:
            info = ctx.spm.volume_info(domain_id, j.pool_id, j.image_id, volume_id)
        except ApiError as e:
            if e.code == errors.VolumeDoesNotExist.code:
                return False
            raise
        if info.get("legality") != "LEGAL":
            return False
    return True


def describe(state: Sides) -> str:
    def side(name: str, vols: list[str], whole: bool) -> str:
        if not vols:
            return f"the {name} holds nothing of the image"
        what = "the whole chain, LEGAL" if whole else "part of the chain, or not all LEGAL"
        return f"the {name} holds {what} ({', '.join(vols)})"

    return (
        f"{side('source', state.source, state.source_whole)}; "
        f"{side('destination', state.destination, state.destination_whole)}"
    )


def leftovers(ctx: MoveContext) -> str:
    """What is where now (asked of the SPM, best effort), and how to go on."""
    return driver.leftovers(ctx, lambda c: [describe(sides(c))])
