"""The adaptive copy rate: a copy (the mirror of a replication, a live merge, the offline copy
of syncImageData and of the offline moves) yields to the guests' I/O.

A copy at full speed takes most of a shared disk: measured on one disk, a guest writing as
fast as it can kept 0.15-0.22 of its throughput during a move. A fixed cap gives the guests
their share back but makes every move slower, idle guests or not, and asks operators for a
number per host. So the copy's watcher asks a :class:`CopyGovernor` for the copy's rate at
every look (every ``LOOK_EVERY`` seconds), telling it what the guests did since the last
look: libvirt's block statistics of every drive of every VM on this host (operations, bytes,
and the time QEMU saw them take), summed, as :class:`GuestIo`.

The rule is TCP's congestion control turned to a disk: slow start, then additive increase,
multiplicative decrease, with the guests' suffering as the congestion signal:

- guests idle (fewer than ``IDLE_OPS_PER_S`` operations a second): full speed, that is the
  operator's cap when one is set, else none;
- guests busy: two figures per look, their mean time per operation and their operations per
  second, each against its best of the recent looks (``BASELINE_LOOKS``): the lowest latency
  (what the disk gives them when the copy bothers them least) and the highest rate (what
  they ask for). They are hurt when their rate fell below ``SHARE`` × its best, whatever
  their latency: on a small host the copy takes CPU as well as the disk, and a guest then
  does fewer operations without any taking longer (measured on 2 cores: a guest writing as
  fast as it could went from 1820 to 1400 op/s at 0.4 ms per op throughout). They are hurt
  too when both went wrong a little: latency above ``TOLERANCE`` × its best *and* rate below
  ``KEEP`` × its best. A guest paced below what the disk can do sees its operations take
  longer but keeps its pace: not hurt, the copy may take what the disk has left. A guest
  that slows down by itself looks hurt until its old best leaves the recent looks: the copy
  yields for that long, the price of never mistaking a starved guest for a calm one;
- the first busy look starts the copy at ``FLOOR``, so both best figures are measured with
  the copy at its least intrusive; while the guests are not hurt the rate doubles at each
  look (slow start) until they first are, and grows by ``STEP`` after that; when they are
  hurt it is cut to ``BACKOFF`` of what the copy did;
- never below ``FLOOR``: every copy finishes, and in auto mode the mirror's switch to
  synchronous writes still guarantees it converges; never above the operator's cap.

So a guest writing as fast as it can keeps at least ``SHARE`` of what it does beside the copy
at its quietest (which on one disk includes the mirror of its own writes), around 0.75 of
its throughput with no copy at all, above the 0.7 it is promised; a paced guest keeps its
pace, above the 0.9 it is promised. Each decision says why the
copy is held back, for getVmStats, the task's status and moveDisk's progress.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024**2

# Seconds between two looks at the guests' I/O (the watchers of the mirror and the merge).
LOOK_EVERY = 0.5
# Seconds from a copy's start to its first look, when it can: a copy that starts at full speed
# while the guests are busy hurts them until that look.
FIRST_LOOK = 0.1

# Bytes/s a copy is never held below: every copy progresses, whatever the guests do.
FLOOR = 8 * MiB
# Bytes/s added at each look while the guests are not hurt, once they have been.
STEP = 16 * MiB
# Until the guests are first hurt, the rate is multiplied by this at each look (slow start):
# from the floor to 512 MiB/s in six looks.
GROWTH = 2
# Share of its measured rate a copy keeps when the guests' latency rose beyond TOLERANCE.
BACKOFF = 0.6
# How much longer than their best the guests' operations may take before the copy yields.
TOLERANCE = 1.3
# The share of their best rate of operations below which guests whose latency also rose are
# hurt.
KEEP = 0.93
# The share of their best rate of operations below which the guests are hurt, latency or not.
SHARE = 0.9
# Operations per second below which the guests count as idle: an idle Linux guest's own
# housekeeping (journal commits, atime) stays well below it, while the slowest guest that
# really writes (a TCG guest writing 4 KiB blocks as fast as it can: 20-30 op/s) is above it.
IDLE_OPS_PER_S = 10.0
# The best figures are those of this many recent busy looks (they follow a disk whose speed
# changes, forget a lucky sample, and a guest that slowed down by itself within 10 s).
BASELINE_LOOKS = 20
# Looks shorter than this give no best figure (the first look, FIRST_LOOK after the start, is
# too short: a tenth of a second of a guest's operations is a noisy sample, and a lucky one
# would be the best rate for BASELINE_LOOKS looks); they still tell idle from busy.
MIN_BASELINE_LOOK = LOOK_EVERY / 2


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
        self._decided = False  # whether it ever decided (looked twice)
        self.began_at: float | None = None  # time.monotonic() of the first begin, if given
        self._rate = 0  # the rate decided last (0: full speed)
        self._why = ""  # why, when it holds the copy back
        self._growing = True  # slow start: until the guests are first hurt
        self._recent: list[tuple[float, float]] = []  # (latency s, op/s) of recent busy looks

    @property
    def full_speed(self) -> int:
        return self.cap

    @property
    def fresh(self) -> bool:
        """Whether it never decided yet: it knows nothing of the guests."""
        return not self._decided

    def begin(self, guests: GuestIo, at: float | None = None) -> Decision:
        """A copy starts: keep the guests' counters for its first look, and return the rate
        to start it at. That is the rate decided last (a governor that held one volume's
        copy back holds the next one back too) or full speed for a new governor. ``at``:
        when the counters were read (time.monotonic()), kept as ``began_at`` by the first
        begin, so that a caller can time its first look from there."""
        if self.began_at is None:
            self.began_at = at
        self._last = guests
        return Decision(self._rate, self._why) if self._rate else Decision(self.full_speed, "")

    def decide(self, guests: GuestIo, seconds: float, copied: int) -> Decision:
        """The rate for the next interval, given the guests' counters now, the seconds since
        the last look and the bytes the copy moved meanwhile."""
        last, self._last = self._last, guests
        self._decided = True
        if last is None or seconds <= 0:
            return self._full("")
        delta = guests.since(last)
        if delta.ops / seconds < IDLE_OPS_PER_S:
            return self._full("")
        latency, op_rate = delta.busy_ns / 1e9 / delta.ops, delta.ops / seconds
        if seconds >= MIN_BASELINE_LOOK:
            self._recent = [*self._recent[-(BASELINE_LOOKS - 1) :], (latency, op_rate)]
        recent = self._recent or [(latency, op_rate)]
        best_latency = min(x[0] for x in recent)
        best_rate = max(x[1] for x in recent)
        hurt = op_rate < SHARE * best_rate or (
            latency > TOLERANCE * best_latency and op_rate < KEEP * best_rate
        )
        copy_rate = copied / seconds
        if self._rate == 0:
            rate = FLOOR  # the first busy look: measure the best figures with the copy quiet
            self._growing = True
        elif hurt:
            rate = int(min(self._rate, copy_rate) * BACKOFF)
            self._growing = False
        else:
            grown = self._rate * GROWTH if self._growing else self._rate + STEP
            # Not beyond twice what the copy did: a rate it cannot use yet says nothing.
            rate = max(self._rate, min(grown, int(GROWTH * copy_rate)))
        rate = max(FLOOR, rate)
        if self.cap:
            rate = min(rate, self.cap)
        self._rate = rate
        # At the operator's cap the copy is not held back: it goes as fast as it may.
        self._why = (
            ""
            if rate == self.cap
            else (
                f"guests busy ({op_rate:.0f} op/s of their best {best_rate:.0f}, "
                f"{latency * 1e3:.1f} ms per op against {best_latency * 1e3:.1f} ms)"
            )
        )
        return Decision(rate, self._why)

    def _full(self, why: str) -> Decision:
        self._rate, self._why = 0, ""
        return Decision(self.full_speed, why)
