"""The adaptive copy rate: a live copy (the mirror of a replication) yields to the guests' I/O.

A copy at full speed takes most of a shared disk: measured on one disk, a guest writing as
fast as it can kept 0.15-0.22 of its throughput during a move. A fixed cap gives the guests
their share back but makes every move slower, idle guests or not, and asks operators for a
number per host. So the copy's watcher asks a :class:`CopyGovernor` for the copy's rate at
every look (every ``LOOK_EVERY`` seconds), telling it what the guests did since the last
look: libvirt's block statistics of every drive of every VM on this host (operations, bytes,
and the time QEMU saw them take), summed, as :class:`GuestIo`.

The rule is a latency-based additive-increase, multiplicative-decrease, as TCP Vegas does for
a network path:

- guests idle (fewer than ``IDLE_OPS_PER_S`` operations a second): full speed, that is the
  operator's cap when one is set, else none;
- guests busy: their mean time per operation, against the lowest seen while they were busy
  (the baseline: what the disk gives them when the copy bothers them least). Above
  ``TOLERANCE`` × baseline the rate is cut to ``BACKOFF`` of what the copy did; at or below it
  the rate grows by ``STEP``. The first busy look starts from ``FLOOR``, so the baseline is
  measured with the copy at its least intrusive;
- never below ``FLOOR``: every copy finishes, and in auto mode the mirror's switch to
  synchronous writes still guarantees it converges; never above the operator's cap.

A guest whose operations take at most 1.3 × as long keeps at least 1/1.3 ≈ 0.77 of the
throughput it had (one request at a time: throughput is the inverse of latency), which is the
share a guest writing unpaced is promised; a guest paced below what the disk can do sees no
latency rise, so the copy climbs to what the disk has left. Each decision says why the copy is
held back, for getVmStats and moveDisk's progress.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024**2

# Seconds between two looks at the guests' I/O (the watchers of the mirror and the merge).
LOOK_EVERY = 0.5

# Bytes/s a copy is never held below: every copy progresses, whatever the guests do.
FLOOR = 8 * MiB
# Bytes/s added at each look while the guests' latency stays within TOLERANCE.
STEP = 16 * MiB
# Share of its measured rate a copy keeps when the guests' latency rose beyond TOLERANCE.
BACKOFF = 0.6
# How much longer than the baseline the guests' operations may take before the copy yields.
TOLERANCE = 1.3
# Operations per second below which the guests count as idle.
IDLE_OPS_PER_S = 20.0
# The baseline is the lowest latency of this many recent busy looks (it follows a disk whose
# speed changes, and forgets a lucky sample).
BASELINE_LOOKS = 40


@dataclass(frozen=True)
class GuestIo:
    """The guests' I/O counters, summed over every drive (libvirt's blockStatsFlags)."""

    ops: int
    nbytes: int
    busy_ns: int  # time QEMU saw the operations take, summed

    def since(self, earlier: GuestIo) -> GuestIo:
        # A VM that stopped or started between two looks makes a sum shrink: count nothing.
        return GuestIo(
            max(0, self.ops - earlier.ops),
            max(0, self.nbytes - earlier.nbytes),
            max(0, self.busy_ns - earlier.busy_ns),
        )


@dataclass(frozen=True)
class Decision:
    """The rate a copy gets now, and why it is held back ("" when it is not)."""

    rate: int  # bytes/s; 0: no limit
    held_back: str


class CopyGovernor:
    """Decides a live copy's rate at each look; one per copy, not thread-safe."""

    def __init__(self, cap: int = 0) -> None:
        """``cap``: the operator's limit in bytes/s (0: none), never exceeded."""
        if cap < 0:
            raise ValueError("cap must be 0 (none) or a rate in bytes/s")
        self.cap = cap
        self._last: GuestIo | None = None
        self._rate = 0  # the rate decided last (0: full speed)
        self._recent: list[float] = []  # latencies (s) of the recent busy looks

    @property
    def full_speed(self) -> int:
        return self.cap

    def decide(self, guests: GuestIo, seconds: float, copied: int) -> Decision:
        """The rate for the next interval, given the guests' counters now, the seconds since
        the last look and the bytes the copy moved meanwhile."""
        last, self._last = self._last, guests
        if last is None or seconds <= 0:
            return self._full("")
        delta = guests.since(last)
        if delta.ops / seconds < IDLE_OPS_PER_S:
            return self._full("")
        latency = delta.busy_ns / 1e9 / delta.ops
        self._recent = [*self._recent[-(BASELINE_LOOKS - 1) :], latency]
        baseline = min(self._recent)
        copy_rate = copied / seconds
        if self._rate == 0:
            rate = FLOOR  # the first busy look: measure the baseline with the copy quiet
        elif latency > TOLERANCE * baseline:
            rate = int(min(self._rate, copy_rate) * BACKOFF)
        else:
            rate = self._rate + STEP
        rate = max(FLOOR, rate)
        if self.cap:
            rate = min(rate, self.cap)
        self._rate = rate
        why = (
            f"guests busy ({delta.ops / seconds:.0f} op/s, {latency * 1e3:.1f} ms per op "
            f"against {baseline * 1e3:.1f} ms)"
        )
        return Decision(rate, why)

    def _full(self, why: str) -> Decision:
        self._rate = 0
        return Decision(self.full_speed, why)
