"""Values on VDSM's XML-RPC wire, shared by the server and vdsClient.

XML-RPC integers are 32-bit: VDSM sends sizes and other large integers as decimal strings,
and so do both sides here. Tuples travel as lists, mapping keys as strings.
"""

from __future__ import annotations

from typing import Any

INT32 = range(-(2**31), 2**31)


def xmlrpc_safe(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if value in INT32 else str(value)
    if isinstance(value, dict):
        return {str(k): xmlrpc_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [xmlrpc_safe(v) for v in value]
    return value
