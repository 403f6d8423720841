"""A local vdsmd for the functional tests and the benchmark: a real daemon on a free port.

``LocalVdsmd`` starts ``python -m vdsm.vdsmd`` with its state and run directories under a
given root and no configuration file, so the defaults apply: TLS with client certificates
from the host's PKI (``vdsm-tool configure`` made it; the proxies it hands out present the
admin certificate), storage domains confined to the storage roots (by default the directory
that holds ``root``, where callers put their domains), kernels taken from the boot directory
(by default the test guest's cache). The daemon binds port 0 the first time (the kernel
picks a free port), writes the port it got to ``<run>/vdsmd.port``, and is ready when it
answers ``ping``. It can be stopped (SIGTERM, then SIGKILL if it hangs), killed (SIGKILL, as
a crash) and started again on the same port and state, as an operator would.

It listens on ``host`` (127.0.0.1 by default): the multi-host harness (vdsm_guest/cluster.py)
gives each of its hosts a loopback address of its own, and a certificate that names it.
:meth:`LocalVdsmd.pids` lists the daemon and every process it started, so that a harness can
kill a whole host, as the watchdog a test machine lacks would.

:meth:`LocalVdsmd.api` is a client of its API, the one vdsClient uses
(:class:`vdsm_cli.api.Vdsm`); :meth:`LocalVdsmd.xmlrpc` a raw XML-RPC proxy, for the tests
that look at the wire itself. It needs neither pytest nor the test tree, so the benchmark
(bench/daemon.py) and the tests (tests/functional/conftest.py) share it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vdsm_api.pki import PkiLayout
from vdsm_cli.api import Vdsm
from vdsm_cli.client import Client, Endpoint, Transport
from vdsm_guest.build import default_cache_dir

# The directory holding the vdsm package: the source tree, or site-packages once installed
# (vdsm-guest requires vdsm). Running from there makes ``-m vdsm.vdsmd`` find this vdsm
# even when it is not installed.
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
KILL_TIMEOUT = 30.0
# vdsm.vdsmd.PORT_FILE; not imported, as vdsm.vdsmd pulls in libvirt and the whole daemon.
PORT_FILE = "vdsmd.port"


class DaemonError(RuntimeError):
    """vdsmd did not start, or died; the message ends with its log (or the tail of it)."""


class LocalVdsmd:
    """One vdsmd process under ``root``: ``start()``, then ``stop()`` or ``kill()``."""

    # Log lines quoted in a DaemonError; None quotes the whole log.
    error_log_lines: int | None = 40

    def __init__(
        self,
        root: Path,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        *,
        log_level: str = "INFO",
        tls: bool = True,
        pki: PkiLayout | None = None,
        storage_roots: Sequence[Path] | None = None,
        boot_dir: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self.host = host
        self.tls = tls
        self.pki = PkiLayout() if pki is None else pki
        self.storage_roots = [root.parent] if storage_roots is None else list(storage_roots)
        self.boot_dir = default_cache_dir() if boot_dir is None else boot_dir
        self.state_dir = root / "state"
        self.run_dir = root / "run"
        self.log_path = root / "vdsmd.log"
        self.extra_args = list(extra_args or [])
        self.env = {**os.environ, **(env or {})}
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vdsm.vdsmd",
            "--config",
            "/dev/null",
            "--host",
            self.host,
            "--port",
            str(self.port),  # 0 the first time: the kernel picks a free port
            "--state-dir",
            str(self.state_dir),
            "--run-dir",
            str(self.run_dir),
            "--log-level",
            self.log_level,
            "--storage-roots",
            ",".join(str(r) for r in self.storage_roots),
            "--boot-dir",
            str(self.boot_dir),
            *(["--pki-dir", str(self.pki.root)] if self.tls else ["--no-tls"]),
            *self.extra_args,
        ]

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context presenting the admin certificate and verifying the server by the
        host's CA; None for a plain-HTTP daemon."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def connect(self, timeout: float = 30.0) -> socket.socket:
        """A raw connection to the API (TLS-wrapped, with the admin certificate, under TLS)."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        context = self.ssl_context()
        if context is None:
            return sock
        try:
            return context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    def start(self) -> None:
        """Start the daemon and wait until it answers ``ping``; DaemonError if it does not."""
        port_file = self.run_dir / PORT_FILE
        # A file left by a killed daemon would name a port nobody listens on yet.
        port_file.unlink(missing_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        # Appended: after a restart the log tells the whole story.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=log, cwd=REPO, env=self.env
            )
        try:
            self._wait_ready(self.proc, port_file)
        except DaemonError:
            # Callers clean up only a daemon that started: do not leave this one behind.
            self.proc.kill()
            self.proc.wait(timeout=KILL_TIMEOUT)
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], port_file: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DaemonError(f"vdsmd exited with {proc.returncode}:\n{self._error_log()}")
            port = _read_port(port_file)
            if port:
                self.port = port
                if self._answers():
                    return
            time.sleep(0.05)
        raise DaemonError(f"vdsmd did not answer within {START_TIMEOUT}s:\n{self._error_log()}")

    def _answers(self) -> bool:
        try:
            return bool(self.xmlrpc().ping()["status"]["code"] == 0)
        except (OSError, xmlrpc.client.Error):
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, as systemd would; SIGKILL if it is not gone in ``timeout``. The exit code."""
        proc = self._started()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=KILL_TIMEOUT)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash. Children (qemu-img) are left running, as after a real crash."""
        proc = self._started()
        proc.kill()
        proc.wait(timeout=KILL_TIMEOUT)

    def restart(self) -> None:
        """Start again on the same port and state (stopping it first if it still runs)."""
        if self.running:
            self.stop()
        self.start()

    def _started(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise DaemonError("vdsmd was never started")
        return self.proc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The daemon and every live process descended from it (qemu-img runs in a session
        of its own, so its process group is not the daemon's); [] when it does not run. A
        child left behind by a crash belongs to init and is no longer listed."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return []
        return descendants(proc.pid)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def xmlrpc(self) -> Any:
        """A new XML-RPC proxy (one per thread: a proxy keeps one HTTP connection)."""
        return xmlrpc.client.ServerProxy(
            f"{self.scheme}://{self.address}/RPC2",
            transport=Transport(context=self.ssl_context()),
            allow_none=True,
        )

    def endpoint(self) -> Endpoint:
        """Where and how vdsClient's client reaches it: the admin certificate and the host's
        CA under TLS."""
        if not self.tls:
            return Endpoint(self.host, self.port)
        pki = self.pki
        return Endpoint(self.host, self.port, True, pki.admin_cert, pki.admin_key, pki.ca_cert)

    def api(self, *, flow_id: str | None = None, interval: float | None = None) -> Vdsm:
        """A new client of its API (one per thread: a client keeps one HTTP connection);
        ``interval``: the pause between polls of its waits (None: the client's default)."""
        return Vdsm(Client(self.endpoint(), flow_id or str(uuid.uuid4())), interval=interval)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _error_log(self) -> str:
        if self.error_log_lines is None:
            return self.log_text()
        return self.log_tail(self.error_log_lines)


def _read_port(port_file: Path) -> int:
    """The port the daemon wrote, or 0 while there is none (the daemon removes it on exit)."""
    try:
        return int(port_file.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every live (not zombie) process descended from it, parents first; [] if
    ``pid`` is gone. From one scan of /proc (this kernel may lack /proc/PID/task/*/children)."""
    children: dict[int, list[int]] = {}
    alive = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = stat[stat.rindex(b")") + 2 :].split()[:2]
        if state not in (b"Z", b"X"):
            alive.add(int(entry.name))
            children.setdefault(int(ppid), []).append(int(entry.name))
    if pid not in alive:
        return []
    found = [pid]
    for parent in found:  # grows while it is walked: breadth first
        found.extend(children.get(parent, []))
    return found


def leave_lockspaces(roots: Sequence[Path]) -> None:
    """Leave the sanlock lockspaces of the domains under ``roots`` (this process's sanlock
    daemon: $SANLOCK_RUN_DIR): a test, the demo or the bench calls it once its vdsmd is gone
    and before it removes its directories, or the daemon would go on renewing them for as
    long as it runs. A vdsmd that stops keeps its lockspaces on purpose: it rejoins them."""
    import sanlock  # Debian's binding, linked into the venv by `make sanlock-binding`

    prefixes = [str(root).rstrip("/") + "/" for root in roots]
    try:
        joined = sanlock.get_lockspaces()
    except sanlock.SanlockException:
        return  # no daemon answers: nothing is joined
    for lockspace in joined:
        path = str(lockspace["path"])
        if any(path.startswith(prefix) for prefix in prefixes):
            try:
                sanlock.rem_lockspace(
                    lockspace["lockspace"], lockspace["host_id"], path, wait=False
                )
            except sanlock.SanlockException:
                continue  # left meanwhile
