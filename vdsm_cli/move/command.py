"""vdsClient moveDisk: live storage migration of a VM's disks in one command.

The client drives docs/contract.md §1 against vdsmd through the API only, as an engine would:
auto-snapshot, clone, mirror, sync, READY, pivot, delete the source, then a live merge that
gives the disk back the chain it had. A VM that is Down moves offline instead, in one moveImage
task on the SPM (:mod:`vdsm_cli.move.offline`), with the same journal, progress, ``--resume``,
``--dry-run`` and exit codes. This module is the command: its options, pre-flight
(:mod:`vdsm_cli.move.plan`), ``--dry-run``, one disk or ``--all`` of them one after another,
``--resume``. One disk's move is run by :mod:`vdsm_cli.move.driver` over the steps of
:mod:`vdsm_cli.move.steps` (done by :mod:`vdsm_cli.move.forward` and
:mod:`vdsm_cli.move.rollback`), journaled by :mod:`vdsm_cli.move.journal`, shown by
:mod:`vdsm_cli.move.progress`. The functional tests' fault hook (:mod:`vdsm_cli.move.fault`)
comes from the environment here, and only here, and is handed to each move.

Which host does what (:mod:`vdsm_cli.move.hosts`): by default the command line's HOST is both
the pool's SPM and the VM's host, as before; ``--hosts`` names more hosts, among which the SPM
(getSpmStatus) and the VM (``list``) are found; ``--spm-host`` and ``--vm-host`` name a role
outright. ``--resume`` takes the hosts from the journal, and the command line's are added to
them, to find an SPM that moved meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from vdsm_cli.api import Vdsm
from vdsm_cli.client import Client, Endpoint, format_address, parse_address
from vdsm_cli.errors import EXIT_INTERRUPTED, EXIT_OK, CliError, UsageError
from vdsm_cli.move import offline
from vdsm_cli.move.context import MoveContext
from vdsm_cli.move.driver import execute, new_journal
from vdsm_cli.move.fault import Fault, from_environment
from vdsm_cli.move.hosts import SPM, SPM_TIMEOUT, Hosts, NoSpm, SpmVdsm, SpmView
from vdsm_cli.move.journal import OFFLINE, Journal, JournalStore, default_state_dir
from vdsm_cli.move.plan import (
    DiskPlan,
    Refused,
    attached_drive,
    check_room,
    describe,
    host_lines,
    movable_vm,
    plan_text,
    preflight,
)
from vdsm_cli.move.progress import Reporter
from vdsm_cli.move.steps import OFFLINE_ROLLBACK_STEPS, ROLLBACK_STEPS, forward_steps
from vdsm_cli.output import terminal_safe

COMMAND = "moveDisk"

USAGE = (
    f"{COMMAND} VM_ID (IMAGE_ID | --all) DST_SD_UUID [--keep-source] [--no-merge] "
    "[--sync-writes] [--bandwidth MIB] [--ready-timeout SECONDS] [--dry-run] [--resume] "
    "[--state-dir DIR] [--hosts HOST,...] [--spm-host HOST] [--vm-host HOST] "
    "[--spm-timeout SECONDS]"
)

HELP = f"""\
usage: vdsClient [--json] HOST[:PORT] {COMMAND} VM_ID IMAGE_ID DST_SD_UUID [options]
       vdsClient [--json] HOST[:PORT] {COMMAND} VM_ID --all DST_SD_UUID [options]
       vdsClient [--json] HOST[:PORT] {COMMAND} VM_ID (IMAGE_ID | --all) --resume

  Move a running VM's disk to another storage domain of its pool, live, in one command:
  auto-snapshot, cloneImageStructure, diskReplicateStart, syncImageData INTERNAL, wait for
  READY, diskReplicateFinish (pivot), delete the source image, then merge the auto-snapshot
  into its parent on the destination so the disk keeps the chain it had.

  A VM that is Down (listed by its host with status Down) moves offline: one moveImage task
  on the SPM copies the chain volume by volume (thin stays thin) and deletes the source only
  once every copy is durable and LEGAL (--keep-source: COPY, the source stays). The task holds
  the source volumes' leases: the VM cannot be started anywhere until the move has ended.

  Checked first, before anything is touched: the VM is Up (or Down) and the image attached
  to it, the destination is in the same pool with room for the allocated data x 1.1 +
  64 MiB, the VM's host and the SPM have joined the destination's lockspace (repoStats;
  offline, the SPM only), and no replication, merge or other move runs on the disk.

  Two roles do the move: the pool's SPM (createVolume, cloneImageStructure, syncImageData,
  deleteImage, deleteVolume and their tasks) and the VM's host (snapshot,
  diskReplicateStart/Finish, merge, the VM's stats). By default HOST is both. When they are
  different hosts, give them: --hosts lists every host to look on (HOST is one of them), the
  SPM being the one whose getSpmStatus says SPM and the VM's host the one whose list shows
  the VM (`vdsClient VM_HOST moveDisk VM IMAGE DST --hosts SPM_HOST`); or name them with
  --spm-host and --vm-host. If the SPM fails over in the middle of
  the move (it answers 654 "not SPM", or refuses connections), the move looks for the new SPM
  on the known hosts, waiting up to --spm-timeout seconds for an engine to start one. The new
  SPM rolls back the tasks the old one left: before the pivot the move then rolls back, after
  it the step is done again on the new SPM. Each step line says which host does it.

  Each step is journaled before it runs (in $VDSM_MOVE_STATE_DIR, else
  ~/.local/state/vdsm/moves). On any error, or Ctrl-C, the mirror is aborted first and the
  destination deleted only if that worked: the VM stays on the source. After the pivot there
  is no way back: the move is finished instead. A second Ctrl-C leaves things as they are.
  If the client or vdsmd dies, --resume finishes or rolls back from where it stopped.

