"""The one subprocess runner of vdsm: every external command (qemu-img, ...) goes through run().

A command is an argv list, never a shell line. The child gets its own session, so on a timeout
or a cancellation the runner can signal the whole process group and no grandchild survives.
stdout and stderr are read by threads, so a chatty command never blocks on a full pipe, and
stdout can be parsed as it arrives for ``qemu-img -p`` progress. A failure is raised as a
:class:`~vdsm.errors.CommandError` that carries the argv, the exit code and stderr.

Threads: each run() uses three short-lived helper threads (stdout reader, stderr reader,
waiter) that report to one condition; the calling thread waits on it for "finished",
"cancelled" or the deadline, and alone decides how the command ends.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from vdsm.errors import CommandAborted, CommandError, CommandTimeout

log = logging.getLogger("vdsm.storage.runner")

# Seconds between SIGTERM and SIGKILL: enough for qemu-img to exit cleanly, short enough that
# an abort or a timeout still ends promptly.
TERM_GRACE = 2.0

# Seconds to wait for the pipes to close after SIGKILL. Only a process that left our group
# (it called setsid itself) can still hold them; we then give up on the rest of its output.
_PIPE_GRACE = 5.0

# qemu-img -p writes "    (12.34/100%)" records separated by '\r' (and a final '\n').
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_RECORD_END = re.compile(rb"[\r\n]")

_READ_SIZE = 64 * 1024

# A progress record is a few dozen bytes; a longer unterminated tail is not one.
_MAX_RECORD = 256

ProgressCallback = Callable[[float], None]

# The environment variable that tags a child with the label of its Cancellation (a task id).
TASK_ID_ENV = "VDSM_TASK_ID"


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: its exit code, raw stdout and decoded stderr."""

    argv: tuple[str, ...]
    rc: int
    stdout: bytes
    stderr: str


class Cancellation:
    """A thread-safe cancellation token, shared by every command of one operation.

    ``cancel()`` may be called from any thread, any number of times. It sends SIGTERM at once
    to the process group of every command running under the token (each run() then escalates
    to SIGKILL after :data:`TERM_GRACE` and raises CommandAborted), and any later run() with
    this token raises CommandAborted without starting its process.
    """

    def __init__(self, label: str | None = None) -> None:
        # Every child started under a labelled token carries ``VDSM_TASK_ID=<label>`` in its
        # environment, so a restarted daemon can find (and kill) what a dead one left running.
        self.label = label
        self._lock = threading.Lock()
        self._cancelled = False
        self._commands: set[_Command] = set()

    @property
    def cancelled(self) -> bool:
        with self._lock:
            return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            commands = list(self._commands)
        for command in commands:
            command.abort()

    def _attach(self, command: _Command) -> bool:
        """Track a started command; False if the token was cancelled meanwhile."""
        with self._lock:
            if self._cancelled:
                return False
            self._commands.add(command)
            return True

    def _detach(self, command: _Command) -> None:
        with self._lock:
            self._commands.discard(command)


