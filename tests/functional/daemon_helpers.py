"""A real vdsmd process on a free port for the functional tests, driven over real HTTP.

``VdsmdProcess`` starts the daemon with its own state and run directories under the test's
temporary directory, waits until it answers ``ping``, and can be killed (SIGKILL, as a crash)
or stopped (SIGTERM) and started again on the same state, as an operator would. That logic is
vdsm_guest.local_vdsmd's, shared with the benchmark; the tests add JSON-RPC and raw POSTs.
``wait_task`` waits for a task through vdsClient's API (vdsm_cli.api), as every client does.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import missing
from vdsm_guest.local_vdsmd import LocalVdsmd

REPO = Path(__file__).resolve().parents[2]


class VdsmdProcess(LocalVdsmd):
    """The tests' vdsmd (vdsm_guest.local_vdsmd): DEBUG logs, and JSON-RPC and raw POSTs."""

    # A daemon that does not start fails the test with its whole log: the story is in there.
    error_log_lines = None

    def __init__(
        self,
        root: Path,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        """``options``: LocalVdsmd's (tls, pki, storage_roots, boot_dir)."""
        super().__init__(root, extra_args, env, log_level="DEBUG", **options)

    def start(self) -> None:
        if self.tls and not self.pki.admin_key.is_file():
            missing(f"no host PKI at {self.pki.root} for a TLS vdsmd (run `make pki`)")
        super().start()

    def log(self) -> str:
        return self.log_text()

    def jsonrpc(
        self, method: str, params: dict[str, Any] | list[Any] | None = None
    ) -> dict[str, Any]:
        """One JSON-RPC call; returns the whole response object (result or error)."""
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method}
        if params is not None:
            body["params"] = params
        answer: dict[str, Any] = json.loads(self.post("/jsonrpc", json.dumps(body).encode())[1])
        return answer

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
            with urllib.request.urlopen(
                request, timeout=30, context=self.ssl_context()
            ) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


@contextlib.contextmanager
def running(daemon: VdsmdProcess) -> Iterator[VdsmdProcess]:
    """``daemon`` started, and killed at the end whatever happened (for fixtures)."""
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.running:
            daemon.kill()


TASK_POLL = 0.05  # seconds between two polls of a task


def wait_task(daemon: VdsmdProcess, task_id: str, timeout: float = 120) -> dict[str, Any]:
    """The task's status once it is finished, whatever its result (vdsClient's wait_task)."""
    return daemon.api(interval=TASK_POLL).wait_task(task_id, timeout=timeout)


def new_uuid() -> str:
    return str(uuid.uuid4())
