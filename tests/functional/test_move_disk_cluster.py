"""vdsClient moveDisk when the SPM and the VM are on different hosts: two real hosts
(vdsm_guest.cluster), each with its own sanlock daemon and vdsmd, on the same storage; host 1
made the pool and is its SPM, host 2 joined it and runs the VM.

The real CLI, run as a subprocess (tests/functional/mover.py), given host 2 as HOST and host 1
with --hosts, so that it finds the SPM (getSpmStatus) and the VM (list) itself:

- The move under continuous guest writes: the SPM verbs went to host 1, the VM verbs to host 2,
  zero lost writes on the destination chain, nothing left on the source.
- The SPM's vdsmd killed during the sync: the client waits for a new SPM (host 2 takes the
  role, or host 1 comes back and takes it again), finds that the new SPM rolled the sync back,
  and rolls the move back: fully on the source, the VM never stopped, no copy left running.
- The SPM role moved (spmStop, spmStart on host 2) between two tasks: host 1 answers 654, the
  client sends the task to host 2 instead, and the move goes through.
- The client killed after the pivot, while the SPM deletes the source, and the SPM's vdsmd
  killed too; host 2 takes the role: ``--resume`` finds it and finishes on the destination.
- The destination failing under the mirror: the lease host 2 could not release under the
  fault is written free by host 2's vdsmd once the storage heals; --resume rolls back.
- The pre-flight: a destination the VM's host never joined, a --spm-host that is not the SPM,
  a single-host command line whose host is not the SPM: refused, nothing changed.

Host 2 runs its VMs on its own libvirtd, on its own sanlock daemon: its QEMU holds the disk's
volume leases throughout, as in production.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.faultfs import FaultFs
from tests.functional.cluster_helpers import (
    TwoHosts,
    copies_of,
    joined,
    qemu_pid,
    spm_start,
    two_hosts_factory,
    vdsmd_of,
    wait_for,
)
from tests.functional.daemon_helpers import new_uuid
from tests.functional.lease_helpers import held_leases
from tests.functional.lsm_helpers import guest_params, wait_writes
from tests.functional.mover import (
    PREFILL,
    Mover,
    assert_on_destination,
    assert_on_source,
    world,
)
from tests.functional.storage_helpers import ok
from vdsm_cli.move.fault import TEST_PAUSE_AT, TEST_STOP_AT
from vdsm_cli.move.steps import FORWARD_STEPS, SPM_STEPS
from vdsm_guest import checker
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt

GiB = 1024**3


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Callable[..., TwoHosts]]:
    """Makes the pool on two hosts (cluster_helpers.TwoHosts); its arguments are extra vdsmd
    flags for both hosts."""
    with two_hosts_factory(tmp_path) as make:
        yield make


def assert_only_the_source_leaf_held(pool: TwoHosts, vm_id: str, m: Mover) -> None:
    """Of the volume leases, every host's sanlock daemon lists only host 2's QEMU holding the
    source leaf's: no twin's, no lease held by nobody's VM."""
    qemu = qemu_pid(pool.vm_host, vm_id)
    for host in pool.cluster:
        volume_leases = {
            lease: pid
            for lease, pid in held_leases(host.sanlock.status()).items()
            if lease[1] != "SDM"
        }
        expected = {(pool.storage.sd, m.chain[-1]): qemu} if host is pool.vm_host else {}
        assert volume_leases == expected, (host, volume_leases)


# --- the move across hosts ----------------------------------------------------------------------


