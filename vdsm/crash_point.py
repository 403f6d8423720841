"""Test-only crash points: vdsmd dies at a named step of an operation, on demand.

The recovery tests must stop vdsmd *between* two steps that normally follow each other within
milliseconds (a lease attached, the snapshot not yet taken), which no external signal can hit
reliably. When the environment variable ``VDSM_CRASH_AT`` names a point, vdsmd SIGKILLs itself
there: exactly what a crash does (sanlock frees its leases, its qemu-img children die with it),
at exactly that step. Unset in production, where :func:`reached` costs one dictionary lookup.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("vdsm.crash_point")

ENV = "VDSM_CRASH_AT"


def reached(name: str) -> None:
    if os.environ.get(ENV) == name:
        log.critical("crash point %s reached (%s): killing vdsmd", name, ENV)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
