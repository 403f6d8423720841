"""The errors of vdsClient and the exit code each one maps to.

Everything that can go wrong in the client is one of three kinds, and ``main`` turns each into
one line on stderr and its exit code, never a traceback:

- :class:`UsageError` (2): the command line is wrong; caught before anything is sent;
- :class:`ApiError` (1): vdsmd answered with a non-zero status code;
- :class:`ConnectionFailed` (3): no usable answer (refused, TLS failure, timeout, XML-RPC fault);
  :class:`ConnectionRefused`, the one kind of it that proves the request never reached vdsmd.

A message often quotes the server (an error message echoing a parameter, a fault string): its
control characters are escaped once, here, so that what ``main`` prints cannot drive the
terminal (vdsm_cli.output.terminal_safe); newlines and tabs are kept.
"""

from __future__ import annotations

import functools

from vdsm_api.docs import error_table
from vdsm_cli.output import terminal_safe

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class CliError(Exception):
    exit_code = EXIT_API_ERROR

    def __init__(self, message: str) -> None:
        safe = terminal_safe(message, newlines=True)
        super().__init__(safe)
        self.message = safe


class UsageError(CliError):
    """A bad command line; ``usage`` is the line to show with it (may be empty)."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class ApiError(CliError):
    """vdsmd answered with status ``code`` (non-zero) and ``text``."""

    exit_code = EXIT_API_ERROR

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"error {code} ({error_name(code)}): {text}")


class ConnectionFailed(CliError):
    exit_code = EXIT_CONNECTION


class ConnectionRefused(ConnectionFailed):
    """Nothing listens at the address: the request was never sent, so it changed nothing and
    may be sent again elsewhere (moveDisk looks for a new SPM on it)."""


@functools.cache
def _error_names() -> dict[int, tuple[str, str]]:
    return error_table()


def error_name(code: int) -> str:
    """VDSM's name for ``code`` (``VolumeDoesNotExist``), or ``unknown`` for a code we lack."""
    entry = _error_names().get(code)
    return entry[0] if entry else "unknown"


def error_title(code: int) -> str:
    entry = _error_names().get(code)
    return entry[1] if entry else ""
