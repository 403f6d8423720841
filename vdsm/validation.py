"""Input validation shared by every layer: UUIDs, sizes, enums and free text.

Every check raises :class:`vdsm.errors.InvalidParameter` (code 1000) naming the parameter, so
bad input is refused before it touches a path, a command line or a metadata file. UUIDs are the
first line of defence against path traversal: only the canonical 8-4-4-4-12 hex form passes,
so no ``/``, ``..`` or absolute path can ever be smuggled into a storage path.

Numbers parsed from client text take ASCII digits only, at most :data:`MAX_INT_DIGITS` of them,
checked before ``int()`` sees the text: ``str.isdigit()`` and ``int()`` accept any Unicode digit
(``"٥١٢"`` is 512, ``"²"`` passes ``isdigit()`` and then makes ``int()`` raise), and ``int()`` of
a 4,301-digit string raises ValueError instead of refusing. :func:`wire_value` bounds every
decoded request value — its depth, its number of values, its strings, its types — with an
explicit stack, so no check (and no ``repr`` in an error message) can recurse or run long.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import TypeVar

from vdsm.errors import InvalidParameter
from vdsm_api.wire import BLANK_UUID

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

E = TypeVar("E", bound=StrEnum)

# A signed 64-bit integer has at most 19 digits; 20 leaves room for the sign-less uint64 range
# and still keeps int() (and repr) far from Python's 4,300-digit conversion limit.
MAX_INT_DIGITS = 20
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Sizes go to qemu-img and to the kernel as off_t, a signed 64-bit byte count.
MAX_SIZE = INT64_MAX
# Limits of any one request value (a parameter), checked by wire_value before conversion. No
# verb takes anything nested deeper than a few levels (vmParams.devices[n].key is 3), nor more
# than a few hundred values; strings are names, paths and descriptions (PATH_MAX is 4 KiB).
MAX_DEPTH = 32
MAX_NODES = 10_000
MAX_STRING = 64 * 1024
MAX_KEY = 1024
# How much of a client's text an error message or a log line may quote.
SHOWN_LENGTH = 80

# fullmatch, not match with "$": "$" also matches before a trailing newline.
_INTEGER_RE = re.compile(r"-?[0-9]+")
_ASCII_BLANKS = " \t\r\n"


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


class RejectedNumber:
    """A wire number the decoder would not convert (too many digits, non-ASCII digits).

    The decoders (JSON-RPC's parse_int, XML-RPC's <int>) put this in place of the number, so
    that the check of the parameter holding it refuses it by name (1000) instead of the whole
    body failing, or ``int()`` seeing thousands of digits.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<number {shown(self.text, 40)}>"


