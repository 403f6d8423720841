"""The bench's own vdsmd, started on a free port with its state under the bench's work dir,
and its clients.

The start, readiness and stop logic is vdsm_guest.local_vdsmd's, shared with the functional
tests; the bench needs neither pytest nor the test tree. It keeps LocalVdsmd's default log
level, INFO, not the tests' DEBUG: enough for what the bench reads in the log (the
convergence measure's switch to synchronous writes is a warning), without a debug log
growing through every measurement.

The bench talks to it through vdsClient's API (:class:`vdsm_cli.api.Vdsm`), exactly what an
engine sends, polling tasks and block jobs every ``POLL`` seconds (20 ms, so that the polling
itself adds little to the step times the bench reports) and giving a task ``TASK_TIMEOUT``.
"""

from __future__ import annotations

from pathlib import Path

from vdsm_cli.api import Vdsm
from vdsm_guest.local_vdsmd import LocalVdsmd

REPO = Path(__file__).resolve().parents[1]
POLL = 0.02  # seconds between two polls of a task or a block job
TASK_TIMEOUT = 600.0  # seconds a task of the bench may take


class Vdsmd(LocalVdsmd):
    """One vdsmd process, ``Vdsmd(root, extra_args, env)``; ``start()`` then ``stop()``."""

    def client(self) -> Vdsm:
        """A new client (one per thread: a client keeps one HTTP connection)."""
        return self.api(interval=POLL)