class _Command:
    """One started child process, its helper threads and the condition they report to."""

    def __init__(self, proc: subprocess.Popen[bytes], on_progress: ProgressCallback | None) -> None:
        self.proc = proc
        self.aborted = False
        self._cond = threading.Condition()
        self._pending = 3  # helper threads still running: stdout, stderr, waiter
        self._stdout: list[bytes] = []
        self._stderr: list[bytes] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._start(self._read, proc.stdout, self._stdout, on_progress)
        self._start(self._read, proc.stderr, self._stderr, None)
        self._start(self._wait_exit)

    @property
    def stdout(self) -> bytes:
        return b"".join(self._stdout)

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode("utf-8", errors="replace")

    def finished(self) -> bool:
        """The child exited and both pipes are closed: the outcome and output are complete."""
        return self._pending == 0

    def wait(self, timeout: float | None) -> bool:
        """Wait until finished or aborted; False when the timeout expired first."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished() or self.aborted, timeout)

    def abort(self) -> None:
        """Called from any thread: wake the waiting run() and ask the group to terminate."""
        with self._cond:
            self.aborted = True
            self._cond.notify_all()
        self._signal(signal.SIGTERM)

    def stop(self) -> None:
        """Terminate the whole process group: SIGTERM, then SIGKILL after a grace period."""
        self._signal(signal.SIGTERM)
        if self._wait_finished(TERM_GRACE):
            return
        log.warning(
            "pid %d ignored SIGTERM for %.1f s, killing its group", self.proc.pid, TERM_GRACE
        )
        self._signal(signal.SIGKILL)
        if not self._wait_finished(_PIPE_GRACE):
            log.warning(
                "pid %d: output pipes still open after SIGKILL, output may be cut", self.proc.pid
            )

    def _wait_finished(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(self.finished, timeout)

    def _signal(self, sig: signal.Signals) -> None:
        # Once everything finished the group is gone and its id may be reused: do not signal.
        with self._cond:
            if self.finished():
                return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass  # the whole group already exited

    def _start(self, target: Callable[..., None], *args: object) -> None:
        # Daemon threads: a reader stuck on a pipe held by an escaped process must not keep
        # the daemon from exiting.
        threading.Thread(target=self._report_done, args=(target, *args), daemon=True).start()

    def _report_done(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        finally:
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def _wait_exit(self) -> None:
        self.proc.wait()

    def _read(
        self, stream: IO[bytes], chunks: list[bytes], on_progress: ProgressCallback | None
    ) -> None:
        tail = b""
        with stream:
            while chunk := os.read(stream.fileno(), _READ_SIZE):
                chunks.append(chunk)
                if on_progress is not None:
                    *records, tail = _RECORD_END.split(tail + chunk)
                    for record in records:
                        _report_progress(record, on_progress)
                    tail = tail[-_MAX_RECORD:]
        if on_progress is not None and tail:
            _report_progress(tail, on_progress)


def _report_progress(record: bytes, on_progress: ProgressCallback) -> None:
    match = _PROGRESS.search(record)
    if match is None:
        return
    try:
        on_progress(float(match[1]))
    except Exception:
        # A broken progress reporter must not break the copy it reports on.
        log.exception("progress callback failed")


def run(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    cancellation: Cancellation | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    ok_codes: Collection[int] = (0,),
) -> CommandResult:
    """Run argv to completion and return its result.

    ``timeout`` (seconds) covers the whole run, until the child exited and closed its output.
    ``on_progress(percent)`` is called from a reader thread for every ``(N/100%)`` record on
    stdout (``qemu-img -p``). The child gets stdin from /dev/null and its own session.

    Raises CommandError (cannot start, or an exit code not in ``ok_codes``; the message
    carries stderr), CommandTimeout, or CommandAborted (``cancellation`` was cancelled before
    or while it ran). In the last two cases the whole process group has been terminated.
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a sequence of arguments, not a string")
    args = list(argv)
    if cancellation is not None and cancellation.cancelled:
        raise CommandAborted(args, None, "", reason="cancelled before start")

    child_env = None if env is None else dict(env)
    if cancellation is not None and cancellation.label is not None:
        child_env = dict(os.environ if child_env is None else child_env)
        child_env[TASK_ID_ENV] = cancellation.label

    log.debug("running %s", args)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=child_env,
            start_new_session=True,
        )
    except OSError as e:
        raise CommandError(
            args, None, "", reason=f"cannot start: {e.strerror}: {e.filename}"
        ) from e

    command = _Command(proc, on_progress)
    timed_out = False
    try:
        if cancellation is not None and not cancellation._attach(command):
            command.abort()
        if not command.wait(timeout):
            timed_out = True
        if not command.finished():
            command.stop()
    except BaseException:
        # Interrupted while waiting (KeyboardInterrupt, ...): never leave the child behind.
        command.stop()
        raise
    finally:
        if cancellation is not None:
            cancellation._detach(command)

    rc = proc.returncode
    elapsed = time.monotonic() - started
    log.debug("finished %s: rc=%s in %.3f s", args, rc, elapsed)
    if command.aborted:
        raise CommandAborted(args, rc, command.stderr, reason="aborted")
    if timed_out:
        raise CommandTimeout(args, rc, command.stderr, reason=f"timed out after {timeout:g} s")
    if rc is None or rc not in ok_codes:
        raise CommandError(args, rc, command.stderr)
    return CommandResult(argv=tuple(args), rc=rc, stdout=command.stdout, stderr=command.stderr)
