"""The one subprocess runner of vdsm: every external command (qemu-img, ...) goes through run().

A command is an argv list, never a shell line. The child gets its own session, so on a timeout
or a cancellation the runner can signal the whole process group and no grandchild survives.
It also dies with vdsmd (``PR_SET_PDEATHSIG``, see :func:`_die_with_parent`): a ``kill -9`` of
the daemon, as sanlock does to a fenced SPM, leaves no qemu-img writing behind it.
stdout and stderr are read by threads, so a chatty command never blocks on a full pipe, and
stdout can be parsed as it arrives for ``qemu-img -p`` progress. A failure is raised as a
:class:`~vdsm.errors.CommandError` that carries the argv, the exit code and stderr.

Threads: each run() uses three short-lived helper threads (stdout reader, stderr reader,
waiter) that report to one condition; the calling thread waits on it for "finished",
"cancelled" or the deadline, and alone decides how the command ends. It forked the child and
stays in run() until the child is gone or SIGKILLed: the child's death signal is tied to it.
"""

from __future__ import annotations

import ctypes
import functools
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

# Dying with vdsmd. sanlock fences an SPM that lost its lease by SIGKILLing vdsmd's pid, and
# only that: a qemu-img in a session of its own would go on writing into volumes the next SPM
# (maybe on another host, before our restart) is about to roll back. So every child asks the
# kernel for SIGKILL when its parent dies: prctl(PR_SET_PDEATHSIG, SIGKILL) between fork and
# exec; the setting survives the exec (of anything but a set-user-ID or file-capability
# program, and vdsm runs none: no sudo).
#
# Python 3.11 has no subprocess option for it, so it is a preexec_fn, which the subprocess
# docs call unsafe with threads (and vdsmd has many): the child of a fork holds only the
# forking thread, and Python code that takes a lock another thread held at the fork (a
# logging handler, the import machinery, the dynamic loader looking a symbol up) deadlocks.
# _die_with_parent takes none: prctl is looked up (dlsym) and typed here, at import, so the
# child only makes three system calls through already resolved pointers (prctl, getppid,
# _exit) on small ints; CPython itself takes the import lock around the fork and
# re-initialises its own state in the child. The alternative without Python in the child, a
# trampoline exec'd first (util-linux ``setpriv --pdeathsig KILL -- argv``), costs an exec
# per command, a dependency, and has no getppid check: a daemon that dies before the
# trampoline's prctl would leave an orphan. The price paid here: with a preexec_fn CPython
# uses fork() instead of vfork(), which copies the daemon's page tables (about a millisecond).
#
# The traps of PDEATHSIG, and why they do not bite:
# - The race: a parent that dies between fork and prctl leaves a child already orphaned, that
#   no signal will ever reach. After prctl the child compares getppid() with the pid run()
#   captured before the fork, and _exits if it has been re-parented.
# - The signal fires when the *thread* that forked the child exits, not the process. run()
#   forks in its calling thread and does not return before the child exited, or was sent
#   SIGKILL (Command.stop(): on a timeout, a cancellation or an interruption), so no caller's
#   thread can end under a live child. Every caller (qemuimg's functions in task threads and
#   RPC request threads, pki's openssl calls) calls run() synchronously.
# - It is not inherited across fork: a grandchild has none. qemu-img forks nothing (its
#   workers are threads); the process group kill covers grandchildren on a timeout or a
#   cancellation, and after a crash the restarted daemon kills whatever still carries the
#   task's VDSM_TASK_ID tag (vdsm.storage.task.processes), the second line of defence.
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int
_SIGKILL = int(signal.SIGKILL)
# The exit code of a child that found its parent gone before exec; nobody is left to read it.
_ORPHANED = 1


def _die_with_parent(parent: int) -> None:
    """The preexec_fn of every child (in the child, between fork and exec): SIGKILL when
    ``parent`` (vdsmd's pid, captured before the fork) dies, or exit now if it already did.

    Nothing else may go here: see the comment above on what a child of a threaded process
    may safely do before exec."""
    if _prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0) != 0:
        # Cannot happen with a valid signal; CPython reports it to run() as a SubprocessError.
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(_ORPHANED)


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
        self._children: list[Cancellation] = []

    @property
    def cancelled(self) -> bool:
        with self._lock:
            return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            commands, children = list(self._commands), list(self._children)
        for command in commands:
            command.abort()
        for child in children:
            child.cancel()

    def child(self) -> Cancellation:
        """A token of its own for some of this operation's commands, with this one's label:
        cancelled with this one, and cancellable alone (a group of commands run at the same
        time, stopped together when one fails, without stopping the whole operation)."""
        child = Cancellation(self.label)
        with self._lock:
            self._children.append(child)
            cancelled = self._cancelled
        if cancelled:
            child.cancel()
        return child

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

    def stop(self, grace: float | None = None) -> None:
        """Terminate the whole process group: SIGTERM, then SIGKILL after a grace period
        (``grace`` seconds, also the wait for the pipes after SIGKILL; None: the defaults)."""
        term_grace = TERM_GRACE if grace is None else grace
        self._signal(signal.SIGTERM)
        if self._wait_finished(term_grace):
            return
        log.warning(
            "pid %d ignored SIGTERM for %.1f s, killing its group", self.proc.pid, term_grace
        )
        self._signal(signal.SIGKILL)
        if not self._wait_finished(_PIPE_GRACE if grace is None else grace):
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
    stop_grace: float | None = None,
) -> CommandResult:
    """Run argv to completion and return its result.

    ``timeout`` (seconds) covers the whole run, until the child exited and closed its output.
    ``on_progress(percent)`` is called from a reader thread for every ``(N/100%)`` record on
    stdout (``qemu-img -p``). The child gets stdin from /dev/null and its own session, and
    is SIGKILLed by the kernel if this process dies first.

    ``stop_grace`` (seconds) shortens the waits of a stop (after SIGTERM, and for the pipes
    after SIGKILL) for a child that has nothing to clean up and may be stuck in the kernel,
    where no signal reaches it (a read of storage that stopped answering): waiting for it is
    time lost.

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
            # Its own session: a timeout or a cancellation kills the whole group.
            start_new_session=True,
            # And it dies with this process; our pid is taken here, before the fork.
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
    except OSError as e:
        raise CommandError(
            args, None, "", reason=f"cannot start: {e.strerror}: {e.filename}"
        ) from e
    except subprocess.SubprocessError as e:  # _die_with_parent failed in the child
        raise CommandError(args, None, "", reason=f"cannot start: {e}") from e

    command = _Command(proc, on_progress)
    timed_out = False
    try:
        if cancellation is not None and not cancellation._attach(command):
            command.abort()
        if not command.wait(timeout):
            timed_out = True
        if not command.finished():
            command.stop(stop_grace)
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
