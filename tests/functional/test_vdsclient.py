"""vdsClient end to end: the real CLI, as a subprocess, against a real vdsmd (or a stub server).

The daemon tests build what an operator would: two file domains, a pool, and an image with a
three-volume snapshot chain, all through vdsClient, then check its output and exit codes. The
stub-server tests cover what a healthy daemon never does on cue: XML-RPC faults, replies that
are not envelopes, a task that fails or never finishes, and Ctrl-C while waiting.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pytest

from tests.conftest import require_command
from tests.functional.conftest import REPO, VdsmdProcess, new_uuid

BLANK = "00000000-0000-0000-0000-000000000000"
CLI_TIMEOUT = 120


def vdsclient(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vdsm_cli.vdsclient", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(*args: str) -> str:
    """Run vdsClient, require exit 0 and a quiet stderr; return stdout."""
    proc = vdsclient(*args)
    assert proc.returncode == 0, f"vdsClient {' '.join(args)}: rc={proc.returncode}\n{proc.stderr}"
    assert proc.stderr == ""
    return proc.stdout


def run_task(address: str, *args: str) -> str:
    """Start a task verb, check it printed a task id, wait for it; return the id."""
    task_id = ok(address, *args).strip()
    assert len(task_id) == 36 and task_id.count("-") == 4, task_id
    waited = ok(address, "waitTask", task_id)
    assert waited.splitlines()[-1].startswith(f"task {task_id}: finished success 100%")
    return task_id


@dataclass
class Chain:
    address: str
    pool: str
    domains: tuple[str, str]
    image: str
    volumes: tuple[str, str, str]  # base → leaf
    task: str  # the last createVolume's task


@pytest.fixture
def chain(vdsmd: VdsmdProcess, tmp_path: Path) -> Chain:
    """Two LOCALFS domains in a pool, and an image base (RAW) → snap1 → snap2 (COW)."""
    address = vdsmd.address
    domains = (new_uuid(), new_uuid())
    for index, sd in enumerate(domains):
        directory = tmp_path / f"sd{index}"
        directory.mkdir()
        assert ok(address, "createStorageDomain", "4", sd, f"dom{index}", str(directory), "1") == ""
    pool = new_uuid()
    assert ok(address, "createStoragePool", "0", pool, "pool", domains[0], ",".join(domains)) == ""
    image = new_uuid()
    base, snap1, snap2 = new_uuid(), new_uuid(), new_uuid()
    sd = domains[0]
    where = [sd, pool, image]
    run_task(address, "createVolume", *where, "1G", "RAW", "SPARSE", "DATA", base, "base")
    snap = ["1G", "COW", "SPARSE", "DATA", snap1, "snap 1", image, base]
    run_task(address, "createVolume", *where, *snap)
    # The legacy numbers work as well as the names: 4 COW, 2 SPARSE, 2 DATA.
    snap = ["1073741824", "4", "2", "2", snap2, "snap 2", image, snap1]
    task = run_task(address, "createVolume", *where, *snap)
    return Chain(address, pool, domains, image, (base, snap1, snap2), task)


def test_snapshot_chain(chain: Chain) -> None:
    sd, pool, image = chain.domains[0], chain.pool, chain.image
    base, snap1, snap2 = chain.volumes
    listed = ok(chain.address, "getVolumesList", sd, pool, image)
    assert listed.splitlines() == [base, snap1, snap2]

    info = json.loads(ok("--json", chain.address, "getVolumeInfo", sd, pool, image, snap2))
    assert set(info) == {"info"}
    assert info["info"]["voltype"] == "LEAF"
    assert info["info"]["parent"] == snap1
    assert info["info"]["format"] == "COW"
    assert info["info"]["description"] == "snap 2"
    assert int(info["info"]["capacity"]) == 1024**3

    # --json may come after the verb, too.
    base_info = json.loads(ok(chain.address, "getVolumeInfo", "--json", sd, pool, image, base))
    assert base_info["info"]["voltype"] == "INTERNAL"
    assert base_info["info"]["format"] == "RAW"

    text = ok(chain.address, "getVolumeInfo", sd, pool, image, snap1).splitlines()
    assert f"parent = {base}" in text and "voltype = INTERNAL" in text
    assert text == sorted(text)  # key = value lines, sorted

    pool_info = ok(chain.address, "getStoragePoolInfo", pool)
    assert "info:" in pool_info and f"    master_uuid = {sd}" in pool_info


def test_wait_task_on_a_finished_task(chain: Chain) -> None:
    proc = vdsclient(chain.address, "waitTask", chain.task)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"task {chain.task}: finished success 100%")

    lines = ok("--json", chain.address, "waitTask", chain.task).splitlines()
    assert len(lines) == 1
    status = json.loads(lines[0])
    assert status["taskID"] == chain.task
    assert (status["taskState"], status["taskResult"], status["code"]) == ("finished", "success", 0)


def test_wait_task_of_a_reverted_task_fails(chain: Chain) -> None:
    ok(chain.address, "revertTask", chain.task)
    proc = vdsclient(chain.address, "waitTask", chain.task, "--timeout", "60")
    assert proc.returncode == 1
    assert f"task {chain.task} ended with result cleanSuccess" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_api_errors_exit_1_with_code_and_name(chain: Chain) -> None:
    sd, pool, image = chain.domains[0], chain.pool, chain.image
    unknown = new_uuid()
    proc = vdsclient(chain.address, "getVolumeInfo", sd, pool, image, unknown)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("vdsClient: error 201 (VolumeDoesNotExist): ")
    assert unknown in proc.stderr

    proc = vdsclient(chain.address, "getVolumeInfo", sd, pool, image, "not-a-uuid")
    assert proc.returncode == 1
    assert proc.stderr.startswith("vdsClient: error 1000 (InvalidParameterException): ")
    assert "volumeID" in proc.stderr

    proc = vdsclient(chain.address, "getTaskStatus", new_uuid())
    assert proc.returncode == 1
    assert proc.stderr.startswith("vdsClient: error 401 (UnknownTask): ")

    proc = vdsclient(chain.address, "waitTask", new_uuid())
    assert proc.returncode == 1
    assert proc.stderr.startswith("vdsClient: error 401 (UnknownTask): ")


def test_bad_enum_is_refused_by_the_daemon(vdsmd: VdsmdProcess, tmp_path: Path) -> None:
    proc = vdsclient(
        vdsmd.address, "createStorageDomain", "99", new_uuid(), "d", str(tmp_path), "1"
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("vdsClient: error 1000 (InvalidParameterException): ")
    assert "domainType" in proc.stderr


def test_flow_id_reaches_the_daemon_log(vdsmd: VdsmdProcess) -> None:
    ok("--flow-id", "cli-test-flow-42", vdsmd.address, "ping")
    assert "flow_id=cli-test-flow-42" in vdsmd.log()
    ok(vdsmd.address, "getAllTasksStatuses")  # without --flow-id: one is generated
    finished = [
        line for line in vdsmd.log().splitlines() if "FINISH Host.getAllTasksStatuses" in line
    ]
    assert finished and "flow_id=None" not in finished[-1]


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
    assert proc.returncode == 2 and "need -s" in proc.stderr

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


def test_tls_to_a_plain_server_exits_3(vdsmd: VdsmdProcess) -> None:
    proc = vdsclient("-s", vdsmd.address, "ping")
    assert proc.returncode == 3
    assert "TLS with" in proc.stderr and "Traceback" not in proc.stderr


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


# --- TLS ------------------------------------------------------------------------------------


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both CA-signed."""
    openssl = require_command("openssl")
    files = {name: directory / name for name in ("ca.key", "ca.pem")}

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    days = ["-days", "2"]
    run(
        *"req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem".split(),
        *days,
        "-subj",
        "/CN=vdsm test CA",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        run(
            *f"req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr".split(),
            "-subj",
            f"/CN={name}",
        )
        run(
            *f"x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial".split(),
            "-out",
            f"{name}.pem",
            *days,
            *extra,
        )
        files[f"{name}.pem"] = directory / f"{name}.pem"
        files[f"{name}.key"] = directory / f"{name}.key"
    return files


class TlsVdsmd(VdsmdProcess):
    """vdsmd with TLS that requires a client certificate; answers checked with the client's."""

    def __init__(self, root: Path, certs: dict[str, Path]) -> None:
        super().__init__(
            root,
            extra_args=[
                "--tls",
                "--tls-cert",
                str(certs["server.pem"]),
                "--tls-key",
                str(certs["server.key"]),
                "--tls-ca",
                str(certs["ca.pem"]),
            ],
        )
        self.scheme = "https"
        self.context = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        self.context.load_cert_chain(str(certs["client.pem"]), str(certs["client.key"]))

    def xmlrpc(self) -> Any:
        return xmlrpc.client.ServerProxy(
            f"https://{self.address}/RPC2", allow_none=True, context=self.context
        )


@pytest.fixture
def tls_vdsmd(tmp_path: Path) -> Iterator[tuple[TlsVdsmd, dict[str, Path]]]:
    require_command("qemu-img")
    certs_dir = tmp_path / "certs"
    certs_dir.mkdir()
    certs = make_certificates(certs_dir)
    daemon = TlsVdsmd(tmp_path / "vdsmd", certs)
    daemon.start()
    try:
        yield daemon, certs
    finally:
        if daemon.running:
            daemon.kill()


def test_tls_with_client_certificate(tls_vdsmd: tuple[TlsVdsmd, dict[str, Path]]) -> None:
    daemon, certs = tls_vdsmd
    client = ["--cert", str(certs["client.pem"]), "--key", str(certs["client.key"])]
    ok("-s", "--ca", str(certs["ca.pem"]), *client, daemon.address, "ping")
    # Without --ca the server is not verified (as VDSM's vdsClient did not).
    ok("-s", *client, daemon.address, "ping")

    proc = vdsclient("-s", "--ca", str(certs["ca.pem"]), daemon.address, "ping")
    assert proc.returncode == 3
    assert "client certificate" in proc.stderr

    # A CA that did not sign the server's certificate: verification fails.
    proc = vdsclient("-s", "--ca", str(certs["client.pem"]), *client, daemon.address, "ping")
    assert proc.returncode == 3
    assert "certificate verify failed" in proc.stderr

    proc = vdsclient(daemon.address, "ping")  # plain HTTP to a TLS server
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr


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
    proc = vdsclient(address, "ping")
    assert proc.returncode == 3
    assert "XML-RPC fault -32601: no ping" in proc.stderr

    behaviour["ping"] = "not an envelope"
    proc = vdsclient(address, "ping")
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
    proc = vdsclient(address, "waitTask", task, "--interval", "0.05")
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
    proc = vdsclient(address, "waitTask", task)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"vdsClient: task {task} ended with result cleanSuccess",
        "vdsClient: error 261 (CopyImageError): copy failed: EIO",
    ]


def test_wait_task_timeout(stub: StubServer) -> None:
    address, behaviour = stub.address, stub.behaviour
    task = new_uuid()
    behaviour["getTaskStatus"] = task_status(task, "running", 10)
    proc = vdsclient(address, "waitTask", task, "--timeout", "0.3", "--interval", "0.05")
    assert proc.returncode == 1
    assert f"task {task} not finished after 0.3s (running, 10%); it keeps running" in proc.stderr


def test_ctrl_c_during_wait_task_exits_130(
    stub: StubServer,
) -> None:
    address, behaviour = stub.address, stub.behaviour
    task = new_uuid()
    behaviour["getTaskStatus"] = task_status(task, "running", 10)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdsm_cli.vdsclient", address, "waitTask", task],
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
