"""XML-RPC on /RPC2: VDSM's legacy verbs with positional arguments, answered with the envelope.

Protocol errors (a body that is not an XML-RPC call, an unknown method) are XML-RPC faults, as
every XML-RPC client expects; everything the API says, success or error, is VDSM's envelope.
XML-RPC integers are 32-bit, so larger integers (sizes) travel as decimal strings, as in VDSM.
"""

from __future__ import annotations

import xmlrpc.client

from vdsm.errors import VdsmError
from vdsm.rpc import envelope
from vdsm.rpc.dispatcher import Dispatcher
from vdsm_api.wire import xmlrpc_safe

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603


def handle(dispatcher: Dispatcher, body: bytes, flow_id: str | None) -> bytes:
    try:
        params, method = xmlrpc.client.loads(body, use_builtin_types=True)
    except Exception as e:  # expat, value and type errors: any way a body can be malformed
        return fault(PARSE_ERROR, f"not an XML-RPC call: {type(e).__name__}: {e}")
    if not method:
        return fault(INVALID_REQUEST, "not an XML-RPC method call")
    verb = dispatcher.schema.by_xmlrpc.get(method)
    if verb is None:
        return fault(METHOD_NOT_FOUND, f"method {method!r} is not supported")
    try:
        kwargs = verb.bind_positional(list(params))
        response = envelope.success(verb, dispatcher.call(verb, kwargs, flow_id))
    except VdsmError as e:
        response = envelope.failure(e)
    text = xmlrpc.client.dumps((xmlrpc_safe(response),), methodresponse=True, allow_none=True)
    return text.encode("utf-8")


def fault(code: int, message: str) -> bytes:
    text = xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True)
    return text.encode("utf-8")
