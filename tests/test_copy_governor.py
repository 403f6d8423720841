"""The adaptive copy rate's rule (vdsm/virt/copy_governor.py), look by look.

The governor is arithmetic over counters: fed the guests' I/O counters a real libvirt would
report (tests/functional/test_copy_rate_limit.py runs it under a real guest's writes), it
must hold the copy back when the guests' operations slow down, let it climb while they do
not, go to full speed when they stop, never go below the floor nor above the operator's cap.
"""

from __future__ import annotations

from vdsm.virt.copy_governor import BACKOFF, FLOOR, STEP, CopyGovernor, GuestIo

MiB = 1024**2
LOOK = 0.5  # seconds between two looks (the replication monitor's interval)


class Guests:
    """Counters that grow as guests doing ``ops_per_s`` operations of ``latency_ms`` would."""

    def __init__(self) -> None:
        self.io = GuestIo(0, 0, 0)

    def run(self, ops_per_s: float, latency_ms: float) -> GuestIo:
        ops = int(ops_per_s * LOOK)
        self.io = GuestIo(
            self.io.ops + ops,
            self.io.nbytes + ops * 65536,
            self.io.busy_ns + int(ops * latency_ms * 1e6),
        )
        return self.io


def test_idle_guests_leave_the_copy_at_full_speed() -> None:
    governor, guests = CopyGovernor(), Guests()
    for _ in range(5):
        decision = governor.decide(guests.run(2, 1.0), LOOK, 100 * MiB)
        assert (decision.rate, decision.held_back) == (0, "")


def test_busy_guests_start_the_copy_at_the_floor_then_it_climbs_while_they_keep_up() -> None:
    governor, guests = CopyGovernor(), Guests()
    governor.decide(guests.run(0, 0), LOOK, 0)  # the first look only takes the counters
    first = governor.decide(guests.run(200, 1.0), LOOK, 50 * MiB)
    assert first.rate == FLOOR
    assert "guests busy" in first.held_back and "1.0 ms per op" in first.held_back
    rates = [governor.decide(guests.run(200, 1.1), LOOK, 50 * MiB).rate for _ in range(4)]
    assert rates == [FLOOR + STEP * n for n in range(1, 5)]


def test_guests_slowing_down_cut_the_copy_never_below_the_floor() -> None:
    governor, guests = CopyGovernor(), Guests()
    governor.decide(guests.run(0, 0), LOOK, 0)
    governor.decide(guests.run(200, 1.0), LOOK, 0)  # baseline 1 ms, at the floor
    for _ in range(5):
        climbing = governor.decide(guests.run(200, 1.0), LOOK, 200 * MiB)
    assert climbing.rate == FLOOR + 5 * STEP
    cut = governor.decide(guests.run(200, 2.0), LOOK, int(climbing.rate * LOOK))
    assert cut.rate == int(climbing.rate * BACKOFF)
    assert "2.0 ms per op against 1.0 ms" in cut.held_back
    for _ in range(10):
        cut = governor.decide(guests.run(200, 3.0), LOOK, int(cut.rate * LOOK))
    assert cut.rate == FLOOR


def test_guests_going_idle_give_the_copy_full_speed_back() -> None:
    governor, guests = CopyGovernor(), Guests()
    governor.decide(guests.run(0, 0), LOOK, 0)
    assert governor.decide(guests.run(300, 1.0), LOOK, 0).rate == FLOOR
    back = governor.decide(guests.run(0, 0), LOOK, int(FLOOR * LOOK))
    assert (back.rate, back.held_back) == (0, "")


def test_the_operators_cap_is_never_exceeded() -> None:
    cap = 20 * MiB
    governor, guests = CopyGovernor(cap=cap), Guests()
    rates = [governor.decide(guests.run(0, 0), LOOK, 0).rate]
    rates += [governor.decide(guests.run(200, 1.0), LOOK, cap).rate for _ in range(10)]
    rates += [governor.decide(guests.run(0, 0), LOOK, cap).rate for _ in range(3)]
    assert max(rates) == cap and all(0 < rate <= cap for rate in rates), rates


def test_a_vm_that_went_away_between_two_looks_counts_nothing() -> None:
    governor = CopyGovernor()
    governor.decide(GuestIo(10_000, 10**9, 10**10), LOOK, 0)
    decision = governor.decide(GuestIo(5, 4096, 1000), LOOK, 0)  # the sums shrank
    assert (decision.rate, decision.held_back) == (0, "")
