"""The SPM is a sanlock lease: two real hosts (vdsm_guest.cluster), each with its own sanlock
daemon and host id, its own vdsmd on its own address, on the same storage directories.

Every failover here is sanlock's: a new SPM gets the lease only once the old holder is gone
(vdsmd killed, fenced by force, or its whole host dead), the lease's lver grows, and the new
SPM rolls back the syncImageData the old one left half-done, with no qemu-img left writing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_command
from tests.functional.cluster_helpers import copies_of, joined, make_pool, spm_start, wait_for
from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, wait_task
from tests.functional.storage_helpers import code, ok
from vdsm_api.wire import BLANK_UUID
from vdsm_guest.cluster import Cluster, ClusterHost

MiB = 1024**2
# The copy the failovers interrupt: 24 MiB at 1 MiB/s (copy_rate_limit) lasts 24 s.
DATA_MiB = 24


@dataclass
class Pool:
    cluster: Cluster
    sp: str
    sd: str  # the master (the source of copies)
    sd2: str  # the destination of copies
    storage: Path

    def host(self, index: int) -> ClusterHost:
        return self.cluster.host(index)

    def rpc(self, index: int) -> Any:
        return self.cluster.host(index).xmlrpc()


def spm_status(host: ClusterHost, sp: str) -> dict[str, Any]:
    status: dict[str, Any] = ok(host.xmlrpc().getSpmStatus(sp))["spm_st"]
    return status


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    """Two hosts; host 1 made two domains and a pool, and is its SPM; both hosts joined."""
    require_command("qemu-img")
    storage = tmp_path / "storage"
    with Cluster(
        tmp_path / "cluster",
        hosts=2,
        storage_roots=[storage],
        extra_args=["--copy-rate-limit", "1"],
        vdsmd_class=VdsmdProcess,
    ) as cluster:
        ids = make_pool(cluster, storage)
        yield Pool(cluster, ids.sp, ids.sd, ids.sd2, storage)


def sync_in_flight(pool: Pool) -> tuple[str, str, str]:
    """On host 1 (the SPM): a raw base holding DATA_MiB of data under a qcow2 leaf, its twin
    chain cloned onto sd2, and syncImageData INTERNAL running (its qemu-img started).
    Returns (image, base, task)."""
    rpc = pool.rpc(1)
    daemon = pool.host(1).vdsmd
    img, base, leaf = new_uuid(), new_uuid(), new_uuid()
    size = str(64 * MiB)
    task = ok(rpc.createVolume(pool.sd, pool.sp, img, size, "RAW", "SPARSE", "DATA", base, "b"))[
        "uuid"
    ]
    assert wait_task(daemon, task)["taskResult"] == "success"  # type: ignore[arg-type]
    path = ok(rpc.getVolumeInfo(pool.sd, pool.sp, img, base))["info"]["path"]
    with open(path, "r+b") as f:
        f.write(os.urandom(DATA_MiB * MiB))
    task = ok(
        rpc.createVolume(pool.sd, pool.sp, img, size, "COW", "SPARSE", "DATA", leaf, "l", img, base)
    )["uuid"]
    assert wait_task(daemon, task)["taskResult"] == "success"  # type: ignore[arg-type]
    task = ok(rpc.cloneImageStructure(pool.sp, pool.sd, img, pool.sd2))["uuid"]
    assert wait_task(daemon, task)["taskResult"] == "success"  # type: ignore[arg-type]
    task = ok(rpc.syncImageData(pool.sp, pool.sd, img, pool.sd2, "INTERNAL"))["uuid"]
    wait_for(lambda: copies_of(task), "copying", timeout=30)
    return img, base, task


def check_rolled_back_by(pool: Pool, new_spm: int, img: str, base: str, task: str) -> None:
    """The new SPM rolled the old SPM's sync back: nothing half-copied is LEGAL, the source is
    intact, both hosts list the same volumes, and no qemu-img of the task is left."""
    rpc = pool.rpc(new_spm)
    status = wait_task(pool.host(new_spm).vdsmd, task, timeout=60)  # type: ignore[arg-type]
    assert status["taskResult"] == "cleanSuccess", status
    assert copies_of(task) == []
    src = ok(rpc.getVolumeInfo(pool.sd, pool.sp, img, base))["info"]
    assert src["legality"] == "LEGAL"
    reply = rpc.getVolumeInfo(pool.sd2, pool.sp, img, base)
    if code(reply) == 0:
        assert reply["info"]["legality"] == "ILLEGAL", reply
    else:
        assert code(reply) == 201, reply  # removed altogether
    listed = {h: ok(pool.rpc(h).getVolumesList(pool.sd, pool.sp, img))["uuidlist"] for h in (1, 2)
              if pool.host(h).vdsmd.running}  # fmt: skip
    assert all(vols == listed[new_spm] for vols in listed.values()), listed


# --- the lease decides ----------------------------------------------------------------------


def test_second_host_is_refused_the_lease_and_answers_654(pool: Pool) -> None:
    host1, host2 = pool.host(1), pool.host(2)
    img, base = new_uuid(), new_uuid()
    rpc1, rpc2 = pool.rpc(1), pool.rpc(2)
    task = ok(
        rpc1.createVolume(pool.sd, pool.sp, img, str(MiB), "RAW", "SPARSE", "DATA", base, "b")
    )["uuid"]
    assert wait_task(host1.vdsmd, task)["taskResult"] == "success"  # type: ignore[arg-type]

    status = spm_start(host2, pool.sp)
    assert status["taskResult"] == "cleanSuccess" and status["code"] == 651, (
        status
    )  # failed, undone
    assert "held by another host" in status["message"], status

    # Both hosts tell the same truth, from sanlock: host id 1 holds the lease at lver 1.
    assert spm_status(host1, pool.sp) == {"spmStatus": "SPM", "spmId": 1, "spmLver": 1}
    assert spm_status(host2, pool.sp) == {"spmStatus": "Free", "spmId": 1, "spmLver": 1}

    # Host 2 changes nothing, but reads what the SPM wrote.
    reply = rpc2.createVolume(pool.sd, pool.sp, new_uuid(), str(MiB), "RAW", "SPARSE", "DATA",
                              new_uuid(), "x")  # fmt: skip
    assert code(reply) == 654, reply
    assert code(rpc2.deleteImage(pool.sd, pool.sp, img)) == 654
    assert code(rpc2.attachStorageDomain(pool.sd2, pool.sp)) == 654
    assert ok(rpc2.getVolumesList(pool.sd, pool.sp, img))["uuidlist"] == [base]
    assert ok(rpc2.getVolumeInfo(pool.sd, pool.sp, img, base))["info"]["legality"] == "LEGAL"
    # The SPM may not leave the pool; host 2 may.
    assert code(rpc1.disconnectStoragePool(pool.sp, 1, "")) == 656
    ok(rpc2.disconnectStoragePool(pool.sp, 2, ""))
    assert code(rpc2.spmStart(pool.sp)) == 313  # not connected any more


def test_spm_moves_after_spm_stop_and_a_restarted_vdsmd_rejoins_with_its_id(pool: Pool) -> None:
    host1, host2 = pool.host(1), pool.host(2)
    host2.stop_vdsmd()
    host2.start_vdsmd()
    # The restarted vdsmd rejoined its pool from its persisted connection, as host id 2.
    wait_for(lambda: joined(pool.host(2), [pool.sd, pool.sd2]), "rejoined", timeout=30)
    assert f"s {pool.sd}:2:" in host2.sanlock.status()  # sanlock: lockspace sd, host id 2

    ok(pool.rpc(1).spmStop(pool.sp))
    assert spm_status(host1, pool.sp) == {"spmStatus": "Free", "spmId": -1, "spmLver": 1}
    assert spm_start(host2, pool.sp)["taskResult"] == "success"
    for host in (host1, host2):
        assert spm_status(host, pool.sp)["spmId"] == 2
        assert spm_status(host, pool.sp)["spmLver"] == 2
    assert code(pool.rpc(1).cloneImageStructure(pool.sp, pool.sd, new_uuid(), pool.sd2)) == 654


# --- failovers ------------------------------------------------------------------------------


def test_failover_after_the_spm_vdsmd_is_killed(pool: Pool) -> None:
    img, base, task = sync_in_flight(pool)
    copies = copies_of(task)
    pool.host(1).kill_vdsmd()
    # Its qemu-img died with it (PR_SET_PDEATHSIG): nothing writes without the lease.
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in copies), "gone", 10)

    started = time.monotonic()
    assert spm_start(pool.host(2), pool.sp)["taskResult"] == "success"
    assert time.monotonic() - started < 20  # sanlock freed the lease of the dead process
    assert spm_status(pool.host(2), pool.sp) == {"spmStatus": "SPM", "spmId": 2, "spmLver": 2}
    check_rolled_back_by(pool, 2, img, base, task)


def test_force_fence_of_a_hung_spm_in_the_middle_of_a_copy(pool: Pool) -> None:
    host1, host2 = pool.host(1), pool.host(2)
    img, base, task = sync_in_flight(pool)
    host1.suspend()  # hung: deaf to the API, but its lease is alive and its copy writes
    assert spm_start(host2, pool.sp)["code"] == 651

    reply = ok(pool.rpc(2).fenceSpmStorage(pool.sp, 1, 1))
    assert reply["spm_st"]["spmLver"] == 1
    # Host 1's sanlock kills the holder; its copy dies with it.
    wait_for(lambda: not host1.vdsmd.running, "host 1's vdsmd killed by its sanlock", 30)
    wait_for(lambda: not copies_of(task), "the copy gone", 10)
    wait_for(lambda: spm_status(host2, pool.sp)["spmId"] == -1, "the lease free", 30)
    assert spm_start(host2, pool.sp)["taskResult"] == "success"
    assert spm_status(host2, pool.sp) == {"spmStatus": "SPM", "spmId": 2, "spmLver": 2}
    check_rolled_back_by(pool, 2, img, base, task)
    assert f"task {task}: syncImageData succeeded" not in host1.vdsmd.log_text()


def test_an_spm_whose_lease_is_lost_stops_at_once(pool: Pool) -> None:
    """The watchdog: host 1's sanlock daemon dies (its lease with it); host 1's vdsmd exits
    with its copies instead of going on as SPM without a lease."""
    host1 = pool.host(1)
    img, base, task = sync_in_flight(pool)
    host1.sanlock.kill()
    wait_for(lambda: not host1.vdsmd.running, "host 1's vdsmd gone", 30)
    assert host1.vdsmd.proc is not None and host1.vdsmd.proc.wait() == 3
    assert "lost the SPM lease" in host1.vdsmd.log_text()
    wait_for(lambda: not copies_of(task), "the copy gone", 10)


@pytest.mark.slow
def test_failover_after_the_whole_spm_host_dies(pool: Pool) -> None:
    """The one slow test: sanlock frees a dead host's lease only once its host id is DEAD,
    8 x io_timeout + 60 s (72 s at io_timeout 1) after its last renewal."""
    host1, host2 = pool.host(1), pool.host(2)
    img, base, task = sync_in_flight(pool)
    host1.kill()
    assert not host1.alive and copies_of(task) == []
    started = time.monotonic()
    # As an engine does: spmStart again until the lease is free. sanlock refuses (651) while
    # host 1's id still looks alive, and blocks the acquire once it sees it failing.
    while (status := spm_start(host2, pool.sp))["taskResult"] != "success":
        assert status["code"] == 651, status
        assert time.monotonic() - started < 150, status
        time.sleep(1)
    waited = time.monotonic() - started
    assert 50 < waited < 150, waited
    assert spm_status(host2, pool.sp) == {"spmStatus": "SPM", "spmId": 2, "spmLver": 2}
    check_rolled_back_by(pool, 2, img, base, task)


def test_pool_verbs_refuse_bad_input(pool: Pool) -> None:
    rpc = pool.rpc(2)
    reply = rpc.connectStoragePool(pool.sp, 0, "", pool.sd, 1)
    assert code(reply) == 1000 and "hostID" in reply["status"]["message"]
    assert code(rpc.connectStoragePool(pool.sp, 251, "", pool.sd, 1)) == 1000
    assert code(rpc.connectStoragePool(pool.sp, 3, "", pool.sd, 1)) == 1000  # connected as 2
    reply = rpc.connectStoragePool(pool.sp, 2, "", pool.sd, 7)
    assert code(reply) == 324 and "version 7" in reply["status"]["message"], reply
    assert code(rpc.connectStoragePool(pool.sp, 2, "", pool.sd2, 1)) == 324
    assert code(rpc.connectStoragePool(new_uuid(), 2, "", pool.sd, 1)) == 309
    assert code(rpc.getSpmStatus(new_uuid())) == 309
    assert code(rpc.disconnectStoragePool(pool.sp, 5, "")) == 1000
    assert code(pool.rpc(1).fenceSpmStorage(pool.sp, 1, 1)) == 656  # the SPM fences itself


def test_domains_made_before_leases_are_upgraded_when_joined(tmp_path: Path) -> None:
    """A domain whose ids and leases are empty (made before leases existed) gets its
    lockspace and SDM lease formatted when its pool is connected, never used without."""
    require_command("qemu-img")
    storage = tmp_path / "storage"
    with Cluster(tmp_path / "cluster", hosts=1, storage_roots=[storage],
                 vdsmd_class=VdsmdProcess) as cluster:  # fmt: skip
        host = cluster.host(1)
        rpc = host.xmlrpc()
        sp, sd = new_uuid(), new_uuid()
        (storage / "a").mkdir(parents=True)
        ok(rpc.createStorageDomain(4, sd, "a", str(storage / "a"), 1))
        dom_md = storage / "a" / sd / "dom_md"
        for name in ("ids", "leases"):
            os.truncate(dom_md / name, 0)  # as before leases
        ok(rpc.createStoragePool(0, sp, "dc", sd, [sd], 1))
        assert (dom_md / "ids").stat().st_size == MiB
        ok(rpc.connectStoragePool(sp, 1, "", sd, 1))
        assert spm_start(host, sp)["taskResult"] == "success"
        img, vol = new_uuid(), new_uuid()
        task = ok(rpc.createVolume(sd, sp, img, str(MiB), "RAW", "SPARSE", "DATA", vol, "v",
                                   BLANK_UUID, BLANK_UUID))["uuid"]  # fmt: skip
        assert wait_task(host.vdsmd, task)["taskResult"] == "success"  # type: ignore[arg-type]
        lease = storage / "a" / sd / "images" / img / f"{vol}.lease"
        assert lease.stat().st_size == MiB