arguments:
  VM_ID                the running VM
  IMAGE_ID             the disk's image (see getVmStats); or --all for every disk, one
                       after another, stopping at the first failure
  DST_SD_UUID          the destination storage domain (optional with --resume)

options:
  --keep-source        do not delete the source image after the pivot
  --no-merge           keep the auto-snapshot in the chain (no live merge)
  --sync-writes        mirror with synchronous writes from the start (guest writes reach
                       both sides before completing: always converges, slower writes)
  --bandwidth MIB      limit the mirror to MIB MiB/s (0: unlimited). The sync has no limit
                       in the API, and the merge (what the guest wrote during the move)
                       runs unlimited so that it converges
  --ready-timeout S    give up (and roll back) if the mirror is not READY after S seconds;
                       also how long a merge may make no progress (default 600)
  --dry-run            check and print the plan and a time estimate; change nothing
  --resume             finish or roll back a move that was interrupted; with --keep-source
                       or --no-merge it skips what is left of those steps. The hosts come
                       from the journal; --hosts adds more to find a moved SPM on, and
                       --spm-host / --vm-host override the journal's
  --state-dir DIR      where the journals are kept
  --hosts H[:P],...    more hosts the SPM and the VM may be on (HOST is always one)
  --spm-host H[:P]     the pool's SPM (checked with getSpmStatus)
  --vm-host H[:P]      the host that runs the VM
  --spm-timeout S      after a failover, wait up to S seconds for a new SPM while some host
                       answers (default {SPM_TIMEOUT:g}; 0: do not wait)
  --json               (before HOST) one JSON object a line: start, step, progress (bytes
                       done/total, rate, ETA of the step and overall), stepDone, note,
                       summary, result

exit codes: 0 moved (or nothing to do), 1 failed and rolled back (the disk is on the
            source, the VM runs on it if it ran, the destination is clean) or refused by
            the pre-flight, 2 usage error, 3 connection error before anything changed,
            4 stopped half-way and could not be rolled back: the message says exactly
            what is left, --resume retries, 130 interrupted (Ctrl-C) and rolled back
