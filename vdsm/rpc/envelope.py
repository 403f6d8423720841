"""VDSM's status envelope: ``{'status': {'code': int, 'message': str}, ...payload}``."""

from __future__ import annotations

from typing import Any

from vdsm.errors import VdsmError
from vdsm_api.schema import Verb

SUCCESS = {"code": 0, "message": "Done"}


def success(verb: Verb, result: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {"status": dict(SUCCESS)}
    if verb.xmlrpc_merge and isinstance(result, dict):
        envelope.update(result)
    elif verb.xmlrpc_key is not None:
        envelope[verb.xmlrpc_key] = result
    return envelope


def failure(error: VdsmError) -> dict[str, Any]:
    return {"status": {"code": error.code, "message": error.message}}
