"""The fuzzer: hostile requests for every verb of the schema, against one real vdsmd.

Used by test_fuzz.py (a daemon of its own, with a sentinel tree outside its storage roots) and
by the load run of the soak (tests/functional/soak.py: the same requests while disks move).
``fuzz(target, seed, count)`` drives random.Random(seed) through ``count`` requests over
XML-RPC and JSON-RPC (single calls, notifications and batches mixing good and bad elements).
Parameters come from the schema, each a well-formed value or, more often, one from the
mutation table: wrong types, non-ASCII digits, huge integers, deep nesting, lone surrogates,
control characters, huge strings, '..', absolute and symlinked paths as directories and boot
files, base64 / dateTime / bigdecimal over XML-RPC, missing and extra parameters. Every answer
is checked (:class:`Outcome` collects the failures): an answer of the protocol (no HTTP 5xx,
no traceback in it), no JSON-RPC -32603 and no VDSM 100 (bad input gets 1000 or a protocol
error; a good request may fail only with its verb's codes from the schema), and ping answers
every PING_EVERY requests. Every path it sends carries MARKER, for the caller to search for.
"""

from __future__ import annotations

import collections
import datetime
import http.client
import json
import random
import uuid
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.functional.daemon_helpers import VdsmdProcess
from vdsm_api import schema
from vdsm_api.schema import Param, ParamType, Verb
from vdsm_api.wire import BLANK_UUID

PING_EVERY = 250
PROTOCOL_ERRORS = {-32700, -32600, -32601, -32602}
MARKER = f"fuzzmark{uuid.uuid4().hex[:10]}"
BLANK = BLANK_UUID
# Placeholders the XML-RPC and JSON encoders cannot write; swapped in the encoded body.
RAW_BIGDECIMAL = f"{MARKER}-bigdecimal"
RAW_INT = f"{MARKER}-int:"
RAW_HUGE_JSON_INT = f"{MARKER}-hugeint"


@dataclass
class Target:
    """The daemon, its confinement, the sentinel tree and the objects good requests name."""

    vdsmd: VdsmdProcess
    root: Path
    roots: Path
    outside: Path
    sd: str
    sp: str
    spare: Path  # an empty directory inside the roots: a domain may legitimately go there
    uuids: list[str] = field(default_factory=list)


# --- the mutation table --------------------------------------------------------------------


def hostile_paths(t: Target) -> list[str]:
    m = MARKER
    return [
        f"/tmp/{m}",
        f"/tmp/{m}/../{m}-up",
        str(t.outside / m),
        str(t.outside / "tree"),
        str(t.outside / "sentinel.txt"),
        str(t.roots / "escape" / m),
        str(t.roots / "escape"),
        str(t.roots / "escape" / "tree"),
        f"{t.roots}/../outside/{m}",
        f"{t.roots}/good/../../outside",
        f"../../{m}",
        f"{m}/relative",
        f"/{m}/" + "a" * 300,
        "/" + "/".join([m] * 2000),
        f"/tmp/{m}\x00/etc",
        f"/tmp/{m}\n/etc",
        f"/tmp/{m}\ud800",
        "/etc/passwd",
        "/dev/zero",
        "/proc/self/mem",
        "/",
        str(t.roots),
        str(t.spare),
    ]


def hostile_scalars(rng: random.Random) -> list[Any]:
    return [
        "²", "①", "--5", "٥١٢", "１２", "-0", " 7 ", "0x10", "1e3", "1_0",
        "1" * 4301, "9" * 25, -1, 0, 1, 2**31, 2**63, -(2**63) - 1, 2**64 + 5,
        1.5, -0.0, 1e308, True, False, None, "", " ", "\x00", "\x1b[2J\x07",
        "\ud800", "a\udfff", "\u202e", "x" * rng.choice([300, 5000, 70_000]),
        "%s%n%x", "' OR 1=1 --", "$(touch /tmp/" + MARKER + ")", "COW", "RAW", "SPARSE",
        "00000000-0000-0000-0000-00000000000g", BLANK, str(uuid.uuid4()).upper(),
        str(uuid.uuid4()) + "\n", [], {}, [1, "a"], {"a": {"b": []}},
        RAW_HUGE_JSON_INT,
    ]  # fmt: skip


# Numbers as clients must not send them: non-ASCII digits, signs, too many digits, floats.
NUMBERS: list[Any] = [
    "²", "①", "--5", "٥١٢", "１２", "-0", "+5", " 7 ", "0x10", "1e3", "1_0", "5\n", "1" * 4301,
    "9" * 25, str(2**63), str(2**64), -1, 0, 2**31, 2**63, -(2**63) - 1, 1.5, 512.0, True,
    RAW_HUGE_JSON_INT,
]  # fmt: skip


