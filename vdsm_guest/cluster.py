"""Many vdsm "hosts" on one test machine, for the multi-host tests, the benchmark and the demo.

A host is a set of processes: its own sanlock daemon (vdsm_guest/sanlock_daemon.py), so its own
host identity in every lockspace, and its own vdsmd (vdsm_guest/local_vdsmd.py) on a loopback
address of its own, with its own state and run directories. A host that runs VMs (``vm_hosts``)
also has its own libvirtd (vdsm_guest/libvirt_daemon.py), in a mount namespace of its own and
talking to the host's sanlock daemon, so that its QEMUs hold their volume leases as this host;
its vdsmd gets ``--libvirt-uri`` of it. Other hosts' vdsmds use the machine's libvirtd, as
before. Every host sees the same storage directories at the same paths, as hosts of one data
center see their shared storage:

    ROOT/pki/               the cluster's certificates: vdsmd's names every host's address
    ROOT/storage/           the shared storage roots (unless ``storage_roots`` says otherwise)
    ROOT/host<k>/           host k's vdsmd: state/, run/, vdsmd.log
    ROOT/host<k>/sanlock/   its sanlock daemon's run directory (SANLOCK_RUN_DIR)
    ROOT/host<k>/sanlock.log
    ROOT/host<k>/libvirt/   a VM host's libvirtd: etc/, run/libvirt-sock, libvirtd.log, log/qemu/

Host k (from 1) is named ``host<k>`` (its sanlock name, so a reboot rejoins at once), listens
on 127.0.0.<k+1> and is meant to join lockspaces as host id k. Its vdsmd finds its sanlock
daemon through SANLOCK_RUN_DIR, as every client must.

"A host dies" is :meth:`ClusterHost.kill`: SIGKILL to every process of the host at once. sanlock
runs without a watchdog here (-w 0), so nothing else would stop a host whose leases another
host may now take; the harness must be that watchdog, and leave nothing of the host running.
The host's processes are its sanlock daemon's, its libvirtd and every process of that
libvirtd's mount namespace (its QEMUs, which libvirt re-parents to init and starts with an
environment of its own), vdsmd and its descendants, and any process whose environment carries
the host's mark (VDSM_CLUSTER_HOST): a qemu-img that outlived a vdsmd crash belongs to init, not
to vdsmd, but it still has the mark. They are all frozen (SIGSTOP) first, sanlock first, so none
renews a lease, forks or reaches the storage while the others die.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from vdsm import pki as vdsm_pki
from vdsm_api.pki import PkiLayout
from vdsm_cli.api import Vdsm
from vdsm_cli.client import Endpoint
from vdsm_guest.libvirt_daemon import LibvirtDaemon, ProcessError, kill_all
from vdsm_guest.local_vdsmd import DaemonError, LocalVdsmd
from vdsm_guest.sanlock_daemon import SanlockDaemon

HOST_ENV = "VDSM_CLUSTER_HOST"
# Host ids run from 1 to 250 in vdsm (connectStoragePool), and 127.0.0.<k+1> stays below .255.
MAX_HOSTS = 250
KILL_TIMEOUT = 30.0
# The sanlock io_timeout of domains the cluster's vdsmds create: 1 s, so that a dead host's
# leases free after 8 x 1 + 60 = 68 s rather than 140 s. Test machines only.
SANLOCK_IO_TIMEOUT = 1


# A host's processes did not die (kill_all's error, under the name this module's callers know).
ClusterError = ProcessError


class ClusterHost:
    """Host ``index`` (from 1) of a :class:`Cluster`: its sanlock daemon, its libvirtd if it is
    a ``vm_host``, and its vdsmd."""

    def __init__(
        self,
        index: int,
        root: Path,
        *,
        pki: PkiLayout,
        storage_roots: Sequence[Path],
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        tls: bool = True,
        boot_dir: Path | None = None,
        log_level: str | None = None,
        vdsmd_class: type[LocalVdsmd] = LocalVdsmd,
        vm_host: bool = False,
        libvirt_cache_dir: Path | None = None,
    ) -> None:
        self.index = index
        self.host_id = index
        self.name = f"host{index}"
        self.address = f"127.0.0.{index + 1}"
        self.root = root.absolute()
        # The mark every process of this host inherits: how kill() finds the orphans.
        self.mark = {HOST_ENV: str(self.root)}
        self.sanlock = SanlockDaemon(self.root / "sanlock", self.name, extra_env=self.mark)
        self.libvirt = (
            LibvirtDaemon(
                self.root / "libvirt",
                sanlock_env=self.sanlock.env,
                extra_env=self.mark,
                cache_dir=libvirt_cache_dir,
            )
            if vm_host
            else None
        )
        vdsmd_args = list(extra_args)
        if self.libvirt is not None:
            vdsmd_args += ["--libvirt-uri", self.libvirt.uri]
        options: dict[str, Any] = {
            "tls": tls,
            "pki": pki,
            "storage_roots": list(storage_roots),
            "boot_dir": boot_dir,
            "host": self.address,
        }
        if log_level is not None:
            options["log_level"] = log_level
        self.vdsmd = vdsmd_class(
            self.root,
            vdsmd_args,
            {**(env or {}), **self.mark, **self.sanlock.env},
            **options,
        )
        self.suspended = False

    def __repr__(self) -> str:
        return f"<ClusterHost {self.name} {self.address}>"

    @property
    def env(self) -> dict[str, str]:
        """What a client of this host's sanlock daemon adds to its environment."""
        return self.sanlock.env

    @property
    def vm_host(self) -> bool:
        """Whether it runs VMs on a libvirtd of its own."""
        return self.libvirt is not None

    @property
    def libvirt_uri(self) -> str | None:
        """The URI of its libvirtd, which its vdsmd uses; None for a host that runs no VMs
        (its vdsmd uses the machine's qemu:///system)."""
        return None if self.libvirt is None else self.libvirt.uri

    # -- life and death ------------------------------------------------------------------

    def start(self) -> None:
        """Start its sanlock daemon, then its libvirtd (a VM host), then its vdsmd (each ready
        when this returns)."""
        self.start_sanlock()
        self.start_libvirt()
        self.start_vdsmd()

    def start_sanlock(self) -> None:
        self.sanlock.start()

    def start_libvirt(self) -> None:
        """Start its libvirtd (a VM host; nothing otherwise): after sanlock, whose daemon every
        QEMU registers with as it starts, and before vdsmd, which connects to it."""
        if self.libvirt is not None:
            self.libvirt.start()

    def start_vdsmd(self) -> None:
        """Start vdsmd (again, after a crash or a stop: the same port and state)."""
        self.suspended = False
        self.vdsmd.start()

    def stop(self) -> None:
        """A clean shutdown: vdsmd (SIGTERM), then libvirtd (its domains destroyed, so their
        QEMUs release their leases), then sanlock, which leaves its lockspaces (and would
        SIGKILL the QEMUs registered with it)."""
        self.stop_vdsmd()
        if self.libvirt is not None:
            self.libvirt.stop()
        self.sanlock.stop()

    def stop_vdsmd(self) -> None:
        """SIGTERM to vdsmd (resumed first if suspended, or it could not act on it)."""
        if self.vdsmd.proc is None:
            return
        self.resume()
        self.vdsmd.stop()

    def kill_vdsmd(self) -> None:
        """A vdsmd crash: SIGKILL to vdsmd alone. sanlock frees the leases it held at once;
        its children (qemu-img) go on, as after a real crash, until the host is killed."""
        self.vdsmd.kill()
        self.suspended = False

    def suspend(self) -> None:
        """SIGSTOP to vdsmd: a hung SPM, alive to sanlock (its lease stays held) but deaf.
        Its children go on, as they would under a hung daemon."""
        proc = self.vdsmd.proc
        if proc is None or proc.poll() is not None:
            raise DaemonError(f"vdsmd of {self.name} does not run")
        proc.send_signal(signal.SIGSTOP)
        self.suspended = True

    def resume(self) -> None:
        """SIGCONT to a suspended vdsmd."""
        if self.suspended and self.vdsmd.proc is not None:
            self.vdsmd.proc.send_signal(signal.SIGCONT)
        self.suspended = False

    def kill(self, timeout: float = KILL_TIMEOUT) -> None:
        """The host dies: every process of it frozen, then SIGKILLed, and gone on return. Its
        leases stay on the storage as they were; other hosts see it FAIL, then DEAD after
        8 x io_timeout + 60 s, unless it reboots first."""
        kill_all(self.pids, timeout)
        # Reap the processes this one started (all dead by now).
        if self.vdsmd.proc is not None:
            self.vdsmd.kill()
        if self.libvirt is not None:
            self.libvirt.kill()
        self.sanlock.kill()
        self.suspended = False

    def reboot(self) -> None:
        """Start the host again after it died: sanlock under the same name (so it rejoins its
        lockspaces in ~3 s and its old leases are void), a fresh libvirtd (a VM host: no
        domain survives), then vdsmd on its old port and state. A host that still runs is
        killed first, as a reset would."""
        if self.pids():
            self.kill()
        self.start()

    def pids(self) -> list[int]:
        """Every live process of the host: sanlock's first, then libvirtd's and its QEMUs,
        then vdsmd's tree, then the orphans that carry its mark (each listed once)."""
        libvirt = [] if self.libvirt is None else self.libvirt.pids()
        found = dict.fromkeys([*self.sanlock.pids(), *libvirt, *self.vdsmd.pids(), *self._marked()])
        found.pop(os.getpid(), None)  # never this process, whatever its environment says
        return list(found)

    def _marked(self) -> list[int]:
        return processes_with_env(HOST_ENV, self.mark[HOST_ENV])

    @property
    def alive(self) -> bool:
        """Whether any process of the host runs."""
        return bool(self.pids())

    # -- clients ---------------------------------------------------------------------------

    def api(self, *, flow_id: str | None = None, interval: float | None = None) -> Vdsm:
        """A new client of its vdsmd's API (:meth:`LocalVdsmd.api`)."""
        return self.vdsmd.api(flow_id=flow_id, interval=interval)

    def xmlrpc(self) -> Any:
        """A new raw XML-RPC proxy to its vdsmd (:meth:`LocalVdsmd.xmlrpc`)."""
        return self.vdsmd.xmlrpc()

    def endpoint(self) -> Endpoint:
        return self.vdsmd.endpoint()


