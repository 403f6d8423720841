"""XML-RPC on /RPC2: VDSM's legacy verbs with positional arguments, answered with the envelope.

Protocol errors (a body that is not an XML-RPC call, an unknown method, a body of too many
values) are XML-RPC faults, as every XML-RPC client expects; everything the API says, success or
error, is VDSM's envelope, and so is a bad parameter (1000, naming it). XML-RPC integers are
32-bit, so larger integers (sizes) travel as decimal strings, as in VDSM.

The body is decoded by a stricter unmarshaller than xmlrpc.client's: ``<int>`` and ``<double>``
take ASCII digits only (``int()`` and ``float()`` would read ``٥١٢`` as 512) and at most
vdsm.validation.MAX_INT_DIGITS of them; anything else is kept as a RejectedNumber, which the
parameter's check refuses by name. ``<base64>``, ``<dateTime.iso8601>`` and ``<bigdecimal>``
decode to bytes, datetime and Decimal, which no parameter takes: the same check refuses them.
"""

from __future__ import annotations

import re
import xmlrpc.client
from typing import Any

from vdsm import validation
from vdsm.errors import VdsmError
from vdsm.rpc import envelope
from vdsm.rpc.dispatcher import Dispatcher
from vdsm_api.wire import xmlrpc_safe

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
# Values (<value> elements) in one call: no verb takes more than a few hundred; the pure-Python
# unmarshaller stops at this many instead of building all of a 4 MiB body.
MAX_BODY_VALUES = 10 * validation.MAX_NODES
MAX_METHOD_LENGTH = 128

_INTEGER_RE = re.compile(r"[+-]?[0-9]+")  # XML-RPC's <int> grammar allows a "+"
_DOUBLE_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_MAX_DOUBLE_LENGTH = 64


class TooManyValues(Exception):
    """The body holds more than MAX_BODY_VALUES values."""


class StrictUnmarshaller(xmlrpc.client.Unmarshaller):
    """xmlrpc.client's unmarshaller with ASCII-only, bounded numbers and a bounded size."""

    dispatch = dict(xmlrpc.client.Unmarshaller.dispatch)

    def __init__(self) -> None:
        super().__init__(use_builtin_types=True)
        self._values = 0

    def start(self, tag: str, attrs: Any) -> None:
        if tag == "value":
            self._values += 1
            if self._values > MAX_BODY_VALUES:
                raise TooManyValues(f"more than {MAX_BODY_VALUES} values")
        super().start(tag, attrs)

    def end_int(self, data: str) -> None:
        text = data.strip(" \t\r\n")
        digits = len(text.lstrip("+-"))
        if digits <= validation.MAX_INT_DIGITS and _INTEGER_RE.fullmatch(text):
            self.append(int(text))
        else:
            self.append(validation.RejectedNumber(data))
        self._value = False

    def end_double(self, data: str) -> None:
        text = data.strip(" \t\r\n")
        if len(text) <= _MAX_DOUBLE_LENGTH and _DOUBLE_RE.fullmatch(text):
            self.append(float(text))
        else:
            self.append(validation.RejectedNumber(data))
        self._value = False


# The decoders of StrictUnmarshaller replace xmlrpc.client's for every numeric tag.
for _tag in ("i1", "i2", "i4", "i8", "int", "biginteger"):
    StrictUnmarshaller.dispatch[_tag] = StrictUnmarshaller.end_int  # type: ignore[assignment]
for _tag in ("double", "float"):
    StrictUnmarshaller.dispatch[_tag] = StrictUnmarshaller.end_double  # type: ignore[assignment]


def parse(body: bytes) -> tuple[tuple[Any, ...], str | None]:
    """The params and method name of an XML-RPC call (xmlrpc.client.loads, made strict)."""
    target = StrictUnmarshaller()
    parser = xmlrpc.client.ExpatParser(target)
    parser.feed(body)
    parser.close()
    return target.close(), target.getmethodname()


def handle(dispatcher: Dispatcher, body: bytes, flow_id: str | None) -> bytes:
    try:
        params, method = parse(body)
    except TooManyValues as e:
        return fault(INVALID_REQUEST, f"request too large: {e}")
    except Exception as e:  # expat, value and type errors: any way a body can be malformed
        # A parser's message may quote the body: shortened and escaped.
        reason = validation.shown(str(e), 200)
        return fault(PARSE_ERROR, f"not an XML-RPC call: {type(e).__name__}: {reason}")
    if not method:
        return fault(INVALID_REQUEST, "not an XML-RPC method call")
    verb = dispatcher.schema.by_xmlrpc.get(method)
    if verb is None:
        # The name is the client's: quoted escaped and short, never as sent.
        shown = validation.shown(method, MAX_METHOD_LENGTH)
        return fault(METHOD_NOT_FOUND, f"method '{shown}' is not supported")
    try:
        result = dispatcher.call(verb, lambda: verb.bind_positional(list(params)), flow_id)
        response = envelope.success(verb, result)
    except VdsmError as e:
        response = envelope.failure(e)
    text = xmlrpc.client.dumps((xmlrpc_safe(response),), methodresponse=True, allow_none=True)
    return text.encode("utf-8")


def fault(code: int, message: str) -> bytes:
    text = xmlrpc.client.dumps(xmlrpc.client.Fault(code, xmlrpc_safe(message)), methodresponse=True)
    return text.encode("utf-8")
