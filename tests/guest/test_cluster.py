"""The many-hosts harness (vdsm_guest/cluster.py) on real daemons: two hosts on one machine.

Each host must be a host of its own: its sanlock daemon answers only through its run directory,
its vdsmd only on its own address (with a certificate naming it), and the two join one
lockspace on one ``ids`` file as two host ids. "A host dies" must leave none of its processes
behind (nothing else would stop them: sanlock runs without a watchdog here), while the other
host goes on; a reboot brings it back under the same name, so it rejoins at once.

A host that runs VMs has its own libvirtd, in a mount namespace of its own and on its own
sanlock daemon: its QEMUs hold their ``<lease>`` elements as that host, so a VM on the other
host cannot take them, leases attach and detach live, and a host's death leaves no QEMU.

Nothing is mocked, and nothing skips: a missing sanlock, shim, binding or certificate fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from vdsm_guest.cluster import HOST_ENV, Cluster, ClusterHost
from vdsm_guest.libvirt_daemon import PROCESS_NAME
from vdsm_guest.local_vdsmd import DaemonError
from vdsm_guest.sanlock_daemon import (
    CAP_SYS_RESOURCE,
    SHIM,
    SanlockDaemon,
    SanlockError,
    has_capability,
)

MiB = 1024**2
IO_TIMEOUT = 1
# A join at io_timeout 1 takes 3 s (measured); a host that rejoined under a new
# name would wait ~71 s, so this bound also tells a same-name rejoin from a new host.
JOIN_TIMEOUT = 30.0

# Runs in a child with a host's SANLOCK_RUN_DIR: the binding reads the variable when it
# connects, from its own process's environment, so the test process cannot switch daemons.
BINDING = r"""
import errno, json, sys, time
import sanlock
op, lockspace, path, host_id = sys.argv[1], sys.argv[2].encode(), sys.argv[3], int(sys.argv[4])
if op == "write":
    sanlock.write_lockspace(lockspace, path, iotimeout=int(sys.argv[5]))
elif op == "resource":  # a volume lease: resource sys.argv[5] at offset 0 of path
    sanlock.write_resource(lockspace, sys.argv[5].encode(), [(path, 0)])
elif op == "add":
    sanlock.add_lockspace(lockspace, host_id, path, iotimeout=int(sys.argv[5]))
elif op == "hosts":
    live = {sanlock.HOST_LIVE: "LIVE", sanlock.HOST_FAIL: "FAIL", sanlock.HOST_DEAD: "DEAD",
            sanlock.HOST_FREE: "FREE", sanlock.HOST_UNKNOWN: "UNKNOWN"}
    # EAGAIN while the daemon has not read the other hosts' leases yet (just after a join).
    for _ in range(300):
        try:
            hosts = sanlock.get_hosts(lockspace)
            break
        except sanlock.SanlockException as e:
            if e.errno != errno.EAGAIN:
                raise
            time.sleep(0.1)
    print(json.dumps({str(h["host_id"]): live.get(h["flags"], h["flags"]) for h in hosts}))
