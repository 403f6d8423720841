"""The driver of one disk move: forward through the steps, and recovery from wherever it stopped.

:func:`execute` runs a move; any failure, or the first Ctrl-C, leads to :func:`recover`, which
decides from the real state (where vdsmd says the drive runs) and the journal:

- the drive is on the source, the pivot not recorded → roll back (abort the mirror first,
  then delete the destination, then merge the auto-snapshot away);
- the drive is on the destination → the pivot happened: finish forward (delete the source,
  merge, delete the auto-snapshot). A step that *failed* after the pivot is not retried
  blindly: the flow stops, says what is left, and ``--resume`` retries;
- anything inconsistent (the journal and vdsmd disagree, the VM is gone at the pivot) → stop
  and say so; nothing is deleted on a guess.

``--resume`` is :func:`recover` on a journal left behind. A KeyboardInterrupt during recovery
(the second Ctrl-C) stops where it is, keeping the journal. Outcomes: a message (moved), or
:class:`RolledBack` (exit 1), :class:`InterruptedRolledBack` (130), :class:`Stuck` (4).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

from vdsm_cli.errors import EXIT_INTERRUPTED, EXIT_OK, CliError
from vdsm_cli.move.context import ON_DESTINATION, ON_SOURCE, MoveContext, Stuck
from vdsm_cli.move.forward import FORWARD_ACTIONS
from vdsm_cli.move.hosts import SpmView
from vdsm_cli.move.journal import FORWARD, LIVE, OFFLINE, ROLLBACK, Journal
from vdsm_cli.move.plan import DiskPlan
from vdsm_cli.move.rollback import ROLLBACK_ACTIONS
from vdsm_cli.move.steps import (
    COPY_STEPS,
    FORWARD_STEPS,
    PIVOT,
    ROLLBACK_STEPS,
    TITLES,
    forward_steps,
)


class RolledBack(CliError):
    """The move failed and was undone: the VM runs on the source, the destination is clean."""


class InterruptedRolledBack(CliError):
    exit_code = EXIT_INTERRUPTED


# --- running one move ---------------------------------------------------------------------------


def new_journal(
    plan: DiskPlan, options: dict[str, Any], spm: SpmView, vm_address: str, hosts: list[str]
) -> Journal:
    """The journal of a move about to start: the plan, and the hosts that will do it."""
    drive = plan.drive
    leaf = plan.chain[-1]
    return Journal(
        vm_id=plan.vm_id,
        image_id=drive.image_id,
        pool_id=drive.pool_id,
        src_domain=drive.domain_id,
        dst_domain=plan.dst_domain,
        target=drive.target,
        original_chain=[v.volume_id for v in plan.chain],
        leaf_capacity=leaf.capacity,
        snapshot_volume=str(uuid.uuid4()),
        merge_job=str(uuid.uuid4()),
        options=dict(options),
        spm_address=spm.address,
        vm_address=vm_address,
        hosts=list(hosts),
        spm_id=spm.spm_id,
        spm_lver=spm.lver,
        mode=OFFLINE if plan.offline else LIVE,
    )


def execute(ctx: MoveContext, *, resume: bool) -> str:
    """Run (or resume) one move to its end; a one-line outcome, or a CliError to exit with."""
    if resume:
        return recover(ctx, cause=None, interrupted=False, find_spm=True)
    try:
        forward(ctx)
        return finished(ctx)
    except KeyboardInterrupt:
        return recover(ctx, cause="interrupted (Ctrl-C)", interrupted=True)
    except Stuck as e:  # forward refused to act on an inconsistent state: touch nothing
        raise Stuck(f"{e.message}. {leftovers(ctx)}") from None
    except Exception as e:  # any failure, even a bug, must end in a clean recovery
        cause = f"step {ctx.journal.step}: {reason(e)}"
        return recover(ctx, cause=cause, interrupted=False)


def forward(ctx: MoveContext) -> None:
    j = ctx.journal
    steps = forward_steps(keep_source=j.options["keepSource"], merge=j.options["merge"])
    start = FORWARD_STEPS.index(j.step) if j.step in FORWARD_STEPS else 0
    for step in steps:
        if FORWARD_STEPS.index(step) >= start:
            ctx.run_step(step, TITLES[step], FORWARD_ACTIONS[step])


def rollback(ctx: MoveContext) -> None:
    j = ctx.journal
    start = ROLLBACK_STEPS.index(j.step) if j.step in ROLLBACK_STEPS else 0
    for step in ROLLBACK_STEPS[start:]:
        ctx.run_step(step, TITLES[step], ROLLBACK_ACTIONS[step])


def recover(
    ctx: MoveContext, *, cause: str | None, interrupted: bool, find_spm: bool = False
) -> str:
    """Finish or undo the move from wherever it stopped, deciding from the real state.
    ``find_spm`` (a resume): first ask who is the SPM now, as it may have moved meanwhile."""
    j = ctx.journal
    try:
        if find_spm:
            ctx.spm.refresh()
        if j.direction == ROLLBACK and ctx.locate() == ON_DESTINATION:
            # A rollback never deletes a destination the drive runs on, so finding the drive
            # there means the pivot it gave up on completed after all: finish instead.
            j.direction, j.step, j.cause = FORWARD, PIVOT, ""
            ctx.note("the pivot had completed after all: finishing the move, not undoing it")
        if j.direction == FORWARD and PIVOT in j.done and cause and not interrupted:
            # Past the pivot a failed step is not undone nor blindly retried: say what is left.
            raise Stuck(f"{cause}; the disk runs on the destination {j.dst_domain}")
        if j.direction == FORWARD:
            where = ctx.locate()
            past_pivot = j.step in FORWARD_STEPS and _after(j.step, PIVOT)
            if where == ON_DESTINATION or (where != ON_SOURCE and PIVOT in j.done):
                if j.step in FORWARD_STEPS and _after(PIVOT, j.step):
                    raise Stuck(f"the drive is in {j.dst_domain} but the journal never pivoted")
                if interrupted:
                    ctx.note("interrupted after the pivot: finishing the move (no way back)")
                forward(ctx)
                return finished(ctx)
            if where == ON_SOURCE and (past_pivot or PIVOT in j.done):
                raise Stuck(f"the journal recorded the pivot but the drive is in {j.src_domain}")
            if where != ON_SOURCE and j.step == PIVOT:
                raise Stuck("the VM is gone and it is unknown whether the pivot happened")
            j.direction, j.stopped_at = ROLLBACK, j.step
            j.cause = cause or j.cause or f"resumed after it stopped at {j.step or 'the start'}"
            ctx.save()
        rollback(ctx)
    except (KeyboardInterrupt, Exception) as e:
        raise recovery_failed(e, cause, j.step, leftovers(ctx)) from None
    where = f"{_where_the_vm_is(ctx)}; the destination {j.dst_domain} is clean"
    rolled_back(ctx, interrupted, where)


def _where_the_vm_is(ctx: MoveContext) -> str:
    """After a rollback: the VM runs on the source, or (killed meanwhile) is Down there."""
    try:
        vm = ctx.vm()
    except CliError:
        vm = None  # vdsmd does not answer now: say what the rollback made sure of
    if vm is not None and vm.status != "Up":
        return f"The VM is {vm.status}; its disk is on the source domain {ctx.journal.src_domain}"
    return f"The VM runs on the source domain {ctx.journal.src_domain}"


def recovery_failed(error: BaseException, cause: str | None, step: str, left: str) -> Stuck:
    """What a recovery that could not end says: why, at which step, and what is ``left``."""
    if isinstance(error, KeyboardInterrupt):
        return Stuck(f"interrupted again during {step}: stopped there. {left}")
    if isinstance(error, Stuck):
        return Stuck(f"{error.message}. {left}")
    first = f"{cause}; then " if cause else ""
    return Stuck(f"{first}step {step}: {reason(error)}. {left}")


def rolled_back(ctx: MoveContext, interrupted: bool, where: str) -> NoReturn:
    """The end of a rollback: the journal removed, the outcome raised (exit 1, or 130 after
    Ctrl-C), with ``where`` the disk is now."""
    j = ctx.journal
    ctx.store.remove(j)
    notes = "".join(f"; {n}" for n in j.notes)
    message = f"the move of image {j.image_id} was rolled back: {j.cause}. {where}{notes}"
    if interrupted:
        raise InterruptedRolledBack(message)
    raise RolledBack(message)


def finished(ctx: MoveContext) -> str:
    j = ctx.journal
    summary = summarize(j)
    ctx.store.remove(j)
    ctx.store.record_history(summary)
    ctx.reporter.summary(summary)
    notes = "".join(f"; {n}" for n in j.notes)
    message = f"image {j.image_id} of VM {j.vm_id} moved to domain {j.dst_domain}{notes}"
    ctx.reporter.result(EXIT_OK, message)
    return message


def summarize(j: Journal) -> dict[str, Any]:
    data = j.copied.get("sync", 0) + j.copied.get("mirror", 0)
    copy_seconds = sum(j.seconds.get(s, 0.0) for s in COPY_STEPS)
    return {
        "vmId": j.vm_id,
        "imageID": j.image_id,
        "dstDomainID": j.dst_domain,
        "mode": j.mode,
        "totalSeconds": round(time.time() - j.started, 3),
        "copySeconds": round(copy_seconds, 3),
        "dataBytes": data,
        "syncBytes": j.copied.get("sync", 0),
        "mirrorBytes": j.copied.get("mirror", 0),
        "mergeBytes": j.copied.get("merge", 0) if j.options.get("merge") else None,
        "averageRate": round(data / copy_seconds, 1) if copy_seconds > 0 else 0,
        "pivotSeconds": round(j.pivot_seconds, 3) if j.pivot_seconds is not None else None,
        "stepSeconds": {s: round(t, 3) for s, t in j.seconds.items()},
        "finished": time.time(),
    }


def leftovers(ctx: MoveContext, observe: Callable[[MoveContext], list[str]] | None = None) -> str:
    """Exactly what is where now (asked from vdsmd, best effort: ``observe``, by default what
    a live move may have changed), and how to go on."""
    j = ctx.journal
    facts = []
    try:
        ctx.save()
    except OSError as e:
        facts.append(f"the journal could not be written ({e}): it may be one step behind")
    try:
        facts += (observe or live_facts)(ctx)
    except (CliError, OSError) as e:
        facts.append(f"vdsmd could not be asked ({e}); nothing more was changed")
    except KeyboardInterrupt:
        facts.append("not checked (interrupted)")
    where = ctx.store.path(j.vm_id, j.image_id)
    return (
        f"Left: {'; '.join(facts)}. The journal {where} is kept: "
        f"`{ctx.resume_command}` will "
        f"{'roll it back' if j.direction == ROLLBACK else 'finish or roll it back'}"
    )


def live_facts(ctx: MoveContext) -> list[str]:
    """Where the VM runs, what job runs on its drive, what each domain holds of the image."""
    j = ctx.journal
    vm = ctx.vm()
    drive = ctx.drive(vm)
    facts = [
        "the VM is gone"
        if vm is None or drive is None
        else f"the VM runs on domain {drive.domain_id} (chain {', '.join(drive.chain)})"
    ]
    if vm is not None and drive is not None and vm.jobs.get(drive.target):
        facts.append(f"a {vm.jobs[drive.target].get('blockJobType')} job runs on the drive")
    for name, domain in (("source", j.src_domain), ("destination", j.dst_domain)):
        vols = ctx.volumes(domain)
        facts.append(
            f"{name} {domain} holds volumes {', '.join(vols)}"
            if vols
            else f"{name} {domain} holds nothing of the image"
        )
    return facts


def _after(step: str, other: str) -> bool:
    """Whether forward step ``step`` comes after ``other``."""
    return FORWARD_STEPS.index(step) > FORWARD_STEPS.index(other)


def reason(error: BaseException) -> str:
    """An error as the user reads it: a CliError's message, anything else named (a bug)."""
    if isinstance(error, CliError):
        return error.message
    return f"unexpected {type(error).__name__}: {error}"
