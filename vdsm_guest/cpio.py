"""A writer of cpio "newc" archives, the format the Linux kernel unpacks as an initramfs.

Pure Python so that building the guest needs no cpio tool and no root (device nodes are
written as archive entries, never created on the host). Every entry gets mtime 0 and uid/gid
0, so the same inputs give the same archive.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class CpioWriter:
    """Appends entries to a binary stream; call :meth:`close` to write the trailer."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._ino = 0
        self._offset = 0

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"", nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def close(self) -> None:
        # The trailer is an entry like any other (inode 0); the kernel stops reading at it.
        self._entry(_TRAILER, 0, b"", nlink=1, ino=0)

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
        ino: int | None = None,
    ) -> None:
        encoded = name.lstrip("/").encode() + b"\0"
        if ino is None:
            self._ino += 1
            ino = self._ino
        fields = (
            ino,  # inode: unique per entry, so the kernel never takes two for hard links
            mode,
            0,  # uid
            0,  # gid
            nlink,
            0,  # mtime
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check: unused by newc
        )
        header = _MAGIC + b"".join(b"%08x" % (value & 0xFFFFFFFF) for value in fields)
        self._write(header + encoded)
        self._pad()
        self._write(data)
        self._pad()

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._offset += len(data)

    def _pad(self) -> None:
        # newc aligns both the name (after the 110-byte header) and the data to 4 bytes.
        self._write(b"\0" * (-self._offset % 4))
