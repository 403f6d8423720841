"""FAKE storage, for tests only: a FUSE passthrough file system that can be told, while it is
mounted, to fail writes with EIO or ENOSPC, or to stop answering.

Real storage cannot be made to fail on demand, and the fault tests need a destination that
fails *during* a copy, or a domain that hangs while the daemon runs. Everything else is real:
the files live in a real backing directory, and vdsmd, sanlock, qemu-img and QEMU use the mount
as any file system (O_DIRECT included: the mount passes it through with ``direct_io``).

The fault is one line in a control file outside the mount, read again whenever it changes:

    ok                    no fault
    eio PREFIX            write, fsync and fallocate of files under PREFIX fail with EIO
    enospc PREFIX         ... with ENOSPC
    eio-read PREFIX       reads of files under PREFIX fail with EIO (a bad sector)
    hang PREFIX           every operation under PREFIX blocks until the fault changes
                          (but a caller being killed gets EINTR: see below)

PREFIX is a path relative to the mount (``sd/images/IMG/VOL``), or ``/`` for everything. Two
more words, ``START END``, limit eio, enospc and eio-read to I/O that touches bytes
[START, END) of the file (a bad region the guest never reads, say).
Creating, truncating and reading files is never failed by eio or enospc: a copy fails when it
writes, as on a full or broken disk; eio-read fails reads only.

A hung operation waits as on a hard NFS mount, whose waits only SIGKILL interrupts (nfs(5)):
a caller with SIGKILL pending (killed, or a thread of a process that exits) gets EINTR, and no
other signal reaches it. A plain FUSE server that does not answer would instead hold a dying
process forever: the kernel waits for the answer to a request it already sent, uninterruptibly.

Run as ``python tests/fakes/faultfs.py BACKING MOUNTPOINT CONTROL``; tests use :class:`FaultFs`.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

MODES = ("ok", "eio", "enospc", "eio-read", "hang")
FAILED_WITH = {"eio": errno.EIO, "enospc": errno.ENOSPC, "eio-read": errno.EIO}
POLL = 0.05  # seconds between two looks at the control file while hung
SIGKILL_BIT = 1 << (9 - 1)  # SIGKILL in /proc/<tid>/status's SigPnd and ShdPnd masks
MOUNT_TIMEOUT = 10.0


class Fault:
    """The control file's fault, read again when the file's mtime or size changes."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self._seen: tuple[int, int] | None = None
        self._mode, self._prefix = "ok", "/"
        self._region: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def current(self) -> tuple[str, str, tuple[int, int] | None]:
        try:
            st = os.stat(self.control)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return "ok", "/", None
        with self._lock:
            if stamp != self._seen:
                words = self.control.read_text().split()
                mode = words[0] if words and words[0] in MODES else "ok"
                self._mode = mode
                self._prefix = "/" + (words[1].strip("/") if len(words) > 1 else "")
                self._region = (int(words[2]), int(words[3])) if len(words) > 3 else None
                self._seen = stamp
            return self._mode, self._prefix, self._region

    def applies(
        self, path: str, modes: tuple[str, ...], offset: int = 0, size: int | None = None
    ) -> str | None:
        mode, prefix, region = self.current()
        if mode not in modes:
            return None
        if not (prefix == "/" or path == prefix or path.startswith(prefix + "/")):
            return None
        if region is not None and size is not None:
            start, end = region
            if offset + size <= start or offset >= end:
                return None
        return mode


def being_killed(tid: int) -> bool:
    """Whether the thread (a FUSE request's caller) has SIGKILL pending: it was killed, or its
    process is exiting (the exit sends SIGKILL to every other thread)."""
    try:
        status = Path(f"/proc/{tid}/status").read_text()
    except OSError:
        return True  # gone already: nobody waits for the answer
    for line in status.splitlines():
        name, _, mask = line.partition(":")
        if name in ("SigPnd", "ShdPnd") and int(mask, 16) & SIGKILL_BIT:
            return True
    return False


