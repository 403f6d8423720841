"""Crash-safe file primitives: atomic replace of small files, directory fsync, tidy removal.

A reader of a file written with :func:`atomic_write` sees either the old content or the new
one, never a torn mix, even if the process dies or the host loses power at any step: the data
goes to a hidden temporary file in the same directory, is fsynced, renamed over the target,
and the directory is fsynced so the rename itself is durable.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from vdsm.storage import os_errors

TEMP_PREFIX = "."
TEMP_MARKER = ".tmp-"


def temp_path_for(path: Path) -> Path:
    """A hidden sibling name that no listing of volumes or tasks ever mistakes for data."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}{TEMP_MARKER}{secrets.token_hex(4)}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    tmp = temp_path_for(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        remove_file(tmp)
        raise
    fsync_dir(path.parent)


def write_state(path: Path, data: bytes, what: str) -> None:
    """:func:`atomic_write` of a record of vdsmd's own state (``what``: "the VM record"). An
    OSError (the state directory full, read-only, failing) becomes GeneralException naming the
    record, its path and the errno, for the caller to see; nothing is left half-written (the
    old record stays whole, the temporary file is removed)."""
    try:
        atomic_write(path, data)
    except OSError as e:
        raise os_errors.general(f"write {what}", path, e) from None


def create_empty(path: Path, mode: int = 0o644) -> None:
    """Create an empty file; fail if it exists (a leftover must never be adopted silently)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.close(fd)


def remove_file(path: Path) -> bool:
    """Remove ``path`` if it exists; return whether it did."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_dir_if_empty(path: Path) -> bool:
    """Remove an empty directory; leave it (and return False) if anything is inside."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove temporary files left by writes that died before their rename."""
    removed = []
    for entry in directory.iterdir():
        if entry.name.startswith(TEMP_PREFIX) and TEMP_MARKER in entry.name and entry.is_file():
            remove_file(entry)
            removed.append(entry)
    return removed
