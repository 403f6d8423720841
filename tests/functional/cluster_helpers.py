"""A pool on two real hosts (vdsm_guest.cluster), for the multi-host functional tests: the
cross-host moves (test_move_disk_cluster.py) and the volume leases across hosts
(test_cluster_leases.py). Not a test module.

:class:`TwoHosts` builds the pool as an engine does: host 1 makes both domains and the pool,
joins it as host id 1 and becomes its SPM; host 2 connects to the domains' storage and joins as
host id 2. Both hosts run VMs on their own libvirtd (on their own sanlock daemon), so volume
leases are on, as in production. An image (a raw base prefilled with data, a qcow2 leaf) made
by the SPM; VMs are started on host 2 unless told otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import require_command
from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, wait_task
from tests.functional.mover import Mover, prefill
from tests.functional.storage_helpers import ok
from vdsm.storage.runner import TASK_ID_ENV
from vdsm_guest.cluster import Cluster, ClusterHost, processes_with_env

GiB = 1024**3


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:.0f} s")
        time.sleep(0.1)


def joined(host: ClusterHost, domains: list[str]) -> bool:
    stats = ok(host.xmlrpc().repoStats())
    return all(stats.get(sd, {}).get("acquired") for sd in domains)


def vdsmd_of(host: ClusterHost) -> VdsmdProcess:
    assert isinstance(host.vdsmd, VdsmdProcess)
    return host.vdsmd


def spm_start(host: ClusterHost, sp: str) -> dict[str, Any]:
    """spmStart on ``host`` and its task's end, whatever the result."""
    task = ok(host.xmlrpc().spmStart(sp, -1, -1, -1, "false", 250, 5))["uuid"]
    return wait_task(vdsmd_of(host), task, timeout=150)


def copies_of(task_id: str) -> list[int]:
    """Live processes tagged with the task's id (the runner tags each qemu-img it starts)."""
    return processes_with_env(TASK_ID_ENV, task_id)


def qemu_pid(host: ClusterHost, vm_id: str) -> int:
    """The QEMU of a VM on ``host``: its pid file is in the host's libvirtd mount namespace,
    read through /proc/PID/root."""
    assert host.libvirt is not None
    name = host.libvirt.virsh("domname", vm_id).stdout.strip()
    pid_file = Path(f"/proc/{host.libvirt.pid}/root/run/libvirt/qemu/{name}.pid")
    return int(pid_file.read_text().strip())


@dataclass
class PoolIds:
    sp: str
    sd: str  # the source (the master)
    sd2: str  # the destination
    root: Path  # the domains' directories (src, dst) are under it


def make_pool(cluster: Cluster, storage: Path) -> PoolIds:
    """The pool as an engine builds it, on hosts 1 and 2 of ``cluster``: host 1 makes both
    domains under ``storage`` (src, the master, and dst) and the pool of both; host 2 connects
    to their storage; both join (host ids 1 and 2) and host 1 becomes the SPM. The two joins
    overlap: each is sanlock's few seconds of waiting, not work."""
    spm, other = cluster.host(1), cluster.host(2)
    pool = PoolIds(new_uuid(), new_uuid(), new_uuid(), storage)
    rpc1 = spm.xmlrpc()
    for uuid, name in ((pool.sd, "src"), (pool.sd2, "dst")):
        (storage / name).mkdir(parents=True, exist_ok=True)  # or a mount point made by the caller
        ok(rpc1.createStorageDomain(4, uuid, name, str(storage / name), 1))
    ok(rpc1.createStoragePool(0, pool.sp, "dc", pool.sd, [pool.sd, pool.sd2], 1))
    ok(rpc1.connectStoragePool(pool.sp, 1, "", pool.sd, 1))
    # Host 2 learns the domains from its storage connections, then joins the pool.
    rpc2 = other.xmlrpc()
    connections = [{"id": new_uuid(), "connection": str(storage / n)} for n in ("src", "dst")]
    reply = ok(rpc2.connectStorageServer(4, pool.sp, connections))
    assert [c["status"] for c in reply["statuslist"]] == [0, 0], reply
    ok(rpc2.connectStoragePool(pool.sp, 2, "", pool.sd, 1))
    assert spm_start(spm, pool.sp)["taskResult"] == "success"
    domains = [pool.sd, pool.sd2]
    wait_for(lambda: all(joined(h, domains) for h in (spm, other)), "joined", timeout=30)
    return pool


