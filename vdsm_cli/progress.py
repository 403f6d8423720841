"""waitTask's progress: a task's statuses as :meth:`vdsm_cli.api.Vdsm.wait_task` polls them.

Three displays, chosen by the caller: a live bar redrawn in place on a terminal (percent, bytes
done/total, rate in MiB/s, ETA), plain lines when the output is not a terminal (a line when the
state changes, and at most one every ``PLAIN_EVERY`` seconds while it progresses), or one JSON
taskStatus object a line. The rate is measured here, over the last ``RATE_WINDOW`` seconds of
bytesDone (or of the percentage when the task reports no byte counts).

Waiting never changes the task: on Ctrl-C or a timeout the task keeps running.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Protocol, TextIO

from vdsm_cli.api import FINISHED, Vdsm, task_percent
from vdsm_cli.output import terminal_safe

DEFAULT_INTERVAL = 0.5  # seconds between polls
PLAIN_EVERY = 5.0  # seconds between two plain progress lines of the same state
RATE_WINDOW = 10.0  # seconds of samples the rate is measured over
BAR_WIDTH = 30
MIB = 1024 * 1024


class Display(Protocol):
    def update(self, status: dict[str, Any], now: float) -> None: ...

    def close(self) -> None: ...


def watch(
    api: Vdsm,
    task_id: str,
    display: Display,
    *,
    timeout: float | None = None,
    interval: float = DEFAULT_INTERVAL,
) -> dict[str, Any]:
    """Wait for the task (api.wait_task), showing each status; its last status. The display
    is closed whatever happens (Ctrl-C included)."""
    try:
        return api.wait_task(
            task_id,
            timeout=timeout,
            interval=interval,
            on_progress=lambda status: display.update(status, api.clock()),
        )
    finally:
        display.close()


class Meter:
    """Rate and ETA from successive (time, amount done) samples."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, done: float) -> None:
        if self._samples and done < self._samples[-1][1]:
            self._samples.clear()  # a new phase (the next volume) restarted the count
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Units per second, or None before two samples at different times."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return (d1 - d0) / (t1 - t0)

    def eta(self, total: float) -> float | None:
        rate = self.rate()
        if not rate or rate <= 0 or not self._samples:
            return None
        return max(0.0, (total - self._samples[-1][1]) / rate)


def byte_counts(status: dict[str, Any]) -> tuple[int, int] | None:
    """(bytesDone, bytesTotal) when the task reports them (they travel as strings)."""
    try:
        done, total = int(status.get("bytesDone") or ""), int(status.get("bytesTotal") or "")
    except (TypeError, ValueError):
        return None
    return (done, total) if total > 0 else None


def describe(status: dict[str, Any], meter: Meter) -> str:
    """``45%  1.2 GiB / 2.0 GiB  85.3 MiB/s  ETA 0:12`` (the parts that are known)."""
    parts = [f"{task_percent(status):3d}%"]
    counts = byte_counts(status)
    eta: float | None
    if counts is not None:
        done, total = counts
        parts.append(f"{human_bytes(done)} / {human_bytes(total)}")
        rate = meter.rate()
        if rate is not None:
            parts.append(f"{rate / MIB:.1f} MiB/s")
        eta = meter.eta(total)
    else:
        eta = meter.eta(100)
    if eta is not None and status.get("taskState") != FINISHED:
        parts.append(f"ETA {human_duration(eta)}")
    return "  ".join(parts)


def _feed(meter: Meter, status: dict[str, Any], now: float) -> None:
    counts = byte_counts(status)
    meter.add(now, counts[0] if counts is not None else task_percent(status))


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _state(status: dict[str, Any]) -> str:
    state = str(status.get("taskState", "?"))
    result = status.get("taskResult")
    # The daemon's words, printed on a terminal: never a raw control character.
    return terminal_safe(f"{state} {result}" if result else state)


class LiveBar:
    """One line redrawn in place on a terminal."""

    def __init__(self, out: TextIO, task_id: str) -> None:
        self.out = out
        self.task_id = task_id
        self.meter = Meter()
        self._drawn = False

    def update(self, status: dict[str, Any], now: float) -> None:
        _feed(self.meter, status, now)
        filled = BAR_WIDTH * task_percent(status) // 100
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        line = f"[{bar}] {describe(status, self.meter)}  {_state(status)}"
        self.out.write("\r" + line + "\x1b[K")
        self.out.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False


class PlainLines:
    """A line per state change, and one every ``every`` seconds while the task progresses."""

    def __init__(self, out: TextIO, task_id: str, every: float = PLAIN_EVERY) -> None:
        self.out = out
        self.task_id = task_id
        self.every = every
        self.meter = Meter()
        self._last: tuple[str, int] | None = None
        self._last_time = 0.0

    def update(self, status: dict[str, Any], now: float) -> None:
        _feed(self.meter, status, now)
        key = (_state(status), task_percent(status))
        changed_state = self._last is None or key[0] != self._last[0]
        progressed = self._last is not None and key[1] != self._last[1]
        if changed_state or (progressed and now - self._last_time >= self.every):
            self.out.write(
                f"task {self.task_id}: {_state(status)} {describe(status, self.meter)}\n"
            )
            self.out.flush()
            self._last, self._last_time = key, now

    def close(self) -> None:
        pass


class JsonLines:
    """The taskStatus object, one JSON line each time it changes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last: dict[str, Any] | None = None

    def update(self, status: dict[str, Any], now: float) -> None:
        if status != self._last:
            self.out.write(json.dumps(status, sort_keys=True) + "\n")
            self.out.flush()
            self._last = status

    def close(self) -> None:
        pass