class Cluster:
    """``hosts`` hosts under ``root`` sharing ``storage_roots``; ``with Cluster(...) as c:``
    starts them all and, whatever happens, leaves no process of them behind.

    ``extra_args`` go to every vdsmd; ``sanlock_io_timeout`` (None: vdsmd's default) is the
    io_timeout of the domains they create. ``env``, ``tls``, ``boot_dir`` and ``log_level``
    (None: the class's default) are passed to each vdsmd, built by ``vdsmd_class``
    (LocalVdsmd, or a subclass with the same constructor). ``pki``: certificates naming every
    host's address (None: the cluster makes its own under ``root/pki``). ``vm_hosts``: the
    indexes of the hosts that run VMs, each on a libvirtd of its own (none by default: every
    vdsmd then uses the machine's libvirtd); ``libvirt_cache_dir``: their shared QEMU
    capability cache (None: vdsm_guest.libvirt_daemon's default).
    """

    def __init__(
        self,
        root: Path,
        hosts: int = 2,
        storage_roots: Sequence[Path] | None = None,
        *,
        sanlock_io_timeout: int | None = SANLOCK_IO_TIMEOUT,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        tls: bool = True,
        pki: PkiLayout | None = None,
        boot_dir: Path | None = None,
        log_level: str | None = None,
        vdsmd_class: type[LocalVdsmd] = LocalVdsmd,
        vm_hosts: Iterable[int] = (),
        libvirt_cache_dir: Path | None = None,
    ) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"a cluster has 1 to {MAX_HOSTS} hosts, not {hosts}")
        vm_hosts = set(vm_hosts)
        if not vm_hosts <= set(range(1, hosts + 1)):
            raise ValueError(f"vm_hosts {sorted(vm_hosts)} are not all among hosts 1 to {hosts}")
        self.root = root.absolute()
        self.storage_roots = (
            [self.root / "storage"] if storage_roots is None else list(storage_roots)
        )
        self.tls = tls
        self.own_pki = pki is None
        self.pki = PkiLayout(self.root / "pki") if pki is None else pki
        args = list(extra_args)
        if sanlock_io_timeout is not None:
            args += ["--sanlock-io-timeout", str(sanlock_io_timeout)]
        self.hosts = [
            ClusterHost(
                k,
                self.root / f"host{k}",
                pki=self.pki,
                storage_roots=self.storage_roots,
                extra_args=args,
                env=env,
                tls=tls,
                boot_dir=boot_dir,
                log_level=log_level,
                vdsmd_class=vdsmd_class,
                vm_host=k in vm_hosts,
                libvirt_cache_dir=libvirt_cache_dir,
            )
            for k in range(1, hosts + 1)
        ]

    @property
    def vm_hosts(self) -> list[ClusterHost]:
        """The hosts that run VMs on a libvirtd of their own."""
        return [h for h in self.hosts if h.vm_host]

    def host(self, index: int) -> ClusterHost:
        """Host ``index``, from 1 (host id ``index``, ``host<index>``)."""
        if not 1 <= index <= len(self.hosts):
            raise IndexError(f"no host {index}: the cluster has hosts 1 to {len(self.hosts)}")
        return self.hosts[index - 1]

    def __iter__(self) -> Iterator[ClusterHost]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def make_pki(self) -> None:
        """The cluster's own certificates: vdsmd's names every host's address (made anew each
        time, so a root reused with more hosts never keeps a certificate naming too few)."""
        names = [f"IP:{h.address}" for h in self.hosts]
        vdsm_pki.configure(self.pki, force=True, extra_names=names)

    def start(self) -> None:
        """Start every host: the sanlock daemons at once, then on every host at once its
        libvirtd (a VM host) and its vdsmd. On a failure every host is killed before the error
        is raised."""

        def start_services(host: ClusterHost) -> None:
            host.start_libvirt()
            host.start_vdsmd()

        try:
            for path in self.storage_roots:
                path.mkdir(parents=True, exist_ok=True)
            if self.tls and self.own_pki:
                self.make_pki()
            _each(self.hosts, ClusterHost.start_sanlock)
            _each(self.hosts, start_services)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """Stop every host cleanly, at once; a host whose stop fails is killed. Raises the
        first failure once every host is down."""
        failures: list[BaseException] = []

        def stop(host: ClusterHost) -> None:
            try:
                host.stop()
            except BaseException as e:
                failures.append(e)
            finally:
                host.kill()  # stragglers, or all of it if stop failed

        _each(self.hosts, stop)
        if failures:
            raise failures[0]

    def kill(self) -> None:
        """Every host dies (see :meth:`ClusterHost.kill`)."""
        _each(self.hosts, ClusterHost.kill)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment has ``name=value`` (a host's mark; the task id the
    runner gives each qemu-img it starts)."""
    mark = f"{name}={value}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue  # gone meanwhile (a zombie reads as empty)
        if mark in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _each(hosts: Iterable[ClusterHost], action: Callable[[ClusterHost], None]) -> None:
    """``action`` on every host at once (in threads); every one runs to its end, then the
    first failure is raised, the others attached to it as notes."""
    hosts = list(hosts)
    with ThreadPoolExecutor(max_workers=max(len(hosts), 1)) as pool:
        futures = [(h, pool.submit(action, h)) for h in hosts]
    errors = [(h, f.exception()) for h, f in futures if f.exception() is not None]
    if errors:
        first = errors[0][1]
        assert first is not None
        for host, error in errors[1:]:
            first.add_note(f"{host.name} failed too: {error!r}")
        raise first
