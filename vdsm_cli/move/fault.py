"""TEST ONLY: the fault hook, which crashes or freezes the client at a named point of a move.

The functional tests run the real vdsClient as a subprocess and name the points in its
environment: after the journal records the point, the client SIGKILLs (``STOP_AT``) or
SIGSTOPs (``PAUSE_AT``) itself, so a test can crash it, or crash vdsmd under it, at an exact
step. A point is a step name (the step is persisted, not yet run) or ``STEP+`` (its action
was issued, e.g. a task submitted). Without those variables there is no hook at all
(:func:`from_environment` is None) and a move never calls one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping

TEST_STOP_AT = "VDSM_MOVE_TEST_STOP_AT"
TEST_PAUSE_AT = "VDSM_MOVE_TEST_PAUSE_AT"

Fault = Callable[[str], None]


class Hook:
    """Kill or stop this process at the named points; a pause point freezes it once per run
    (a step re-entered after a Ctrl-C, finishing after the pivot, goes on)."""

    def __init__(self, stop_at: set[str], pause_at: set[str]) -> None:
        self.stop_at = stop_at
        self.pause_at = pause_at
        self._paused: set[str] = set()

    def __call__(self, point: str) -> None:
        if point in self.stop_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if point in self.pause_at and point not in self._paused:
            self._paused.add(point)
            os.kill(os.getpid(), signal.SIGSTOP)


def from_environment(environ: Mapping[str, str] = os.environ) -> Fault | None:
    """The hook the test asked for in ``environ``, or None (always, outside the tests)."""
    stop_at, pause_at = _points(environ, TEST_STOP_AT), _points(environ, TEST_PAUSE_AT)
    if not stop_at and not pause_at:
        return None
    return Hook(stop_at, pause_at)


def _points(environ: Mapping[str, str], variable: str) -> set[str]:
    return {p.strip() for p in environ.get(variable, "").split(",") if p.strip()}