def deep_value(rng: random.Random, xml: bool) -> Any:
    value: Any = rng.choice([[], {}, "x", 1])
    # xmlrpc.client's marshaller recurses: deeper XML bodies are test_bad_input's, by hand.
    for _ in range(rng.choice([33, 40, 200] if xml else [33, 40, 200, 900])):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def xmlrpc_only(rng: random.Random) -> Any:
    return rng.choice(
        [
            b"\x00\x01binary",
            datetime.datetime(2024, 1, 1, 12, 0, 0),
            RAW_BIGDECIMAL,
            RAW_INT + rng.choice(["٥١٢", "²", "1" * 4301, "+-1", "12"]),
        ]
    )


class Generator:
    """Hostile values for a parameter type, good values now and then."""

    def __init__(self, rng: random.Random, t: Target, xml: bool) -> None:
        self.rng, self.t, self.xml = rng, t, xml
        self.paths = hostile_paths(t)
        self.scalars = hostile_scalars(rng)

    def hostile(self) -> Any:
        roll = self.rng.random()
        if roll < 0.05:
            return deep_value(self.rng, self.xml)
        if roll < 0.15 and self.xml:
            return xmlrpc_only(self.rng)
        if roll < 0.30:
            return self.rng.choice(self.paths)
        if roll < 0.32:
            return list(range(self.rng.choice([100, 12_000])))
        return self.rng.choice(self.scalars)

    def values(self, params: tuple[Param, ...]) -> list[Any]:
        """One value per parameter: one to three of them hostile (one in ten requests none),
        the others good, so that the hostile one gets past the checks of those before it."""
        rng = self.rng
        count = 0 if rng.random() < 0.1 else min(len(params), rng.choice([1, 1, 1, 2, 3]))
        hostile = set(rng.sample(range(len(params)), count))
        return [
            self.hostile_for(p.type) if n in hostile else self.good(p.type, p.name)
            for n, p in enumerate(params)
        ]

    def hostile_for(self, ptype: ParamType) -> Any:
        """Mostly a value aimed at the parameter's kind, else anything hostile."""
        rng = self.rng
        if rng.random() < 0.3:
            return self.hostile()
        if ptype.kind in ("int", "size"):
            return rng.choice(NUMBERS) if not self.xml or rng.random() < 0.7 else xmlrpc_only(rng)
        if ptype.kind == "dict":
            return self.vm_params() if rng.random() < 0.5 else self.drive_dict()
        if ptype.kind == "list":
            return [self.hostile() for _ in range(rng.randint(1, 3))]
        if ptype.kind == "string":
            return rng.choice(self.paths)
        return self.hostile()

    def good(self, ptype: ParamType, name: str) -> Any:
        rng = self.rng
        if ptype.enum is not None:
            return rng.choice([*ptype.enum.values, *ptype.enum.aliases])
        if ptype.struct is not None:
            return {f: self.good(ft, f) for f, ft in ptype.struct.fields.items()}
        if ptype.kind == "list":
            assert ptype.item is not None
            return [self.good(ptype.item, name) for _ in range(rng.randint(0, 3))]
        kind = ptype.kind
        if kind.startswith("uuid"):
            return rng.choice([*self.t.uuids, *self.t.uuids, str(uuid.uuid4()), BLANK])
        if kind == "size":
            return rng.choice(["1048576", 1048576, str(2**30)])
        if kind == "int":
            return rng.choice([0, 1, 5, 512, "5"])
        if kind == "bool":
            return rng.choice([True, False, "true"])
        if kind == "string":
            if name == "typeArgs":
                return rng.choice([*self.paths, str(self.t.spare)])
            return rng.choice(["fuzz", "ALL", "LEAF", f"{MARKER} text"])
        if kind == "dict":
            return self.vm_params() if name == "vmParams" else self.drive_dict()
        return rng.choice([None, 1, "x", self.hostile()])  # any

    def vm_params(self) -> dict[str, Any]:
        """VM parameters with always at least one hostile field: no VM boots for real."""
        rng = self.rng
        params: dict[str, Any] = {"vmId": str(uuid.uuid4()), "vmName": f"{MARKER}-vm"}
        hostile_key = rng.choice(["kernel", "initrd", "consoleLog", "memSize", "devices"])
        for key in ("kernel", "initrd", "consoleLog", "memSize", "smp", "kernelArgs"):
            if key == hostile_key or rng.random() < 0.3:
                params[key] = rng.choice(self.paths) if key != "memSize" else self.hostile()
        if hostile_key == "kernel" and "kernel" not in params:
            params["kernel"] = rng.choice(self.paths)
        params["devices"] = [self.drive_dict(disk=True) for _ in range(rng.randint(0, 2))]
        if hostile_key == "devices":
            params["devices"].append({"type": "disk", "path": rng.choice(self.paths)})
        if rng.random() < 0.2:
            params[rng.choice(["extra", "\x1b", "\ud800", "k" * 2000])] = self.hostile()
        return params

    def drive_dict(self, disk: bool = False) -> dict[str, Any]:
        rng = self.rng
        drive: dict[str, Any] = {"type": "disk", "device": "disk"} if disk else {}
        for key in ("domainID", "poolID", "imageID", "volumeID", "baseVolumeID"):
            drive[key] = rng.choice(self.t.uuids) if rng.random() < 0.7 else self.hostile()
        for key in ("path", "index", "readonly", "iface"):
            if rng.random() < 0.3:
                drive[key] = rng.choice(self.paths) if key == "path" else self.hostile()
        return drive