"""


def binding(host: ClusterHost, *args: str | int | Path) -> subprocess.Popen[str]:
    """The sanlock binding run through ``host``'s daemon, in a child process."""
    return subprocess.Popen(
        [sys.executable, "-c", BINDING, *(str(a) for a in args)],
        env={**os.environ, **host.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"binding {proc.args!r} failed:\n{err}"
    return out


def lockspace_hosts(host: ClusterHost, lockspace: str, ids: Path) -> dict[str, str]:
    hosts: dict[str, str] = json.loads(finished(binding(host, "hosts", lockspace, ids, 0)))
    return hosts


def join(hosts: list[ClusterHost], lockspace: str, ids: Path) -> float:
    """Each host joins ``lockspace`` as its host id, through its own daemon, all at once."""
    started = time.monotonic()
    procs = [binding(h, "add", lockspace, ids, h.host_id, IO_TIMEOUT) for h in hosts]
    for proc in procs:
        finished(proc)
    return time.monotonic() - started


def new_lockspace(host: ClusterHost, tmp_path: Path) -> tuple[str, Path]:
    ids = tmp_path / "ids"
    with open(ids, "wb") as f:
        f.truncate(MiB)
    lockspace = str(uuid.uuid4())
    finished(binding(host, "write", lockspace, ids, 0, IO_TIMEOUT))
    return lockspace, ids


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.2)


def ping(host: ClusterHost) -> int:
    code: int = host.xmlrpc().ping()["status"]["code"]
    return code


def live(pid: int) -> bool:
    """Whether ``pid`` is a process that runs (a zombie holds nothing but its number)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def marked(root: Path) -> list[int]:
    """Processes whose environment names a host under ``root``: none may outlive a cluster."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(f"{HOST_ENV}={root}".encode()) for v in environ):
            found.append(int(entry.name))
    return found


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    root = tmp_path / "c"  # short: sanlock's socket path must fit in 107 bytes
    with Cluster(root, 2) as cluster:
        yield cluster
    assert marked(root) == [], "a process of the cluster outlived it"


def test_each_sanlock_daemon_answers_only_through_its_own_run_dir(cluster: Cluster) -> None:
    pids = set()
    for host in cluster:
        status = host.sanlock.client("status")
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[0] == f"daemon {host.name}"
        # Its socket and pid file are in its run dir, not in the system daemon's /run/sanlock.
        run_dir = Path(host.env["SANLOCK_RUN_DIR"])
        assert run_dir == host.root / "sanlock"
        assert (run_dir / "sanlock.sock").is_socket()
        assert int((run_dir / "sanlock.pid").read_text()) == host.sanlock.pid
        pids.add(host.sanlock.pid)
        # Its log is its own, and the daemon said where it runs.
        assert "Using non-standard run directory" in host.sanlock.log_text()
    assert len(pids) == 2
    # A client without the variable reaches the machine's daemon (if any), never a host's.
    plain = subprocess.run(
        ["sanlock", "client", "status"],
        env={k: v for k, v in os.environ.items() if k != "SANLOCK_RUN_DIR"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert not plain.stdout.startswith(("daemon host1", "daemon host2"))


def test_each_vdsmd_answers_on_its_own_address_with_tls(cluster: Cluster) -> None:
    for host, address in zip(cluster, ["127.0.0.2", "127.0.0.3"], strict=True):
        assert host.address == address
        assert host.vdsmd.address == f"{address}:{host.vdsmd.port}"
        assert ping(host) == 0
        host.api().ping()  # vdsClient's client: it verifies the certificate names the address
        with host.vdsmd.connect(timeout=10) as sock:
            assert isinstance(sock, ssl.SSLSocket)
            cert = sock.getpeercert()
            assert cert is not None
            names = [str(e[1]) for e in cert["subjectAltName"] if e[0] == "IP Address"]
            assert address in names
        # It listens on its address only: nothing answers on 127.0.0.1 at its port.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", host.vdsmd.port), timeout=10).close()
        # And it talks to its own sanlock daemon, as every client of it must.
        assert f"SANLOCK_RUN_DIR={host.root / 'sanlock'}".encode() in Path(
            f"/proc/{host.vdsmd.pids()[0]}/environ"
        ).read_bytes().split(b"\0")


def test_two_hosts_join_one_lockspace_through_their_own_daemons(
    cluster: Cluster, tmp_path: Path
) -> None:
    host1, host2 = cluster.host(1), cluster.host(2)
    lockspace, ids = new_lockspace(host1, tmp_path)
    took = join([host1, host2], lockspace, ids)
    assert took < JOIN_TIMEOUT
    for host in (host1, host2):
        assert f"s {lockspace}:{host.host_id}:{ids}:0" in host.sanlock.status()
    wait_for(
        lambda: lockspace_hosts(host2, lockspace, ids) == {"1": "LIVE", "2": "LIVE"},
        JOIN_TIMEOUT,
        "hosts 1 and 2 live",
    )


def test_a_dead_host_leaves_nothing_and_reboots_into_its_lockspace(
    cluster: Cluster, tmp_path: Path
) -> None:
    host1, host2 = cluster.host(1), cluster.host(2)
    lockspace, ids = new_lockspace(host1, tmp_path)
    join([host1, host2], lockspace, ids)
    # A process of host 1 that is no child of its vdsmd, as a qemu-img left by a vdsmd crash:
    # its mark makes it the host's.
    orphan = subprocess.Popen(
        ["sleep", "600"], env={**os.environ, **host1.vdsmd.env}, start_new_session=True
    )
    try:
        pids = host1.pids()
        assert host1.sanlock.pids()[0] in pids and host1.vdsmd.pids()[0] in pids
        assert orphan.pid in pids
        assert len(pids) >= 4  # sanlock and its helper, vdsmd, the orphan

        host1.kill()

        assert [pid for pid in pids if live(pid)] == []
        assert host1.pids() == [] and not host1.alive
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        orphan.kill()
        orphan.wait()
    with pytest.raises(OSError):
        ping(host1)
    # The other host goes on: its vdsmd answers, its daemon still holds its host id.
    assert ping(host2) == 0
    assert f"s {lockspace}:2:{ids}:0" in host2.sanlock.status()

    host1.reboot()

    assert ping(host1) == 0
    assert host1.sanlock.status().splitlines()[0] == "daemon host1"
    assert all(pid not in pids for pid in host1.pids())
    # The same name: the lockspace takes it back at once, not after the old lease expires.
    assert join([host1], lockspace, ids) < JOIN_TIMEOUT
    wait_for(
        lambda: lockspace_hosts(host2, lockspace, ids) == {"1": "LIVE", "2": "LIVE"},
        JOIN_TIMEOUT,
        "host 1 live again",
    )


def test_vdsmd_alone_crashes_hangs_and_comes_back(cluster: Cluster) -> None:
    host = cluster.host(1)
    sanlock_pids = host.sanlock.pids()

    host.suspend()
    # Hung: the connection is taken by the kernel but nobody answers.
    with pytest.raises(TimeoutError):
        host.vdsmd.connect(timeout=1).close()
    host.resume()
    assert ping(host) == 0

    host.kill_vdsmd()
    assert not host.vdsmd.running
    assert host.sanlock.pids() == sanlock_pids  # the daemon lives on
    host.start_vdsmd()
    assert ping(host) == 0

    host.suspend()
    host.stop_vdsmd()  # resumed first, or SIGTERM would wait for SIGCONT
    assert not host.vdsmd.running
    assert ping(cluster.host(2)) == 0


def test_a_start_that_fails_leaves_no_process(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cluster = Cluster(root, 2, extra_args=["--no-such-option"])
    with pytest.raises(DaemonError, match="no-such-option"):
        with cluster:
            pass
    # The sanlock daemons had started; they are gone with the vdsmds that could not start.
    assert all(h.sanlock.proc is not None for h in cluster)
    assert marked(root) == []
    assert all(not h.alive for h in cluster)


def test_the_shim_is_preloaded_only_where_the_capability_is_missing(
    cluster: Cluster, tmp_path: Path
) -> None:
    environ = Path(f"/proc/{cluster.host(1).sanlock.pid}/environ").read_bytes().split(b"\0")
    preloaded = any(v.startswith(b"LD_PRELOAD=") and bytes(SHIM) in v for v in environ)
    assert preloaded == (not has_capability(CAP_SYS_RESOURCE))
    # Without the shim where it is needed, the daemon is not even tried, and the error says
    # what to do.
    daemon = SanlockDaemon(tmp_path / "s", "noshim", shim=tmp_path / "no-shim.so")
    if has_capability(CAP_SYS_RESOURCE):
        assert "LD_PRELOAD" not in daemon.daemon_env() or str(daemon.shim) not in str(
            daemon.daemon_env()["LD_PRELOAD"]
        )
    else:
        with pytest.raises(SanlockError, match="setup-host.sh"):
            daemon.start()
        assert daemon.proc is None


def test_capabilities_are_read_from_cap_eff(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t000001fffeffffff\n")
    assert not has_capability(CAP_SYS_RESOURCE, status)
    assert has_capability(CAP_SYS_RESOURCE - 1, status)
    assert has_capability(CAP_SYS_RESOURCE + 1, status)


def test_a_run_dir_too_long_for_a_socket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unix socket"):
        SanlockDaemon(tmp_path / ("d" * 100), "long")


# -- hosts that run VMs ---------------------------------------------------------------------------

# libvirt's messages for a lease it cannot acquire (sanlock's reasons, as libvirt words them).
HELD_ELSEWHERE = "Lease is held by another host"
NOT_JOINED = "No space left on device"  # sanlock's ENOSPC: misleading, see the test


@dataclass
class VmCluster:
    """Two VM hosts and a lockspace both joined, for the lease tests of this module."""

    cluster: Cluster
    lockspace: str
    ids: Path
    directory: Path

    def lease(self, lockspace: str | None = None) -> Lease:
        """A new volume lease (resource VOL at offset 0 of VOL.lease, as vdsm makes them)."""
        lockspace = self.lockspace if lockspace is None else lockspace
        volume = str(uuid.uuid4())
        path = self.directory / f"{volume}.lease"
        with open(path, "wb") as f:
            f.truncate(MiB)
        finished(binding(self.cluster.host(1), "resource", lockspace, path, 0, volume))
        return Lease(lockspace, volume, path)


@dataclass(frozen=True)
class Lease:
    lockspace: str
    volume: str
    path: Path

    @property
    def xml(self) -> str:
        """The ``<lease>`` vdsm puts in a domain's XML (or attaches) for the volume."""
        return (
            f"<lease><lockspace>{self.lockspace}</lockspace><key>{self.volume}</key>"
            f"<target path='{self.path}' offset='0'/></lease>"
        )

    def holder(self, host: ClusterHost) -> int | None:
        """The pid holding it through ``host``'s sanlock daemon; None if none there does."""
        pattern = rf"^r {self.lockspace}:{self.volume}:{re.escape(str(self.path))}:0:\d+ p (\d+)$"
        match = re.search(pattern, host.sanlock.status(), re.MULTILINE)
        return int(match.group(1)) if match else None


def domain_xml(name: str, *leases: Lease) -> str:
    """A domain with no OS and no disk: SeaBIOS spins under TCG, enough to hold leases."""
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        + "".join(lease.xml for lease in leases)
        + "<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>"
    )


def open_libvirt(host: ClusterHost) -> libvirt.virConnect:
    uri = host.libvirt_uri
    assert uri is not None, f"{host.name} runs no VMs"
    return libvirt.open(uri)


def start_vm(host: ClusterHost, *leases: Lease) -> libvirt.virDomain:
    """A transient domain on ``host``'s libvirtd, holding ``leases``."""
    conn = open_libvirt(host)
    return conn.createXML(domain_xml(f"vm-{uuid.uuid4().hex[:8]}", *leases), 0)


def running(host: ClusterHost) -> list[str]:
    """The domains ``host``'s libvirtd runs."""
    conn = open_libvirt(host)
    try:
        return [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def qemu_pid(host: ClusterHost, domain: libvirt.virDomain) -> int:
    assert host.libvirt is not None
    pids = [
        pid
        for pid in host.libvirt.qemu_pids()
        if f"guest={domain.name()}," in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    assert len(pids) == 1, pids
    return pids[0]


@pytest.fixture(scope="module")
def vm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmCluster]:
    """Two hosts that both run VMs, and a lockspace both joined (a join costs 3 s: shared by
    the module's tests, which leave both hosts running and joined)."""
    tmp = tmp_path_factory.mktemp("vm")
    root = tmp / "c"  # short: sanlock's and libvirt's socket paths must fit in 107 bytes
    with Cluster(root, 2, vm_hosts=(1, 2)) as cluster:
        lockspace, ids = new_lockspace(cluster.host(1), tmp)
        join(list(cluster), lockspace, ids)
        yield VmCluster(cluster, lockspace, ids, tmp)
        everything = [pid for host in cluster for pid in host.pids()]
    # Every host's QEMUs too: the clean stop destroyed the domains left running.
    assert [pid for pid in everything if live(pid)] == []
    assert marked(root) == [], "a process of the cluster outlived it"


def test_a_vm_host_runs_its_own_libvirtd_for_its_vdsmd(vm_cluster: VmCluster) -> None:
    system_libvirtd = int(Path("/run/libvirtd.pid").read_text())
    pids = set()
    for host in vm_cluster.cluster:
        assert host.vm_host and host.libvirt is not None and host.libvirt.pid is not None
        pid = host.libvirt.pid
        pids.add(pid)
        # Its own mount namespace, its own name: `pidof libvirtd` still finds only the machine's.
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert Path(f"/proc/{pid}/comm").read_text().strip() == PROCESS_NAME
        assert host.libvirt_uri == f"qemu:///system?socket={host.root}/libvirt/run/libvirt-sock"
        assert running(host) == []
        # Its vdsmd uses it: told so, and connected to it once it needs libvirt.
        argv = Path(f"/proc/{host.vdsmd.pids()[0]}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--libvirt-uri") + 1] == host.libvirt_uri.encode()
        assert host.api().capabilities()["libvirtVersion"]
        assert f"connected to {host.libvirt_uri}" in host.vdsmd.log_text()
        # And libvirtd talks to the host's sanlock daemon, not to the machine's.
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"SANLOCK_RUN_DIR={host.root / 'sanlock'}".encode() in environ
    assert len(pids) == 2
    pidof = subprocess.run(["pidof", "libvirtd"], capture_output=True, text=True, check=False)
    assert system_libvirtd in [int(p) for p in pidof.stdout.split()]
    assert not pids & {int(p) for p in pidof.stdout.split()}


def test_a_vm_holds_its_lease_as_its_host_and_the_other_host_is_refused(
    vm_cluster: VmCluster,
) -> None:
    host1, host2 = vm_cluster.cluster.host(1), vm_cluster.cluster.host(2)
    lease = vm_cluster.lease()
    vm = start_vm(host2, lease)
    # QEMU itself holds the lease, through host 2's sanlock daemon (so as host id 2).
    assert lease.holder(host2) == qemu_pid(host2, vm)
    assert lease.holder(host1) is None

    with pytest.raises(libvirt.libvirtError, match=HELD_ELSEWHERE):
        start_vm(host1, lease)
    assert running(host1) == []
    assert host1.libvirt is not None and host1.libvirt.qemu_pids() == []

    # A VM that stops releases its lease at once; the other host may then take it.
    vm.destroy()
    assert lease.holder(host2) is None
    moved = start_vm(host1, lease)
    assert lease.holder(host1) == qemu_pid(host1, moved)
    moved.destroy()


def test_a_lease_in_a_lockspace_the_host_has_not_joined_is_refused_with_enospc(
    vm_cluster: VmCluster, tmp_path: Path
) -> None:
    """sanlock answers ENOSPC ("No space left on device") for a lease in a lockspace the host
    has not joined, and libvirt passes it on as it is: vdsm must check that the host joined
    every lockspace a VM's leases name before it starts the VM, and say so in its own words."""
    host1 = vm_cluster.cluster.host(1)
    other, _ = new_lockspace(host1, tmp_path)  # written, joined by no host
    lease = vm_cluster.lease(other)
    with pytest.raises(libvirt.libvirtError, match=NOT_JOINED) as refused:
        start_vm(host1, lease)
    assert "Failed to acquire lock" in str(refused.value)
    assert lease.holder(host1) is None


def test_leases_attach_and_detach_live(vm_cluster: VmCluster) -> None:
    host1, host2 = vm_cluster.cluster.host(1), vm_cluster.cluster.host(2)
    top, new_top = vm_cluster.lease(), vm_cluster.lease()
    vm = start_vm(host2, top)
    pid = qemu_pid(host2, vm)

    vm.attachDeviceFlags(new_top.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    assert new_top.holder(host2) == pid and top.holder(host2) == pid
    assert new_top.volume in vm.XMLDesc(0)

    vm.detachDeviceFlags(top.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    assert top.holder(host2) is None and new_top.holder(host2) == pid
    assert top.volume not in vm.XMLDesc(0)
    # Released for real: the other host takes it, and still cannot take the one held.
    other = start_vm(host1, top)
    assert top.holder(host1) == qemu_pid(host1, other)
    with pytest.raises(libvirt.libvirtError, match=HELD_ELSEWHERE):
        other.attachDeviceFlags(new_top.xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert new_top.holder(host1) is None
    other.destroy()
    vm.destroy()


def test_a_qemu_killed_behind_libvirts_back_releases_its_lease(vm_cluster: VmCluster) -> None:
    host2 = vm_cluster.cluster.host(2)
    lease = vm_cluster.lease()
    vm = start_vm(host2, lease)
    pid = qemu_pid(host2, vm)
    os.kill(pid, signal.SIGKILL)
    # sanlock sees its client's connection close and releases what it held.
    wait_for(lambda: lease.holder(host2) is None, 10, "the lease released")
    # And libvirt saw it go: a transient domain that stops is gone.
    wait_for(lambda: vm.name() not in running(host2), 10, "the domain gone")


def test_a_dead_vm_host_leaves_no_qemu_and_its_reboot_frees_its_leases(
    vm_cluster: VmCluster,
) -> None:
    """Last of the module: it kills host 2 (rebooted and joined again at the end)."""
    host1, host2 = vm_cluster.cluster.host(1), vm_cluster.cluster.host(2)
    assert host2.libvirt is not None
    lease = vm_cluster.lease()
    vm = start_vm(host2, lease)
    qemu = qemu_pid(host2, vm)
    pids = host2.pids()
    assert qemu in pids and host2.libvirt.pid in pids and host2.sanlock.pid in pids

    host2.kill()

    assert [pid for pid in pids if live(pid)] == []
    assert host2.pids() == [] and not host2.libvirt.running
    # Its lease stays on the storage as a dead host's: free only once host 2 is DEAD (~70 s
    # at io_timeout 1; an acquire meanwhile blocks in sanlock until then), or...

    host2.reboot()

    # ...once it rejoins under the same name: its old leases are then void at once.
    assert join([host2], vm_cluster.lockspace, vm_cluster.ids) < JOIN_TIMEOUT
    moved = start_vm(host1, lease)
    assert lease.holder(host1) == qemu_pid(host1, moved)
    moved.destroy()
    # The rebooted host runs VMs again, on a fresh libvirtd.
    assert host2.libvirt.pid is not None and host2.libvirt.pid not in pids
    assert running(host2) == []


def test_vm_hosts_must_be_hosts_of_the_cluster(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vm_hosts"):
        Cluster(tmp_path / "c", 2, vm_hosts=(3,))
    cluster = Cluster(tmp_path / "c", 3, vm_hosts=(2,))
    assert [h.vm_host for h in cluster] == [False, True, False]
    assert cluster.vm_hosts == [cluster.host(2)]
    assert cluster.host(1).libvirt_uri is None
    # A VM host's vdsmd is told its libvirtd; the others keep the machine's.
    assert "--libvirt-uri" not in cluster.host(1).vdsmd.argv()
    argv = cluster.host(2).vdsmd.argv()
    assert argv[argv.index("--libvirt-uri") + 1] == cluster.host(2).libvirt_uri
