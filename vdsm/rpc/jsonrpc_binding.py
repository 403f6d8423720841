"""JSON-RPC 2.0 on /jsonrpc: VDSM's namespaced verbs (``Volume.create``) with named parameters.

A verb's result is the JSON-RPC ``result``; a non-zero status becomes a JSON-RPC ``error``
carrying VDSM's code and message. Protocol errors use JSON-RPC's own codes. Batches and
notifications (no ``id``: no answer) are supported; positional ``params`` follow the order of
the JSON-RPC parameters in the schema.
"""

from __future__ import annotations

import json
from typing import Any

from vdsm.errors import InvalidParameter, VdsmError
from vdsm.rpc.dispatcher import Dispatcher

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601


def handle(dispatcher: Dispatcher, body: bytes, flow_id: str | None) -> bytes | None:
    """The response body, or None when every request was a notification."""
    try:
        doc = json.loads(body)
    except Exception as e:  # bad UTF-8, bad JSON, nesting too deep
        return dump(_error(None, PARSE_ERROR, f"Parse error: {type(e).__name__}: {e}"))
    if isinstance(doc, list):
        if not doc:
            return dump(_error(None, INVALID_REQUEST, "Invalid Request: empty batch"))
        answers = [a for a in (_one(dispatcher, r, flow_id) for r in doc) if a is not None]
        return dump(answers) if answers else None
    answer = _one(dispatcher, doc, flow_id)
    return dump(answer) if answer is not None else None


def _one(dispatcher: Dispatcher, request: Any, flow_id: str | None) -> dict[str, Any] | None:
    if not isinstance(request, dict):
        return _error(None, INVALID_REQUEST, "Invalid Request: not an object")
    req_id = request.get("id")
    if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, str | int)):
        return _error(None, INVALID_REQUEST, "Invalid Request: id must be a string or number")
    method = request.get("method")
    if request.get("jsonrpc") != "2.0" or not isinstance(method, str):
        return _error(req_id, INVALID_REQUEST, "Invalid Request: needs jsonrpc '2.0' and a method")
    notification = "id" not in request
    verb = dispatcher.schema.by_name.get(method)
    if verb is None:
        answer = _error(req_id, METHOD_NOT_FOUND, f"Method not found: {method}")
        return None if notification else answer
    try:
        params = request.get("params", {})
        if isinstance(params, list):
            if len(params) > len(verb.params):
                raise InvalidParameter("params", len(params), f"{method} takes {len(verb.params)}")
            params = {p.name: v for p, v in zip(verb.params, params, strict=False)}
        elif not isinstance(params, dict):
            raise InvalidParameter("params", params, "expected an object or an array")
        result = dispatcher.call(verb, verb.bind_named(params), flow_id)
        answer = {"jsonrpc": "2.0", "id": req_id, "result": result}
    except VdsmError as e:
        answer = _error(req_id, e.code, e.message)
    return None if notification else answer


def _error(req_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")
