"""Functional tests: a real vdsmd process on a free port, driven over real HTTP.

``VdsmdProcess`` starts the daemon with its own state and run directories under the test's
temporary directory, waits until it answers ``ping``, and can be killed (SIGKILL, as a crash)
or stopped (SIGTERM) and started again on the same state, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_command

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


class VdsmdProcess:
    def __init__(
        self, root: Path, extra_args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.run_dir = root / "run"
        self.log_path = root / "vdsmd.log"
        self.extra_args = list(extra_args or [])
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.scheme = "http"

    def start(self) -> None:
        port_file = self.run_dir / "vdsmd.port"
        if port_file.exists():
            port_file.unlink()
        argv = [
            sys.executable,
            "-m",
            "vdsm.vdsmd",
            "--config",
            "/dev/null",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),  # 0 the first time: the kernel picks a free port
            "--state-dir",
            str(self.state_dir),
            "--run-dir",
            str(self.run_dir),
            "--log-level",
            "DEBUG",
            *self.extra_args,
        ]
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO, env=self.env)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vdsmd exited with {self.proc.returncode}:\n{self.log()}")
            if port_file.exists():
                self.port = int(port_file.read_text())
                if self._answers():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"vdsmd did not answer within {START_TIMEOUT}s:\n{self.log()}")

    def _answers(self) -> bool:
        try:
            return self.xmlrpc().ping()["status"]["code"] == 0
        except (OSError, xmlrpc.client.Error):
            return False

    def kill(self) -> None:
        """SIGKILL: a crash. Children (qemu-img) are left running, as after a real crash."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def restart(self) -> None:
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def xmlrpc(self) -> Any:
        return xmlrpc.client.ServerProxy(f"{self.scheme}://{self.address}/RPC2", allow_none=True)

    def jsonrpc(
        self, method: str, params: dict[str, Any] | list[Any] | None = None
    ) -> dict[str, Any]:
        """One JSON-RPC call; returns the whole response object (result or error)."""
        body = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method}
        if params is not None:
            body["params"] = params
        return json.loads(self.post("/jsonrpc", json.dumps(body).encode())[1])

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"{self.scheme}://{self.address}{path}",
            data=body,
            method="POST",
            headers={"Content-Type": "application/octet-stream", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


@pytest.fixture
def vdsmd(tmp_path: Path) -> Iterator[VdsmdProcess]:
    """A running vdsmd on its own state; killed at the end, whatever happened."""
    require_command("qemu-img")
    daemon = VdsmdProcess(tmp_path / "vdsmd")
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.running:
            daemon.kill()


def wait_task(daemon: VdsmdProcess, task_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll getTaskStatus over XML-RPC until the task is finished; return its status."""
    proxy = daemon.xmlrpc()
    deadline = time.monotonic() + timeout
    while True:
        reply = proxy.getTaskStatus(task_id)
        assert reply["status"]["code"] == 0, reply
        status: dict[str, Any] = reply["taskStatus"]
        if status["taskState"] == "finished":
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} not finished after {timeout}s: {status}")
        time.sleep(0.05)


def new_uuid() -> str:
    return str(uuid.uuid4())
