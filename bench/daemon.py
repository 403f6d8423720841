"""The bench's own vdsmd: started on a free port with its state under the bench's work dir.

The same start logic as the functional tests' VdsmdProcess (tests/functional/conftest.py),
kept here so that the bench needs neither pytest nor the test tree: the daemon binds port 0,
writes the port it got to ``<run>/vdsmd.port``, and is ready when it answers ``ping``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0


class DaemonError(Exception):
    """vdsmd did not start, or died; the message ends with the tail of its log."""


class Vdsmd:
    """One vdsmd process; ``start()`` then ``stop()`` (SIGTERM, then SIGKILL if it hangs)."""

    def __init__(
        self, root: Path, extra_args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.env = {**os.environ, **(env or {})}
        self.log_path = root / "vdsmd.log"
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        run_dir = self.root / "run"
        port_file = run_dir / "vdsmd.port"
        argv = [
            sys.executable,
            "-m",
            "vdsm.vdsmd",
            "--config",
            "/dev/null",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--state-dir",
            str(self.root / "state"),
            "--run-dir",
            str(run_dir),
            "--log-level",
            "INFO",
            *self.extra_args,
        ]
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO, env=self.env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonError(f"vdsmd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if port_file.exists():
                text = port_file.read_text().strip()
                if text:
                    self.port = int(text)
                    if self._answers():
                        return
            time.sleep(0.05)
        raise DaemonError(f"vdsmd did not answer within {START_TIMEOUT}s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            return bool(self.proxy().ping()["status"]["code"] == 0)
        except (OSError, xmlrpc.client.Error):
            return False

    def proxy(self) -> Any:
        """A new XML-RPC proxy (one per thread: a proxy keeps one HTTP connection)."""
        return xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.port}/RPC2", allow_none=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
