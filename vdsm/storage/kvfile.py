"""The ``KEY=VALUE`` text format of VDSM's metadata files.

One ``KEY=VALUE`` a line, keys sorted, the last line ``EOF``. The ``EOF`` line is what lets a
reader tell a complete file from a truncated one, so parsing refuses a file without it.
"""

from __future__ import annotations

from collections.abc import Mapping

END_MARKER = "EOF"


class KVFormatError(ValueError):
    """The text is not a complete ``KEY=VALUE`` file; the message says what is wrong."""


def dump(values: Mapping[str, str]) -> str:
    lines = []
    for key in sorted(values):
        value = values[key]
        if "=" in key or "\n" in key or "\n" in value or not key:
            raise KVFormatError(f"cannot store key {key!r} with value {value!r}")
        lines.append(f"{key}={value}")
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def load(text: str) -> dict[str, str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[-1] != END_MARKER:
        raise KVFormatError("no EOF line: the file is truncated or not a metadata file")
    values: dict[str, str] = {}
    for number, line in enumerate(lines[:-1], start=1):
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise KVFormatError(f"line {number} is not KEY=VALUE: {line!r}")
        if key in values:
            raise KVFormatError(f"key {key} appears twice")
        values[key] = value
    return values
