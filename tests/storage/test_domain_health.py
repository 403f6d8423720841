"""DomainHealth: when a touch of a domain probes it first, and one probe serves every caller.

The probe here is a stand-in callable that reports through the health object as the domain
monitor's ``dd`` probe does (tests/functional/test_storage_faults.py runs the real one on a
hung mount); what is checked is the bookkeeping: a stale answer makes the next touch probe, a
fresh one does not, a failed or late probe refuses with 379 naming the domain, and callers
that come while a probe runs wait for it instead of starting their own.
"""

from __future__ import annotations

import threading
import time

import pytest

from vdsm.errors import StorageDomainAccessError
from vdsm.storage.domain_health import DomainHealth

SD = "11111111-2222-3333-4444-555555555555"


class CountingProbe:
    """Stand-in for the monitor's probe: answers (or fails) after ``takes`` seconds."""

    def __init__(self, health: DomainHealth, takes: float = 0.0, answers: bool = True) -> None:
        self.health, self.takes, self.answers = health, takes, answers
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls += 1
        self.health.probing(SD)
        time.sleep(self.takes)
        if self.answers:
            self.health.answered(SD)
            return
        self.health.failed(SD, "its storage did not answer a read within 2 s")
        raise StorageDomainAccessError(f"domain {SD} does not answer")


def test_a_domain_no_monitor_watches_is_never_probed_nor_refused() -> None:
    health = DomainHealth(probe_timeout=2)
    health.check(SD)
    assert health.refusal(SD) is None


def test_a_stale_answer_makes_the_next_touch_probe_and_a_fresh_one_does_not() -> None:
    health = DomainHealth(probe_timeout=2, fresh_for=0.3)
    probe = CountingProbe(health)
    health.watch(SD, probe)
    health.check(SD)  # never answered yet: probes
    health.check(SD)  # answered just now: vouched for
    assert probe.calls == 1
    time.sleep(0.35)
    health.check(SD)
    assert probe.calls == 2


def test_fresh_for_zero_probes_before_every_touch() -> None:
    health = DomainHealth(probe_timeout=2, fresh_for=0)
    probe = CountingProbe(health)
    health.watch(SD, probe)
    for _ in range(3):
        health.check(SD)
    assert probe.calls == 3


def test_a_failed_probe_refuses_the_touch_and_every_later_one_without_probing() -> None:
    health = DomainHealth(probe_timeout=2, fresh_for=0)
    probe = CountingProbe(health, answers=False)
    health.watch(SD, probe)
    with pytest.raises(StorageDomainAccessError) as first:
        health.check(SD)
    assert SD in first.value.message
    with pytest.raises(StorageDomainAccessError) as later:
        health.check(SD)
    assert "did not answer a read within 2 s" in later.value.message
    assert probe.calls == 1  # refused from what is known; only the monitor probes again
    probe.answers = True
    health.probe(SD)  # the monitor's next check: the storage answers again
    health.check(SD)
    assert health.refusal(SD) is None


def test_callers_that_come_while_a_probe_runs_share_its_outcome() -> None:
    health = DomainHealth(probe_timeout=2, fresh_for=1)
    probe = CountingProbe(health, takes=0.3)
    health.watch(SD, probe)
    errors: list[BaseException] = []

    def touch() -> None:
        try:
            health.check(SD)
        except BaseException as e:
            errors.append(e)

    callers = [threading.Thread(target=touch) for _ in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(5)
    assert errors == []
    assert probe.calls == 1


def test_a_probe_late_beyond_its_timeout_refuses_the_callers_waiting_for_it() -> None:
    health = DomainHealth(probe_timeout=0.2, fresh_for=0)
    hung = threading.Event()

    def never_answers() -> None:
        health.probing(SD)
        hung.wait(5)  # the storage stopped: the probe is stuck until the test ends
        health.answered(SD)

    health.watch(SD, never_answers)
    stuck = threading.Thread(target=health.probe, args=(SD,), daemon=True)
    stuck.start()
    time.sleep(0.3)  # the probe in flight is now late beyond the timeout
    started = time.monotonic()
    with pytest.raises(StorageDomainAccessError) as refused:
        health.check(SD)
    # Refused from what is known, not after waiting on the lock (2.2 s: timeout + slack).
    assert time.monotonic() - started < 1.5
    assert "has not answered for" in refused.value.message
    hung.set()
    stuck.join(5)
