"""The HTTP server's bounds and strictness, against a real vdsmd over real (TLS) sockets.

Bounds: a connection cap answered with 503, a deadline per request however a client dribbles,
an accept loop that backs off (instead of spinning) when descriptors run out, and calls that
then fail with an errno-true code. Strictness: 405 for every method but POST on the API's
paths (the read-only views' GET: test_metrics.py), a status line on
every 400, one plain Content-Length, no Transfer-Encoding, a clean FlowID, no folded headers.
Logs: nothing a client sends reaches the log raw, one INFO line per call, no traceback when a
client hangs up, and rotation by size.
"""

from __future__ import annotations

import http.client
import os
import re
import select
import socket
import struct
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, running

PING = xmlrpc.client.dumps((), "ping").encode()
# Generous: machines running the suite are noisy; what matters is "well under 60 s".
PATIENCE = 15.0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[VdsmdProcess]:
    with running(VdsmdProcess(tmp_path / "vdsmd")) as started:
        yield started


def read_to_eof(conn: socket.socket) -> bytes:
    """Everything the daemon sends until it closes (a TimeoutError if it does not)."""
    chunks = []
    while True:
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(daemon: VdsmdProcess, request: bytes) -> bytes:
    """Send ``request`` on a new connection; the whole answer, up to the daemon's close."""
    with daemon.connect(timeout=PATIENCE) as conn:
        conn.sendall(request)
        return read_to_eof(conn)


def status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match, f"no status line: {answer[:200]!r}"
    return int(match.group(1))


def headers(answer: bytes) -> dict[str, str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head)}


def post(head: bytes, body: bytes = PING) -> bytes:
    """A POST /RPC2 with the header lines ``head`` (CRLF-terminated each) and ``body``."""
    return b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body


def ping_request(flow_id: str | None = None) -> bytes:
    flow = f"FlowID: {flow_id}\r\n".encode() if flow_id else b""
    return post(flow + b"Content-Length: %d\r\n" % len(PING))


def served(daemon: VdsmdProcess) -> bool:
    return bool(daemon.xmlrpc().ping()["status"]["code"] == 0)


def call_on(conn: socket.socket, verb: str, *params: Any) -> dict[str, Any]:
    """One XML-RPC call on an open keep-alive connection."""
    body = xmlrpc.client.dumps(params, verb).encode()
    conn.sendall(post(b"Content-Length: %d\r\n" % len(body), body))
    response = http.client.HTTPResponse(conn)
    response.begin()
    reply = xmlrpc.client.loads(response.read())[0][0]
    assert isinstance(reply, dict), reply
    return reply


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def pid_of(daemon: VdsmdProcess) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {PATIENCE}s: {what}")
        time.sleep(0.05)


def reset(conn: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a client that crashes or is killed."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


# --- (a) bounds -------------------------------------------------------------------------------


@pytest.mark.parametrize("idle_kind", ["established", "handshake pending"])
def test_connection_cap_answers_503_without_a_thread(tmp_path: Path, idle_kind: str) -> None:
    daemon = VdsmdProcess(tmp_path / "vdsmd", ["--max-connections", "8"])
    with running(daemon):
        if idle_kind == "established":
            idle = [daemon.connect() for _ in range(8)]
        else:  # TCP only: the TLS handshake, in the connection's thread, never starts
            idle = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(8)]
        try:
            # The accept loop takes connections in order: the 8 are counted before the next.
            threads = 0
            for n in range(20):
                answer = exchange(daemon, ping_request())
                if n == 0:
                    threads = proc_status(pid_of(daemon), "Threads")
                assert status(answer) == 503, answer
                assert headers(answer)["retry-after"] == "1"
                assert headers(answer)["connection"] == "close"
                assert answer.endswith(b"too many connections\n")
            # One rejecter thread answered them all: not a thread each.
            assert proc_status(pid_of(daemon), "Threads") <= threads + 1
        finally:
            for conn in idle:
                conn.close()

        def serves_again() -> bool:
            try:
                return served(daemon)
            except (OSError, xmlrpc.client.ProtocolError, http.client.HTTPException):
                return False  # still a 503, or reset

        wait_until(serves_again, "a good client served after the idle ones left")
        assert daemon.log().count("refusing more with 503") == 1  # once per episode


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_dribbling_client_is_cut_off_at_the_request_deadline(tmp_path: Path, phase: str) -> None:
    daemon = VdsmdProcess(tmp_path / "vdsmd", ["--request-timeout", "2"])
    with running(daemon), daemon.connect(timeout=PATIENCE) as conn:
        if phase == "headers":
            conn.sendall(b"POST /RPC2 HTTP/1.1\r\nX-Slow: ")
        else:
            conn.sendall(post(b"Content-Length: 100000\r\n", b""))
        started = time.monotonic()
        answer = None
        while answer is None:
            assert time.monotonic() - started < PATIENCE, "still connected: no request deadline"
            # Readable may also be TLS session tickets: then read_to_eof waits for the close.
            readable, _, _ = select.select([conn], [], [], 0.5)
            if readable:
                answer = read_to_eof(conn)
            else:
                try:
                    conn.sendall(b"a")  # a byte every 0.5 s: the per-read timeout never fires
                except (BrokenPipeError, ConnectionResetError):
                    answer = b""
        elapsed = time.monotonic() - started
        assert elapsed < PATIENCE, "still connected: no request deadline"
        assert elapsed > 1.0  # not before its deadline (2 s)
        assert answer == b"" or status(answer) == 408, answer
    assert "request not received within 2s: disconnected" in daemon.log()


