"""Checked reading of vdsmd's own JSON records (a VM's record and the block jobs in it).

A record read back from disk is trusted only field by field: each accessor returns the value
of one key if it has the expected type, and otherwise raises :class:`RecordError` naming the
key by its path in the record (``replications.vda.dst.poolID: missing``), so a torn, foreign
or edited file is a clear error, never a KeyError or a TypeError deep in an operation.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


class RecordError(ValueError):
    """A persisted record that is not what this daemon writes."""


def mapping_of(value: object, where: str) -> Mapping[str, Any]:
    """``value`` as a JSON object."""
    if not isinstance(value, dict):
        raise RecordError(f"{where}: expected a JSON object, got {value!r}")
    return value


def field_of(data: Mapping[str, Any], key: str, kind: type[T], where: str) -> T:
    """``data[key]``, which must be a ``kind`` (a bool is never taken for a number)."""
    if key not in data:
        raise RecordError(f"{where}.{key}: missing")
    value = data[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise RecordError(f"{where}.{key}={value!r}: expected {kind.__name__}")
    return value


def optional_of(data: Mapping[str, Any], key: str, kind: type[T], where: str) -> T | None:
    """``data[key]`` if present and not null, which must then be a ``kind``."""
    if data.get(key) is None:
        return None
    return field_of(data, key, kind, where)


def number_of(data: Mapping[str, Any], key: str, where: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where}.{key}={value!r}: expected a number")
    return float(value)


def enum_of(kind: type[E], data: Mapping[str, Any], key: str, where: str) -> E:
    value = field_of(data, key, str, where)
    try:
        return kind(value)
    except ValueError:
        raise RecordError(
            f"{where}.{key}={value!r}: expected one of {[str(v) for v in kind]}"
        ) from None