# --- requests --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """The requests sent, and the failures by kind: a count and the first example of each."""

    sent: int = 0
    codes: collections.Counter[int] = field(default_factory=collections.Counter)
    kinds: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def fail(self, what: str, request: bytes, answer: bytes) -> None:
        what = what[:80]
        self.kinds[what] = self.kinds.get(what, 0) + 1
        if what not in self.examples:
            self.examples[what] = f"  request: {request[:300]!r}\n  answer: {answer[:400]!r}"

    @property
    def failures(self) -> list[str]:
        return [f"{n} x {what}\n{self.examples[what]}" for what, n in self.kinds.items()]


class Connection:
    """One keep-alive HTTP(S) connection to the daemon, reopened when the daemon closes it."""

    def __init__(self, daemon: VdsmdProcess) -> None:
        self.daemon = daemon
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                host, port = "127.0.0.1", self.daemon.port
                context = self.daemon.ssl_context()
                if context is None:
                    self.conn = http.client.HTTPConnection(host, port, timeout=60)
                else:
                    self.conn = http.client.HTTPSConnection(host, port, timeout=60, context=context)
            try:
                self.conn.request("POST", path, body, {"Content-Type": "text/plain"})
                response = self.conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, data
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def xml_ints(value: Any) -> Any:
    """Integers beyond XML-RPC's 32 bits as placeholders of raw <int> elements."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**31) <= value < 2**31:
        return RAW_INT + str(value)
    if isinstance(value, list):
        return [xml_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: xml_ints(v) for k, v in value.items()}
    return value


def xmlrpc_body(method: str, args: list[Any]) -> bytes:
    text = xmlrpc.client.dumps(tuple(xml_ints(args)), method, allow_none=True)
    text = text.replace(f"<string>{RAW_BIGDECIMAL}</string>", "<bigdecimal>1.5</bigdecimal>")
    while f"<string>{RAW_INT}" in text:
        start = text.index(f"<string>{RAW_INT}")
        end = text.index("</string>", start)
        digits = text[start + len(f"<string>{RAW_INT}") : end]
        text = text[:start] + f"<int>{digits}</int>" + text[end + len("</string>") :]
    # Characters XML cannot carry go as they are: the server must refuse the body cleanly.
    return text.encode("utf-8", "surrogatepass")


def json_body(doc: Any) -> bytes:
    text = json.dumps(doc).replace(f'"{RAW_HUGE_JSON_INT}"', "7" * 4400)
    return text.encode()


def check_json_answer(
    out: Outcome, allowed: dict[Any, set[int]], body: bytes, status: int, answer: bytes
) -> None:
    """``allowed``: the VDSM codes each request id may get (None: requests whose id is not
    one a response can carry, so answered with id null)."""
    if status == 204:
        return
    if status != 200:
        out.fail(f"HTTP {status}", body, answer)
        return
    try:
        doc = json.loads(answer)
    except ValueError:
        out.fail("answer is not JSON", body, answer)
        return
    for reply in doc if isinstance(doc, list) else [doc]:
        error = reply.get("error")
        out.codes[error.get("code") if error else 0] += 1
        if error is None:
            continue
        code = error.get("code")
        req_id = reply.get("id")
        if code not in PROTOCOL_ERRORS | {1000} | allowed.get(req_id, set()):
            out.fail(f"JSON-RPC error {code} for id {req_id!r}", body, answer)


def check_xml_answer(
    out: Outcome, verb: Verb | None, body: bytes, status: int, answer: bytes
) -> None:
    if status != 200:
        out.fail(f"HTTP {status}", body, answer)
        return
    try:
        (reply,), _ = xmlrpc.client.loads(answer)
        code = reply["status"]["code"]  # type: ignore[index,call-overload]
    except xmlrpc.client.Fault as fault:
        out.codes[fault.faultCode] += 1
        if fault.faultCode not in PROTOCOL_ERRORS:
            out.fail(f"fault {fault.faultCode}", body, answer)
        return
    except Exception as e:
        out.fail(f"answer is not XML-RPC: {e}", body, answer)
        return
    out.codes[int(code)] += 1
    if verb is None or code not in {0, 1000, *verb.errors}:
        out.fail(f"status {code} from {verb.title if verb else '?'}", body, answer)


def one_xmlrpc(rng: random.Random, t: Target, verbs: list[Verb]) -> tuple[bytes, Verb | None]:
    gen = Generator(rng, t, xml=True)
    verb = rng.choice([v for v in verbs if v.xmlrpc])
    args = gen.values(verb.xmlrpc_params)
    roll = rng.random()
    if roll < 0.1 and args:
        args = args[: rng.randrange(len(args))]  # missing
    elif roll < 0.15:
        args += [gen.hostile() for _ in range(rng.randint(1, 3))]  # extra
    method = str(verb.xmlrpc)
    if rng.random() < 0.02:
        method = rng.choice([method + "\u202e", "x" * 5000, "system.listMethods", "__init__"])
    return xmlrpc_body(method, args), verb


def json_request(
    rng: random.Random, t: Target, verbs: list[Verb], req_id: int
) -> tuple[dict[str, Any], Verb]:
    gen = Generator(rng, t, xml=False)
    verb = rng.choice([v for v in verbs if v.name])
    params = dict(zip([p.name for p in verb.params], gen.values(verb.params), strict=True))
    for name in list(params):
        if rng.random() < 0.08:
            del params[name]  # missing
    if rng.random() < 0.05:
        params[rng.choice(["extra", "\x1b]0;x\x07", "\ud800", "p" * 3000])] = gen.hostile()
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": verb.name}
    request["params"] = list(params.values()) if rng.random() < 0.1 else params
    roll = rng.random()
    if roll < 0.03:
        del request["id"]  # a notification
    elif roll < 0.06:
        request["id"] = rng.choice([None, 1.5, [1], "i" * 5000, RAW_HUGE_JSON_INT, True])
    elif roll < 0.08:
        request["method"] = rng.choice(["\x1b[2J", "x" * 10_000, "VM.nope", "\ud800"])
    return request, verb


def raw_json_body(rng: random.Random) -> bytes:
    depth = rng.choice([33, 999, 1001, 5000])
    return rng.choice(
        [
            b"[" * depth + b"]" * depth,
            b'{"jsonrpc": "2.0", "id": 1, "method": "Host.ping", "params": ' + b"{" * depth,
            b'{"jsonrpc": "2.0", "id": 1, "method": "Host.ping", "params": {"a": NaN}}',
            b'{"jsonrpc": "2.0", "id": 1, "method": "Host.ping", "params": "\\ud800"}',
            b"\xff\xfe garbage",
            b"[" + b", ".join([b'{"jsonrpc": "2.0", "id": 1, "method": "Host.ping"}'] * 101) + b"]",
        ]
    )


def fuzz(t: Target, seed: int, count: int) -> Outcome:
    rng = random.Random(seed)
    verbs = list(schema.load().verbs)
    conn = Connection(t.vdsmd)
    out = Outcome()
    next_id = 1
    try:
        while out.sent < count:
            roll = rng.random()
            if roll < 0.45:
                body, verb = one_xmlrpc(rng, t, verbs)
                status, answer = conn.post("/RPC2", body)
                check_xml_answer(out, verb, body, status, answer)
            elif roll < 0.97:
                size = 1 if rng.random() < 0.8 else rng.randint(2, 6)
                requests: list[Any] = []
                allowed: dict[Any, set[int]] = {}
                for _ in range(size):
                    request, verb = json_request(rng, t, verbs, next_id)
                    key = request.get("id") if request.get("id") == next_id else None
                    allowed.setdefault(key, set()).update(verb.errors)
                    next_id += 1
                    requests.append(request)
                    if rng.random() < 0.1:
                        requests.append(rng.choice([7, "x", [], {"jsonrpc": "2.0"}]))
                body = json_body(requests if size > 1 else requests[0])
                status, answer = conn.post("/jsonrpc", body)
                check_json_answer(out, allowed, body, status, answer)
            else:
                body = raw_json_body(rng)
                status, answer = conn.post("/jsonrpc", body)
                check_json_answer(out, {}, body, status, answer)
            if b"Traceback" in answer:
                out.fail("traceback in the answer", body, answer)
            out.sent += 1
            if out.sent % PING_EVERY == 0:
                assert t.vdsmd.xmlrpc().ping()["status"]["code"] == 0, f"after {out.sent}"
    finally:
        conn.close()
    return out
