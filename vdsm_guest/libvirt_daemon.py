"""A private libvirtd for one test "host" that runs VMs: its own mount namespace, its own sanlock.

A multi-host test runs several hosts on one machine (vdsm_guest/cluster.py). A host that runs VMs
needs a libvirtd of its own: libvirt's sanlock lock manager makes each QEMU hold its ``<lease>``
elements through the sanlock daemon libvirtd can see, and a lease must be held as *that host's*
host id. So each such host gets a libvirtd that

- runs in a private mount namespace (``unshare -m --propagation private``) with a tmpfs on
  ``/run`` and ``/var/lib/libvirt``: its pid file, domain status, monitor sockets and QEMU's
  per-domain state are its own, fresh at every start (a reboot), and invisible to the machine's
  libvirtd (and the machine's ``/run/sanlock`` is hidden from it);
- reads ``ROOT/etc``, bind-mounted on ``/etc/libvirt``: written anew at each start, with the
  container settings, ``lock_manager = "sanlock"`` and ``stdio_handler = "file"`` (QEMU's
  output goes straight to its log file, so no virtlogd is needed) in ``qemu.conf``, the
  sanlock plugin's settings in ``qemu-sanlock.conf``, and ``unix_sock_dir`` in
  ``libvirtd.conf``. No persistent definition of the machine's (domains, networks, pools,
  secrets) is copied: a host starts with none;
- logs to ``ROOT/libvirtd.log`` and keeps QEMU's logs in ``ROOT/log/qemu/<name>.log``
  (bind-mounted on ``/var/log/libvirt``, so they outlive the host for a post-mortem);
- listens in ``ROOT/run`` (``unix_sock_dir``), which the root namespace sees: vdsmd and tests
  connect with :attr:`LibvirtDaemon.uri`, ``qemu:///system?socket=ROOT/run/libvirt-sock``;
- has ``SANLOCK_RUN_DIR`` of its host's sanlock daemon in its environment: the plugin registers
  each QEMU and acquires its leases from the child libvirtd forks for it, before the exec, so
  through that environment;
- runs as ``host-libvirtd``: the machine's ``libvirtd`` binary, bind-mounted inside the
  namespace on the empty file ``ROOT/host-libvirtd`` and executed from there, so that its
  process name (``pgrep -x libvirtd``) and its executable's name (``pidof libvirtd``) are not
  the machine's libvirtd's. A copy would do as well, but a copy has a new ctime, and libvirt
  throws its QEMU capability cache away when its binary changed.

The QEMU capability cache (``/var/cache/libvirt``) is a directory shared by these libvirtds
(``cache_dir``, by default next to the test guest's cache), kept across runs: probing QEMU
costs ~8 s (qemu-system-x86_64 and -i386), a valid cache ~0.1 s. libvirt also calls the cache
outdated when the host's CPUID differs, and on this machine's nested kvm_pvm CPU one CPUID
leaf (0x1f, the x2APIC id) differs with the CPU libvirtd happens to start on: each libvirtd is
therefore started pinned to one CPU (the lowest this process may use), which it reads the
host's CPUID on, and unpinned once it answers, before it starts any QEMU.

QEMU processes are re-parented away from libvirtd (they daemonize), but they stay in its mount
namespace: :meth:`LibvirtDaemon.pids` lists every process whose ``/proc/PID/ns/mnt`` is that
namespace. A namespace's inode number is reused once it is gone, so this object holds the
namespace open (an fd on it) from the start until every process of it is dead.

:meth:`LibvirtDaemon.stop` is a clean shutdown (every domain destroyed, so its leases are
released, then SIGTERM); :meth:`LibvirtDaemon.kill` a host's death (everything of the
namespace frozen, then SIGKILLed, as the watchdog a test machine lacks would).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from vdsm_guest.build import default_cache_dir

PROCESS_NAME = "host-libvirtd"  # at most 15 bytes: the kernel's comm
SOCKET_NAME = "libvirt-sock"
# The longest of the sockets libvirtd makes in unix_sock_dir: sockaddr_un.sun_path holds 108
# bytes with the NUL, and a path too long would fail only when libvirtd binds it.
LONGEST_SOCKET_NAME = "libvirt-admin-sock"
MAX_SOCKET_PATH = 107
START_TIMEOUT = 60.0  # a cold capability cache costs ~8 s, more on a loaded machine
STOP_TIMEOUT = 30.0
KILL_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
# The QEMU driver's settings in a container without systemd: scripts/setup-host.sh writes the
# same into the machine's /etc/libvirt/qemu.conf. namespaces = [ ] also keeps each QEMU in this
# libvirtd's mount namespace, which is how pids() finds it.
CONTAINER_SETTINGS = (
    'user = "root"',
    'group = "root"',
    "dynamic_ownership = 0",
    'security_driver = "none"',
    "namespaces = [ ]",
    "cgroup_controllers = [ ]",
    "remember_owner = 0",
)
QEMU_SETTINGS = (
    *CONTAINER_SETTINGS,
    # VM leases held through this host's sanlock daemon.
    'lock_manager = "sanlock"',
    # QEMU's stdout and stderr straight into /var/log/libvirt/qemu/<name>.log: no virtlogd.
    'stdio_handler = "file"',
)
# As scripts/setup-host.sh: vdsm names every lease itself, and a VM without one still starts.
SANLOCK_PLUGIN_SETTINGS = ("auto_disk_leases = 0", "require_lease_for_disks = 0")
# Mounted in the namespace before libvirtd starts: "$1".."$5" are ROOT/etc, ROOT/log, the
# cache directory, the libvirtd binary and ROOT/host-libvirtd; "$6" the CPU to start on.
NAMESPACE_SCRIPT = """set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0755 tmpfs /var/lib/libvirt
mount --bind "$3" /var/cache/libvirt
mount --bind "$2" /var/log/libvirt
mount --bind "$1" /etc/libvirt
mount --bind "$4" "$5"
exec taskset -c "$6" "$5"
"""
# The directories the namespace mounts over: libvirt's packages create them.
MOUNT_POINTS = (
    "/run",
    "/var/lib/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
    "/etc/libvirt",
)


class LibvirtDaemonError(RuntimeError):
    """The libvirtd could not start or stop; the message says why (and quotes its log)."""


def libvirtd_command() -> str:
    path = shutil.which("libvirtd") or shutil.which("libvirtd", path="/usr/sbin:/sbin")
    if path is None:
        raise LibvirtDaemonError("libvirtd is not installed (run scripts/setup-host.sh)")
    return path


def default_libvirt_cache_dir() -> Path:
    """Where the private libvirtds keep their QEMU capability cache across runs."""
    return default_cache_dir() / "libvirt-cache"


class LibvirtDaemon:
    """One private libvirtd under ``root``: ``start()``, ``stop()``/``kill()``, :attr:`uri`.

    ``sanlock_env``: what a client of the host's sanlock daemon adds to its environment
    (:attr:`vdsm_guest.sanlock_daemon.SanlockDaemon.env`); ``extra_env`` is added too (the
    cluster marks its host's processes with it). ``cache_dir``: the shared QEMU capability
    cache (None: :func:`default_libvirt_cache_dir`).
    """

    def __init__(
        self,
        root: Path,
        *,
        sanlock_env: Mapping[str, str],
        extra_env: Mapping[str, str] | None = None,
        cache_dir: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        # Absolute: the socket path goes into libvirtd.conf and into the URI of other processes.
        self.root = root.absolute()
        self.etc_dir = self.root / "etc"
        self.log_dir = self.root / "log"
        self.run_dir = self.root / "run"
        self.binary = self.root / PROCESS_NAME
        self.log_path = self.root / "libvirtd.log"
        longest = self.run_dir / LONGEST_SOCKET_NAME
        if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"{longest} is longer than a unix socket path may be ({MAX_SOCKET_PATH} "
                "bytes): use a shorter root"
            )
        self.cache_dir = default_libvirt_cache_dir() if cache_dir is None else cache_dir
        self.sanlock_env = dict(sanlock_env)
        self.extra_env = dict(extra_env or {})
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._ns_fd: int | None = None  # its mount namespace, held open (see the docstring)

    def __repr__(self) -> str:
        return f"<LibvirtDaemon {self.root} pid={self.pid}>"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / SOCKET_NAME

    @property
    def uri(self) -> str:
        """The URI of this libvirtd, from any process of the machine."""
        return f"qemu:///system?socket={self.socket_path}"

    # -- configuration -------------------------------------------------------------------------

    def write_config(self) -> None:
        """ROOT/etc anew: the machine's top-level libvirt configuration files (client settings
        such as libvirt.conf), and ours in place of libvirtd.conf, qemu.conf, qemu-sanlock.conf.
        Directories are left out on purpose: /etc/libvirt/qemu holds the machine's persistent
        domains (some may autostart), secrets/ its secrets."""
        if self.etc_dir.exists():
            shutil.rmtree(self.etc_dir)
        self.etc_dir.mkdir(parents=True)
        system = Path("/etc/libvirt")
        if system.is_dir():
            for entry in system.iterdir():
                if entry.is_file() and entry.suffix == ".conf":
                    shutil.copy2(entry, self.etc_dir / entry.name)
        header = f"# Written by vdsm_guest/libvirt_daemon.py for the libvirtd of {self.root}.\n"
        (self.etc_dir / "libvirtd.conf").write_text(
            header
            + f'unix_sock_dir = "{self.run_dir}"\n'
            # Foreground, so warnings and errors go to stderr: ROOT/libvirtd.log.
            + 'log_outputs = "3:stderr"\n'
        )
        (self.etc_dir / "qemu.conf").write_text(header + "\n".join(QEMU_SETTINGS) + "\n")
        (self.etc_dir / "qemu-sanlock.conf").write_text(
            header + "\n".join(SANLOCK_PLUGIN_SETTINGS) + "\n"
        )

    # -- life and death ------------------------------------------------------------------------

    def argv(self) -> list[str]:
        cpu = min(os.sched_getaffinity(0))
        return [
            *("unshare", "-m", "--propagation", "private", "--"),
            *("/bin/sh", "-c", NAMESPACE_SCRIPT, "host-libvirtd-setup"),
            str(self.etc_dir),
            str(self.log_dir),
            str(self.cache_dir),
            libvirtd_command(),
            str(self.binary),
            str(cpu),
        ]

    def daemon_env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env, **self.sanlock_env}
        # This process's own libvirt settings are not the daemon's.
        for name in ("LIBVIRT_DEFAULT_URI", "LIBVIRT_LOG_OUTPUTS", "LIBVIRT_LOG_FILTERS"):
            env.pop(name, None)
        return env

    def start(self) -> None:
        """Start libvirtd in a new mount namespace and wait until it answers on :attr:`uri`;
        LibvirtDaemonError (quoting its log) if it does not."""
        if self.running:
            raise LibvirtDaemonError(f"libvirtd of {self.root} already runs (pid {self.pid})")
        for mount_point in MOUNT_POINTS:
            if not Path(mount_point).is_dir():
                raise LibvirtDaemonError(f"{mount_point} is missing (run scripts/setup-host.sh)")
        # A libvirtd left by another object (or a test run that lost track of it) would answer
        # in this one's place, and the new one would fail to bind: refuse plainly instead.
        if _listening(self.socket_path):
            raise LibvirtDaemonError(f"a libvirtd already answers on {self.socket_path}")
        argv, env = self.argv(), self.daemon_env()
        self.write_config()
        for path in (self.log_dir, self.run_dir, self.cache_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.binary.touch()  # the mount point of the binary, inside the namespace
        self._close_ns()
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
            self._unpin(self.proc.pid)
        except BaseException:
            # Callers clean up only a daemon that started: leave nothing behind.
            self.kill()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LibvirtDaemonError(
                    f"libvirtd of {self.root} exited with {proc.returncode}:\n{self.log_tail()}"
                )
            self._hold_ns(proc.pid)
            if self._ns_fd is not None and self._answers():
                return
            time.sleep(POLL_INTERVAL)
        raise LibvirtDaemonError(
            f"libvirtd of {self.root} did not answer within {self.start_timeout}s:\n"
            f"{self.log_tail()}"
        )

    def _hold_ns(self, pid: int) -> None:
        """Open ``pid``'s mount namespace once it has left ours (unshare runs first)."""
        if self._ns_fd is not None:
            return
        try:
            fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        if _same_file(os.fstat(fd), os.stat("/proc/self/ns/mnt")):
            os.close(fd)  # not unshared yet
        else:
            self._ns_fd = fd

    def _answers(self) -> bool:
        """Whether it serves an API call, not merely accepts a connection: libvirtd listens
        before its drivers are ready (probing QEMU's capabilities, for one)."""
        if not _listening(self.socket_path):
            return False
        return (
            subprocess.run(
                ["virsh", "-c", self.uri, "version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.start_timeout,
                check=False,
            ).returncode
            == 0
        )

    def _unpin(self, pid: int) -> None:
        """Every thread of libvirtd on every CPU this process may use: it read the host's
        CPUID on the one it started on, and later threads and QEMUs must not stay there."""
        cpus = os.sched_getaffinity(0)
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except ProcessLookupError:
                pass  # a thread that ended meanwhile

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """A clean shutdown: every domain destroyed (their QEMUs exit and release their
        leases), then SIGTERM, then SIGKILL to anything of the namespace left at ``timeout``.
        The exit code (None if it never started)."""
        proc = self.proc
        if proc is None:
            return None
        deadline = time.monotonic() + timeout
        if proc.poll() is None:
            try:
                self.destroy_domains()
            except (OSError, subprocess.SubprocessError, LibvirtDaemonError):
                pass  # it does not answer: the namespace is killed below
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # QEMUs that outlived it, or all of it if it hangs
        return proc.returncode

    def destroy_domains(self, timeout: float = 60.0) -> list[str]:
        """Destroy every running domain, all at once; their names. Each destroy takes a second
        or two here: QEMU exits at once on libvirt's SIGTERM, but libvirt waits until its
        zombie is reaped, and QEMU is a child of this container's init, which reaps late."""
        names = [n for n in self.virsh("list", "--name").stdout.split() if n]
        destroys = [
            subprocess.Popen(
                ["virsh", "-c", self.uri, "destroy", name],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name in names
        ]
        for proc in destroys:
            proc.wait(timeout=timeout)
        return names

    def virsh(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``virsh -c URI ARGS``; LibvirtDaemonError with virsh's message if it fails."""
        proc = subprocess.run(
            ["virsh", "-c", self.uri, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise LibvirtDaemonError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def kill(self, timeout: float = KILL_TIMEOUT) -> None:
        """The host dies: libvirtd and every QEMU of its namespace frozen, then SIGKILLed, and
        gone on return."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._hold_ns(self.proc.pid)  # killed while it starts: it may have forked already
        kill_all(self.pids, timeout)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise LibvirtDaemonError(f"libvirtd of {self.root} survived SIGKILL") from e
        if self.pids():
            raise LibvirtDaemonError(f"libvirtd of {self.root} left {self.pids()} behind")
        self._close_ns()

    def _close_ns(self) -> None:
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """libvirtd's process, while it runs."""
        return self.proc.pid if self.running and self.proc is not None else None

    def pids(self) -> list[int]:
        """libvirtd (first) and every live process of its mount namespace: its QEMUs."""
        found = [self.proc.pid] if self.running and self.proc is not None else []
        if self._ns_fd is None:
            return found
        namespace = os.fstat(self._ns_fd)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in found:
                continue
            try:
                if _same_file(os.stat(f"/proc/{entry.name}/ns/mnt"), namespace) and _live(
                    int(entry.name)
                ):
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile
        return found

    def qemu_pids(self) -> list[int]:
        """The QEMU processes of its namespace."""
        return [pid for pid in self.pids() if _comm(pid).startswith("qemu-")]

    # -- logs ---------------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def qemu_log(self, name: str) -> str:
        """What QEMU of domain ``name`` and libvirt wrote to its log ("" if none)."""
        path = self.log_dir / "qemu" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def kill_all(collect: Callable[[], list[int]], timeout: float) -> None:
    """SIGKILL every process ``collect()`` lists, and wait until all are gone.

    Each is first held through a pidfd (a pid number can be reused; a pidfd cannot) and
    frozen (SIGSTOP), in ``collect``'s order, and ``collect`` is asked again until it lists no
    process that is not frozen: a frozen process cannot fork, and its children cannot be
    re-parented away from it, so the scan catches every one before any of them dies.
    """
    me = os.getpid()
    frozen: dict[int, int] = {}  # pid -> pidfd
    try:
        while True:
            new = [pid for pid in collect() if pid not in frozen and pid != me]
            if not new:
                break
            opened: dict[int, int] = {}
            for pid in new:
                try:
                    opened[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    pass  # gone already
            # A pid no longer listed has exited, and its number may be another process's
            # by the time it was opened: only those still listed are signalled.
            still = set(collect())
            for pid, fd in opened.items():
                if pid in still:
                    frozen[pid] = fd
                    _pidfd_signal(fd, signal.SIGSTOP)
                else:
                    os.close(fd)
        for fd in frozen.values():
            _pidfd_signal(fd, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for pid, fd in frozen.items():
            # A pidfd turns readable when its process has exited (a zombie included).
            left = max(deadline - time.monotonic(), 0.0)
            if not select.select([fd], [], [], left)[0]:
                raise ProcessError(f"process {pid} survived SIGKILL for {timeout}s")
    finally:
        for fd in frozen.values():
            os.close(fd)


class ProcessError(RuntimeError):
    """A process did not die."""


def _pidfd_signal(fd: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        pass  # it exited meanwhile


def _listening(path: Path) -> bool:
    """Whether something accepts connections on the unix socket ``path``."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False  # a socket file left by a libvirtd that was killed
    return True


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _stat_fields(pid: int) -> tuple[str, list[bytes]]:
    """``pid``'s comm and the fields after it in /proc/PID/stat (comm may hold anything)."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    comm = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
    return comm, data[data.rindex(b")") + 2 :].split()


def _live(pid: int) -> bool:
    try:
        return _stat_fields(pid)[1][0] not in (b"Z", b"X")
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return _stat_fields(pid)[0]
    except OSError:
        return ""
