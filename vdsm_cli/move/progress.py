"""What a disk move tells its user while it runs, and at the end.

The flow reports events (a step starts, bytes were copied, a step ends, a note, the summary,
the result); this module measures rates and ETAs and shows them three ways:

- on a terminal: a line per step, and one progress line redrawn in place while data moves;
- on anything else: the same step lines, and a progress line at most every ``PLAIN_EVERY`` s;
- with ``--json``: one JSON object a line, ``{"event": ...}``, for a program to follow.

When a move uses several hosts (the SPM and the VM's host apart, or an SPM that moved), each step
line says which host does it (the JSON ``step`` event always does: ``role`` and ``host``).

Bytes are what has to move — allocated data, as the sync task and the mirror job count it —
never the virtual size. The step's ETA comes from its own recent rate; the overall ETA adds the
data the remaining steps are expected to move, at the best rate known so far.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from vdsm_cli.output import terminal_safe
from vdsm_cli.progress import Meter, human_bytes, human_duration

PLAIN_EVERY = 5.0  # seconds between two plain progress lines of one step


def rate_text(rate: float | None) -> str:
    return "?" if not rate else f"{human_bytes(rate)}/s"


class Reporter:
    """Turns the flow's events into output. ``steps`` is the plan, in order; ``expected`` the
    bytes each data step should move (to estimate the overall ETA)."""

    def __init__(
        self,
        out: TextIO,
        *,
        json_lines: bool,
        live: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.json_lines = json_lines
        self.live = live and not json_lines
        self.clock = clock
        self.steps: list[str] = []
        self.undo_steps: list[str] = []
        self.expected: dict[str, int] = {}
        self._step = ""
        self._meter = Meter()
        self._last_rate: float | None = None
        self._drawn = False
        self._last_plain = 0.0
        self._last_done = -1
        self._hosts: set[str] = set()  # the hosts the move has used: named when several

    # --- events -----------------------------------------------------------------------------

    def start(
        self,
        header: dict[str, Any],
        steps: list[str],
        expected: dict[str, int],
        undo_steps: list[str],
    ) -> None:
        self.steps, self.expected, self.undo_steps = list(steps), dict(expected), undo_steps
        self._hosts = {str(h) for h in (header.get("spmAddress"), header.get("vmAddress")) if h}
        if self.json_lines:
            shown = {k: v for k, v in header.items() if k != "hostLines"}  # text only
            self._json({"event": "start", **shown, "steps": steps})
        else:
            self._line(str(header.get("title", "")))
            for line in header.get("hostLines") or ():
                self._line(str(line))

    def step(
        self, step: str, title: str, direction: str, where: tuple[str, str] | None = None
    ) -> None:
        """A step starts; ``where``: (role, address) of the host that does it."""
        self._clear()
        self._step = step
        self._meter = Meter()
        self._last_done = -1
        if where is not None:
            self._hosts.add(where[1])  # an SPM that moved to a third host, say
        index, count = self._position(step)
        if self.json_lines:
            self._json(
                {
                    "event": "step",
                    "step": step,
                    "index": index,
                    "count": count,
                    "direction": direction,
                    "title": title,
                    **({"role": where[0], "host": where[1]} if where else {}),
                }
            )
        else:
            undo = "undo " if step in self.undo_steps else ""
            position = f"[{undo}{index}/{count}] " if index else ""
            on = f" on the {where[0]} {where[1]}" if where and len(self._hosts) > 1 else ""
            self._line(f"{position}{step}: {title}{on}")

    def progress(self, done: int, total: int, held_back: str = "") -> None:
        """``held_back``: why vdsmd holds the copy back now (its adaptive rate), "" if not."""
        now = self.clock()
        self._meter.add(now, done)
        rate = self._meter.rate()
        if rate:
            self._last_rate = rate if self._last_rate is None else max(rate, self._last_rate)
        step_eta = self._meter.eta(total)
        eta = self._overall_eta(done, total)
        if self.json_lines:
            self._json(
                {
                    "event": "progress",
                    "step": self._step,
                    "bytesDone": done,
                    "bytesTotal": total,
                    "rate": round(rate, 1) if rate else None,
                    "stepEta": round(step_eta, 1) if step_eta is not None else None,
                    "eta": round(eta, 1) if eta is not None else None,
                    "heldBack": held_back or None,
                }
            )
            return
        percent = 100 * done // total if total else 0
        parts = [
            f"  {self._step} {percent:3d}%",
            f"{human_bytes(done)} / {human_bytes(total)}",
            rate_text(rate),
        ]
        if step_eta is not None:
            parts.append(f"ETA {human_duration(step_eta)}")
        if eta is not None:
            parts.append(f"(all {human_duration(eta)})")
        if held_back:
            parts.append(f"held back: {held_back}")
        text = "  ".join(parts)
        if self.live:
            text = terminal_safe(text)
            self.out.write("\r" + text + "\x1b[K")
            self.out.flush()
            self._drawn = True
        elif done != self._last_done and (now - self._last_plain >= PLAIN_EVERY or done >= total):
            self._last_plain, self._last_done = now, done
            self._line(text)

    def step_done(self, step: str, seconds: float, copied: int | None) -> None:
        self._clear()
        if self.json_lines:
            event: dict[str, Any] = {"event": "stepDone", "step": step}
            event["seconds"] = round(seconds, 3)
            if copied is not None:
                event["bytes"] = copied
            self._json(event)
            return
        extra = ""
        if copied is not None:
            extra = f", {human_bytes(copied)}"
            if seconds > 0 and copied:
                extra += f", {rate_text(copied / seconds)}"
        self._line(f"  {step} done in {_seconds(seconds)}{extra}")

    def note(self, message: str) -> None:
        self._clear()
        if self.json_lines:
            self._json({"event": "note", "message": message})
        else:
            self._line(f"  note: {message}")

    def summary(self, summary: dict[str, Any]) -> None:
        self._clear()
        if self.json_lines:
            self._json({"event": "summary", **summary})
            return
        data = summary["dataBytes"]
        how = (
            "by moveImage: the VM was Down"
            if summary.get("mode") == "offline"
            else f"sync {human_bytes(summary['syncBytes'])}, mirror "
            f"{human_bytes(summary['mirrorBytes'])}"
        )
        lines = [
            f"moved in {human_duration(summary['totalSeconds'])}"
            f" ({_seconds(summary['totalSeconds'])})",
            f"  data moved:    {human_bytes(data)} (allocated data: {how})",
            f"  average rate:  {rate_text(summary['averageRate'])} over the copy "
            f"({_seconds(summary['copySeconds'])})",
        ]
        if summary.get("pivotSeconds") is not None:
            lines.append(f"  time in pivot: {_seconds(summary['pivotSeconds'])}")
        if summary.get("mergeBytes") is not None:
            lines.append(f"  merge:         {human_bytes(summary['mergeBytes'])} committed")
        self._line("\n".join(lines))

    def result(self, exit_code: int, message: str) -> None:
        """The outcome. Without --json only success is printed here: vdsClient's main prints
        an error (to stderr) with its exit code."""
        self._clear()
        if self.json_lines:
            self._json({"event": "result", "exitCode": exit_code, "message": message})
        elif exit_code == 0:
            self._line(message)

    def close(self) -> None:
        self._clear()

    # --- helpers ----------------------------------------------------------------------------

    def _position(self, step: str) -> tuple[int, int]:
        for steps in (self.steps, self.undo_steps):
            if step in steps:
                return steps.index(step) + 1, len(steps)
        return 0, len(self.steps)

    def _overall_eta(self, done: int, total: int) -> float | None:
        rate = self._meter.rate() or self._last_rate
        if not rate:
            return None
        later = 0
        if self._step in self.steps:
            later = sum(
                self.expected.get(s, 0) for s in self.steps[self.steps.index(self._step) + 1 :]
            )
        return max(0.0, (total - done + later) / rate)

    def _clear(self) -> None:
        if self._drawn:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._drawn = False

    def _line(self, text: str) -> None:
        if text:
            self.out.write(terminal_safe(text, newlines=True) + "\n")
            self.out.flush()

    def _json(self, event: dict[str, Any]) -> None:
        self.out.write(json.dumps(event, sort_keys=True) + "\n")
        self.out.flush()


def _seconds(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
