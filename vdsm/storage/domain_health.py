"""Which domains answer: what the domain probes saw, asked before anything touches a domain.

A file system that stops answering (a hung NFS server, a dead disk behind a FUSE mount) blocks
every thread that touches it in the kernel until the storage comes back, beyond the reach of
any timeout. vdsmd must never be that thread. So a domain is probed from a child process
(domain_monitor.py: ``dd`` reads its metadata with O_DIRECT), bounded by ``probe_timeout``,
and :meth:`DomainHealth.check` runs before anything of a domain is touched
(:meth:`StorageRepository.domain`): a domain whose last probe failed, or whose probe in flight
is late, is refused with 379 at once; a domain whose last answer is older than ``fresh_for``
seconds is probed again first (one probe at a time per domain: callers that come while one
runs wait for its outcome, bounded). A verb, reading or changing, that comes after the
storage hung therefore waits at most one probe timeout and answers 379 without having touched
the domain; only an operation that started within ``fresh_for`` of the hang (an answer
vouches for its domain that long) can still block on it.

The monitor's regular checks go through the same probe, so an idle host costs no more probes
than the monitor's interval; a busy one at most one per domain every ``fresh_for`` seconds.
A domain no monitor watches (not in a connected pool) is never refused nor probed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vdsm.errors import StorageDomainAccessError

# Seconds a domain's storage has to answer a monitor's probe (a 4 KiB direct read of its
# metadata) before the domain is refused as not answering (vdsmd's --domain-probe-timeout).
DEFAULT_PROBE_TIMEOUT = 10.0
# Seconds a probe's answer vouches for its domain: older than that, the next touch probes
# again. Short enough that a verb meeting a hung domain almost always meets a probe instead;
# long enough that a busy host spawns at most one ``dd`` per domain and second.
DEFAULT_FRESH_FOR = 1.0
# Seconds beyond the probe timeout a caller waits for a probe another caller runs (the
# probe's own give-up grace, and scheduling on a loaded host).
PROBE_WAIT_SLACK = 2.0


@dataclass
class _Probe:
    started: float | None = None  # monotonic start of the probe in flight, if one is
    failure: str = ""  # why the last probe failed; "" when it answered
    answered_at: float | None = None  # monotonic time of the last answer, if any


@dataclass
class _Watched:
    """A domain a monitor watches: how to probe it, one probe at a time."""

    prober: Callable[[], None]
    probe_lock: threading.Lock = field(default_factory=threading.Lock)


class DomainHealth:
    """Per domain: the probe in flight and the last probe's outcome. Thread-safe."""

    def __init__(self, probe_timeout: float, fresh_for: float = DEFAULT_FRESH_FOR) -> None:
        self.probe_timeout = probe_timeout
        self.fresh_for = fresh_for
        self._probes: dict[str, _Probe] = {}
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()

    def watch(self, sd_uuid: str, prober: Callable[[], None]) -> None:
        """A monitor watches the domain: ``prober`` probes it once (it reports through
        :meth:`probing`, :meth:`answered` and :meth:`failed`, and raises 379 when the storage
        did not answer)."""
        with self._lock:
            self._watched[sd_uuid] = _Watched(prober)

    def forget(self, sd_uuid: str) -> None:
        """No monitor watches the domain any more: nothing is known of it."""
        with self._lock:
            self._probes.pop(sd_uuid, None)
            self._watched.pop(sd_uuid, None)

    def probing(self, sd_uuid: str) -> None:
        with self._lock:
            self._probes.setdefault(sd_uuid, _Probe()).started = time.monotonic()

    def answered(self, sd_uuid: str) -> None:
        with self._lock:
            self._probes[sd_uuid] = _Probe(answered_at=time.monotonic())

    def failed(self, sd_uuid: str, reason: str) -> None:
        with self._lock:
            self._probes[sd_uuid] = _Probe(failure=reason)

    def probe(self, sd_uuid: str) -> None:
        """Probe a watched domain now (the monitor's check), or wait for the probe another
        caller runs; 379 when the storage does not answer."""
        with self._lock:
            watched = self._watched.get(sd_uuid)
        if watched is None:
            return
        self._probe(sd_uuid, watched, only_if_stale=False)

    def check(self, sd_uuid: str) -> None:
        """Before anything touches the domain: 379 if it does not answer, probing it first
        when its last answer is older than ``fresh_for``."""
        self._raise_refusal(sd_uuid)
        with self._lock:
            watched = self._watched.get(sd_uuid)
            fresh = self._fresh(sd_uuid)
        if watched is None or fresh:
            return
        self._probe(sd_uuid, watched, only_if_stale=True)
        self._raise_refusal(sd_uuid)

    def refusal(self, sd_uuid: str) -> str | None:
        """Why the domain must not be touched now, or None (from what is known: no probe)."""
        with self._lock:
            probe = self._probes.get(sd_uuid)
            if probe is None:
                return None
            if probe.failure:
                return probe.failure
            overdue = self._overdue(probe)
            return None if overdue is None else f"its storage has not answered for {overdue:.0f} s"

    def overdue(self, sd_uuid: str) -> float | None:
        """Seconds the probe in flight has waited, when that is beyond probe_timeout."""
        with self._lock:
            probe = self._probes.get(sd_uuid)
            return None if probe is None else self._overdue(probe)

    def _probe(self, sd_uuid: str, watched: _Watched, *, only_if_stale: bool) -> None:
        # One probe at a time: a caller that comes while one runs waits for it and takes its
        # outcome instead of spawning another ``dd`` at storage that may be hung.
        if not watched.probe_lock.acquire(timeout=self.probe_timeout + PROBE_WAIT_SLACK):
            raise StorageDomainAccessError(
                f"domain {sd_uuid} does not answer: its probe has not finished within "
                f"{self.probe_timeout:g} s"
            )
        try:
            with self._lock:
                fresh = self._fresh(sd_uuid)
                failure = self._probes.get(sd_uuid, _Probe()).failure
            if only_if_stale and (fresh or failure):
                return  # the probe this caller waited for told already
            watched.prober()
        finally:
            watched.probe_lock.release()

    def _raise_refusal(self, sd_uuid: str) -> None:
        refusal = self.refusal(sd_uuid)
        if refusal is not None:
            raise StorageDomainAccessError(f"domain {sd_uuid} does not answer: {refusal}")

    def _fresh(self, sd_uuid: str) -> bool:
        probe = self._probes.get(sd_uuid)
        if probe is None or probe.answered_at is None:
            return False
        return time.monotonic() - probe.answered_at < self.fresh_for

    def _overdue(self, probe: _Probe) -> float | None:
        if probe.started is None:
            return None
        waited = time.monotonic() - probe.started
        return waited if waited > self.probe_timeout else None