"""

_FLAGS = {
    "--all": "all",
    "--keep-source": "keep_source",
    "--no-merge": "no_merge",
    "--dry-run": "dry_run",
    "--resume": "resume",
    "--sync-writes": "sync_writes",
}
_VALUED = {
    "--bandwidth",
    "--ready-timeout",
    "--state-dir",
    "--hosts",
    "--spm-host",
    "--vm-host",
    "--spm-timeout",
}


@dataclass
class Options:
    vm_id: str
    image_id: str | None  # None with --all
    dst_domain: str | None  # may be omitted with --resume
    keep_source: bool = False
    merge: bool = True
    dry_run: bool = False
    resume: bool = False
    sync_writes: bool = False
    bandwidth: int = 0
    ready_timeout: float = 600.0
    state_dir: Path | None = None
    json: bool = False
    hosts: list[str] = field(default_factory=list)  # --hosts, each HOST:PORT
    spm_host: str | None = None
    vm_host: str | None = None
    spm_timeout: float = SPM_TIMEOUT

    def journal_options(self) -> dict[str, Any]:
        return {
            "keepSource": self.keep_source,
            "merge": self.merge,
            "bandwidth": self.bandwidth,
            "copyMode": "sync" if self.sync_writes else "auto",
            "readyTimeout": self.ready_timeout,
        }


def parse(values: list[str], json_output: bool) -> Options:
    flags: set[str] = set()
    valued: dict[str, str] = {}
    words: list[str] = []
    tokens = iter(values)
    for token in tokens:
        name, sep, inline = token.partition("=")
        if name in _FLAGS and not sep:
            flags.add(_FLAGS[name])
        elif name in _VALUED:
            value = inline if sep else next(tokens, None)
            if value is None:
                raise UsageError(f"option {name} needs a value", USAGE)
            valued[name] = value
        elif token.startswith("-"):
            raise UsageError(f"unknown option {token}", USAGE)
        else:
            words.append(token)
    wanted = 2 if "all" in flags else 3
    if not wanted - ("resume" in flags) <= len(words) <= wanted:
        raise UsageError(f"{COMMAND} takes VM_ID, IMAGE_ID (or --all) and DST_SD_UUID", USAGE)
    if "resume" in flags and "dry_run" in flags:
        raise UsageError("--dry-run and --resume do not go together", USAGE)
    vm_id = _uuid(words[0], "VM_ID")
    image_id = None if "all" in flags else _uuid(words[1], "IMAGE_ID")
    dst = _uuid(words[wanted - 1], "DST_SD_UUID") if len(words) == wanted else None
    options = Options(
        vm_id,
        image_id,
        dst,
        keep_source="keep_source" in flags,
        merge="no_merge" not in flags,
        dry_run="dry_run" in flags,
        resume="resume" in flags,
        sync_writes="sync_writes" in flags,
        json=json_output,
    )
    if "--bandwidth" in valued:
        options.bandwidth = _number(valued["--bandwidth"], "--bandwidth", int, minimum=0)
    if "--ready-timeout" in valued:
        options.ready_timeout = _number(valued["--ready-timeout"], "--ready-timeout", float, 1)
    if "--state-dir" in valued:
        options.state_dir = Path(valued["--state-dir"])
    if "--hosts" in valued:
        words = [w.strip() for w in valued["--hosts"].split(",") if w.strip()]
        if not words:
            raise UsageError("--hosts needs at least one HOST[:PORT]", USAGE)
        options.hosts = list(dict.fromkeys(_address(w, "--hosts") for w in words))
    if "--spm-host" in valued:
        options.spm_host = _address(valued["--spm-host"], "--spm-host")
    if "--vm-host" in valued:
        options.vm_host = _address(valued["--vm-host"], "--vm-host")
    if "--spm-timeout" in valued:
        options.spm_timeout = _number(valued["--spm-timeout"], "--spm-timeout", float, 0)
    return options


def _address(text: str, option: str) -> str:
    """``HOST[:PORT]`` as ``HOST:PORT`` (the journal's spelling)."""
    try:
        return format_address(*parse_address(text))
    except ValueError as e:
        raise UsageError(f"{option}: {e}", USAGE) from None


def _uuid(text: str, what: str) -> str:
    try:
        return str(uuid.UUID(text))  # canonical: it names the journal file
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a UUID", USAGE) from None


def _number(text: str, name: str, kind: type[Any], minimum: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{name} needs a number, not {text!r}", USAGE) from None
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum:g}", USAGE)
    return value


# --- one disk, all disks ----------------------------------------------------------------------


class Mover:
    """The command's work: one disk, or all of them, moved or resumed. ``hosts``: every host
    the command may talk to; ``first``: the command line's HOST (both roles by default).
    ``fault``: the test-only fault hook handed to each move (None outside the tests)."""

    def __init__(
        self,
        options: Options,
        hosts: Hosts,
        first: str,
        store: JournalStore,
        reporter: Reporter,
        out: TextIO,
        fault: Fault | None = None,
    ) -> None:
        self.options = options
        self.hosts = hosts
        self.first = first
        self.store = store
        self.reporter = reporter
        self.out = out
        self.fault = fault
        self._vm_address: str | None = None
        self._spms: dict[str, SpmVdsm] = {}

    # --- the hosts ----------------------------------------------------------------------------

    def vm_host(self) -> Vdsm:
        """The VM's host: --vm-host, else the one of the known hosts that lists the VM (with
        --hosts), else HOST."""
        if self._vm_address is None:
            o = self.options
            if o.vm_host is not None:
                self._vm_address = o.vm_host
            elif self.hosts.several:
                self._vm_address = self.hosts.find_vm(o.vm_id)
            else:
                self._vm_address = self.first
        return self.hosts.api(self._vm_address)

    def spm(self, pool_id: str) -> SpmVdsm:
        """The pool's SPM, found once per pool (it then follows the role itself)."""
        if pool_id not in self._spms:
            self._spms[pool_id] = SpmVdsm(self.hosts, pool_id, self.find_spm(pool_id))
        return self._spms[pool_id]

    def find_spm(self, pool_id: str) -> SpmView:
        """--spm-host, checked; else the one known host whose getSpmStatus says SPM. Refused
        if none: the pre-flight never waits for an SPM."""
        o = self.options
        if o.spm_host is not None:
            status = self.hosts.api(o.spm_host).spm_status(pool_id)
            if status.get("spmStatus") != SPM:
                raise Refused(
                    f"--spm-host {o.spm_host} is not the SPM of pool {pool_id}: it is "
                    f"{status.get('spmStatus')} (sanlock: host id {status.get('spmId')} holds "
                    f"the lease, lver {status.get('spmLver')})"
                )
            return SpmView(o.spm_host, int(status["spmId"]), int(status["spmLver"]))
        try:
            return self.hosts.find_spm(pool_id, wait=False)
        except NoSpm as e:
            raise Refused(e.message) from None

    def context(self, journal: Journal, spm: SpmVdsm, vm_host: Vdsm) -> MoveContext:
        j = journal
        resume = f"vdsClient {j.vm_address} {COMMAND} {j.vm_id} {j.image_id} --resume"
        return MoveContext(
            spm,
            vm_host,
            self.store,
            journal,
            self.reporter,
            resume_command=resume,
            fault=self.fault,
        )

    def main(self) -> int:
        if self.options.image_id is not None:
            return self.move_one(self.options.image_id)
        return self.move_all()

    def plan(self, image_id: str) -> DiskPlan:
        o = self.options
        journal = self.store.load(o.vm_id, image_id)
        if journal is not None:
            raise Refused(
                f"a move of image {image_id} is recorded ({journal.direction}, at step "
                f"{journal.step or 'start'}) in {self.store.path(o.vm_id, image_id)}: "
                "finish it with --resume first"
            )
        vm_host = self.vm_host()
        vm = movable_vm(vm_host, o.vm_id)
        drive = attached_drive(vm, image_id)
        assert o.dst_domain is not None
        if drive.domain_id == o.dst_domain:  # nothing to do: no SPM needed to say so
            return DiskPlan(o.vm_id, drive, o.dst_domain, vm_address=vm_host.address)
        return preflight(
            self.spm(drive.pool_id),
            vm_host,
            vm,
            drive,
            o.dst_domain,
            keep_source=o.keep_source,
            merge=o.merge,
            note=self.reporter.note,
        )

    def move_one(self, image_id: str) -> int:
        o = self.options
        lock = self.store.lock(o.vm_id, image_id)
        try:
            if o.resume:
                return self.resume(image_id)
            plan = self.plan(image_id)
            if plan.already_there or o.dry_run:
                self.show_plan(plan)
                return EXIT_OK
            spm, vm_host = self.spm(plan.drive.pool_id), self.vm_host()
            journal = new_journal(
                plan, o.journal_options(), spm.view, vm_host.address, self.hosts.addresses
            )
            ctx = self.context(journal, spm, vm_host)
            self.reporter.start(
                self.header(journal, plan.drive.domain_id),
                plan.steps,
                plan.expected_bytes(),
                undo_steps(journal),
            )
            run_move(ctx, resume=False)
            return EXIT_OK
        finally:
            lock.release(remove=not self.store.path(o.vm_id, image_id).exists())

    def resume(self, image_id: str) -> int:
        o = self.options
        journal = self.store.load(o.vm_id, image_id)
        if journal is None:
            self.reporter.result(EXIT_OK, f"nothing to resume for image {image_id}")
            return EXIT_OK
        if o.dst_domain not in (None, journal.dst_domain):
            raise UsageError(
                f"the recorded move of image {image_id} goes to {journal.dst_domain}, "
                f"not {o.dst_domain}",
                USAGE,
            )
        # Only ever drop optional work on resume; never add any.
        if o.keep_source:
            journal.options["keepSource"] = True
        if not o.merge:
            journal.options["merge"] = False
        # The journal's hosts first; the command line's may add where a moved SPM is now.
        for address in journal.hosts:
            self.hosts.add(address)
        if o.vm_host is not None:
            journal.vm_address = o.vm_host
        # The SPM as last recorded: the driver asks it first whether it is the SPM still.
        recorded = SpmView(journal.spm_address, journal.spm_id, journal.spm_lver)
        spm = SpmVdsm(self.hosts, journal.pool_id, recorded)
        ctx = self.context(journal, spm, self.hosts.api(journal.vm_address))
        if o.spm_host is not None:
            spm.switch(self.find_spm(journal.pool_id))  # journaled by the context
        steps = forward_steps(
            keep_source=journal.options["keepSource"],
            merge=journal.options["merge"],
            offline=journal.mode == OFFLINE,
        )
        header = self.header(journal, journal.src_domain)
        header["title"] = f"resuming: {header['title']} (stopped at {journal.step or 'start'})"
        self.reporter.start(header, steps, {}, undo_steps(journal))
        run_move(ctx, resume=True)
        return EXIT_OK

    def move_all(self) -> int:
        o = self.options
        if o.resume:
            images = self.store.images_of(o.vm_id)
            if not images:
                self.reporter.result(EXIT_OK, f"nothing to resume for VM {o.vm_id}")
            return self._one_by_one(images)
        vm = movable_vm(self.vm_host(), o.vm_id)
        images = [d.image_id for d in sorted(vm.drives.values(), key=lambda d: d.target)]
        plans = [self.plan(image_id) for image_id in images]
        check_room(plans)
        todo = [p for p in plans if not p.already_there]
        if o.dry_run or not todo:
            for plan in plans:
                self.show_plan(plan)
            return EXIT_OK
        targets = ", ".join(p.drive.target for p in todo)
        self.reporter.note(f"moving {len(todo)} disks one after another: {targets}")
        return self._one_by_one([p.drive.image_id for p in todo])

    def _one_by_one(self, images: list[str]) -> int:
        for index, image_id in enumerate(images):
            try:
                self.move_one(image_id)
            except CliError as e:
                done, rest = images[:index], images[index + 1 :]
                e.message = (
                    f"image {image_id}: {e.message} [stopped at this disk; moved before it: "
                    f"{', '.join(done) or 'none'}; not started: {', '.join(rest) or 'none'}]"
                )
                raise
        return EXIT_OK

    def header(self, journal: Journal, src: str) -> dict[str, Any]:
        j = journal
        how = ", offline (the VM is Down)" if j.mode == OFFLINE else ""
        return {
            "title": f"moving disk {j.target} (image {j.image_id}) of VM {j.vm_id} "
            f"from domain {src} to {j.dst_domain}{how}",
            "vmId": j.vm_id,
            "imageID": j.image_id,
            "srcDomainID": src,
            "dstDomainID": j.dst_domain,
            "spmAddress": j.spm_address,
            "spmId": j.spm_id,
            "spmLver": j.spm_lver,
            "vmAddress": j.vm_address,
            "mode": j.mode,
            "hostLines": host_lines(
                j.spm_address, j.vm_address, j.spm_id, j.spm_lver, j.mode == OFFLINE
            ),
        }

    def show_plan(self, plan: DiskPlan) -> None:
        rates = self.store.measured_rates()
        if self.options.json:
            self.out.write(json.dumps({"event": "plan", **describe(plan, rates)}) + "\n")
        else:
            self.out.write(terminal_safe(plan_text(plan, rates), newlines=True) + "\n")
        self.out.flush()


def run_move(ctx: MoveContext, *, resume: bool) -> str:
    """One move to its end: the live flow, or the offline one for a Down VM's disk."""
    if ctx.journal.mode == OFFLINE:
        return offline.execute(ctx, resume=resume)
    return execute(ctx, resume=resume)


def undo_steps(journal: Journal) -> list[str]:
    return OFFLINE_ROLLBACK_STEPS if journal.mode == OFFLINE else ROLLBACK_STEPS


def run(values: list[str], endpoint: Endpoint, flow_id: str, json_output: bool, out: TextIO) -> int:
    """The command's entry point for vdsclient: EXIT_OK, or a CliError with its exit code."""
    options = parse(values, json_output)

    def connect(address: str) -> Vdsm:
        # Every host with the command line's TLS settings (certificates, CA, or --no-tls).
        host, port = parse_address(address)
        return Vdsm(Client(dataclasses.replace(endpoint, host=host, port=port), flow_id))

    first = format_address(endpoint.host, endpoint.port)
    named = [o for o in (options.spm_host, options.vm_host) if o is not None]
    hosts = Hosts([first, *options.hosts, *named], connect, spm_timeout=options.spm_timeout)
    store = JournalStore(options.state_dir or default_state_dir())
    reporter = Reporter(out, json_lines=options.json, live=out.isatty())
    try:
        return Mover(options, hosts, first, store, reporter, out, from_environment()).main()
    except CliError as e:
        reporter.result(e.exit_code, e.message)  # --json: the outcome as the last line
        raise
    except KeyboardInterrupt:
        reporter.result(EXIT_INTERRUPTED, "interrupted")
        raise
    finally:
        reporter.close()
