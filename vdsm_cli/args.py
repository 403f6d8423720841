"""Turn a legacy verb's command-line strings into the XML-RPC values vdsmd expects.

The client only *parses*: it turns each string into the wire type of its parameter (an int, a
bool, a list, a mapping) and refuses, as a usage error naming the parameter, a string that
cannot become that type. Judging the values (is it a UUID, a known enum, an aligned size?) is
the daemon's job, so the answer and its code (1000) are the same for every client.

Per parameter type:

- int: a decimal integer (beyond XML-RPC's 32 bits it travels as a decimal string);
- enum: sent as given, a number when numeric (``4``), else the name (``COW``);
- bool: ``true`` or ``false`` (any case);
- size: bytes as a decimal string (XML-RPC ints are 32-bit); ``K``/``M``/``G``/``T`` suffixes
  (powers of 1024) are expanded, anything else goes as given for the daemon to judge;
- list: a JSON array, or comma-separated items (``a,b,c``; empty for ``[]``);
- dict and struct: a JSON object, or ``key=value,key=value`` (the values are strings; JSON is
  the way to numbers, nested values and lists of mappings);
- any: JSON when it parses as JSON, else the string;
- uuid, uuid_or_blank, string: the string as given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from vdsm_api.schema import Param, ParamType, Verb
from vdsm_api.wire import xmlrpc_safe
from vdsm_cli.errors import UsageError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT])(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"K": 1, "M": 2, "G": 3, "T": 4}


def usage_line(verb: Verb) -> str:
    """``createVolume <storagedomainID> ... <volumeID> [<desc> [<srcImgUUID> ...]]``."""
    params = verb.xmlrpc_params
    required = min_args(verb)
    words = [f"<{p.name}>" for p in params[:required]]
    optional = [f"<{p.name}>" for p in params[required:]]
    tail = ""
    for word in reversed(optional):
        tail = f" [{word}{tail}]"
    return " ".join([str(verb.xmlrpc), *words]) + tail


def min_args(verb: Verb) -> int:
    """How many positional arguments must be given: up to the last required parameter.

    An optional parameter followed by a required one (diskType before volumeID in createVolume)
    must be given too: positions cannot be skipped.
    """
    count = 0
    for index, param in enumerate(verb.xmlrpc_params):
        if param.required:
            count = index + 1
    return count


def convert_args(verb: Verb, values: Sequence[str]) -> list[Any]:
    """The XML-RPC arguments of ``verb`` for the command-line strings ``values``."""
    params = verb.xmlrpc_params
    low, high = min_args(verb), len(params)
    if not low <= len(values) <= high:
        if low == high:
            expected = f"{low}"
        elif len(values) < low:
            expected = f"at least {low}"
        else:
            expected = f"at most {high}"
        raise UsageError(
            f"{verb.xmlrpc} takes {expected} argument{'s' if expected != '1' else ''}, "
            f"{len(values)} given",
            usage_line(verb),
        )
    try:
        return [convert_arg(param, value) for param, value in zip(params, values, strict=False)]
    except UsageError as e:
        raise UsageError(e.message, usage_line(verb)) from None


def convert_arg(param: Param, value: str) -> Any:
    try:
        return xmlrpc_safe(convert_value(param.type, value))
    except ValueError as e:
        raise UsageError(f"{param.name}: {e} (got {value!r})") from None


def convert_value(ptype: ParamType, value: str) -> Any:
    """One string → its wire value; ValueError (with the reason) when it cannot be."""
    if ptype.enum is not None:
        text = value.strip()
        return int(text) if _is_int(text) else value
    if ptype.struct is not None:
        return _mapping(value, f"a {ptype.struct.name} mapping")
    if ptype.kind == "list":
        assert ptype.item is not None
        return [_list_item(ptype.item, item) for item in _list(value)]
    if ptype.kind == "int":
        text = value.strip()
        if not _is_int(text):
            raise ValueError("expected an integer")
        return int(text)
    if ptype.kind == "bool":
        lowered = value.strip().lower()
        if lowered not in ("true", "false"):
            raise ValueError("expected true or false")
        return lowered == "true"
    if ptype.kind == "size":
        return _size(value)
    if ptype.kind == "dict":
        return _mapping(value, "a mapping")
    if ptype.kind == "any":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value  # uuid, uuid_or_blank, string


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit() and text.count("-") <= 1


def _size(value: str) -> str:
    match = _SIZE_RE.match(value)
    if match is None:
        return value.strip()
    number, unit = match.groups()
    return str(int(number) * 1024 ** _SIZE_UNITS[unit.upper()])


def _list(value: str) -> list[Any]:
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError as e:
            raise ValueError(f"not a JSON array: {e}") from None
        if not isinstance(parsed, list):
            raise ValueError("expected a JSON array or comma-separated items")
        return parsed
    return [part.strip() for part in text.split(",") if part.strip()]


def _list_item(item_type: ParamType, item: Any) -> Any:
    """An item of a list: strings are converted like an argument; JSON values are kept."""
    if isinstance(item, str):
        return convert_value(item_type, item)
    return item


def _mapping(value: str, what: str) -> dict[str, Any]:
    text = value.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as e:
            raise ValueError(f"not a JSON object: {e}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"expected {what}")
        return parsed
    result: dict[str, Any] = {}
    for pair in (part.strip() for part in text.split(",")):
        if not pair:
            continue
        key, sep, item = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected {what}: a JSON object or key=value,key=value")
        result[key.strip()] = item.strip()
    if not result:
        raise ValueError(f"expected {what}: a JSON object or key=value,key=value")
    return result