def integer(value: object, param: str, *, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """Return ``value`` as an integer in ``[low, high]``, or raise naming ``param``.

    Takes an int or a decimal string: ASCII digits after at most one ``-``, at most
    :data:`MAX_INT_DIGITS` digits (checked before ``int()`` runs). Never a bool or a float.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidParameter(param, _brief(value), "expected an integer")
    if isinstance(value, str):
        digits = value.strip(_ASCII_BLANKS)
        if len(digits) > MAX_INT_DIGITS + 1:  # the sign
            raise InvalidParameter(param, value, f"more than {MAX_INT_DIGITS} digits")
        if not _INTEGER_RE.fullmatch(digits):
            raise InvalidParameter(param, value, "expected an integer (ASCII digits)")
        number = int(digits)
    else:
        number = value
    if number < low:
        raise InvalidParameter(param, _brief(value), f"must be at least {low}")
    if number > high:
        raise InvalidParameter(param, _brief(value), f"must be at most {high}")
    return number


def size_bytes(value: object, param: str, *, alignment: int = 512) -> int:
    """Return a positive byte count (at most :data:`MAX_SIZE`), aligned to ``alignment``;
    decimal strings are accepted because VDSM sends sizes as strings (they may exceed XML-RPC's
    32-bit integers)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidParameter(param, _brief(value), "expected a size in bytes")
    number = integer(value, param, high=MAX_SIZE)
    if number <= 0:
        raise InvalidParameter(param, value, "must be greater than zero")
    if number % alignment:
        raise InvalidParameter(param, value, f"must be a multiple of {alignment} bytes")
    return number


def string(value: object, param: str, *, max_length: int = MAX_STRING) -> str:
    """Return ``value`` if it is a string of at most ``max_length`` characters."""
    if not isinstance(value, str):
        raise InvalidParameter(param, _brief(value), "expected a string")
    if len(value) > max_length:
        raise InvalidParameter(param, value, f"longer than {max_length} characters")
    return value


def wire_value(
    value: object,
    param: str,
    *,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
    max_string: int = MAX_STRING,
) -> None:
    """Check that a decoded request value is plain JSON-like data within bounds.

    Accepted: str, int (64-bit), finite float, bool, None, and lists and string-keyed dicts
    of those, nested at most ``max_depth`` deep, ``max_nodes`` values in all, each string at
    most ``max_string`` characters of valid Unicode without NUL. Everything else a decoder
    can produce — bytes (XML-RPC base64), datetime, Decimal (bigdecimal), a RejectedNumber,
    a lone surrogate — is refused naming the parameter, or the place inside it
    (``vmParams.devices[0].path``). An explicit stack: no recursion, whatever the depth.
    """
    stack: list[tuple[object, str, int]] = [(value, param, 0)]
    nodes = 0
    while stack:
        item, where, depth = stack.pop()
        nodes += 1
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            _check_string(item, where, max_string)
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise InvalidParameter(where, _brief(item), "outside the 64-bit integer range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidParameter(where, item, "not a finite number")
        elif isinstance(item, list | tuple | dict):
            if depth >= max_depth:
                raise InvalidParameter(where, _brief(item), f"nested deeper than {max_depth}")
            if nodes + len(stack) + len(item) > max_nodes:
                raise InvalidParameter(param, _brief(value), f"more than {max_nodes} values")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise InvalidParameter(where, _brief(key), "keys must be strings")
                    _check_string(key, f"{where} key", MAX_KEY)
                    stack.append((child, f"{where}.{shown(key, 40)}", depth + 1))
            else:
                for index, child in enumerate(item):
                    stack.append((child, f"{where}[{index}]", depth + 1))
        else:
            raise InvalidParameter(where, _brief(item), _unexpected(item))


def count_values(doc: object, limit: int) -> int:
    """The number of values in ``doc`` (containers and scalars), counting at most ``limit + 1``:
    a cheap bound on a whole request body before any of it is looked at closely."""
    stack = [doc]
    count = 0
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return count


def shown(text: object, limit: int = SHOWN_LENGTH) -> str:
    """``text`` as it may be quoted back to a client or a log: non-printable characters
    escaped (``\\x1b``, ``\\ud800``), at most ``limit`` characters (then ``...``)."""
    raw = text if isinstance(text, str) else type(text).__name__
    # Escaping may quadruple the length: cut first, so a huge text costs nothing.
    escaped = "".join(ch if ch.isprintable() else _escape(ch) for ch in raw[: limit + 1])
    if len(raw) > limit or len(escaped) > limit:
        return escaped[: max(limit - 3, 0)] + "..."
    return escaped


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _check_string(text: str, where: str, max_length: int) -> None:
    if len(text) > max_length:
        raise InvalidParameter(where, text[:SHOWN_LENGTH], f"longer than {max_length} characters")
    if "\x00" in text:
        raise InvalidParameter(where, text, "NUL characters are not allowed")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameter(where, text, "not valid Unicode (a lone surrogate)") from None


def _unexpected(item: object) -> str:
    # Named as the XML-RPC wire calls them: that is what the client sent.
    if isinstance(item, bytes | bytearray):
        return "base64 data is not accepted"
    if isinstance(item, RejectedNumber):
        return f"not an integer of at most {MAX_INT_DIGITS} ASCII digits"
    name = type(item).__name__
    if name == "datetime":
        return "dateTime.iso8601 is not accepted"
    if name == "Decimal":
        return "bigdecimal is not accepted"
    return f"unexpected value of type {name}"


def _brief(value: object) -> object:
    """What an error message may quote of ``value``: scalars as they are (InvalidParameter
    shortens them), containers as a summary, since their repr could be huge or nest deeply, and
    integers too big for repr() (over 4,300 digits raise) by their size."""
    if isinstance(value, dict | list | tuple):
        return f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, bytes | bytearray):
        return f"<base64 of {len(value)} bytes>"
    return value


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
    description would forge a key. So is anything else not printable (C1 controls, U+2028 and
    U+2029, which split lines too): names reach logs and terminals.
    """
    if not isinstance(value, str):
        raise InvalidParameter(param, value, "expected a string")
    if len(value) > max_length:
        raise InvalidParameter(param, value, f"longer than {max_length} characters")
    if not value.isprintable():
        raise InvalidParameter(param, value, "control characters are not allowed")
    return value
