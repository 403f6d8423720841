"""The many-hosts harness (vdsm_guest/cluster.py) on real daemons: two hosts on one machine.

Each host must be a host of its own: its sanlock daemon answers only through its run directory,
its vdsmd only on its own address (with a certificate naming it), and the two join one
lockspace on one ``ids`` file as two host ids. "A host dies" must leave none of its processes
behind (nothing else would stop them: sanlock runs without a watchdog here), while the other
host goes on; a reboot brings it back under the same name, so it rejoins at once.

Nothing is mocked, and nothing skips: a missing sanlock, shim, binding or certificate fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vdsm_guest.cluster import HOST_ENV, Cluster, ClusterHost
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