def test_move_across_hosts_under_guest_writes(
    two_hosts: Callable[..., TwoHosts], guest: GuestImage
) -> None:
    pool = two_hosts()
    spm, vm_host = pool.spm.vdsmd.address, pool.vm_host.vdsmd.address
    vm_id = pool.start(**guest_params(guest, slots=64, pause=0.02))
    console = Path(pool.stats(vm_id)["consoleLog"])
    wait_writes(console, 10)
    m = pool.mover(vm_id)

    plan = m.run("--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert f"SPM: {spm} (host id 1, lver 1): createVolume" in plan.stdout
    assert f"VM host: {vm_host}: snapshot" in plan.stdout

    before = wait_writes(console, 0)
    proc = m.run(json_output=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert wait_writes(console, before + 10) > before, "the guest wrote during the move"
    start = events[0]
    assert (start["spmAddress"], start["vmAddress"], start["spmId"]) == (spm, vm_host, 1)
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == FORWARD_STEPS
    for e in steps:  # each step went to the host of its role
        assert (e["role"], e["host"]) == (
            ("SPM", spm) if e["step"] in SPM_STEPS else ("VM host", vm_host)
        ), e
    sync = [e for e in events if e["event"] == "progress" and e["step"] == "sync"]
    assert sync and sync[-1]["bytesDone"] == sync[-1]["bytesTotal"] >= PREFILL
    assert events[-1]["event"] == "result" and events[-1]["exitCode"] == 0

    wait_writes(console, wait_writes(console, 0) + 20)  # and it keeps writing on the destination
    assert_on_destination(m)
    leaf = Path(pool.stats(vm_id)["disks"]["vda"]["path"])
    result = checker.check(leaf, "qcow2", console)
    assert result.ok, result.failures
    assert result.slots_verified == min(64, result.writes_logged)
    # The SPM, which did the copies, sees what the VM's host sees.
    assert pool.spm.api().volumes(pool.storage.sd2, pool.storage.sp, pool.img) == m.chain


# --- a failover in the middle of the move -------------------------------------------------------


@pytest.mark.parametrize("new_spm", [2, 1], ids=["vm-host-takes-over", "spm-restarted"])
def test_spm_killed_during_the_sync_rolls_back(
    two_hosts: Callable[..., TwoHosts], new_spm: int
) -> None:
    """Host 1's vdsmd dies while its sync copies; the client, finding no SPM, waits; an
    engine starts the SPM on host 2, or restarts host 1's vdsmd and starts it there again. The
    new SPM rolled the sync back (a dead SPM's tasks are never resumed), so the move rolls
    back: the VM runs on the source as before, and nothing is left on the destination."""
    # 24 MiB at 2 MiB/s: the sync still copies when its SPM dies.
    pool = two_hosts("--copy-rate-limit", "2")
    sp = pool.storage.sp
    vm_id = pool.start()
    m = pool.mover(vm_id)
    proc = m.start(**{TEST_PAUSE_AT: "sync+"})
    proc.wait_paused()
    journal = m.journal()
    assert journal is not None and journal["version"] == 2
    spm, vm_host = pool.spm.vdsmd.address, pool.vm_host.vdsmd.address
    assert (journal["spmAddress"], journal["vmAddress"]) == (spm, vm_host)
    assert (journal["spmId"], journal["spmLver"], journal["taskLvers"]["sync"]) == (1, 1, 1)
    assert sorted(journal["hosts"]) == sorted([spm, vm_host])
    task = journal["tasks"]["sync"]
    copies = wait_for(lambda: copies_of(task), "copying", timeout=30)

    pool.spm.kill_vdsmd()
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in copies), "copy gone", 10)
    proc.signal(signal.SIGCONT)
    wait_for(lambda: "waiting up to" in proc.output(), "the client waiting for an SPM", 30)
    taker = pool.cluster.host(new_spm)
    if new_spm == 1:
        taker.start_vdsmd()  # it rejoins the pool as host id 1, but holds no lease
        wait_for(lambda: joined(taker, [pool.storage.sd, pool.storage.sd2]), "rejoined", 30)
    assert spm_start(taker, sp)["taskResult"] == "success"

    code, text = proc.finish()
    assert code == 1, text
    assert "rolled back" in text and "rolled it back" in text, text
    if new_spm == 2:
        assert f"the SPM moved from {spm} (host id 1, lver 1) to {vm_host} (host id 2" in text
    else:
        assert f"the SPM {spm} took the role again (lver 1 → 2) (after {spm}: cannot" in text
    assert_on_source(m)
    # No lease held by nobody's VM (only SDM besides, on the new SPM).
    assert_only_the_source_leaf_held(pool, vm_id, m)
    # The new SPM rolled the sync back; none of its copies runs; both hosts agree.
    status = taker.api().task_status(task)
    assert (status["taskResult"], status["code"]) == ("cleanSuccess", 411), status
    assert copies_of(task) == []
    assert taker.api().volumes(pool.storage.sd, sp, pool.img) == m.chain
    assert pool.vm_host.api().images(pool.storage.sd2) == []


def test_spm_moved_between_two_tasks_the_move_goes_on(
    two_hosts: Callable[..., TwoHosts],
) -> None:
    """spmStop on host 1 and spmStart on host 2 while the move mirrors, before its sync: host
    1 answers the sync 654 (not SPM), which proves it did nothing; the client finds host 2 and
    sends the sync there, and the move ends on the destination."""
    pool = two_hosts()
    vm_id = pool.start()
    m = pool.mover(vm_id)
    proc = m.start(**{TEST_PAUSE_AT: "replicate"})
    proc.wait_paused()
    ok(pool.spm.xmlrpc().spmStop(pool.storage.sp))
    assert spm_start(pool.vm_host, pool.storage.sp)["taskResult"] == "success"
    proc.signal(signal.SIGCONT)
    code, text = proc.finish()
    assert code == 0, text
    spm, vm_host = pool.spm.vdsmd.address, pool.vm_host.vdsmd.address
    moved = f"the SPM moved from {spm} (host id 1, lver 1) to {vm_host} (host id 2, lver 2)"
    assert f"{moved} (after {spm}: error 654 (SpmStatusError)" in text
    assert f"(syncImageData INTERNAL) on the SPM {spm}" in text  # as the step started
    assert f"(deleteImage) on the SPM {vm_host}" in text  # delete_source, on the new SPM
    assert_on_destination(m)


