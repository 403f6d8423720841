"""vdsClient end to end: help, and every way a run fails (exit 2 and 3, and a stub server).

The real CLI, as a subprocess (tests/functional/vdsclient_helpers.py): usage errors refused
before any request (exit 2), servers it cannot reach or speak to (exit 3), and the help. The
stub-server tests cover what a healthy daemon never does on cue: XML-RPC faults, replies that
are not envelopes, a task that fails or never finishes, and Ctrl-C while waiting (and, while
at it, waitTask's progress lines and one flow id for every request of a run).

The verbs and their output against a real vdsmd, and TLS: test_vdsclient.py.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest

from tests.functional.daemon_helpers import REPO, VdsmdProcess, new_uuid, running
from tests.functional.vdsclient_helpers import ok, vdsclient


def test_usage_errors_exit_2(vdsmd: VdsmdProcess) -> None:
    address = vdsmd.address
    proc = vdsclient(address, "getVolumInfo")
    assert proc.returncode == 2
    assert "unknown verb 'getVolumInfo'; did you mean getVolumeInfo" in proc.stderr

    proc = vdsclient(address, "getVolumeInfo", new_uuid(), new_uuid())
    assert proc.returncode == 2
    assert "getVolumeInfo takes 4 arguments, 2 given" in proc.stderr
    assert (
        "usage: vdsClient HOST[:PORT] getVolumeInfo <storagedomainID> <storagepoolID> "
        "<imageID> <volumeID>"
    ) in proc.stderr

    proc = vdsclient(address, "getTaskStatus", new_uuid(), new_uuid())
    assert proc.returncode == 2 and "takes 1 argument, 2 given" in proc.stderr

    proc = vdsclient(address, "createStoragePool", "0", new_uuid(), "p", new_uuid(), "[bad")
    assert proc.returncode == 2
    assert "domainList: not a JSON array" in proc.stderr
    assert "usage: vdsClient HOST[:PORT] createStoragePool <poolType>" in proc.stderr

    proc = vdsclient(address, "createStoragePool", "x", new_uuid(), "p", new_uuid())
    assert proc.returncode == 2 and "poolType: expected an integer" in proc.stderr

    proc = vdsclient(address, "deleteImage", new_uuid(), new_uuid(), new_uuid(), "maybe")
    assert proc.returncode == 2 and "postZero: expected true or false" in proc.stderr

    proc = vdsclient(address)
    assert proc.returncode == 2 and "missing VERB" in proc.stderr

    proc = vdsclient()
    assert proc.returncode == 2 and "usage: vdsClient" in proc.stderr

    proc = vdsclient("--cert", "/nonexistent", address, "ping")
    assert proc.returncode == 2 and "--cert /nonexistent: no such file" in proc.stderr

    proc = vdsclient("--no-tls", "--ca", "/x", address, "ping")
    assert proc.returncode == 2 and "--no-tls conflicts with --ca" in proc.stderr

    proc = vdsclient(address, "waitTask")
    assert proc.returncode == 2 and "waitTask needs a TASKID" in proc.stderr

    proc = vdsclient(address, "waitTask", new_uuid(), "--timeout", "soon")
    assert proc.returncode == 2 and "--timeout needs a number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_mapping_argument_exits_2(vdsmd: VdsmdProcess) -> None:
    """A dict/struct parameter given bad JSON (for the first legacy verb that takes one)."""
    from vdsm_api import schema

    for verb in schema.load().by_xmlrpc.values():
        for index, param in enumerate(verb.xmlrpc_params):
            if param.type.kind in ("dict", "struct"):
                values = ["x"] * len(verb.xmlrpc_params)
                values[index] = '{"domainID": '
                proc = vdsclient(vdsmd.address, str(verb.xmlrpc), *values)
                assert proc.returncode == 2, proc.stderr
                assert f"{param.name}: not a JSON object" in proc.stderr
                return
    # No legacy verb takes a mapping yet: the list form of the same mistake.
    proc = vdsclient(vdsmd.address, "deleteVolume", new_uuid(), new_uuid(), new_uuid(), '["a",')
    assert proc.returncode == 2
    assert "volumes: not a JSON array" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_exits_3() -> None:
    port = free_port()
    proc = vdsclient(f"127.0.0.1:{port}", "ping")
    assert proc.returncode == 3
    assert proc.stderr == (
        f"vdsClient: cannot connect to 127.0.0.1:{port}: connection refused (is vdsmd running?)\n"
    )


def test_tls_to_a_plain_server_exits_3(tmp_path: Path) -> None:
    with running(VdsmdProcess(tmp_path / "vdsmd", tls=False)) as plain:
        proc = vdsclient(plain.address, "ping")  # TLS is vdsClient's default
        assert proc.returncode == 3
        assert "TLS with" in proc.stderr and "--no-tls" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert vdsclient("--no-tls", plain.address, "ping").returncode == 0


def test_help() -> None:
    proc = vdsclient("--help")
    assert proc.returncode == 0
    for verb in ("createVolume", "getVolumeInfo", "syncImageData", "getTaskStatus", "waitTask"):
        assert f"    {verb} " in proc.stdout
    assert "Volume:" in proc.stdout and "Task:" in proc.stdout

    text = ok("help", "createVolume")
    order = [
        "storagedomainID",
        "storagepoolID",
        "imageID",
        "size",
        "volFormat",
        "preallocate",
        "diskType",
        "volumeID",
        "desc",
        "srcImgUUID",
        "srcVolUUID",
    ]
    assert text.startswith(
        "usage: vdsClient HOST[:PORT] createVolume " + " ".join(f"<{n}>" for n in order[:8])
    )
    arguments = text[text.index("arguments, in this order:") :].splitlines()[1:]
    named = [line.split()[0] for line in arguments if line.startswith("  ") and line[2] != " "]
    assert named[: len(order)] == order
    assert "212  VolumeAlreadyExists" in text and "654  SpmStatusError" in text

    assert ok("createVolume", "--help") == text
    assert ok("somehost:1", "createVolume", "--help") == text
    assert "waitTask TASKID" in ok("help", "waitTask")

    proc = vdsclient("help", "noSuchVerb")
    assert proc.returncode == 2 and "unknown verb" in proc.stderr


# --- a stub server, for what vdsmd does not do on cue ----------------------------------------


class StubServer(SimpleXMLRPCServer):
    """Answers each method with ``behaviour[method]`` (a value, or a function of the
    arguments); records the FlowID header of every request."""

    def __init__(self) -> None:
        super().__init__(
            ("127.0.0.1", 0), requestHandler=_StubHandler, logRequests=False, allow_none=True
        )
        self.behaviour: dict[str, Any] = {}
        self.flow_ids: list[str | None] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def _dispatch(self, method: str, params: Any) -> Any:
        answer = self.behaviour[method]
        return answer(*params) if callable(answer) else answer


class _StubHandler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)
    server: StubServer

    def decode_request_content(self, data: bytes) -> bytes | None:
        self.server.flow_ids.append(self.headers.get("FlowID"))
        return super().decode_request_content(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def task_status(task_id: str, state: str, progress: int, **extra: Any) -> dict[str, Any]:
    status = {
        "taskID": task_id,
        "taskState": state,
        "taskResult": "",
        "code": 0,
        "message": "",
        "progress": progress,
        "bytesDone": str(progress * 1024 * 1024),
        "bytesTotal": str(100 * 1024 * 1024),
    }
    return {"status": {"code": 0, "message": "OK"}, "taskStatus": {**status, **extra}}


def test_fault_and_bad_replies_exit_3(stub: StubServer) -> None:
    address, behaviour = stub.address, stub.behaviour

    def fault() -> None:
        raise xmlrpc.client.Fault(-32601, "no ping")

    behaviour["ping"] = fault
    proc = vdsclient("--no-tls", address, "ping")
    assert proc.returncode == 3
    assert "XML-RPC fault -32601: no ping" in proc.stderr

    behaviour["ping"] = "not an envelope"
    proc = vdsclient("--no-tls", address, "ping")
    assert proc.returncode == 3 and "not a VDSM envelope" in proc.stderr


def test_flow_id_is_the_same_for_every_request_of_a_run(
    stub: StubServer,
) -> None:
    address, behaviour, flow_ids = stub.address, stub.behaviour, stub.flow_ids
    task = new_uuid()
    answers = iter(
        [task_status(task, "running", 50), task_status(task, "finished", 100, taskResult="success")]
    )
    behaviour["getTaskStatus"] = lambda task_id: next(answers)
    proc = vdsclient("--no-tls", address, "waitTask", task, "--interval", "0.05")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0] == f"task {task}: running  50%  50.0 MiB / 100.0 MiB"
    assert lines[1].startswith(f"task {task}: finished success 100%  100.0 MiB / 100.0 MiB")
    assert len(flow_ids) == 2 and flow_ids[0] == flow_ids[1] and flow_ids[0]


def test_wait_task_failed_task_prints_code_and_message(
    stub: StubServer,
) -> None:
    address, behaviour = stub.address, stub.behaviour
    task = new_uuid()
    behaviour["getTaskStatus"] = task_status(
        task, "finished", 40, taskResult="cleanSuccess", code=261, message="copy failed: EIO"
    )
    proc = vdsclient("--no-tls", address, "waitTask", task)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"vdsClient: task {task} ended with result cleanSuccess",
        "vdsClient: error 261 (CopyImageError): copy failed: EIO",
    ]


def test_wait_task_timeout(stub: StubServer) -> None:
    address, behaviour = stub.address, stub.behaviour
    task = new_uuid()
    behaviour["getTaskStatus"] = task_status(task, "running", 10)
    proc = vdsclient(
        "--no-tls", address, "waitTask", task, "--timeout", "0.3", "--interval", "0.05"
    )
    assert proc.returncode == 1
    assert f"task {task} not finished after 0.3s (running, 10%); it keeps running" in proc.stderr


def test_ctrl_c_during_wait_task_exits_130(
    stub: StubServer,
) -> None:
    address, behaviour = stub.address, stub.behaviour
    task = new_uuid()
    behaviour["getTaskStatus"] = task_status(task, "running", 10)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdsm_cli.vdsclient", "--no-tls", address, "waitTask", task],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"task {task}: running")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert f"stopped waiting; task {task} keeps running" in stderr
    assert f"stopTask {task}" in stderr
    assert "Traceback" not in stderr
