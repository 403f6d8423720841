"""A private sanlock daemon for one test "host": its own run directory and host name.

Multi-host tests run several hosts on one machine, and each needs its own sanlock daemon: sanlock
holds a host's delta leases (its host id in each lockspace) and its paxos leases, so two hosts
sharing one daemon would be one host. ``SANLOCK_RUN_DIR`` moves a daemon's socket and pid file out
of ``/run/sanlock`` (the system daemon of scripts/setup-host.sh, which stays untouched); every
client of that daemon (the Python binding, ``sanlock client``, vdsmd) must carry the same
variable, so :attr:`SanlockDaemon.env` is what to add to a client's environment.

The daemon runs as a test machine allows (scripts/setup-host.sh starts the system daemon the
same way):

- ``-D``: no fork, so the process we start is the daemon (it forks one helper, in its group);
  everything it logs goes to stderr, which is appended to ``log_path``. ``-L -1 -S -1``: nothing
  goes to the machine's shared ``/var/log/sanlock.log`` or to syslog.
- ``-w 0``: no watchdog (a container has no wdmd). Nothing then resets a host whose leases
  expired, so a test that "kills a host" must kill every process of it (vdsm_guest/cluster.py).
- ``-U root -G root -l 0``: as root, no memory locking.
- ``-e NAME``: the host's identity in the delta leases. Restarting with the same name rejoins a
  lockspace at once (a reboot: 3 s); a new name with the same host id waits ~71 s for the old
  lease to expire. :meth:`SanlockDaemon.restart` keeps the name.
- Without CAP_SYS_RESOURCE the daemon exits at once ("cannot set the limits for memlock"): it
  then runs with scripts/sanlock-rlimit-shim.c preloaded (built by scripts/setup-host.sh), which
  turns that setrlimit's EPERM into success. Only then: a process with the capability runs the
  plain daemon.

The daemon is started in its own session, so its process group holds exactly its processes and
a SIGKILL of the group kills the whole daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

# scripts/setup-host.sh builds it here from scripts/sanlock-rlimit-shim.c.
SHIM = Path("/usr/local/lib/vdsm/sanlock-rlimit-shim.so")
CAP_SYS_RESOURCE = 24  # linux/capability.h
RUN_DIR_ENV = "SANLOCK_RUN_DIR"
SOCKET_NAME = "sanlock.sock"
# sockaddr_un.sun_path holds 108 bytes with the NUL; sanlock cuts a longer path silently, and
# the daemon and its clients would then meet (or not) on a socket nobody named.
MAX_SOCKET_PATH = 107
NAME_MAX = 48  # SANLK_NAME_LEN: the longest host name (-e) sanlock keeps
START_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0
KILL_TIMEOUT = 10.0
CLIENT_TIMEOUT = 10.0
POLL_INTERVAL = 0.05


class SanlockError(RuntimeError):
    """The daemon could not start or stop; the message says why (and quotes its log)."""


def has_capability(cap: int, status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process has capability ``cap`` in its effective set (CapEff)."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def sanlock_command() -> str:
    path = shutil.which("sanlock") or shutil.which("sanlock", path="/usr/sbin:/sbin")
    if path is None:
        raise SanlockError("the sanlock command is not installed (run scripts/setup-host.sh)")
    return path


class SanlockDaemon:
    """One ``sanlock daemon`` on ``run_dir`` named ``name``: ``start()``, ``stop()``/``kill()``.

    ``extra_env`` is added to the daemon's environment only (the cluster marks its host's
    processes with it); ``shim``: the rlimit shim to preload where the capability is missing.
    """

    def __init__(
        self,
        run_dir: Path,
        name: str,
        log_path: Path | None = None,
        *,
        extra_env: Mapping[str, str] | None = None,
        shim: Path = SHIM,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if not 0 < len(name.encode()) <= NAME_MAX:
            raise ValueError(f"a sanlock host name has 1 to {NAME_MAX} bytes: {name!r}")
        # Absolute: the clients get it through the environment, from any working directory.
        self.run_dir = run_dir.absolute()
        socket_path = self.run_dir / SOCKET_NAME
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"{socket_path} is longer than a unix socket path may be "
                f"({MAX_SOCKET_PATH} bytes): use a shorter run directory"
            )
        self.name = name
        self.log_path = (
            self.run_dir.parent / f"{self.run_dir.name}.log" if log_path is None else log_path
        )
        self.extra_env = dict(extra_env or {})
        self.shim = shim
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a client of this daemon adds to its environment."""
        return {RUN_DIR_ENV: str(self.run_dir)}

    def argv(self) -> list[str]:
        return [
            sanlock_command(),
            "daemon",
            "-D",
            *("-w", "0"),
            *("-U", "root", "-G", "root"),
            *("-l", "0"),
            *("-L", "-1", "-S", "-1"),
            *("-e", self.name),
        ]

    def daemon_env(self) -> dict[str, str]:
        """The daemon's environment: this one's, the run directory, the shim if needed."""
        env = {**os.environ, **self.extra_env, **self.env}
        if not has_capability(CAP_SYS_RESOURCE):
            if not self.shim.is_file():
                raise SanlockError(
                    "this process lacks CAP_SYS_RESOURCE, so the sanlock daemon cannot raise "
                    f"its memlock limit, and the shim that lets it run anyway ({self.shim}) is "
                    "missing: run scripts/setup-host.sh (make host)"
                )
            env["LD_PRELOAD"] = " ".join(p for p in (str(self.shim), env.get("LD_PRELOAD")) if p)
        return env

    def start(self) -> None:
        """Start the daemon and wait until it answers ``sanlock client status`` with its name;
        SanlockError (quoting its log) if it does not."""
        if self.running:
            raise SanlockError(f"sanlock daemon {self.name} already runs (pid {self.pid})")
        argv, env = self.argv(), self.daemon_env()
        # Another daemon on this directory would answer in this one's place (and the new one
        # would exit, unable to lock the pid file): refuse plainly instead.
        if self.client("status").returncode == 0:
            raise SanlockError(f"a sanlock daemon already answers on {self.run_dir}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Appended: after a reboot the log tells the whole story.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        try:
            self._wait_ready(self.proc)
        except BaseException:
            # Callers clean up only a daemon that started: leave nothing behind.
            self.kill()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SanlockError(
                    f"sanlock daemon {self.name} exited with {proc.returncode}:\n{self.log_tail()}"
                )
            try:
                status = self.client("status")
            except subprocess.TimeoutExpired:
                continue  # not serving yet; the deadline decides
            # The first line names the daemon that answered: this one, not a stray one.
            if status.returncode == 0 and status.stdout.splitlines()[:1] == [f"daemon {self.name}"]:
                return
            time.sleep(POLL_INTERVAL)
        raise SanlockError(
            f"sanlock daemon {self.name} did not answer within {self.start_timeout}s:\n"
            f"{self.log_tail()}"
        )

    def client(
        self, *args: str, timeout: float = CLIENT_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``sanlock client ARGS`` against this daemon (never raises for its exit code)."""
        return subprocess.run(
            [sanlock_command(), "client", *args],
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self) -> str:
        """``sanlock client status``: its lockspaces, resources and clients."""
        proc = self.client("status")
        if proc.returncode != 0:
            raise SanlockError(f"sanlock daemon {self.name} does not answer: {proc.stderr.strip()}")
        return proc.stdout

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop cleanly, SIGKILL if it is not gone in ``timeout``; the exit code (None if it
        never started). Outside any lockspace that is SIGTERM (it exits within a second). In
        one it would ignore SIGTERM ("ignore shutdown, lockspace exists"), so it is told
        ``sanlock client shutdown -f 1``: it kills its registered clients (stop vdsmd first)
        and leaves every lockspace, releasing its host ids (~2 s at io_timeout 1)."""
        proc = self.proc
        if proc is None:
            return None
        deadline = time.monotonic() + timeout
        if proc.poll() is None:
            try:
                joined = any(line.startswith("s ") for line in self.status().splitlines())
                if joined:
                    self.client("shutdown", "-f", "1", "-w", "1", timeout=timeout)
            except (SanlockError, subprocess.TimeoutExpired):
                pass  # it does not answer: SIGTERM, then SIGKILL at the deadline
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _wait(proc, max(deadline - time.monotonic(), 0.0))
        self.kill()  # the stragglers of its group, or all of it if it hangs
        return proc.returncode

    def kill(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL every process of the daemon, and wait until they are gone: a dead host's
        daemon, whose leases stay on the storage as they were."""
        proc = self.proc
        if proc is None:
            return
        # While the leader is unreaped its pid, and so its group's id, cannot be reused: the
        # group is this daemon. Once reaped, only members that are still there are signalled.
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids():
            _signal(pid, signal.SIGKILL)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise SanlockError(f"sanlock daemon {self.name} survived SIGKILL") from e
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                raise SanlockError(f"sanlock daemon {self.name} left {self.pids()} behind")
            time.sleep(POLL_INTERVAL)

    def restart(self) -> None:
        """Stop it if it runs, then start it again under the same name (a reboot)."""
        if self.proc is not None:
            self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The daemon's main process, while it runs."""
        return self.proc.pid if self.running and self.proc is not None else None

    def pids(self) -> list[int]:
        """Every live process of the daemon: the main one and its helper (its process group)."""
        if self.proc is None:
            return []
        return _group_members(self.proc.pid)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of group ``pgid`` that are sanlock's (``sanlock`` and
    ``sanlock-helper``): the name guards against a new group that reused the number."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")]
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X") and comm.startswith(b"sanlock"):
            members.append(int(entry.name))
    return members
