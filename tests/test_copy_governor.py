"""The adaptive copy rate's rule (vdsm/copy_governor.py), look by look.

The governor is arithmetic over counters: fed the guests' I/O counters a real libvirt would
report (tests/functional/test_copy_rate_limit.py runs it under a real guest's writes), it
must hold the copy back when the guests are hurt (they do markedly fewer operations, or
their operations take longer *and* they do fewer), let it climb while they are not (a paced
guest whose operations merely take longer), go to full speed when they stop, never go below
the floor nor above the cap.
"""

from __future__ import annotations

from vdsm.copy_governor import (
    BACKOFF,
    BASELINE_LOOKS,
    FIRST_LOOK,
    FLOOR,
    GROWTH,
    SHARE,
    STEP,
    CopyGovernor,
    GuestIo,
)

MiB = 1024**2
LOOK = 0.5  # seconds between two looks (the replication monitor's interval)


class Guests:
    """Counters that grow as guests doing ``ops_per_s`` operations of ``latency_ms`` would."""

    def __init__(self) -> None:
        self.io = GuestIo(0, 0, 0)

    def run(self, ops_per_s: float, latency_ms: float, seconds: float = LOOK) -> GuestIo:
        ops = int(ops_per_s * seconds)
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


def test_busy_guests_start_the_copy_at_the_floor_then_it_doubles_while_they_keep_up() -> None:
    governor, guests = CopyGovernor(), Guests()
    governor.decide(guests.run(0, 0), LOOK, 0)  # the first look only takes the counters
    first = governor.decide(guests.run(200, 1.0), LOOK, 50 * MiB)
    assert first.rate == FLOOR
    assert "guests busy" in first.held_back and "1.0 ms per op" in first.held_back
    rates = [governor.decide(guests.run(200, 1.1), LOOK, 500 * MiB).rate for _ in range(4)]
    assert rates == [FLOOR * GROWTH**n for n in range(1, 5)]


def test_the_rate_grows_to_no_more_than_twice_what_the_copy_did() -> None:
    governor, guests = CopyGovernor(), Guests()
    governor.decide(guests.run(0, 0), LOOK, 0)
    governor.decide(guests.run(200, 1.0), LOOK, 0)  # at the floor
    slow = int(1.5 * FLOOR * LOOK)  # the copy moved 1.5 x floor a second: more is no use yet
    assert governor.decide(guests.run(200, 1.0), LOOK, slow).rate == FLOOR * GROWTH
    assert governor.decide(guests.run(200, 1.0), LOOK, slow).rate == int(GROWTH * 1.5 * FLOOR)
    assert governor.decide(guests.run(200, 1.0), LOOK, slow).rate == int(GROWTH * 1.5 * FLOOR)
    # ... and a look where it did less never lowers a rate the guests are fine with.
    assert governor.decide(guests.run(200, 1.0), LOOK, 0).rate == int(GROWTH * 1.5 * FLOOR)


def test_a_paced_guest_whose_operations_take_longer_does_not_hold_the_copy_back() -> None:
    """Its rate of operations is what it asks for: longer operations do not hurt it."""
    governor, guests = CopyGovernor(), Guests()
    governor.decide(guests.run(0, 0), LOOK, 0)
    governor.decide(guests.run(500, 0.3), LOOK, 0)  # 500 op/s of 0.3 ms, at the floor
    rates = [governor.decide(guests.run(500, 1.5), LOOK, 500 * MiB).rate for _ in range(3)]
    assert rates == [FLOOR * GROWTH**n for n in range(1, 4)]


