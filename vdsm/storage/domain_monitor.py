"""Domain monitors: one thread per domain of a connected pool, as VDSM's domain monitor.

Each monitor joins the domain's lockspace with the pool's host id (sanlock's add_lockspace,
without waiting: a join takes 2-3 io_timeouts), joins again if the daemon lost it, and checks
every ``interval`` seconds that the domain answers. The check starts with a probe from a child
process: ``dd`` reads 4 KiB of the metadata with O_DIRECT (past any cache), bounded by the
probe timeout; only when it answered does the monitor's own thread read the metadata back.
A storage that stops answering then blocks a ``dd``, never vdsmd: the probe is given up at
the timeout, the domain is marked not answering (domain_health: every verb on it is refused
with 379 at once; a verb that touches it while its last answer is old probes it first) and
is probed again at the next interval; it is valid again once a probe answers.
``repoStats`` reports the last check from memory, so it answers at once even while a check
is slow; a probe late beyond its timeout reports the domain not answering at once, with
a growing ``lastCheck`` and ``delay``. Stopping a monitor leaves the lockspace
(rem_lockspace), unless the daemon is only shutting down: a restarted vdsmd rejoins, and
sanlock keeps this host's id meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace

from vdsm.errors import (
    AcquireHostIdFailure,
    CommandError,
    CommandTimeout,
    StorageDomainAccessError,
    StorageDomainDoesNotExist,
    VdsmError,
)
from vdsm.storage import clusterlock, runner
from vdsm.storage.clusterlock import JoinState
from vdsm.storage.domain import DOM_MD, METADATA_FILE
from vdsm.storage.repository import StorageRepository

log = logging.getLogger("vdsm.storage.domain_monitor")

# Seconds a probe that timed out gets to end once signalled (runner.run's stop_grace).
PROBE_STOP_GRACE = 0.2


@dataclass(frozen=True)
class DomainStatus:
    """The last check of one domain, as repoStats reports it."""

    sd_uuid: str
    host_id: int
    checked: bool  # at least one check has finished
    valid: bool  # the last check read the metadata
    error: str  # why not, when not valid
    code: int  # the error's code (0 when valid)
    checked_at: float  # monotonic time of the last finished check
    delay: float  # seconds the last check's read took
    join: JoinState
    version: int


class DomainMonitor:
    """Joins and checks one domain until stopped."""

    def __init__(
        self, repository: StorageRepository, sd_uuid: str, host_id: int, interval: float
    ) -> None:
        self.sd_uuid = sd_uuid
        self.host_id = host_id
        self._repository = repository
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status = DomainStatus(
            sd_uuid, host_id, False, False, "not checked yet", 0, 0.0, 0.0, JoinState.FREE, 0
        )
        self._thread = threading.Thread(
            target=self._run, name=f"monitor-{sd_uuid[:8]}", daemon=True
        )

    def start(self) -> None:
        # Every touch of the domain probes through this monitor when its last answer is old
        # (domain_health), so a verb meets a probe, not the hung storage.
        self._repository.health.watch(self.sd_uuid, self._probe)
        self._thread.start()

    def status(self) -> DomainStatus:
        with self._lock:
            status = self._status
        # What a probe found since the last check counts at once: one late beyond its
        # timeout, or one a verb ran that failed.
        health = self._repository.health
        refusal = health.refusal(self.sd_uuid)
        if refusal is None:
            return status
        waited = health.overdue(self.sd_uuid)
        return replace(
            status,
            valid=False,
            error=f"domain {self.sd_uuid} does not answer: {refusal}",
            code=StorageDomainAccessError.code,
            delay=status.delay if waited is None else waited,
        )

    def stop(self, *, leave: bool) -> None:
        """Stop checking; ``leave``: also leave the lockspace (this host gives its id up)."""
        self._stop.set()
        # A monitor blocked in the kernel on its hung storage never ends until the storage
        # answers: vdsmd's exit does not wait for it (the thread is a daemon; the process's
        # exit frees it, as SIGKILL frees a waiter on a hard NFS mount). Leaving the pool
        # waits longer: the lockspace is left only once the monitor no longer checks.
        self._thread.join(timeout=60 if leave else self._repository.health.probe_timeout)
        if self._thread.is_alive():
            log.warning("domain %s: its monitor is still blocked on the storage", self.sd_uuid)
        self._repository.health.forget(self.sd_uuid)
        if leave:
            try:
                domain = self._repository.domain(self.sd_uuid)
            except VdsmError as e:
                log.warning("domain %s: cannot leave its lockspace: %s", self.sd_uuid, e)
                return
            clusterlock.leave(self.sd_uuid, self.host_id, domain.ids_path)
            log.info("domain %s: left its lockspace (host id %d)", self.sd_uuid, self.host_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._check()
            self._stop.wait(self._interval)

    def _probe(self) -> None:
        """A direct read of the metadata from a child process, bounded by the probe timeout;
        the outcome goes to the repository's health (379 raised when it did not answer)."""
        health = self._repository.health
        metadata = self._repository.domain_dir(self.sd_uuid) / DOM_MD / METADATA_FILE
        argv = [
            "dd",
            f"if={metadata}",
            "of=/dev/null",
            "bs=4096",
            "count=1",
            "iflag=direct",
            "status=none",
        ]
        health.probing(self.sd_uuid)
        try:
            # A probe that timed out is stuck in the kernel on the hung storage: nothing
            # reaches it, so the monitor gives it up at once instead of after 7 s of grace.
            runner.run(argv, timeout=health.probe_timeout, stop_grace=PROBE_STOP_GRACE)
        except CommandTimeout:
            reason = f"its storage did not answer a read within {health.probe_timeout:g} s"
            health.failed(self.sd_uuid, reason)
            what = f"domain {self.sd_uuid} does not answer: {reason}"
            raise StorageDomainAccessError(what) from None
        except CommandError as e:
            # It answered, with an error: the checks below say which (gone, unreadable).
            health.answered(self.sd_uuid)
            log.debug("domain %s: probe failed: %s", self.sd_uuid, e)
            return
        health.answered(self.sd_uuid)

    def _check(self) -> None:
        started = time.monotonic()
        join = JoinState.FREE
        version = 0
        try:
            self._repository.health.probe(self.sd_uuid)
            domain = self._repository.domain(self.sd_uuid).reload()
            delay = time.monotonic() - started
            version = domain.metadata.version
            join = clusterlock.join_state(self.sd_uuid, self.host_id, domain.ids_path)
            if join is JoinState.FREE:
                io_timeout = domain.lockspace_io_timeout()
                join = clusterlock.join(
                    self.sd_uuid, self.host_id, domain.ids_path, io_timeout=io_timeout
                )
                log.info(
                    "domain %s: joining its lockspace as host id %d (io_timeout %d)",
                    self.sd_uuid,
                    self.host_id,
                    io_timeout,
                )
        except VdsmError as e:
            delay = time.monotonic() - started
            if not isinstance(e, (AcquireHostIdFailure, StorageDomainDoesNotExist)):
                log.warning("domain %s: check failed: %s", self.sd_uuid, e)
            status = DomainStatus(
                self.sd_uuid, self.host_id, True, False, e.message, e.code,
                time.monotonic(), delay, join, version,
            )  # fmt: skip
        except OSError as e:
            delay = time.monotonic() - started
            status = DomainStatus(
                self.sd_uuid, self.host_id, True, False, str(e), 100,
                time.monotonic(), delay, join, version,
            )  # fmt: skip
        else:
            status = DomainStatus(
                self.sd_uuid, self.host_id, True, True, "", 0,
                time.monotonic(), delay, join, version,
            )  # fmt: skip
        with self._lock:
            self._status = status

    def wait_joined(self, timeout: float) -> None:
        """Wait until this host has joined the lockspace; 661 after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        domain = self._repository.domain(self.sd_uuid)
        while True:
            state = clusterlock.join_state(self.sd_uuid, self.host_id, domain.ids_path)
            if state is JoinState.JOINED:
                return
            if time.monotonic() >= deadline or self._stop.is_set():
                raise AcquireHostIdFailure(
                    f"host id {self.host_id} in domain {self.sd_uuid}: not joined after "
                    f"{timeout:.0f} s (state {state.value}; last check: "
                    f"{self.status().error or 'ok'})"
                )
            time.sleep(0.1)