class TwoHosts:
    """The pool on two hosts (see the module docstring). Shaped as mover.MovingVms:
    ``daemon``, the HOST of the command line, is the VM's host."""

    def __init__(self, cluster: Cluster, root: Path) -> None:
        self.cluster = cluster
        self.spm, self.vm_host = cluster.host(1), cluster.host(2)
        self.root = root
        self.storage = make_pool(cluster, root)
        sp, sd = self.storage.sp, self.storage.sd
        api = self.spm.api()
        self.img, self.base, self.leaf = new_uuid(), new_uuid(), new_uuid()
        api.wait_success(api.create_volume(sd, sp, self.img, self.base, GiB, volume_format="RAW"))
        api.wait_success(api.create_volume(sd, sp, self.img, self.leaf, GiB, parent=self.base))
        prefill(self, root)
        self.started: list[tuple[ClusterHost, str]] = []

    @property
    def daemon(self) -> VdsmdProcess:
        return vdsmd_of(self.vm_host)

    @property
    def spm_daemon(self) -> VdsmdProcess:
        return vdsmd_of(self.spm)

    def params(self, vm_id: str | None = None, **extra: Any) -> dict[str, Any]:
        vm_id = vm_id or new_uuid()
        disk = {
            "type": "disk",
            "device": "disk",
            "domainID": self.storage.sd,
            "poolID": self.storage.sp,
            "imageID": self.img,
            "volumeID": self.leaf,
            "iface": "virtio",
            "index": 0,
        }
        return {
            "vmId": vm_id,
            "vmName": f"test-{vm_id[:8]}",
            "memSize": 64,
            "smp": 1,
            "devices": [disk],
            **extra,
        }

    def start(self, host: ClusterHost | None = None, **extra: Any) -> str:
        """A VM on ``host`` (by default host 2), on the image's leaf."""
        host = host or self.vm_host
        params = self.params(**extra)
        self.started.append((host, params["vmId"]))
        reply = ok(host.xmlrpc().create(params))
        assert reply["vmList"]["status"] == "Up"
        return str(params["vmId"])

    def stats(self, vm_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = ok(self.vm_host.xmlrpc().getVmStats(vm_id))["statsList"][0]
        return stats

    def mover(self, vm_id: str, extra: tuple[str, ...] | None = None) -> Mover:
        """The CLI for the VM's disk, with the cluster's certificates: HOST is host 2, and
        ``extra`` (by default --hosts naming host 1) ends every command line."""
        return Mover(
            self,
            vm_id,
            self.root,
            pid_of=lambda v: qemu_pid(self.vm_host, v),
            options=("--pki-dir", str(self.cluster.pki.root)),
            extra=("--hosts", self.spm.vdsmd.address) if extra is None else extra,
        )

    def cleanup(self) -> None:
        for host, vm_id in self.started:
            if host.libvirt is not None and host.libvirt.running:
                host.libvirt.virsh("destroy", vm_id)


@contextmanager
def two_hosts_factory(root: Path) -> Iterator[Callable[..., TwoHosts]]:
    """Makes the pool on two hosts that both run VMs; the factory's arguments are extra vdsmd
    flags for both hosts. Everything is stopped at the end."""
    require_command("qemu-img")
    with ExitStack() as stack:

        def make(*vdsmd_args: str) -> TwoHosts:
            cluster = Cluster(
                root / "cluster",
                hosts=2,
                storage_roots=[root],
                extra_args=list(vdsmd_args),
                vdsmd_class=VdsmdProcess,
                vm_hosts=(1, 2),
            )
            stack.enter_context(cluster)
            pool = TwoHosts(cluster, root)
            stack.callback(pool.cleanup)
            return pool

        yield make