def test_hurt_guests_cut_the_copy_then_it_grows_by_steps_never_below_the_floor() -> None:
    """Unpaced guests: as each operation takes longer they do fewer (their rate is the inverse
    of their latency), which is what hurt means."""
    governor, guests = CopyGovernor(), Guests()
    governor.decide(guests.run(0, 0), LOOK, 0)
    governor.decide(guests.run(1000, 1.0), LOOK, 0)  # best: 1 ms, 1000 op/s, at the floor
    for _ in range(5):
        climbing = governor.decide(guests.run(1000, 1.0), LOOK, 500 * MiB)
    assert climbing.rate == FLOOR * GROWTH**5
    cut = governor.decide(guests.run(500, 2.0), LOOK, int(climbing.rate * LOOK))
    assert cut.rate == int(climbing.rate * BACKOFF)
    assert "500 op/s of their best 1000, 2.0 ms per op against 1.0 ms" in cut.held_back
    after = governor.decide(guests.run(1000, 1.0), LOOK, int(cut.rate * LOOK))
    assert after.rate == cut.rate + STEP  # no slow start once they have been hurt
    for _ in range(12):
        after = governor.decide(guests.run(330, 3.0), LOOK, int(after.rate * LOOK))
    assert after.rate == FLOOR


def test_guests_doing_fewer_operations_are_hurt_even_when_none_takes_longer() -> None:
    """On a small host the copy takes the guests' CPU: they do fewer operations, each as fast
    as before. Losing a little (above SHARE) is not hurt; losing more is."""
    governor, guests = CopyGovernor(), Guests()
    governor.decide(guests.run(0, 0), LOOK, 0)
    governor.decide(guests.run(1000, 1.0), LOOK, 0)  # at the floor: best 1000 op/s
    assert 850 < SHARE * 1000 < 950
    climbing = governor.decide(guests.run(950, 1.0), LOOK, 500 * MiB)
    assert climbing.rate == FLOOR * GROWTH
    cut = governor.decide(guests.run(850, 1.0), LOOK, 500 * MiB)
    assert cut.rate == int(climbing.rate * BACKOFF)
    assert "850 op/s of their best 1000, 1.0 ms per op against 1.0 ms" in cut.held_back


def test_guests_slowing_down_by_themselves_get_the_copy_back_once_their_old_best_is_forgotten() -> (
    None
):
    governor, guests = CopyGovernor(), Guests()
    governor.decide(guests.run(0, 0), LOOK, 0)
    governor.decide(guests.run(1000, 1.0), LOOK, 0)
    rates = [
        governor.decide(guests.run(300, 1.0), LOOK, int(FLOOR * LOOK)).rate
        for _ in range(BASELINE_LOOKS)
    ]
    assert set(rates[:-1]) == {FLOOR}  # held back while 1000 op/s is among the recent looks
    assert rates[-1] > FLOOR  # 300 op/s is what they do now: the copy climbs again


def test_a_short_first_look_is_not_taken_for_the_guests_best() -> None:
    """The first look comes FIRST_LOOK after the start: too few operations to be a guest's
    best rate, which the next looks would all be measured against."""
    governor, guests = CopyGovernor(), Guests()
    governor.begin(guests.io)
    lucky = governor.decide(guests.run(2000, 0.4, FIRST_LOOK), FIRST_LOOK, 0)
    assert lucky.rate == FLOOR  # busy: it still tells busy from idle
    rates = [governor.decide(guests.run(1600, 0.4), LOOK, 500 * MiB).rate for _ in range(3)]
    assert rates == [FLOOR * GROWTH**n for n in range(1, 4)]


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


def test_the_next_copy_begins_where_the_last_one_was_held() -> None:
    """One governor for a task's copies: the next volume starts at the rate decided last
    (not at full speed, which would hurt busy guests until its first look)."""
    governor, guests = CopyGovernor(cap=200 * MiB), Guests()
    assert governor.begin(guests.run(0, 0)) == governor.begin(guests.io)
    assert governor.begin(guests.io).rate == 200 * MiB  # new: full speed, nothing held back
    governor.decide(guests.run(100, 1.0), LOOK, 0)
    held = governor.decide(guests.run(100, 1.0), LOOK, 4 * MiB)
    assert held.rate < 200 * MiB and held.held_back
    assert governor.begin(guests.run(100, 1.0)) == held
    # ... and the begin's counters are what its first look compares with.
    assert governor.decide(guests.run(1, 1.0), LOOK, 0).held_back == ""
