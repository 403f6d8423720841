"""Show a verb's answer: readable text by default, one JSON object with ``--json``.

The payload is the envelope without its ``status``: ``{"uuid": TASKID}``, ``{"info": {...}}``,
``{"uuidlist": [...]}``, the merged keys of ``getStoragePoolInfo``, or ``{}`` for verbs that
only answer a status. ``--json`` prints exactly that object. The readable form drops the
envelope key and shows the value: a task id or any single value on its own line, a list one
item per line, a mapping as sorted ``key = value`` lines (nested mappings indented under their
key), and nothing at all for a status-only answer.

Every string the server sent is shown through :func:`terminal_safe`: a name, a description
or an error message is the server's (and often a client's) text, and an ESC or BEL in it
printed raw would drive the terminal (retitle it, clear it, hide what follows). Control
characters are shown escaped instead (``\\x1b``); in the one-line-per-value text form a
newline is escaped too, so that no value can forge a line of its own.
"""

from __future__ import annotations

import json
import re
from typing import Any

INDENT = "    "

# C0 controls, DEL, C1 controls (0x9b is CSI on some terminals), and the line and paragraph
# separators; tab and newline are each the caller's choice.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def terminal_safe(text: str, *, newlines: bool = False) -> str:
    """``text`` with its control characters escaped (``\\x1b``); a tab is kept, and so is a
    newline if ``newlines`` (multi-line messages)."""
    if text.isascii() and text.isprintable():
        return text  # the common case, without a regex pass
    pattern = _CONTROL_BUT_NEWLINE if newlines else _CONTROL
    return pattern.sub(_escape, text)


_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def payload(envelope: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in envelope.items() if key != "status"}


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def to_text(data: dict[str, Any]) -> str:
    """The readable form of a payload ('' when there is nothing to show)."""
    if not data:
        return ""
    if len(data) == 1:  # the value under VDSM's envelope key
        (value,) = data.values()
        return "\n".join(_lines(value, ""))
    return "\n".join(_lines(data, ""))


def _lines(value: Any, indent: str) -> list[str]:
    if isinstance(value, dict):
        return _mapping_lines(value, indent)
    if isinstance(value, list | tuple):
        if all(_is_scalar(item) for item in value):
            return [indent + _scalar(item) for item in value]
        lines: list[str] = []
        for index, item in enumerate(value):
            if index:
                lines.append("")
            lines.extend(_lines(item, indent))
        return lines
    return [indent + _scalar(value)]


def _mapping_lines(mapping: dict[str, Any], indent: str) -> list[str]:
    lines: list[str] = []
    for key in sorted(mapping, key=str):
        value = mapping[key]
        if _is_scalar(value):
            lines.append(f"{indent}{_key(key)} = {_scalar(value)}")
        elif isinstance(value, list | tuple) and all(_is_scalar(item) for item in value):
            lines.append(f"{indent}{_key(key)} = {', '.join(_scalar(item) for item in value)}")
        else:
            lines.append(f"{indent}{_key(key)}:")
            lines.extend(_lines(value, indent + INDENT))
    return lines


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return terminal_safe(str(value))


def _key(key: object) -> str:
    return terminal_safe(str(key))
