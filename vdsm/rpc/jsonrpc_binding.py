"""JSON-RPC 2.0 on /jsonrpc: VDSM's namespaced verbs (``Volume.create``) with named parameters.

A verb's result is the JSON-RPC ``result``; a non-zero status becomes a JSON-RPC ``error``
carrying VDSM's code and message. Protocol errors use JSON-RPC's own codes. Batches and
notifications (no ``id``: no answer) are supported; positional ``params`` follow the order of
the JSON-RPC parameters in the schema.

Hostile bodies are bounded before any work: the parser turns integers longer than
vdsm.validation.MAX_INT_DIGITS into RejectedNumber (refused by name later, never given to
``int()``), refuses NaN and Infinity, and a nesting too deep for it is a parse error; a whole
body may hold at most MAX_BODY_VALUES values and a batch MAX_BATCH requests. Each element of
a batch is answered on its own: whatever goes wrong in one, the others keep their answers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from vdsm import validation
from vdsm.errors import InvalidParameter, VdsmError
from vdsm.rpc.dispatcher import Dispatcher

log = logging.getLogger("vdsm.rpc.jsonrpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
# A batch is a client's shortcut for a few calls, not a bulk interface: 100 is plenty, and it
# bounds the work one body can ask for.
MAX_BATCH = 100
# Values in a whole body: a full batch of ordinary requests is far below; a body of 4 MiB of
# "[]," (1.4 million lists) is refused before anything walks it again.
MAX_BODY_VALUES = 10 * validation.MAX_NODES
# Request ids are echoed back: a handle, not a payload.
MAX_ID_LENGTH = 256
MAX_METHOD_LENGTH = 128


def handle(dispatcher: Dispatcher, body: bytes, flow_id: str | None) -> bytes | None:
    """The response body, or None when every request was a notification."""
    try:
        doc = parse(body)
    except RecursionError:  # the C parser recurses once per level: ~1,000 levels is its end
        return dump(_error(None, PARSE_ERROR, "Parse error: nested too deeply"))
    except Exception as e:  # bad UTF-8, bad JSON, NaN
        return dump(_error(None, PARSE_ERROR, f"Parse error: {type(e).__name__}: {e}"))
    if validation.count_values(doc, MAX_BODY_VALUES) > MAX_BODY_VALUES:
        return dump(
            _error(None, INVALID_REQUEST, f"Invalid Request: more than {MAX_BODY_VALUES} values")
        )
    if isinstance(doc, list):
        if not doc:
            return dump(_error(None, INVALID_REQUEST, "Invalid Request: empty batch"))
        if len(doc) > MAX_BATCH:
            message = f"Invalid Request: a batch of {len(doc)} requests (at most {MAX_BATCH})"
            return dump(_error(None, INVALID_REQUEST, message))
        # Each answer encoded on its own, so one that cannot be encoded spoils only itself.
        answers = [a for a in (_guarded(dispatcher, r, flow_id) for r in doc) if a is not None]
        return b"[" + b", ".join(answers) + b"]" if answers else None
    return _guarded(dispatcher, doc, flow_id)


def parse(body: bytes) -> Any:
    """Decode a body; integers of too many digits become RejectedNumber, NaN is refused."""
    return json.loads(body, parse_int=_parse_int, parse_constant=_refuse_constant)


def _parse_int(text: str) -> int | validation.RejectedNumber:
    # The decoder gives ASCII digits only, with an optional "-".
    if len(text.lstrip("-")) > validation.MAX_INT_DIGITS:
        return validation.RejectedNumber(text)
    return int(text)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _guarded(dispatcher: Dispatcher, request: Any, flow_id: str | None) -> bytes | None:
    """One request's encoded answer, whatever happens: a bug in it (or a result that cannot be
    encoded) is its own -32603 with a generic message, logged; never the batch's."""
    try:
        answer = _one(dispatcher, request, flow_id)
        return None if answer is None else dump(answer)
    except Exception:
        log.exception("JSON-RPC request failed")
        if isinstance(request, dict) and "id" not in request:
            return None  # a notification: nothing to answer, even an error
        error = _error(_request_id(request), INTERNAL_ERROR, "Internal error (see the vdsmd log)")
        return dump(error)


def _request_id(request: Any) -> str | int | None:
    """The request's id if it is one a response may carry, else None."""
    if not isinstance(request, dict):
        return None
    req_id = request.get("id")
    if isinstance(req_id, bool) or not isinstance(req_id, str | int):
        return None
    if isinstance(req_id, str):
        try:
            validation.wire_value(req_id, "id", max_string=MAX_ID_LENGTH)
        except InvalidParameter:
            return None
    return req_id


def _one(dispatcher: Dispatcher, request: Any, flow_id: str | None) -> dict[str, Any] | None:
    if not isinstance(request, dict):
        return _error(None, INVALID_REQUEST, "Invalid Request: not an object")
    req_id = _request_id(request)
    if request.get("id") is not None and req_id is None:
        return _error(
            None,
            INVALID_REQUEST,
            f"Invalid Request: id must be a string (at most {MAX_ID_LENGTH} characters) or an "
            "integer",
        )
    method = request.get("method")
    if request.get("jsonrpc") != "2.0" or not isinstance(method, str):
        return _error(req_id, INVALID_REQUEST, "Invalid Request: needs jsonrpc '2.0' and a method")
    notification = "id" not in request
    verb = dispatcher.schema.by_name.get(method)
    if verb is None:
        # The name is the client's: quoted escaped and short, never as sent.
        shown = validation.shown(method, MAX_METHOD_LENGTH)
        answer = _error(req_id, METHOD_NOT_FOUND, f"Method not found: {shown}")
        return None if notification else answer

    def bind() -> dict[str, Any]:
        params = request.get("params", {})
        if isinstance(params, list):
            if len(params) > len(verb.params):
                raise InvalidParameter("params", len(params), f"{method} takes {len(verb.params)}")
            params = {p.name: v for p, v in zip(verb.params, params, strict=False)}
        elif not isinstance(params, dict):
            raise InvalidParameter(
                "params", type(params).__name__, "expected an object or an array"
            )
        return verb.bind_named(params)

    try:
        result = dispatcher.call(verb, bind, flow_id)
        answer = {"jsonrpc": "2.0", "id": req_id, "result": result}
    except VdsmError as e:
        answer = _error(req_id, e.code, e.message)
    return None if notification else answer


def _error(req_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")
