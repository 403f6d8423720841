"""Find and kill the processes a task left running when the daemon died.

Every child started through :func:`vdsm.storage.runner.run` with a labelled Cancellation has
``VDSM_TASK_ID=<taskID>`` in its environment (and so do its own children). Such a child lives
in its own session, so a ``kill -9`` of the daemon does not take it along: a qemu-img may still
be writing into a volume the restarted daemon is about to roll back. Before rolling a task back,
the task manager kills everything tagged with the task's id and waits until it is gone.

Each process is held by a pidfd while its environment is read and it is signalled, so a pid
reused by an unrelated process in between can never be hit.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from pathlib import Path

from vdsm.storage.runner import TASK_ID_ENV

log = logging.getLogger("vdsm.storage.task.processes")

PROC = Path("/proc")
SCANS = 3  # at most; a pass that finds nobody new (after the first) ends the scan
SCAN_PAUSE = 0.05  # seconds between passes: longer than an exec takes


def kill_tagged(task_id: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process tagged with ``task_id`` and wait (up to ``timeout`` s) until each
    has exited. Return their pids; log any that outlived the timeout."""
    tag = f"{TASK_ID_ENV}={task_id}".encode()
    victims: dict[int, int] = {}  # pid → pidfd, kept open to wait for the exit
    try:
        # A process in the middle of an exec shows an empty environment for a moment: scan
        # again until a pass finds nobody new, so none is missed that way.
        for scan in range(SCANS):
            found = False
            for pid in _pids():
                if pid in victims:
                    continue
                pidfd = _open(pid)
                if pidfd is None:
                    continue
                if _kill_if_tagged(pid, pidfd, tag):
                    log.warning("task %s: killed leftover process %d", task_id, pid)
                    victims[pid] = pidfd
                    found = True
                else:
                    os.close(pidfd)
            if not found and scan > 0:
                break
            time.sleep(SCAN_PAUSE)
        deadline = time.monotonic() + timeout
        for pid, pidfd in victims.items():
            if not _exited(pidfd, max(0.0, deadline - time.monotonic())):
                log.error("task %s: process %d alive %.0f s after SIGKILL", task_id, pid, timeout)
    finally:
        for pidfd in victims.values():
            os.close(pidfd)
    return sorted(victims)


def _kill_if_tagged(pid: int, pidfd: int, tag: bytes) -> bool:
    try:
        # Still alive after its environment was read: the environment was its own.
        if not _tagged(pid, tag) or _exited(pidfd, 0):
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        return False  # it exited meanwhile
    except BaseException:
        os.close(pidfd)
        raise
    return True


def _pids() -> list[int]:
    own = os.getpid()
    return [int(e.name) for e in PROC.iterdir() if e.name.isdigit() and int(e.name) != own]


def _open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _tagged(pid: int, tag: bytes) -> bool:
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False  # gone, or not ours to inspect (only root sees other users' environments)
    return tag in environ.split(b"\0")


def _exited(pidfd: int, timeout: float) -> bool:
    """A pidfd becomes readable when its process exits (a zombie counts as gone)."""
    readable, _, _ = select.select([pidfd], [], [], timeout)
    return bool(readable)
