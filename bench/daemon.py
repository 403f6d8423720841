"""The bench's own vdsmd: started on a free port with its state under the bench's work dir.

The start, readiness and stop logic is vdsm_guest.local_vdsmd's, shared with the functional
tests; the bench needs neither pytest nor the test tree. It keeps LocalVdsmd's default log
level, INFO, not the tests' DEBUG: enough for what the bench reads in the log (the
convergence measure's switch to synchronous writes is a warning), without a debug log
growing through every measurement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vdsm_guest.local_vdsmd import DaemonError, LocalVdsmd

__all__ = ["REPO", "DaemonError", "Vdsmd"]

REPO = Path(__file__).resolve().parents[1]


class Vdsmd(LocalVdsmd):
    """One vdsmd process, ``Vdsmd(root, extra_args, env)``; ``start()`` then ``stop()``."""

    def proxy(self) -> Any:
        """A new XML-RPC proxy (one per thread: a proxy keeps one HTTP connection)."""
        return self.xmlrpc()
