"""A demo run in the background of the whole test session, its output checked at its test's turn.

The cluster demo spends most of its 100 s waiting out sanlock's dead-host delay (72 s at
io_timeout 1) with nothing to do; run in line it would add those seconds to the suite. Its
hosts are its own (their own sanlock daemons, libvirtds, loopback addresses and temporary
directories), so it can run beside the other tests: the session starts it once the tests are
collected, and the test waits for it and checks what it printed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from typing import IO

from tests.functional.daemon_helpers import REPO


class BackgroundDemo:
    """One of the demos (scripts/NAME), started now, its stdout and stderr in temporary files."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.started = time.monotonic()
        self._stdout: IO[str] = tempfile.TemporaryFile("w+")
        self._stderr: IO[str] = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / script)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            text=True,
        )

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Wait for the demo, at most ``timeout`` seconds from its start; its exit code, stdout
        and stderr. A demo still running then is stopped (as by Ctrl-C) and reported."""
        left = max(0.0, timeout - (time.monotonic() - self.started))
        try:
            code = self.proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            self.stop()
            code = -1
        return code, self._read(self._stdout), self._read(self._stderr)

    def stop(self) -> None:
        """Ctrl-C, so the demo tears its hosts down; SIGKILL if it is not gone in a minute."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @staticmethod
    def _read(stream: IO[str]) -> str:
        stream.flush()
        stream.seek(0)
        return stream.read()