def test_resume_after_the_pivot_finds_the_spm_that_took_over(
    two_hosts: Callable[..., TwoHosts],
) -> None:
    pool = two_hosts()
    vm_id = pool.start()
    m = pool.mover(vm_id)
    killed = m.run(hooks={TEST_STOP_AT: "delete_source+"})  # deleteImage submitted to host 1
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal = m.journal()
    assert journal is not None and journal["step"] == "delete_source"
    assert "pivot" in journal["done"] and journal["spmAddress"] == pool.spm.vdsmd.address
    pool.spm.kill_vdsmd()
    assert spm_start(pool.vm_host, pool.storage.sp)["taskResult"] == "success"

    resumed = m.resume()
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    spm, vm_host = pool.spm.vdsmd.address, pool.vm_host.vdsmd.address
    assert f"the SPM moved from {spm} (host id 1, lver 1) to {vm_host} (host id 2" in resumed.stdout
    assert f"(deleteVolume) on the SPM {vm_host}" in resumed.stdout  # delete_snapshot
    assert_on_destination(m)


# --- the destination failing under the mirror -----------------------------------------------


def test_destination_failing_under_the_mirror_rolls_back_and_frees_its_lease(
    tmp_path: Path, guest: GuestImage
) -> None:
    """The destination (on the FAKE fault file system) fails every write of the image's
    directory once the mirror runs: the mirror fails, and the release of its lease by host 2's
    QEMU fails too (sanlock cannot write the lease free, and forgets it: on the storage it
    stays owned by host 2, alive). The rollback's delete on host 1 cannot delete there either,
    so the client stops (exit 4). Once the storage heals, host 2's vdsmd writes the lease free
    (volume_lease.StaleLeases): --resume, retried as an operator would, finishes the rollback
    (exit 1) and nothing is left."""
    with (
        FaultFs(tmp_path / "dst-backing", tmp_path / "dst", tmp_path / "dst-fault") as fs,
        two_hosts_factory(tmp_path) as make,
    ):
        pool = make("--replication-convergence-window", "3")
        vm_id = pool.start(**guest_params(guest, slots=64, pause=0))
        console = Path(pool.stats(vm_id)["consoleLog"])
        wait_writes(console, 20)
        m = pool.mover(vm_id)
        client = m.start(**{TEST_PAUSE_AT: "sync"})  # the mirror runs, the guest writes
        client.wait_paused()
        fs.set("eio", f"{pool.storage.sd2}/images/{pool.img}")
        client.signal(signal.SIGCONT)
        code, out = client.finish()
        assert code == 4, out
        assert "Lease write error" in out or "Input/output error" in out, out
        fs.heal()
        log = vdsmd_of(pool.vm_host).log
        wait_for(lambda: "written free (its release had failed)" in log(), "the lease freed", 30)
        done = m.resume()
        assert done.returncode == 1, done.stdout + done.stderr
        assert "rolled back" in done.stderr, done.stderr
        assert_on_source(m)
        # No lease of the destination held anywhere: on the storage, nobody owns any.
        for vol in m.chain:
            lease = tmp_path / "dst" / pool.storage.sd2 / "images" / pool.img / f"{vol}.lease"
            assert not lease.exists(), lease
        assert_only_the_source_leaf_held(pool, vm_id, m)
        result = checker.check(Path(pool.stats(vm_id)["disks"]["vda"]["path"]), "qcow2", console)
        assert result.ok, result.failures


# --- pre-flight ---------------------------------------------------------------------------------


def test_preflight_refusals_across_hosts_change_nothing(
    two_hosts: Callable[..., TwoHosts], tmp_path: Path
) -> None:
    pool = two_hosts()
    st, rpc1 = pool.storage, pool.spm.xmlrpc()
    spm, vm_host = pool.spm.vdsmd.address, pool.vm_host.vdsmd.address
    # A third domain of the pool, attached by the SPM: host 2 never connected to its storage.
    third = new_uuid()
    (tmp_path / "third").mkdir()
    ok(rpc1.createStorageDomain(4, third, "third", str(tmp_path / "third"), 1))
    ok(rpc1.attachStorageDomain(third, st.sp))
    wait_for(lambda: joined(pool.spm, [third]), "the SPM joined the third domain", 30)
    vm_id = pool.start()
    m = pool.mover(vm_id)
    before = world(pool, vm_id)

    def refused(proc: Any, *words: str) -> None:
        assert proc.returncode == 1, proc.stderr + proc.stdout
        for word in words:
            assert word in proc.stderr, proc.stderr
        assert world(pool, vm_id) == before
        assert pool.spm.api().images(third) == [] and m.leftover_state() == []

    not_joined = f"the VM's host {vm_host} has not joined the lockspace of destination domain"
    refused(m.run("--dry-run", dst=third), not_joined, third, "repoStats does not list it")
    refused(m.run(dst=third), not_joined, third)
    # Roles named outright must be what they say.
    refused(
        pool.mover(vm_id, ("--spm-host", vm_host)).run(),
        f"--spm-host {vm_host} is not the SPM of pool {st.sp}: it is Free",
    )
    refused(pool.mover(vm_id, ("--vm-host", spm)).run(), f"VM {vm_id} is not known on {spm}")
    # Today's single-host command line, on the VM's host: it is not the SPM, and says who is.
    refused(
        pool.mover(vm_id, ()).run(),
        f"no known host is the SPM of pool {st.sp}",
        "sanlock says host id 1 holds the SPM lease: give its address with --hosts",
    )
