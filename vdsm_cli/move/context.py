"""The state a disk move's steps share, and how a step runs: persisted first, then done.

:class:`MoveContext` holds the API, the journal, the reporter and (in the tests only) the
fault hook (:mod:`vdsm_cli.move.fault`). :meth:`MoveContext.run_step`
is the one way a step (forward or rollback) runs: the journal records the step *before* it
runs, the step checks the real state through the API before acting (so running it again after
a crash is harmless), and the journal records it done afterwards.

The errors of the flow: :class:`StepFailed` (a step could not do its job: the flow rolls back
or, past the pivot, stops) and :class:`Stuck` (the flow cannot go on safely by itself: the
journal is kept and the message says what is left).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vdsm import errors
from vdsm_cli.api import FINISHED, Drive, TaskFailed, Vdsm, VmView, disk_spec
from vdsm_cli.errors import ApiError, CliError
from vdsm_cli.move.fault import Fault
from vdsm_cli.move.journal import Journal, JournalStore
from vdsm_cli.move.progress import Reporter
from vdsm_cli.move.steps import BYTES_OF

EXIT_STUCK = 4  # failed and could not be rolled back cleanly: --resume will retry

# Where the drive is, as far as vdsmd tells.
ON_SOURCE = "source"
ON_DESTINATION = "destination"
VM_GONE = "gone"  # vdsmd does not know the VM any more

MERGE_GONE_GRACE = 3.0  # seconds a merge may look finished-but-not-recorded before it failed


class StepFailed(CliError):
    """A step failed; the message is the real reason (vdsmd's code and message, ...)."""


class Stuck(CliError):
    """The move cannot continue or roll back by itself; the journal stays for --resume."""

    exit_code = EXIT_STUCK


class MoveContext:
    def __init__(
        self,
        api: Vdsm,
        store: JournalStore,
        journal: Journal,
        reporter: Reporter,
        *,
        resume_command: str,
        fault: Fault | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.store = store
        self.journal = journal
        self.reporter = reporter
        self.resume_command = resume_command  # the command line that resumes this move
        self.fault = fault
        self.clock = clock

    # --- the journal around each step ---------------------------------------------------------

    def save(self) -> None:
        self.store.save(self.journal)

    def run_step(self, step: str, title: str, action: Callable[[MoveContext], None]) -> None:
        """Persist ``step``, run ``action``, persist it done."""
        self.journal.step = step
        self.save()
        self.hook(step)
        self.reporter.step(step, title, self.journal.direction)
        started = self.clock()
        action(self)
        seconds = self.clock() - started
        total = self.journal.seconds.get(step, 0.0) + seconds
        self.journal.seconds[step] = round(total, 3)
        if step not in self.journal.done:
            self.journal.done.append(step)
        self.save()
        self.reporter.step_done(step, seconds, self.journal.copied.get(BYTES_OF.get(step, "")))

    def issued(self, step: str, task_id: str | None = None) -> None:
        """The step's action was sent (a task id to remember, maybe): persist, then the
        fault hook ``STEP+``."""
        if task_id is not None:
            self.journal.tasks[step] = task_id
        self.save()
        self.hook(f"{step}+")

    def hook(self, point: str) -> None:
        """The fault hook at ``point``, when a test gave one."""
        if self.fault is not None:
            self.fault(point)

    def note(self, message: str) -> None:
        if message not in self.journal.notes:
            self.journal.notes.append(message)
            self.save()
        self.reporter.note(message)

    # --- tasks --------------------------------------------------------------------------------

    def run_task(
        self,
        step: str,
        verb: str,
        submit: Callable[[], str],
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        """Submit a task, remember its id, wait for it; StepFailed if it fails. Its last
        status, or None when vdsmd does not know it (any more)."""
        task_id = submit()
        self.issued(step, task_id)
        try:
            status = self.wait_known_task(task_id, verb, on_status)
        except TaskFailed as e:
            raise StepFailed(str(e)) from None
        self.api.clear_task(task_id)
        return status

    def wait_known_task(
        self,
        task_id: str,
        verb: str,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        """Wait for the task's success (TaskFailed otherwise); None when vdsmd does not
        know it (cleared, or lost with vdsmd's state)."""
        try:
            return self.api.wait_success(task_id, verb, on_progress=on_status)
        except ApiError as e:
            if e.code == errors.UnknownTask.code:
                return None
            raise

    def task_status(self, task_id: str) -> dict[str, Any] | None:
        """The task's status, or None when vdsmd does not know it."""
        try:
            return self.api.task_status(task_id)
        except ApiError as e:
            if e.code == errors.UnknownTask.code:
                return None
            raise

    def await_recorded_task(self, step: str, verbs: set[str], stop: bool = False) -> None:
        """Let the task a previous run started for ``step`` end before acting again (stop it
        first if ``stop``). Without a recorded id (a crash between submit and the journal
        write), wait for every unfinished task of those verbs."""
        task_ids = [self.journal.tasks[step]] if step in self.journal.tasks else []
        if not task_ids and step in (self.journal.step, self.journal.stopped_at):
            task_ids = self.api.running_tasks(verbs)
        for task_id in task_ids:
            status = self.task_status(task_id)
            if status is None or status.get("taskState") == FINISHED:
                continue
            if stop:
                self.api.stop_task(task_id)
            try:
                self.wait_known_task(task_id, ",".join(sorted(verbs)))
            except TaskFailed:
                pass  # its own rollback ran; the caller checks the real state next

    # --- the disk, as vdsmd sees it -------------------------------------------------------------

    def vm(self) -> VmView | None:
        """The VM, or None when vdsmd does not know it any more."""
        try:
            return self.api.vm(self.journal.vm_id)
        except ApiError as e:
            if e.code == errors.NoSuchVM.code:
                return None
            raise

    def drive(self, vm: VmView | None = None) -> Drive | None:
        vm = vm if vm is not None else self.vm()
        return None if vm is None else vm.drive_of_image(self.journal.image_id)

    def locate(self) -> str:
        """ON_SOURCE, ON_DESTINATION or VM_GONE."""
        drive = self.drive()
        if drive is None:
            return VM_GONE
        if drive.domain_id == self.journal.dst_domain:
            return ON_DESTINATION
        if drive.domain_id == self.journal.src_domain:
            return ON_SOURCE
        raise Stuck(
            f"disk {self.journal.image_id} is in domain {drive.domain_id}, neither the source "
            f"{self.journal.src_domain} nor the destination {self.journal.dst_domain}"
        )

    def spec(self, domain_id: str, volume_id: str) -> dict[str, str]:
        j = self.journal
        return disk_spec(domain_id, j.pool_id, j.image_id, volume_id)

    def volumes(self, domain_id: str) -> list[str]:
        j = self.journal
        return self.api.volumes(domain_id, j.pool_id, j.image_id)

    # --- live merge, forward (destination) and back (source) ----------------------------------

    def merge_snapshot(self, domain_id: str, step: str) -> None:
        """Merge the auto-snapshot into the original leaf on ``domain_id``, wait until the
        drive's chain has lost it. Idempotent: a merge already done or running is waited for."""
        j = self.journal
        vm = self.vm()
        drive = self.drive(vm)
        if vm is None or drive is None:
            raise StepFailed(f"VM {j.vm_id} is gone: no live merge possible")
        if drive.domain_id != domain_id:
            raise Stuck(f"the drive is in domain {drive.domain_id}, expected {domain_id}")
        if j.snapshot_volume not in drive.chain:
            return  # merged already
        job = vm.jobs.get(drive.target)
        if not job:
            if vm.status != "Up":
                raise StepFailed(f"VM {j.vm_id} is {vm.status}: no live merge possible")
            try:
                # Unlimited, whatever --bandwidth says: an active commit has no write-blocking
                # mode, so a capped one under faster guest writes would never converge. It
                # only commits what the guest wrote since the snapshot.
                self.api.merge(j.vm_id, drive.spec(), j.leaf, j.snapshot_volume, 0, j.merge_job)
            except ApiError as e:
                raise StepFailed(f"merge refused: {e.message}") from None
            self.issued(step)
        elif job.get("blockJobType") != "commit" or job.get("jobID") not in ("", j.merge_job):
            raise StepFailed(f"drive {drive.target} runs another {job.get('blockJobType')} job")
        self._wait_merged(domain_id)

    def _wait_merged(self, domain_id: str) -> None:
        """Until the chain lost the auto-snapshot. Bounded by convergence, not by size: the
        merge fails (Stuck: it keeps running in vdsmd, which has no verb to cancel it) when
        what is left to commit has not reached a new low for ``readyTimeout`` seconds."""
        j = self.journal
        window = float(j.options.get("readyTimeout") or 600)
        gone_since: float | None = None
        best_left: int | None = None
        best_at = self.clock()
        poller = self.api.poller()
        while True:
            vm = self.vm()
            drive = self.drive(vm)
            if vm is None or drive is None:
                raise StepFailed(f"VM {j.vm_id} went away during the merge")
            job = vm.jobs.get(drive.target)
            if j.snapshot_volume not in drive.chain and not job:
                return
            if job:
                gone_since = None
                done, total = int(job.get("cur") or 0), int(job.get("end") or 0)
                j.copied["merge"] = total
                if total:
                    self.reporter.progress(done, total)
                now = self.clock()
                if best_left is None or total - done < best_left:
                    best_left, best_at = total - done, now
                elif now - best_at >= window:
                    raise Stuck(
                        f"the live merge of {j.snapshot_volume} into {j.leaf} in domain "
                        f"{domain_id} is not converging ({total - done} bytes left for "
                        f"{window:g}s: the guest writes faster than it commits); it keeps "
                        "running in vdsmd"
                    )
            else:
                # The job ended but the chain still names the top: vdsmd's watcher is either
                # about to record success, or the merge failed and left the chain unchanged.
                now = self.clock()
                gone_since = now if gone_since is None else gone_since
                if now - gone_since >= MERGE_GONE_GRACE:
                    raise StepFailed(
                        f"the live merge of {j.snapshot_volume} into {j.leaf} in domain "
                        f"{domain_id} failed: its job ended and the chain is unchanged "
                        f"(vdsmd's log has the cause; flow id {self.api.client.flow_id})"
                    )
            poller.pause()
