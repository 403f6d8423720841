"""The state a disk move's steps share, and how a step runs: persisted first, then done.

:class:`MoveContext` holds the two roles' APIs — ``spm`` (:class:`~vdsm_cli.move.hosts.SpmVdsm`,
which follows the SPM role from host to host) and ``vm_host`` (the VM's vdsmd) — the journal,
the reporter and (in the tests only) the fault hook (:mod:`vdsm_cli.move.fault`).
:meth:`MoveContext.run_step` is the one way a step (forward or rollback) runs: the journal
records the step *before* it runs, the step checks the real state through the API before acting
(so running it again after a crash is harmless), and the journal records it done afterwards.

Tasks live on the SPM that runs them. After a failover the new SPM rolls back what the old one
left unfinished (VDSM's semantics: a dead SPM's tasks are never resumed), and knows nothing of a
task the old one never persisted; the journal records the lease version each task was submitted
under, so such a task is told from one that merely failed: it is :class:`TaskLost`. A lost task
of a step that must be finished anyway (past the pivot, or while rolling back) is done again on
the new SPM; before the pivot it fails the step, and the move rolls back, as for any failed
task. Either way the move ends fully on the source or fully on the destination.

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
from vdsm_cli.move.hosts import SpmVdsm, SpmView
from vdsm_cli.move.journal import NO_SPM, ROLLBACK, Journal, JournalStore
from vdsm_cli.move.progress import Reporter
from vdsm_cli.move.steps import BYTES_OF, DELETE_DESTINATION, PIVOT, SPM_STEPS

EXIT_STUCK = 4  # failed and could not be rolled back cleanly: --resume will retry

# Where the drive is, as far as vdsmd tells.
ON_SOURCE = "source"
ON_DESTINATION = "destination"
VM_GONE = "gone"  # vdsmd does not know the VM any more

MERGE_GONE_GRACE = 3.0  # seconds a merge may look finished-but-not-recorded before it failed
# Times a step whose task was lost with its SPM is done again (each failover costs one).
REDO_LIMIT = 3


class StepFailed(CliError):
    """A step failed; the message is the real reason (vdsmd's code and message, ...)."""


class TaskLost(StepFailed):
    """The step's task ended with the SPM it was submitted to: the next SPM rolled it back, or
    never knew it."""


class Stuck(CliError):
    """The move cannot continue or roll back by itself; the journal stays for --resume."""

    exit_code = EXIT_STUCK


class MoveContext:
    def __init__(
        self,
        spm: SpmVdsm,
        vm_host: Vdsm,
        store: JournalStore,
        journal: Journal,
        reporter: Reporter,
        *,
        resume_command: str,
        fault: Fault | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spm = spm
        self.vm_host = vm_host
        spm.on_change = self._spm_changed
        spm.on_wait = reporter.note
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
        """Persist ``step``, run ``action``, persist it done. A task lost with its SPM is done
        again (on the SPM now) if the step must be finished anyway."""
        self.journal.step = step
        self.save()
        self.hook(step)
        self.reporter.step(step, title, self.journal.direction, self.where(step))
        started = self.clock()
        redone = 0
        while True:
            try:
                action(self)
                break
            except TaskLost as e:
                if not self.must_finish() or redone >= REDO_LIMIT:
                    raise
                redone += 1
                self.note(f"step {step}: {e.message}; doing it again on the SPM {self.spm.view}")
        seconds = self.clock() - started
        total = self.journal.seconds.get(step, 0.0) + seconds
        self.journal.seconds[step] = round(total, 3)
        if step not in self.journal.done:
            self.journal.done.append(step)
        self.save()
        self.reporter.step_done(step, seconds, self.journal.copied.get(BYTES_OF.get(step, "")))

    def issued(self, step: str, task_id: str | None = None) -> None:
        """The step's action was sent (a task id to remember, with the lease version of the
        SPM it went to, maybe): persist, then the fault hook ``STEP+``."""
        if task_id is not None:
            self.journal.tasks[step] = task_id
            self.journal.task_lvers[step] = self.spm.view.lver
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

    # --- the hosts ------------------------------------------------------------------------------

    def where(self, step: str) -> tuple[str, str]:
        """The role that does ``step`` and its host's address (what the user is shown)."""
        if step in SPM_STEPS:
            return "SPM", self.spm.address
        return "VM host", self.vm_host.address

    def must_finish(self) -> bool:
        """Whether the move is past its point of no return: forward after the pivot, or
        rolling back. A step there is done again rather than given up."""
        return self.journal.direction == ROLLBACK or PIVOT in self.journal.done

    def _spm_changed(self, old: SpmView, new: SpmView, why: str) -> None:
        """The SPM role is elsewhere now, or its lease was taken again: journal it."""
        j = self.journal
        j.spm_address, j.spm_id, j.spm_lver = new.address, new.spm_id, new.lver
        if new.address not in j.hosts:
            j.hosts.append(new.address)
        because = f" (after {why})" if why else ""
        if old.lver == NO_SPM and old.address == new.address:
            self.save()  # first seen (a converted journal): nothing moved
        elif old.address != new.address:
            self.note(f"the SPM moved from {old} to {new}{because}")
        else:
            lvers = f"lver {old.lver} → {new.lver}"
            self.note(f"the SPM {new.address} took the role again ({lvers}){because}")

    def lost_with_its_spm(self, step: str) -> bool:
        """Whether the SPM lease ``step``'s task was submitted under is no longer the SPM's:
        sanlock adds 1 to the lease's version on every new SPM, whichever host it is."""
        submitted = self.journal.task_lvers.get(step, NO_SPM)
        return submitted != NO_SPM and self.spm.refresh().lver != submitted

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
            # 411: stopped, or interrupted by a restart; with a new SPM lease, by a failover.
            if e.code == errors.TaskAborted.code and self.lost_with_its_spm(step):
                raise TaskLost(
                    f"{e}: the SPM it was submitted to (lease version "
                    f"{self.journal.task_lvers[step]}) is gone, and the SPM now, "
                    f"{self.spm.view}, rolled it back"
                ) from None
            raise StepFailed(str(e)) from None
        if status is None and self.lost_with_its_spm(step):
            raise TaskLost(
                f"{verb} task {task_id} is unknown to the SPM now, {self.spm.view}: it was lost "
                f"with the SPM it was submitted to (lease version {self.journal.task_lvers[step]})"
            )
        self.spm.clear_task(task_id)
        return status

    def wait_known_task(
        self,
        task_id: str,
        verb: str,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        """Wait for the task's success (TaskFailed otherwise); None when the SPM does not
        know it (cleared, or lost with vdsmd's state or with a previous SPM)."""
        while True:
            try:
                return self.spm.wait_success(task_id, verb, on_progress=on_status)
            except ApiError as e:
                if e.code != errors.UnknownTask.code:
                    raise
                if not self._spm_moved():
                    return None
                # It was asked of a host that is not the SPM any more: again, of the SPM now.

    def task_status(self, task_id: str) -> dict[str, Any] | None:
        """The task's status, or None when the SPM does not know it."""
        while True:
            try:
                return self.spm.task_status(task_id)
            except ApiError as e:
                if e.code != errors.UnknownTask.code:
                    raise
                if not self._spm_moved():
                    return None
                # It was asked of a host that is not the SPM any more: again, of the SPM now.

    def _spm_moved(self) -> bool:
        """After a task was unknown: whether it was asked of a host that is not the SPM any
        more (task verbs answer from the host's own tasks, never 654). Then ask the SPM now."""
        before = self.spm.view
        return self.spm.refresh() != before

    def await_recorded_task(
        self,
        step: str,
        verbs: set[str],
        stop: bool = False,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Let the task a previous run started for ``step`` end before acting again (stop it
        first if ``stop``). Without a recorded id (a crash between submit and the journal
        write), wait for every unfinished task of those verbs."""
        task_ids = [self.journal.tasks[step]] if step in self.journal.tasks else []
        if not task_ids and step in (self.journal.step, self.journal.stopped_at):
            task_ids = self.spm.running_tasks(verbs)
        for task_id in task_ids:
            status = self.task_status(task_id)
            if status is None or status.get("taskState") == FINISHED:
                continue
            if stop:
                self.spm.stop_task(task_id)
            try:
                self.wait_known_task(task_id, ",".join(sorted(verbs)), on_status)
            except TaskFailed as e:
                # Its own rollback ran; the caller checks the real state next.
                self.reporter.note(f"the task {task_id} ended: {e.message}")

    def delete_destination_image(self) -> None:
        """deleteImage of the image on the destination, if it is there, and check it is gone
        (the rollback step DELETE_DESTINATION; the caller made sure nothing uses it)."""
        j = self.journal
        if j.image_id in self.spm.images(j.dst_domain):
            self.run_task(
                DELETE_DESTINATION,
                "deleteImage",
                lambda: self.spm.delete_image(j.dst_domain, j.pool_id, j.image_id),
            )
        if j.image_id in self.spm.images(j.dst_domain):
            raise Stuck(f"image {j.image_id} is still in destination domain {j.dst_domain}")

    # --- the disk, as vdsmd sees it -------------------------------------------------------------

    def vm(self) -> VmView | None:
        """The VM, or None when vdsmd does not know it any more."""
        try:
            return self.vm_host.vm(self.journal.vm_id)
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
        return self.spm.volumes(domain_id, j.pool_id, j.image_id)

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
                self.vm_host.merge(j.vm_id, drive.spec(), j.leaf, j.snapshot_volume, 0, j.merge_job)
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
        poller = self.vm_host.poller()
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
                    # libvirt reports only that the commit job failed, not why; what can
                    # fail is QEMU writing the base or reading the top.
                    raise StepFailed(
                        f"the live merge of {j.snapshot_volume} into {j.leaf} in domain "
                        f"{domain_id} failed: its job ended and the chain is unchanged; QEMU "
                        f"could not write volume {j.leaf} (an I/O error or no space left) or "
                        f"read volume {j.snapshot_volume} (the log of vdsmd on "
                        f"{self.vm_host.address} has libvirt's last event; flow id "
                        f"{self.vm_host.client.flow_id})"
                    )
            poller.pause()
