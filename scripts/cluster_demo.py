"""The two-host demo: a running VM's disk moved across storage domains while the SPM is another
host, then the SPM host killed and the other host taking the role over.

In a temporary directory this starts two vdsm "hosts" on this machine (vdsm_guest/cluster.py:
each its own sanlock daemon, its own vdsmd on its own loopback address and, for host 2, its own
libvirtd), both on the same two file storage domains. Host 1 makes the domains and the pool and
becomes its SPM (the pool's sanlock lease); host 2 joins the pool and boots the tiny test guest
on a 3-volume chain, so that its QEMU holds the disk's volume lease. ``vdsClient moveDisk``,
given host 2 and told about host 1 (``--hosts``), sends the SPM verbs to host 1 and the VM verbs
to host 2, with live progress; then every write the guest saw acknowledged is checked on the
destination, and the copied volumes compared. Last, host 1 dies (every process of it killed, as
its watchdog would), and host 2 takes the SPM role once sanlock sees host 1 dead (8 x io_timeout
+ 60 s after its last renewal: about 70 s at the test machines' io_timeout of 1). It prints a
summary and removes everything it made.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from demo import Demo, new, run, step

from vdsm_cli.api import Vdsm
from vdsm_cli.errors import CliError
from vdsm_guest.build import ensure_guest
from vdsm_guest.cluster import Cluster, ClusterHost

REPO = Path(__file__).resolve().parents[1]
SPM_TAKEOVER_TIMEOUT = 240.0  # seconds; sanlock's dead-host delay at io_timeout 1 is ~70 s


class ClusterDemo(Demo):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.cluster: Cluster | None = None
        self._vm_api: Vdsm | None = None

    @property
    def vm_host(self) -> Vdsm:
        assert self._vm_api is not None, "host 2 is not started"
        return self._vm_api

    def host(self, index: int) -> ClusterHost:
        assert self.cluster is not None
        return self.cluster.host(index)

    def start_vdsmd(self) -> None:
        step("Starting two hosts: each its own sanlock daemon and vdsmd; host 2 its own libvirtd")
        guest = ensure_guest()
        self.cluster = Cluster(
            self.root / "cluster",
            hosts=2,
            storage_roots=[self.root],
            vm_hosts=(2,),
            boot_dir=guest.kernel.parent,
        )
        self.cluster.start()
        for host in self.cluster:
            print(
                f"    host {host.index}: vdsmd on {host.vdsmd.address} (TLS, client "
                f"certificates), host id {host.host_id}" + (", runs VMs" if host.vm_host else "")
            )
        self.api = self.host(1).api()
        self._vm_api = self.host(2).api()

    def build_storage(self) -> None:
        super().build_storage()
        step("Host 2 joins the pool: storage connections, then connectStoragePool as host id 2")
        rpc2 = self.host(2).xmlrpc()
        connections = [
            {"id": new(), "connection": str(self.root / name)} for name in ("nfs-a", "nfs-b")
        ]
        statuses = rpc2.connectStorageServer(4, self.sp, connections)["statuslist"]
        if any(s["status"] != 0 for s in statuses):
            raise SystemExit(f"host 2 cannot reach the storage: {statuses}")
        self.vm_host.connect_pool(self.sp, 2, self.src)
        started = time.monotonic()
        while not self.joined(self.host(2), [self.src, self.dst]):
            if time.monotonic() - started > 60:
                raise SystemExit("host 2 did not join the domains' lockspaces in 60 s")
            time.sleep(0.2)
        print(f"    host 2 joined both domains' lockspaces in {time.monotonic() - started:.1f} s")

    @staticmethod
    def joined(host: ClusterHost, domains: list[str]) -> bool:
        stats = host.xmlrpc().repoStats()
        return all(stats.get(sd, {}).get("acquired") for sd in domains)

    def boot_guest(self) -> None:
        super().boot_guest()
        held = [line for line in self.host(2).sanlock.status().splitlines() if line[:2] == "r "]
        for line in held:
            print(
                f"    host 2's sanlock: {line.split()[1].split(':')[1][:8]}… held by pid "
                f"{line.split()[-1]} (the VM's QEMU)"
            )

    def vdsclient(self, *args: str) -> int:
        assert self.cluster is not None
        argv = [
            sys.executable,
            "-m",
            "vdsm_cli.vdsclient",
            "--pki-dir",
            str(self.cluster.pki.root),
            self.host(2).vdsmd.address,
            *args,
            "--hosts",
            self.host(1).vdsmd.address,
        ]
        return subprocess.call(argv, cwd=REPO)

    def move(self) -> None:
        print(
            f"\n    SPM verbs go to host 1 ({self.host(1).vdsmd.address}), VM verbs to host 2 "
            f"({self.host(2).vdsmd.address}); the client finds both (--hosts)"
        )
        super().move()

    def failover(self) -> None:
        step("Killing host 1, the SPM (every process of it, as its watchdog would)")
        before = self.vm_host.spm_status(self.sp)
        killed = time.monotonic()
        self.host(1).kill()
        self.api = None  # host 1 is gone
        print("    host 2 starts the SPM (spmStart) again until sanlock sees host 1 dead …")
        attempts = 0
        while True:
            attempts += 1
            try:
                status = self.vm_host.start_spm(self.sp, timeout=SPM_TAKEOVER_TIMEOUT)
                break
            except CliError as e:
                waited = time.monotonic() - killed
                if waited > SPM_TAKEOVER_TIMEOUT:
                    raise SystemExit(f"host 2 did not become SPM in {waited:.0f} s: {e}") from None
                if attempts == 1 or attempts % 10 == 0:
                    # sanlock's own words end the message ("Lease is held by another host").
                    print(f"    {waited:4.0f} s: not yet: {e.message.rsplit(': ', 1)[-1][:80]}")
                time.sleep(2)
        print(
            f"    host 2 is the SPM {time.monotonic() - killed:.0f} s after host 1 died: spmId "
            f"{before['spmId']} → {status['spmId']}, lver {before['spmLver']} → "
            f"{status['spmLver']}; the VM kept running on host 2"
        )
        if self.vm_host.vm(self.vm_id or "").stats["status"] != "Up":
            raise SystemExit("the VM stopped")

    def steps(self) -> list[Callable[[], None]]:
        return [*super().steps(), self.failover]

    cleanup_text = "the VM, both hosts' daemons, the temporary directory"
    summary = (
        "the disk moved across domains with the SPM on another host and no lost write; "
        "host 2 took the SPM role over."
    )

    def cleanup(self) -> None:
        if self.vm_id and self._vm_api is not None:
            try:
                self._vm_api.destroy_vm(self.vm_id)
            except CliError:
                pass
        if self.cluster is not None:
            self.cluster.stop()


def main() -> int:
    return run(ClusterDemo, "vdsm-cluster-demo-")


if __name__ == "__main__":
    sys.exit(main())