class LimitedVdsmd(VdsmdProcess):
    """A vdsmd with a small RLIMIT_NOFILE (prlimit sets it, then execs the daemon)."""

    def __init__(self, root: Path, nofile: int, extra_args: list[str]) -> None:
        super().__init__(root, extra_args)
        self.nofile = nofile

    def argv(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}", "--", *super().argv()]


def test_out_of_descriptors_backs_off_and_keeps_codes_true(tmp_path: Path) -> None:
    nofile = 128
    # The connection cap above the descriptor limit, so that descriptors run out first.
    daemon = LimitedVdsmd(tmp_path / "vdsmd", nofile, ["--max-connections", "1000"])
    mount = tmp_path / "mnt"
    mount.mkdir()
    with running(daemon):
        pid = pid_of(daemon)
        sd = new_uuid()
        assert daemon.xmlrpc().createStorageDomain(4, sd, "d", str(mount), 1)["status"]["code"] == 0
        keep = daemon.connect(timeout=PATIENCE)  # open before the flood, kept alive
        flood: list[socket.socket] = []
        try:
            assert call_on(keep, "getStorageDomainInfo", sd)["status"]["code"] == 0
            # More connections than descriptors left: accept() then fails with EMFILE while
            # the rest wait in the listen backlog.
            free = nofile - len(os.listdir(f"/proc/{pid}/fd"))
            for _ in range(free + 10):
                flood.append(socket.create_connection(("127.0.0.1", daemon.port)))
            wait_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) >= nofile - 1, "fds used up")
            before, started = cpu_seconds(pid), time.monotonic()
            time.sleep(2)
            cpu = (cpu_seconds(pid) - before) / (time.monotonic() - started)
            assert cpu < 0.3, f"the daemon used {cpu:.0%} of a CPU while out of descriptors"
            reply = call_on(keep, "getStorageDomainInfo", sd)
            assert reply["status"]["code"] != 371, reply  # not "layout corrupted"
            assert reply["status"]["code"] == 100, reply
            assert "[Errno 24] Too many open files" in reply["status"]["message"], reply
        finally:
            keep.close()
            for conn in flood:
                conn.close()

        def serves_again() -> bool:
            try:
                return served(daemon)
            except OSError:
                return False

        wait_until(serves_again, "served again once descriptors are free")
        log = daemon.log()
        assert log.count("cannot accept connections: [Errno 24]") == 1  # not once per failure
        wait_until(lambda: "accepting connections again" in daemon.log(), "episode end logged")


# --- (b) HTTP strictness ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "FOO"]
)
def test_every_method_but_post_is_405(daemon: VdsmdProcess, method: str) -> None:
    target = {"CONNECT": b"127.0.0.1:1", "OPTIONS": b"*"}.get(method, b"/RPC2")
    answer = exchange(daemon, method.encode() + b" " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(answer) == 405, answer
    assert headers(answer)["allow"] == "POST"
    assert served(daemon)


@pytest.mark.parametrize(
    "line",
    [
        b"garbage",
        b"GET /",  # HTTP/0.9
        b"POST /RPC2",
        b"POST /RPC2 HTTP/1.1 extra",
        b"POST  /RPC2 HTTP/1.1",
        b"POST\t/RPC2 HTTP/1.1",
        b"POST /RP\x1bC2 HTTP/1.1",
        b"",
    ],
)
def test_bad_request_line_is_400_with_a_status_line(daemon: VdsmdProcess, line: bytes) -> None:
    answer = exchange(daemon, line + b"\r\nHost: x\r\n\r\n")  # read to EOF: it closes
    assert status(answer) == 400, answer
    assert headers(answer)["connection"] == "close"


def test_other_http_versions_are_505(daemon: VdsmdProcess) -> None:
    assert status(exchange(daemon, b"POST /RPC2 HTTP/2.0\r\nHost: x\r\n\r\n")) == 505


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"POST /" + b"x" * (9 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (
            b"POST /RPC2 HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
            431,
        ),
        (
            b"POST /RPC2 HTTP/1.1\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(9))
            + b"\r\n",
            431,
        ),
    ],
    ids=["request line over 8 KiB", "101 headers", "headers over 64 KiB"],
)
def test_request_line_and_headers_are_bounded(
    daemon: VdsmdProcess, request_bytes: bytes, expected: int
) -> None:
    assert status(exchange(daemon, request_bytes)) == expected
    assert served(daemon)


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: +%d\r\n" % len(PING),
        b"Content-Length: -1\r\n",
        b"Content-Length: 0x10\r\n",
        "Content-Length: \u0665\r\n".encode(),  # ARABIC-INDIC DIGIT FIVE: int() takes it
        b"Content-Length: 1_0\r\n",
        b"Content-Length: 5 5\r\n",
        b"Content-Length: 5, 5\r\n",
        b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(PING), len(PING)),
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\nContent-Length: %d\r\n" % len(PING),
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(PING),
        b"Content-Length: %d\r\nX-Folded: a\r\n b\r\n" % len(PING),
    ],
)
def test_ambiguous_framing_is_400(daemon: VdsmdProcess, head: bytes) -> None:
    answer = exchange(daemon, post(head))
    assert status(answer) == 400, answer
    assert headers(answer)["connection"] == "close"
    assert served(daemon)


