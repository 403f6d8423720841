"""Which host does what in a disk move: the pool's SPM and the VM's host, found and found again.

A move's verbs play two roles (docs/contract.md §1). SPM verbs change storage metadata and run
as tasks on the pool's SPM only (any other host answers 654): createVolume,
cloneImageStructure, syncImageData, deleteImage, deleteVolume, and the task verbs, since a task
is known to the SPM that runs it; the image and volume lists and infos are asked there too, as
the SPM is the host that writes them. VM verbs act on the running VM and go to its host:
snapshot, diskReplicateStart/Finish, merge, getVmStats (the block jobs). Both roles may be one
host (the default: the command line's HOST) or two.

:class:`Hosts` holds every host the command was given and finds the roles among them: the VM
host is the one whose ``list`` shows the VM, the SPM the one whose getSpmStatus(spUUID) says
``SPM``. vdsm cannot map sanlock's spmId to an address (an engine does, from its own
inventory), so the client only ever looks among the hosts it was given.

:class:`SpmVdsm` is the SPM as one API that follows the role. An answer 654 ("not SPM") or a
refused connection from the SPM are the signs of a failover: it then looks for the SPM again on
every known host, waiting up to ``spm_timeout`` seconds while some host answers (an engine
starts the next SPM meanwhile; a dead host's lease frees only after sanlock's delay), and sends
the call there. A call that may have reached the old SPM and started something (a task
submitted on a connection that broke after sending) is never sent twice; a refusal, 654 or a
refused connection, proves it was not done. Each new SPM is reported to the move
(``on_change``), which journals it: its address, host id and lease version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vdsm import errors
from vdsm_cli.api import Vdsm
from vdsm_cli.errors import ApiError, CliError, ConnectionFailed, ConnectionRefused
from vdsm_cli.move.journal import NO_SPM

SPM = "SPM"  # getSpmStatus' spmStatus of the host that holds the lease
CONTEND = "Contend"  # ... of a host taking the role (spmStart between its acquire and SPM)
# The default of --spm-timeout: a killed SPM vdsmd frees the lease at once and an engine starts
# the next SPM within seconds, but a dead host's lease frees only once sanlock sees it DEAD
# (8 x io_timeout + 60 s: 140 s at vdsm's production io_timeout of 10), then spmStart runs.
SPM_TIMEOUT = 300.0
FIND_PAUSE = 1.0  # seconds between two rounds of getSpmStatus while no host is the SPM
# Verbs that start work on the SPM: one sent on a connection that broke may have started it,
# so it is never sent again (to the same SPM or to the next one); only a refusal proves that
# nothing was done. Every other SPM call a move makes reads, or is idempotent (stop, clear).
SUBMIT_VERBS = frozenset(
    {
        "createVolume",
        "cloneImageStructure",
        "syncImageData",
        "deleteImage",
        "deleteVolume",
        "moveImage",
    }
)


@dataclass(frozen=True)
class SpmView:
    """The SPM as last seen: its address, its host id and the lease's version (sanlock's)."""

    address: str
    spm_id: int
    lver: int

    def __str__(self) -> str:
        return f"{self.address} (host id {self.spm_id}, lver {self.lver})"


class HostNotFound(CliError):
    """No known host plays the role asked for (the SPM, or the VM's host)."""


class NoSpm(HostNotFound):
    """No known host is the pool's SPM. ``answered``: whether any host answered at all."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


def failover_sign(verb: str, error: CliError) -> bool:
    """Whether ``error`` from the SPM means the role may have moved and that ``verb`` may be
    sent again, to whichever host holds the role now."""
    if isinstance(error, ApiError):
        return error.code == errors.SpmStatusError.code
    if isinstance(error, ConnectionRefused):
        return True  # never sent: safe for every verb
    return isinstance(error, ConnectionFailed) and verb not in SUBMIT_VERBS


class Hosts:
    """The hosts a move may talk to (``HOST:PORT`` each, in the order given), and a client of
    each, made by ``connect`` when first needed.

    ``spm_timeout``: how long :meth:`find_spm` waits for an SPM while some host answers. Once a
    wait has run out, later ones only look once: a move rolling back after it found no SPM
    should not wait as long again at every step.
    """

    def __init__(
        self,
        addresses: Iterable[str],
        connect: Callable[[str], Vdsm],
        *,
        spm_timeout: float = SPM_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.addresses: list[str] = []
        for address in addresses:
            self.add(address)
        self._connect = connect
        self._apis: dict[str, Vdsm] = {}
        self.spm_timeout = spm_timeout
        self.clock = clock
        self.sleep = sleep
        self.gave_up = False

    def add(self, address: str) -> None:
        if address not in self.addresses:
            self.addresses.append(address)

    def api(self, address: str) -> Vdsm:
        """The client of ``address`` (added to the known hosts)."""
        self.add(address)
        if address not in self._apis:
            self._apis[address] = self._connect(address)
        return self._apis[address]

    @property
    def several(self) -> bool:
        return len(self.addresses) > 1

    # --- the SPM ------------------------------------------------------------------------------

    def spm_statuses(self, pool_id: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """getSpmStatus on every known host: the answers by address, and why the others gave
        none (no vdsmd there, or not connected to the pool: 309)."""
        answers: dict[str, dict[str, Any]] = {}
        silent: dict[str, str] = {}
        for address in list(self.addresses):
            try:
                answers[address] = self.api(address).spm_status(pool_id)
            except (ApiError, ConnectionFailed) as e:
                silent[address] = e.message
        return answers, silent

    def find_spm(
        self,
        pool_id: str,
        *,
        wait: bool,
        note: Callable[[str], None] | None = None,
    ) -> SpmView:
        """The host whose getSpmStatus says SPM; NoSpm if none. With ``wait``, and while some
        host answers, ask again every FIND_PAUSE seconds for up to ``spm_timeout``."""
        deadline = self.clock() + self.spm_timeout
        waiting = False
        while True:
            answers, silent = self.spm_statuses(pool_id)
            found = spm_of(pool_id, answers)
            if found is not None:
                return found
            if not wait or not answers or elsewhere(answers, silent):
                raise NoSpm(self._no_spm(pool_id, answers, silent, waited=waiting), bool(answers))
            if self.gave_up or self.clock() >= deadline:
                self.gave_up = True
                raise NoSpm(self._no_spm(pool_id, answers, silent, waited=waiting), True)
            if not waiting and note is not None:
                note(
                    f"no host is the SPM of pool {pool_id} now: waiting up to "
                    f"{self.spm_timeout:g}s for one among {', '.join(self.addresses)}"
                )
            waiting = True
            self.sleep(FIND_PAUSE)

    def _no_spm(
        self,
        pool_id: str,
        answers: dict[str, dict[str, Any]],
        silent: dict[str, str],
        *,
        waited: bool,
    ) -> str:
        facts = [f"{a}: {s.get('spmStatus', '?')}" for a, s in answers.items()]
        facts += [f"{a}: {why}" for a, why in silent.items()]
        holders = {_int(s.get("spmId")) for s in answers.values()} - {NO_SPM}
        hint = "start the SPM on one of them (spmStart)"
        if holders:
            # The lease is held, by a host id none of the given hosts answers for.
            hint = (
                f"sanlock says host id {', '.join(map(str, sorted(holders)))} holds the SPM "
                "lease: give its address with --hosts"
            )
        after = f" after {self.spm_timeout:g}s" if waited else ""
        return f"no known host is the SPM of pool {pool_id}{after} ({'; '.join(facts)}): {hint}"

    # --- the VM -------------------------------------------------------------------------------

    def find_vm(self, vm_id: str) -> str:
        """The address of the host that runs the VM: the one whose ``list`` shows it Up (or,
        if none, shows it at all, so that the pre-flight says what state it is in)."""
        listed: dict[str, str] = {}
        silent: dict[str, str] = {}
        answered = False
        for address in list(self.addresses):
            try:
                status = self.api(address).vm_statuses([vm_id]).get(vm_id)
            except ConnectionFailed as e:
                silent[address] = e.message
                continue
            except ApiError as e:
                answered = True
                silent[address] = e.message
                continue
            answered = True
            if status is not None:
                listed[address] = status
        found = vm_host_of(vm_id, listed)
        if found is None:
            facts = "".join(f"; {a}: {why}" for a, why in silent.items())
            text = f"VM {vm_id} runs on none of the hosts {', '.join(self.addresses)}{facts}"
            if len(silent) == len(self.addresses) and not answered:
                raise ConnectionFailed(text)  # nobody answered: nothing is known of the VM
            raise HostNotFound(text)
        return found


def spm_of(pool_id: str, answers: dict[str, dict[str, Any]]) -> SpmView | None:
    """The SPM among the getSpmStatus ``answers`` (address → spm_st), or None."""
    spms = [a for a, status in answers.items() if status.get("spmStatus") == SPM]
    if len(spms) > 1:  # sanlock lets one host hold the lease: some answer is stale
        raise NoSpm(f"hosts {', '.join(spms)} all say they are the SPM of pool {pool_id}", True)
    if not spms:
        return None
    status = answers[spms[0]]
    return SpmView(spms[0], _int(status.get("spmId")), _int(status.get("spmLver")))


def elsewhere(answers: dict[str, dict[str, Any]], silent: dict[str, str]) -> bool:
    """Whether the SPM is a host none of the known ones is: every known host answered, none
    is SPM or taking the role (Contend), and yet sanlock says a host id holds the lease. A
    known host that does not answer may be the holder (dead, or restarting: its lease frees
    when sanlock sees it DEAD), and then the role is worth waiting for."""
    if silent or any(s.get("spmStatus") == CONTEND for s in answers.values()):
        return False
    return any(_int(s.get("spmId")) != NO_SPM for s in answers.values())


def vm_host_of(vm_id: str, listed: dict[str, str]) -> str | None:
    """The host among ``listed`` (address → the VM's status there) that runs the VM: the one
    where it is Up, else the first that knows it (the pre-flight then says what state it is
    in); None if none does. A VM Up on two hosts is an error: the move would not know which
    QEMU writes the disk."""
    up = [a for a, status in listed.items() if status == "Up"]
    if len(up) > 1:
        raise HostNotFound(f"VM {vm_id} is Up on several hosts: {', '.join(up)}")
    if up:
        return up[0]
    return next(iter(listed), None)


class SpmVdsm(Vdsm):
    """The pool's SPM as one API (:class:`~vdsm_cli.api.Vdsm`), following the role from host to
    host after a failover (see the module's docstring). ``view``: the SPM now."""

    def __init__(self, hosts: Hosts, pool_id: str, spm: SpmView) -> None:
        first = hosts.api(spm.address)
        super().__init__(
            first.client, interval=first.interval, sleep=first.sleep, clock=first.clock
        )
        self.hosts = hosts
        self.pool_id = pool_id
        self.view = spm
        # The move's hooks: a search that starts waiting, and a new SPM (old, new, and why the
        # old one was given up: what it answered, "" when it only holds a new lease).
        self.on_wait: Callable[[str], None] | None = None
        self.on_change: Callable[[SpmView, SpmView, str], None] | None = None

    def call(self, verb: str, *args: Any) -> dict[str, Any]:
        started: float | None = None
        while True:
            try:
                return super().call(verb, *args)
            except (ApiError, ConnectionFailed) as e:
                if not failover_sign(verb, e):
                    raise
                started = self.clock() if started is None else started
                before = self.view
                if self.follow(e) == before:
                    # sanlock says the host we asked holds the role still, with the same lease:
                    # a passing refusal (its role changing state). Again, for a while.
                    if self.clock() - started >= self.hosts.spm_timeout:
                        raise
                    self.sleep(FIND_PAUSE)

    def follow(self, cause: CliError) -> SpmView:
        """Find the SPM again after ``cause`` (654, or the SPM did not answer) and switch to
        it. When no known host answers at all, ``cause`` itself is raised, as it was before
        there were several hosts: there is nobody to wait with."""
        try:
            found = self.hosts.find_spm(self.pool_id, wait=True, note=self._waiting(cause))
        except NoSpm as e:
            if not e.answered:
                raise cause from None
            message = f"the SPM {self.view.address}: {cause.message}; {e.message}"
            raise NoSpm(message, True) from None
        self.switch(found, why=f"{self.view.address}: {cause.message}")
        return found

    def refresh(self) -> SpmView:
        """The SPM now, by sanlock: asked of the last one (a new lease version means it took
        the role again), or looked for on every host if it is not the SPM any more."""
        try:
            status = self.hosts.api(self.view.address).spm_status(self.pool_id)
        except (ApiError, ConnectionFailed) as e:
            return self.follow(e)
        if status.get("spmStatus") != SPM:
            state = status.get("spmStatus", "?")
            return self.follow(
                ApiError(errors.SpmStatusError.code, f"it is {state} now, not the SPM")
            )
        view = SpmView(self.view.address, _int(status.get("spmId")), _int(status.get("spmLver")))
        self.switch(view)
        return view

    def switch(self, view: SpmView, why: str = "") -> None:
        """Talk to ``view`` from now on; ``on_change`` is told if it is another SPM."""
        if view == self.view:
            return
        old, self.view = self.view, view
        self.client = self.hosts.api(view.address).client
        if self.on_change is not None:
            self.on_change(old, view, why)

    def _waiting(self, cause: CliError) -> Callable[[str], None]:
        def note(message: str) -> None:
            if self.on_wait is not None:
                self.on_wait(f"the SPM {self.view.address}: {cause.message}; {message}")

        return note


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return NO_SPM
