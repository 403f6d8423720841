"""Volume leases across hosts: the SPM on host 1, the VM on host 2 (cluster_helpers.TwoHosts),
each host with its own sanlock daemon and libvirtd, on the same storage.

The seed's flow verb by verb, as an engine drives it (SPM verbs to host 1, VM verbs to host 2),
under the tiny guest's writes: at each step sanlock itself says who holds which lease — host 2's
QEMU the volumes the VM writes, host 1's vdsmd the twins its sync writes — and after the pivot
nothing of the source is held anywhere, and no write is lost. A second host can neither start
a VM on a disk that runs elsewhere nor delete a volume a VM uses elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.cluster_helpers import TwoHosts, qemu_pid, two_hosts_factory, wait_for
from tests.functional.daemon_helpers import new_uuid, wait_task
from tests.functional.lease_helpers import held_by, held_leases
from tests.functional.lsm_helpers import guest_params, wait_writes
from tests.functional.storage_helpers import code, ok
from vdsm_guest import checker
from vdsm_guest.build import GuestImage
from vdsm_guest.cluster import ClusterHost

pytestmark = pytest.mark.libvirt

SDM = "SDM"


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Callable[..., TwoHosts]]:
    with two_hosts_factory(tmp_path) as make:
        yield make


def status_of(host: ClusterHost) -> str:
    return host.sanlock.status()


def test_seed_flow_across_hosts_moves_the_leases(
    two_hosts: Callable[..., TwoHosts], guest: GuestImage
) -> None:
    # The sync reads at 8 MiB/s: its 24 MiB take 3 s, long enough to see who holds what.
    pool = two_hosts("--copy-rate-limit", "8")
    st = pool.storage
    spm, vm_host = pool.spm.xmlrpc(), pool.vm_host.xmlrpc()
    spm_pid = pool.spm.vdsmd.pids()[0]
    vm_id = pool.start(**guest_params(guest, slots=64, pause=0.02))
    qemu = qemu_pid(pool.vm_host, vm_id)
    console = Path(pool.stats(vm_id)["consoleLog"])
    wait_writes(console, 10)
    assert held_by(status_of(pool.vm_host), qemu) == {(st.sd, pool.leaf)}

    def spm_task(reply: dict[str, Any]) -> None:
        task = str(ok(reply)["uuid"])
        assert wait_task(pool.spm_daemon, task)["taskResult"] == "success"

    # SPM: createVolume (the new leaf). VM host: snapshot onto it.
    snap = new_uuid()
    spm_task(
        spm.createVolume(
            st.sd, st.sp, pool.img, str(1024**3), "COW", "SPARSE", "DATA", snap, "s", pool.img,
            pool.leaf,
        )
    )  # fmt: skip
    request = [
        {"domainID": st.sd, "imageID": pool.img, "baseVolumeID": pool.leaf, "volumeID": snap}
    ]
    ok(vm_host.snapshot(vm_id, request))
    assert held_by(status_of(pool.vm_host), qemu) == {(st.sd, snap)}

    # SPM: cloneImageStructure. VM host: diskReplicateStart (the destination leaf's lease
    # before the mirror writes it).
    spm_task(spm.cloneImageStructure(st.sp, st.sd, pool.img, st.sd2))
    src = {"device": "disk", "domainID": st.sd, "poolID": st.sp, "imageID": pool.img,
           "volumeID": snap}  # fmt: skip
    dst = {**src, "domainID": st.sd2}
    ok(vm_host.diskReplicateStart(vm_id, src, dst))
    assert held_by(status_of(pool.vm_host), qemu) == {(st.sd, snap), (st.sd2, snap)}

    # SPM: syncImageData. Host 1's vdsmd holds the twins it writes while it copies.
    task = str(ok(spm.syncImageData(st.sp, st.sd, pool.img, st.sd2, "INTERNAL"))["uuid"])
    twins = {(st.sd2, pool.base), (st.sd2, pool.leaf)}
    wait_for(lambda: twins & held_by(status_of(pool.spm), spm_pid), "the sync's leases", 30)
    assert wait_task(pool.spm_daemon, task)["taskResult"] == "success"
    assert held_by(status_of(pool.spm), spm_pid) == {(st.sd, SDM)}  # given back after the copy

    # VM host: diskReplicateFinish, a pivot: the source leaf's lease is released.
    def finished() -> dict[str, Any] | None:
        reply: dict[str, Any] = vm_host.diskReplicateFinish(vm_id, src, dst)
        return None if reply["status"]["code"] == 40 else reply  # 40: not READY yet

    ok(wait_for(finished, "the mirror ready", 60))
    assert held_by(status_of(pool.vm_host), qemu) == {(st.sd2, snap)}

    # SPM: deleteImage of the source: nothing of it is held, so it goes.
    spm_task(spm.deleteImage(st.sd, st.sp, pool.img, False, False))
    wait_writes(console, wait_writes(console, 0) + 20)
    leaf = Path(pool.stats(vm_id)["disks"]["vda"]["path"])
    result = checker.check(leaf, "qcow2", console)
    assert result.ok, result.failures
    # No lease left behind: host 1 holds only the SPM's, host 2 only the running leaf's.
    assert set(held_leases(status_of(pool.spm))) == {(st.sd, SDM)}
    assert held_leases(status_of(pool.vm_host)) == {(st.sd2, snap): qemu}


def test_a_disk_running_elsewhere_is_not_started_nor_deleted(
    two_hosts: Callable[..., TwoHosts],
) -> None:
    pool = two_hosts()
    st = pool.storage
    vm_id = pool.start()  # on host 2
    qemu = qemu_pid(pool.vm_host, vm_id)
    spm = pool.spm.xmlrpc()

    # Host 1 starting a VM on the same disk: the lease says host 2 holds it (vdsm reads it
    # before anything starts; libvirt's own acquire would refuse it too).
    params = pool.params()
    reply = spm.create(params)
    assert code(reply) == 9, reply
    message = reply["status"]["message"]
    assert f"lease of volume {pool.leaf}" in message and "held by host id 2" in message, reply
    assert pool.spm.libvirt is not None
    assert params["vmId"] not in pool.spm.libvirt.virsh("list", "--all", "--uuid").stdout

    # Host 1, the SPM, deleting the image or its leaf: refused before anything is removed.
    for reply in (
        spm.deleteImage(st.sd, st.sp, pool.img, False, False),
        spm.deleteVolume(st.sd, st.sp, pool.img, [pool.leaf], False, False),
    ):
        status = wait_task(pool.spm_daemon, ok(reply)["uuid"])
        assert status["code"] == 651, status
        assert pool.leaf in status["message"] and "held by another host" in status["message"]
    assert set(ok(spm.getVolumesList(st.sd, st.sp, pool.img))["uuidlist"]) == {
        pool.base,
        pool.leaf,
    }
    for vol in (pool.base, pool.leaf):
        info = ok(spm.getVolumeInfo(st.sd, st.sp, pool.img, vol))["info"]
        assert info["legality"] == "LEGAL", info
    assert held_by(status_of(pool.vm_host), qemu) == {(st.sd, pool.leaf)}
    assert pool.stats(vm_id)["status"] == "Up"
