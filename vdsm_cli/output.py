"""Show a verb's answer: readable text by default, one JSON object with ``--json``.

The payload is the envelope without its ``status``: ``{"uuid": TASKID}``, ``{"info": {...}}``,
``{"uuidlist": [...]}``, the merged keys of ``getStoragePoolInfo``, or ``{}`` for verbs that
only answer a status. ``--json`` prints exactly that object. The readable form drops the
envelope key and shows the value: a task id or any single value on its own line, a list one
item per line, a mapping as sorted ``key = value`` lines (nested mappings indented under their
key), and nothing at all for a status-only answer.
"""

from __future__ import annotations

import json
from typing import Any

INDENT = "    "


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
            lines.append(f"{indent}{key} = {_scalar(value)}")
        elif isinstance(value, list | tuple) and all(_is_scalar(item) for item in value):
            lines.append(f"{indent}{key} = {', '.join(_scalar(item) for item in value)}")
        else:
            lines.append(f"{indent}{key}:")
            lines.extend(_lines(value, indent + INDENT))
    return lines


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