def test_plain_content_length_is_served(daemon: VdsmdProcess) -> None:
    with daemon.connect(timeout=PATIENCE) as conn:
        for length in (b"%d" % len(PING), b"000%d" % len(PING)):  # leading zeros are digits
            conn.sendall(post(b"Content-Length: " + length + b"\r\n"))
            response = http.client.HTTPResponse(conn)
            response.begin()
            assert response.status == 200
            response.read()


@pytest.mark.parametrize(
    "value",
    [
        b"flow\x1b[31mred",
        b"flow\x07bell",
        b"flow\rforged",
        b"a" * 129,
        b"caf\xc3\xa9",
        b"flow\r\n FINISH forged",  # folded: a continuation line
        b"one\r\nFlowID: two",  # twice
    ],
)
def test_bad_flow_id_is_400_naming_the_header(daemon: VdsmdProcess, value: bytes) -> None:
    answer = exchange(daemon, post(b"FlowID: " + value + b"\r\nContent-Length: 5\r\n", b"12345"))
    assert status(answer) == 400, answer
    assert b"FlowID" in answer.split(b"\r\n\r\n", 1)[1]
    assert "\x1b" not in daemon.log() and "\x07" not in daemon.log()
    assert "\nFINISH forged" not in daemon.log() and "\n FINISH" not in daemon.log()


def test_flow_id_of_128_printable_characters_is_accepted(daemon: VdsmdProcess) -> None:
    flow_id = "f-" + "x" * 126
    status_code, _ = daemon.post("/RPC2", PING, headers={"FlowID": flow_id})
    assert status_code == 200
    assert f"FINISH Host.ping flow_id={flow_id} code=0" in daemon.log()


# --- (b) logs ---------------------------------------------------------------------------------


def test_client_text_is_never_logged_raw(daemon: VdsmdProcess) -> None:
    evil = "task\x1b[2J\x07\nFINISH Host.ping flow_id=forged code=0"
    reply = daemon.jsonrpc("Task.getStatus", {"taskID": evil})
    assert "error" in reply
    exchange(daemon, b"PO\x1bST /RPC2\x07 HTTP/1.1\r\nHost: x\r\n\r\n")
    log = daemon.log()
    assert "\x1b" not in log and "\x07" not in log
    assert "\nFINISH Host.ping flow_id=forged" not in log
    assert "\\x1b" in log  # it was logged, escaped


def test_one_info_line_per_call(daemon: VdsmdProcess) -> None:
    for n in range(3):
        assert status(exchange_keepalive(daemon, ping_request(f"once-{n}"))) == 200
    lines = [line for line in daemon.log().splitlines() if "flow_id=once-" in line]
    info = [line for line in lines if re.search(r" INFO +\(", line)]
    assert len(info) == 3, lines
    assert all("FINISH Host.ping" in line and "code=0 duration=" in line for line in info)
    assert sum(" DEBUG " in line and "START Host.ping" in line for line in lines) == 3


def exchange_keepalive(daemon: VdsmdProcess, request: bytes) -> bytes:
    """One request, the answer read by its Content-Length (the daemon keeps the connection)."""
    with daemon.connect(timeout=PATIENCE) as conn:
        conn.sendall(request)
        response = http.client.HTTPResponse(conn)
        response.begin()
        return b"HTTP/1.1 %d \r\n\r\n" % response.status + response.read()


def test_client_hanging_up_is_one_line_without_traceback(daemon: VdsmdProcess) -> None:
    for _ in range(5):
        conn = daemon.connect(timeout=PATIENCE)
        conn.sendall(ping_request() * 200)  # pipelined: answers are still being written...
        conn.recv(1)
        reset(conn)  # ... when the client is gone
    wait_until(lambda: any(t in daemon.log() for t in ("client gone", "Trace")), "hang-up logged")
    assert served(daemon)
    log = daemon.log()
    assert "Traceback" not in log, log
    assert not re.search(r" ERROR +\(", log), log


def test_log_file_is_rotated_by_size(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "vdsmd.log"
    args = ["--log-file", str(log_file), "--log-max-bytes", "4096", "--log-backups", "2"]
    daemon = VdsmdProcess(tmp_path / "vdsmd", args)
    with running(daemon):
        rpc = daemon.xmlrpc()
        for _ in range(100):
            rpc.ping()
    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == ["vdsmd.log", "vdsmd.log.1", "vdsmd.log.2"]
    for name in files:
        assert (log_file.parent / name).stat().st_size <= 4096
