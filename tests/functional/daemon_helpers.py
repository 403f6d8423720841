"""A real vdsmd process on a free port for the functional tests, driven over real HTTP.

``VdsmdProcess`` starts the daemon with its own state and run directories under the test's
temporary directory, waits until it answers ``ping``, and can be killed (SIGKILL, as a crash)
or stopped (SIGTERM) and started again on the same state, as an operator would. That logic is
vdsm_guest.local_vdsmd's, shared with the benchmark; the tests add JSON-RPC and raw POSTs.
``wait_task`` waits for a task through vdsClient's API (vdsm_cli.api), as every client does.
Test daemons run with the test machine's sanlock settings (:data:`TEST_SANLOCK_ARGS`), and
``running`` leaves the lockspaces of a test's domains once its daemon is gone.
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
from vdsm_guest.local_vdsmd import LocalVdsmd, leave_lockspaces

REPO = Path(__file__).resolve().parents[2]

# io_timeout 1 (a join takes 3 s, not 21 s; a dead host's leases free after 72 s, not 140 s),
# and the watchdog and the domain monitors checking every second.
TEST_SANLOCK_ARGS = [
    "--sanlock-io-timeout",
    "1",
    "--spm-watchdog-interval",
    "1",
    "--domain-monitor-interval",
    "1",
]


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
        args = [*TEST_SANLOCK_ARGS, *(extra_args or [])]
        super().__init__(root, args, env, log_level="DEBUG", **options)
        # Pools this daemon was made SPM of (storage_helpers.Storage): a restart starts the
        # SPM again, as the engine would, since the restarted daemon holds no lease.
        self.spm_pools: list[str] = []

    def restart(self) -> None:
        super().restart()
        for sp_uuid in self.spm_pools:
            start_spm(self, sp_uuid)

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
        leave_lockspaces(daemon.storage_roots)


def start_spm(daemon: VdsmdProcess, sp_uuid: str, timeout: float = 60) -> dict[str, Any]:
    """spmStart on ``daemon`` and its task's end (the pool must be connected)."""
    reply = daemon.xmlrpc().spmStart(sp_uuid, -1, -1, -1, "false", 250, 5)
    assert reply["status"]["code"] == 0, reply
    status = wait_task(daemon, reply["uuid"], timeout=timeout)
    assert status["taskResult"] == "success", status
    return status


TASK_POLL = 0.05  # seconds between two polls of a task


def wait_task(daemon: VdsmdProcess, task_id: str, timeout: float = 120) -> dict[str, Any]:
    """The task's status once it is finished, whatever its result (vdsClient's wait_task)."""
    return daemon.api(interval=TASK_POLL).wait_task(task_id, timeout=timeout)


def new_uuid() -> str:
    return str(uuid.uuid4())
