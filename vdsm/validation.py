"""Input validation shared by every layer: UUIDs, sizes, enums and free text.

Every check raises :class:`vdsm.errors.InvalidParameter` (code 1000) naming the parameter, so
bad input is refused before it touches a path, a command line or a metadata file. UUIDs are the
first line of defence against path traversal: only the canonical 8-4-4-4-12 hex form passes,
so no ``/``, ``..`` or absolute path can ever be smuggled into a storage path.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TypeVar

from vdsm.errors import InvalidParameter

BLANK_UUID = "00000000-0000-0000-0000-000000000000"

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

E = TypeVar("E", bound=StrEnum)


def uuid(value: object, param: str, *, allow_blank: bool = False) -> str:
    """Return ``value`` as a canonical lower-case UUID string, or raise naming ``param``."""
    if not isinstance(value, str):
        raise InvalidParameter(param, value, "expected a UUID string")
    canonical = value.strip().lower()
    if not _UUID_RE.match(canonical):
        raise InvalidParameter(param, value, "not a UUID")
    if canonical == BLANK_UUID and not allow_blank:
        raise InvalidParameter(param, value, "the blank UUID is not allowed here")
    return canonical


def size_bytes(value: object, param: str, *, alignment: int = 512) -> int:
    """Return a positive byte count, aligned to ``alignment``; numeric strings are accepted
    because VDSM sends sizes as strings (they may exceed XML-RPC's 32-bit integers)."""
    if isinstance(value, bool):
        raise InvalidParameter(param, value, "expected a size in bytes")
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise InvalidParameter(param, value, "expected a size in bytes")
        number = int(text)
    elif isinstance(value, int):
        number = value
    else:
        raise InvalidParameter(param, value, "expected a size in bytes")
    if number <= 0:
        raise InvalidParameter(param, value, "must be greater than zero")
    if number % alignment:
        raise InvalidParameter(param, value, f"must be a multiple of {alignment} bytes")
    return number


def enum_value(value: object, enum_type: type[E], param: str) -> E:
    """Return the member of ``enum_type`` named by ``value`` (its string value)."""
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        try:
            return enum_type(value)
        except ValueError:
            pass
    allowed = ", ".join(member.value for member in enum_type)
    raise InvalidParameter(param, value, f"expected one of {allowed}")


def text(value: object, param: str, *, max_length: int) -> str:
    """Return ``value`` as single-line text of at most ``max_length`` characters.

    Control characters are refused: metadata files are ``KEY=VALUE`` lines, and a newline in a
    description would forge a key.
    """
    if not isinstance(value, str):
        raise InvalidParameter(param, value, "expected a string")
    if len(value) > max_length:
        raise InvalidParameter(param, value, f"longer than {max_length} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidParameter(param, value, "control characters are not allowed")
    return value
