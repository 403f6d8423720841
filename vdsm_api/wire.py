"""Values on VDSM's XML-RPC wire, shared by the server and vdsClient.

XML-RPC integers are 32-bit: VDSM sends sizes and other large integers as decimal strings,
and so do both sides here. Tuples travel as lists, mapping keys as strings. XML 1.0 cannot
carry most control characters nor lone surrogates at all (a document holding one is not
well-formed, and the receiver's parser fails on the whole answer): such characters in a
string are sent as the text ``\\xNN`` / ``\\uNNNN`` instead, so one odd string (a name a
JSON-RPC client chose, say) cannot break every answer that lists it.
"""

from __future__ import annotations

import re
from typing import Any

INT32 = range(-(2**31), 2**31)

# The characters XML 1.0 forbids (§2.2 Char), and the surrogates, which UTF-8 cannot encode.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xmlrpc_safe(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if value in INT32 else str(value)
    if isinstance(value, str):
        return xml_text(value)
    if isinstance(value, dict):
        return {xml_text(str(k)): xmlrpc_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [xmlrpc_safe(v) for v in value]
    return value


def xml_text(text: str) -> str:
    """``text`` with every character XML cannot carry written as its escape."""
    if text.isascii() and text.isprintable():
        return text  # the common case, without a regex pass
    return _NOT_XML.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# The null UUID: "no parent" for a base volume, VDSM's BLANK_UUID; the same on both sides.
BLANK_UUID = "00000000-0000-0000-0000-000000000000"
