"""Which domains answer: what the domain monitors saw, read before anything touches a domain.

A file system that stops answering (a hung NFS server, a dead disk behind a FUSE mount) blocks
every thread that touches it in uninterruptible sleep, beyond the reach of any timeout or even
SIGKILL, until the storage comes back. vdsmd must never be that thread. So each monitor probes
its domain from a child process (domain_monitor.py), bounded by ``probe_timeout``, and records
here when a probe starts and how it ended; :meth:`StorageRepository.domain` asks
:meth:`DomainHealth.refusal` first and refuses a domain that does not answer with 379, at
once, instead of blocking on it.

A domain is refused while its last probe failed, or while a probe has been waiting longer than
``probe_timeout``: the verb that comes between the storage hanging and the next probe still
blocks (at most one monitor interval wide). A domain no monitor watches (not in a connected
pool) is never refused.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

# Seconds a domain's storage has to answer a monitor's probe (a 4 KiB direct read of its
# metadata) before the domain is refused as not answering (vdsmd's --domain-probe-timeout).
DEFAULT_PROBE_TIMEOUT = 10.0


@dataclass
class _Probe:
    started: float | None = None  # monotonic start of the probe in flight, if one is
    failure: str = ""  # why the last probe failed; "" when it answered


class DomainHealth:
    """Per domain: the probe in flight and the last probe's failure. Thread-safe."""

    def __init__(self, probe_timeout: float) -> None:
        self.probe_timeout = probe_timeout
        self._probes: dict[str, _Probe] = {}
        self._lock = threading.Lock()

    def probing(self, sd_uuid: str) -> None:
        with self._lock:
            self._probes.setdefault(sd_uuid, _Probe()).started = time.monotonic()

    def answered(self, sd_uuid: str) -> None:
        with self._lock:
            self._probes[sd_uuid] = _Probe()

    def failed(self, sd_uuid: str, reason: str) -> None:
        with self._lock:
            self._probes[sd_uuid] = _Probe(failure=reason)

    def forget(self, sd_uuid: str) -> None:
        """No monitor watches the domain any more: nothing is known of it."""
        with self._lock:
            self._probes.pop(sd_uuid, None)

    def refusal(self, sd_uuid: str) -> str | None:
        """Why the domain must not be touched now, or None."""
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

    def _overdue(self, probe: _Probe) -> float | None:
        if probe.started is None:
            return None
        waited = time.monotonic() - probe.started
        return waited if waited > self.probe_timeout else None