def serve(backing: Path, mountpoint: Path, control: Path) -> None:
    """Mount and serve until unmounted (fusepy on libfuse 2)."""
    # fusepy (untyped): only the fake's own process imports it.
    from fuse import (  # type: ignore[import-untyped]
        FUSE,
        FuseOSError,
        Operations,
        fuse_get_context,
    )

    fault = Fault(control)

    class Passthrough(Operations):
        def __call__(self, op: str, path: str, *args: Any) -> Any:
            # Every operation waits here while its path hangs, as on a mount that stopped
            # answering; the other paths go on (fusepy serves each call in its own thread).
            if fault.applies(path, ("hang",)):
                caller = fuse_get_context()[2]  # the calling thread's id
                while fault.applies(path, ("hang",)):
                    if being_killed(caller):
                        raise FuseOSError(errno.EINTR)
                    time.sleep(POLL)
            return super().__call__(op, path, *args)

        def _real(self, path: str) -> str:
            return os.path.join(backing, path.lstrip("/"))

        def _check_write(self, path: str, offset: int = 0, size: int | None = None) -> None:
            mode = fault.applies(path, ("eio", "enospc"), offset, size)
            if mode:
                raise FuseOSError(FAILED_WITH[mode])

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.lstat(self._real(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
            times = ("st_atime", "st_mtime", "st_ctime")
            return {k: getattr(st, k) for k in (*keys, *times)}

        def statfs(self, path: str) -> dict[str, Any]:
            st = os.statvfs(self._real(path))
            keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files")
            return {k: getattr(st, k) for k in (*keys, "f_ffree", "f_favail", "f_namemax")}

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._real(path))]

        def access(self, path: str, amode: int) -> None:
            if not os.access(self._real(path), amode):
                raise FuseOSError(errno.EACCES)

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(self._real(path), mode)

        def chown(self, path: str, uid: int, gid: int) -> None:
            os.chown(self._real(path), uid, gid)

        def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
            os.utime(self._real(path), times)

        def mkdir(self, path: str, mode: int) -> None:
            os.mkdir(self._real(path), mode)

        def rmdir(self, path: str) -> None:
            os.rmdir(self._real(path))

        def unlink(self, path: str) -> None:
            os.unlink(self._real(path))

        def rename(self, old: str, new: str) -> None:
            os.rename(self._real(old), self._real(new))

        def link(self, target: str, source: str) -> None:
            os.link(self._real(source), self._real(target))

        def symlink(self, target: str, source: str) -> None:
            os.symlink(source, self._real(target))

        def readlink(self, path: str) -> str:
            return os.readlink(self._real(path))

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            return os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)

        def open(self, path: str, flags: int) -> int:
            # The backing directory need not take O_DIRECT; the mount's direct_io already
            # sends every read and write here uncached.
            return os.open(self._real(path), flags & ~os.O_DIRECT)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            if fault.applies(path, ("eio-read",), offset, size):
                raise FuseOSError(errno.EIO)
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            self._check_write(path, offset, len(data))
            return os.pwrite(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            os.truncate(self._real(path), length)

        def fallocate(self, path: str, mode: int, offset: int, length: int, fh: int) -> None:
            self._check_write(path)
            os.posix_fallocate(fh, offset, length)

        def flush(self, path: str, fh: int) -> None:
            return None

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            self._check_write(path)
            if datasync:
                os.fdatasync(fh)
            else:
                os.fsync(fh)

        def release(self, path: str, fh: int) -> None:
            os.close(fh)

    FUSE(
        Passthrough(),
        str(mountpoint),
        foreground=True,
        nothreads=False,
        allow_other=True,
        direct_io=True,
        default_permissions=True,
    )


class FaultFs:
    """The fake, mounted at ``mountpoint`` over ``backing`` while in a ``with`` block."""

    def __init__(self, backing: Path, mountpoint: Path, control: Path) -> None:
        self.backing, self.mountpoint, self.control = backing, mountpoint, control
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FaultFs:
        for path in (self.backing, self.mountpoint):
            path.mkdir(parents=True, exist_ok=True)
        self.set("ok")
        log = open(self.control.with_suffix(".log"), "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.backing), str(self.mountpoint), str(self.control)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                log_text = self.control.with_suffix(".log").read_text(errors="replace")
                raise RuntimeError(f"the fault file system did not mount: {log_text[-2000:]}")
            time.sleep(0.05)
        return self

    def set(self, mode: str, prefix: str = "/", region: tuple[int, int] | None = None) -> None:
        """Change the fault (atomically: the file system never reads half a line);
        ``region``: only I/O touching bytes [start, end) of a file fails."""
        if mode not in MODES:
            raise ValueError(f"unknown fault {mode!r}")
        scratch = self.control.with_suffix(".new")
        where = f" {region[0]} {region[1]}" if region else ""
        scratch.write_text(f"{mode} {prefix}{where}\n")
        os.replace(scratch, self.control)

    def heal(self) -> None:
        self.set("ok")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.heal()
        # A lazy unmount: a process that still has a file open there keeps it until it closes.
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
