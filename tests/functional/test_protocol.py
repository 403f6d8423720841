"""Bad requests to a real vdsmd: each gets its protocol's answer, never a traceback or an
HTTP 500, and the daemon keeps serving. Ends with property-based fuzzing of request bodies."""

from __future__ import annotations

import json
import xmlrpc.client

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid


def fault_of(body: bytes) -> xmlrpc.client.Fault:
    try:
        xmlrpc.client.loads(body)
    except xmlrpc.client.Fault as fault:
        return fault
    raise AssertionError(f"not a fault: {body!r}")


def test_malformed_xmlrpc_is_a_parse_fault(vdsmd: VdsmdProcess) -> None:
    for body in (b"", b"<not xml", b"<?xml version='1.0'?><methodCall>", "é".encode("latin-1")):
        status, answer = vdsmd.post("/RPC2", body)
        assert status == 200
        fault = fault_of(answer)
        assert fault.faultCode == -32700 and "not an XML-RPC call" in fault.faultString


def test_unknown_xmlrpc_verb_is_a_fault(vdsmd: VdsmdProcess) -> None:
    status, answer = vdsmd.post("/RPC2", xmlrpc.client.dumps((), "formatTheWorld").encode())
    assert status == 200
    assert fault_of(answer).faultCode == -32601


def test_wrong_types_get_the_envelope_naming_the_parameter(vdsmd: VdsmdProcess) -> None:
    rpc = vdsmd.xmlrpc()
    reply = rpc.getTaskStatus(12345)
    assert reply["status"]["code"] == 1000 and "taskID" in reply["status"]["message"]
    reply = rpc.getVolumesList({"a": 1}, new_uuid())
    assert reply["status"]["code"] == 1000 and "storagedomainID" in reply["status"]["message"]


def test_jsonrpc_protocol_errors(vdsmd: VdsmdProcess) -> None:
    def post(body: bytes) -> dict:  # type: ignore[type-arg]
        status, answer = vdsmd.post("/jsonrpc", body)
        assert status == 200, answer
        return json.loads(answer)  # type: ignore[no-any-return]

    assert post(b"{nope")["error"]["code"] == -32700
    assert post(b"[" * 100000)["error"]["code"] == -32700  # nesting too deep for the parser
    assert post(b"[]")["error"]["code"] == -32600
    assert post(b'"a string"')["error"]["code"] == -32600
    assert post(b'{"jsonrpc": "1.0", "method": "Host.ping", "id": 1}')["error"]["code"] == -32600
    reply = post(b'{"jsonrpc": "2.0", "method": "Host.ping", "id": [1]}')
    assert reply["error"]["code"] == -32600
    reply = post(b'{"jsonrpc": "2.0", "method": "Task.getStatus", "params": 5, "id": 1}')
    assert reply["error"]["code"] == 1000
    batch = post(
        b'[{"jsonrpc": "2.0", "method": "Host.ping", "id": 1},'
        b' {"jsonrpc": "2.0", "method": "Nope.nope", "id": 2}]'
    )
    assert batch[0] == {"jsonrpc": "2.0", "id": 1, "result": None}
    assert batch[1]["error"]["code"] == -32601
    # A notification gets no answer at all.
    status, answer = vdsmd.post("/jsonrpc", b'{"jsonrpc": "2.0", "method": "Host.ping"}')
    assert (status, answer) == (204, b"")


def test_http_misuse_gets_4xx(vdsmd: VdsmdProcess) -> None:
    assert vdsmd.post("/elsewhere", b"x")[0] == 404
    big = b"x" * (4 * 1024 * 1024 + 1)
    status, answer = vdsmd.post("/RPC2", big)
    assert status == 413 and b"exceeds" in answer
    # A GET, and a POST without Content-Length, by hand.
    for request in (
        b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
        b"garbage\r\n\r\n",
    ):
        with vdsmd.connect(timeout=10) as conn:
            conn.sendall(request)
            answer = conn.recv(4096)
        if answer.startswith(b"HTTP/"):
            assert answer.split()[1] in (b"400", b"405", b"411"), answer
        else:  # a one-word request line is HTTP/0.9: the error comes without a status line
            assert b"Error code: 400" in answer, answer
    assert vdsmd.xmlrpc().ping()["status"]["code"] == 0


def test_flow_id_is_logged(vdsmd: VdsmdProcess) -> None:
    body = xmlrpc.client.dumps((), "ping").encode()
    vdsmd.post("/RPC2", body, headers={"FlowID": "flow-1234"})
    log = vdsmd.log()
    assert "START Host.ping flow_id=flow-1234" in log
    assert "FINISH Host.ping flow_id=flow-1234 code=0 duration=" in log


# Strategies for fuzzing: arbitrary bytes, arbitrary JSON-RPC-shaped documents, and XML-RPC
# calls of real verbs with arbitrary argument values.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
VERBS = [
    "getVolumeInfo",
    "createVolume",
    "getTaskStatus",
    "syncImageData",
    "createStoragePool",
    "getVolumesList",
    "deleteVolume",
    "stopTask",
    "createStorageDomain",
    "prepareImage",
]
JSON_VERBS = [
    "Volume.create",
    "Task.getStatus",
    "Image.syncData",
    "StorageDomain.create",
    "StoragePool.getInfo",
    "Host.ping",
]
# XML 1.0 cannot carry control characters: keep the generated call well-formed, so that what is
# fuzzed is the daemon's handling of values, not the client's XML encoder.
xml_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
xmlrpc_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31 - 1) | xml_text | st.just(new_uuid()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(xml_text, inner, max_size=4),
    max_leaves=10,
)

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(body=st.binary(max_size=2000), path=st.sampled_from(["/RPC2", "/jsonrpc"]))
def test_fuzz_raw_bodies(vdsmd: VdsmdProcess, body: bytes, path: str) -> None:
    status, _ = vdsmd.post(path, body)
    assert status in (200, 204)
    assert vdsmd.running


@FUZZ
@given(
    method=st.sampled_from(JSON_VERBS) | st.text(max_size=20),
    params=json_values,
    req_id=json_values,
)
def test_fuzz_jsonrpc_documents(
    vdsmd: VdsmdProcess, method: str, params: object, req_id: object
) -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": req_id})
    status, answer = vdsmd.post("/jsonrpc", body.encode())
    assert status == 200
    reply = json.loads(answer)
    if "error" in reply:
        # A bug would surface as GeneralException "unexpected ..." (or a JSON-RPC internal error).
        assert reply["error"]["code"] not in (100, -32603), reply
    assert vdsmd.running


@FUZZ
@given(method=st.sampled_from(VERBS), args=st.lists(xmlrpc_values, max_size=12))
def test_fuzz_xmlrpc_calls(vdsmd: VdsmdProcess, method: str, args: list[object]) -> None:
    body = xmlrpc.client.dumps(tuple(args), method, allow_none=True).encode()
    status, answer = vdsmd.post("/RPC2", body)
    assert status == 200
    (reply,), _ = xmlrpc.client.loads(answer)
    assert isinstance(reply["status"]["code"], int)
    assert reply["status"]["code"] != 100, reply  # 100 here would mean an unexpected exception
    assert vdsmd.running
