"""qemu-img's conventions, both ways: how our values become its arguments, how its JSON is read.

Arguments: a path becomes a name qemu-img cannot take for an option or a protocol, ``-o``
options are joined in qemu's ``key=value,...`` syntax, and a paired option (a backing file and
its format) is refused when half of it is missing. Output: ``--output json`` is parsed, and
each object is checked for the keys the callers rely on, so a qemu-img that prints something
else fails here with :class:`QemuImgError` rather than as a KeyError far away. Running
qemu-img is :mod:`vdsm.storage.qemuimg`'s job; nothing here starts a process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from vdsm.errors import QemuImgError
from vdsm.storage import runner

StrPath = str | os.PathLike[str]


def filename_arg(path: StrPath) -> str:
    """``path`` as a qemu-img argument that can only mean that local file."""
    # qemu-img would take a name starting with "-" for an option, and a name with a colon
    # before its first "/" for a protocol ("json:", "nbd:"): make both plain file paths.
    name = os.fspath(path)
    if name.startswith("-") or ":" in name.split("/", 1)[0]:
        name = "./" + name
    return name


def options_arg(opts: Mapping[str, str]) -> str:
    """``opts`` as the value of one ``-o``."""
    # qemu's option syntax: "key=value,key=value", a comma inside a value doubled.
    return ",".join(f"{key}={value.replace(',', ',,')}" for key, value in opts.items())


def required_arg(value: str | None, name: str, because: str) -> str:
    """``value``, which must be given (not None) together with ``because``."""
    if value is None:
        raise ValueError(f"{name} is required with {because}")
    return value


def parse_json(argv: list[str], result: runner.CommandResult) -> Any:
    """The JSON that ``argv`` printed on stdout."""
    try:
        return json.loads(result.stdout)
    except ValueError as e:
        raise QemuImgError(argv, result.rc, result.stderr, reason=f"invalid JSON: {e}") from e


def checked_object(
    argv: list[str], result: runner.CommandResult, found: object, keys: Iterable[str]
) -> dict[str, Any]:
    """``found`` as a JSON object that has every one of ``keys``."""
    if not isinstance(found, dict):
        raise QemuImgError(argv, result.rc, result.stderr, reason="expected a JSON object")
    for key in keys:
        if key not in found:
            raise QemuImgError(argv, result.rc, result.stderr, reason=f"no {key!r} in output")
    return found
