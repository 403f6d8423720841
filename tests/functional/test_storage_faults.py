"""Storage that fails under a live move: the destination domain on the FAKE fault file system
(tests/fakes/faultfs.py, a FUSE passthrough told at run time to fail writes), everything else
real (vdsmd, sanlock on the domain's ids file, qemu-img, QEMU and libvirt).

A destination whose writes fail during the clone (EIO), the sync (EIO or ENOSPC) or under the
mirror (EIO, the guest writing): moveDisk rolls back and exits 1 with the cause and the volume
in its error; the VM never stops and runs on the source, whose chain is whole and LEGAL, with
every acknowledged write; nothing of the image is left on the destination. A destination that
fails during the merge (after the pivot, so the move cannot go back): moveDisk stops (exit 4)
naming the merge and the volume, the VM runs on the destination with the auto-snapshot still
in its chain, every volume LEGAL, and --resume finishes once the storage heals.

A destination domain whose storage stops answering: vdsmd goes on answering every verb that
does not touch it within a second, refuses the verbs on it with 379 at once, reports it in
repoStats as not answering (with the time of its last check), stops on SIGTERM, and finds the
domain valid again when the storage answers again, without a restart.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.faultfs import FaultFs
from tests.functional.cluster_helpers import two_hosts_factory
from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, running
from tests.functional.lsm_helpers import VmFixture, guest_params, qemu_pid, wait_writes
from tests.functional.mover import (
    PREFILL,
    PREFILL_OFFSET,
    Mover,
    assert_on_destination,
    assert_on_source,
    images,
    prefill,
)
from tests.functional.storage_helpers import BLANK, GiB, Storage, code, ok
from vdsm_cli.move.fault import TEST_PAUSE_AT
from vdsm_guest import checker
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt


@dataclass
class FaultyDomain:
    vms: VmFixture
    fs: FaultFs  # the faulty domain's file system
    side: str  # "src" or "dst": which domain is on it

    def volume_path(self, vol: str) -> str:
        """A volume of the image on the faulty domain, as the fault's PREFIX."""
        st = self.vms.storage
        sd = st.sd if self.side == "src" else st.sd2
        return f"{sd}/images/{self.vms.img}/{vol}"


@contextmanager
def faulty_domain(root: Path, side: str) -> Iterator[FaultyDomain]:
    """VMs on a pool (lsm_helpers.VmFixture) whose ``side`` domain is on the fault fs."""
    # The file system outlives the daemon: vdsmd (and its lockspaces) go first.
    with FaultFs(root / f"{side}-backing", root / side, root / f"{side}-fault") as fs:
        daemon = VdsmdProcess(root / "vdsmd", ["--replication-convergence-window", "3"])
        with running(daemon):
            vms = VmFixture(daemon, root)
            prefill(vms, root)
            try:
                yield FaultyDomain(vms, fs, side)
            finally:
                vms.cleanup()


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[FaultyDomain]:
    """The destination domain on the fault file system."""
    with faulty_domain(tmp_path, "dst") as domain:
        yield domain


@pytest.fixture
def faulty_source(tmp_path: Path) -> Iterator[FaultyDomain]:
    with faulty_domain(tmp_path, "src") as domain:
        yield domain


def rolled_back_under(
    faulty: FaultyDomain, root: Path, mode: str, prefix: str, region: tuple[int, int] | None = None
) -> tuple[Mover, str]:
    """A move of a VM's disk (the VM started here) while the fault holds: the client must roll
    back and exit 1. Returns the mover and the client's output."""
    vms = faulty.vms
    m = Mover(vms, vms.start(), root)
    faulty.fs.set(mode, prefix, region)
    done = m.run()
    faulty.fs.heal()
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "rolled back" in done.stderr, out
    return m, out


@pytest.mark.parametrize(("fault", "says"), [("eio", "Input/output error"), ("enospc", "No space")])
def test_destination_failing_during_the_sync_rolls_back(
    faulty: FaultyDomain, tmp_path: Path, fault: str, says: str
) -> None:
    # The base's data file on the destination: the clone creates it (no write), the sync
    # writes it, the mirror writes only the leaf.
    base = faulty.vms.base
    m, out = rolled_back_under(faulty, tmp_path, fault, faulty.volume_path(base))
    assert "step sync" in out and says in out and base in out, out  # the cause and the volume
    assert_on_source(m)


def test_source_failing_during_the_sync_rolls_back(
    faulty_source: FaultyDomain, tmp_path: Path
) -> None:
    # Reads of the prefilled region of the base on the source fail: the sync cannot read what
    # it copies, the guest never reads there (its writes into the leaf may read the base
    # elsewhere, for qcow2's copy-on-write: failing those would pause the VM, as it should).
    base = faulty_source.vms.base
    bad = (PREFILL_OFFSET, PREFILL_OFFSET + PREFILL)
    where = faulty_source.volume_path(base)
    m, out = rolled_back_under(faulty_source, tmp_path, "eio-read", where, bad)
    assert "step sync" in out and "Input/output error" in out and base in out, out
    assert_on_source(m)


def test_destination_failing_during_the_clone_rolls_back(
    faulty: FaultyDomain, tmp_path: Path
) -> None:
    # Every write in the image's directory on the destination: the clone's first volume fails.
    image_dir = f"{faulty.vms.storage.sd2}/images/{faulty.vms.img}"
    m, out = rolled_back_under(faulty, tmp_path, "eio", image_dir)
    assert "step clone" in out and "Input/output error" in out, out
    assert_on_source(m)


def test_destination_failing_under_the_mirror_rolls_back(
    faulty: FaultyDomain, guest: GuestImage, tmp_path: Path
) -> None:
    """The guest writes all the time, so the mirror writes the destination's copy of the
    move's snapshot: those writes fail, the mirror job fails, and the move rolls back with
    every acknowledged write on the source."""
    vms, st = faulty.vms, faulty.vms.storage
    vm_id = vms.start(**guest_params(guest, slots=64, pause=0))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 20)
    m = Mover(vms, vm_id, tmp_path)
    client = m.start(**{TEST_PAUSE_AT: "replicate"})  # cloned, the mirror not started yet
    client.wait_paused()
    image_dir = tmp_path / "dst" / st.sd2 / "images" / vms.img
    # The mirror's target: the clone's volume that is neither the base nor the old leaf.
    volumes = [p.name for p in image_dir.iterdir() if "." not in p.name]
    (snapshot,) = [v for v in volumes if v not in (vms.base, vms.leaf)]
    faulty.fs.set("eio", faulty.volume_path(snapshot))
    client.signal(signal.SIGCONT)
    code_, out = client.finish()
    faulty.fs.heal()
    assert code_ == 1, out
    assert "rolled back" in out and "could not write the destination" in out, out
    assert snapshot in out, out  # the volume the mirror was writing
    wait_writes(console, wait_writes(console, 0) + 20)  # the guest goes on writing
    assert_on_source(m)
    disk = Path(vms.stats(vm_id)["disks"]["vda"]["path"])
    result = checker.check(disk, "qcow2", console)
    assert result.ok, result.failures


def test_destination_failing_during_the_merge_stops_then_resumes(
    faulty: FaultyDomain, guest: GuestImage, tmp_path: Path
) -> None:
    """After the pivot the VM runs on the destination and the move cannot go back: the merge
    of the auto-snapshot into the leaf fails when the leaf's writes fail (EIO). The move stops
    (exit 4) naming the merge, the volume and what is left; the VM keeps running on the
    destination with the auto-snapshot still in its chain, every volume LEGAL, the source
    gone; once the storage heals, --resume finishes the merge."""
    vms, st = faulty.vms, faulty.vms.storage
    vm_id = vms.start(**guest_params(guest, slots=64, pause=0.01))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 20)
    m = Mover(vms, vm_id, tmp_path)
    client = m.start(**{TEST_PAUSE_AT: "merge"})  # pivoted, the source deleted
    client.wait_paused()
    # The merge commits the auto-snapshot (the active layer) into the leaf: the leaf's data
    # file is what it writes; the guest writes the auto-snapshot, which still works.
    faulty.fs.set("eio", faulty.volume_path(vms.leaf))
    client.signal(signal.SIGCONT)
    code_, out = client.finish()
    assert code_ == 4, out
    assert "step merge" in out and "live merge" in out, out
    assert f"could not write volume {vms.leaf} (an I/O error" in out, out
    assert "--resume" in out, out  # what is left, and how to finish it
    wait_writes(console, wait_writes(console, 0) + 20)  # the guest goes on writing
    stats = vms.stats(vm_id)
    chain = [v["volumeID"] for v in stats["disks"]["vda"]["volumeChain"]]
    assert stats["status"] == "Up" and qemu_pid(vm_id) == m.pid, "the VM must never stop"
    assert stats["disks"]["vda"]["domainID"] == st.sd2
    assert chain[:-1] == m.chain and len(chain) == len(m.chain) + 1, chain  # not merged
    for vol in chain:
        info = vms.daemon.api().volume_info(st.sd2, st.sp, vms.img, vol)
        assert info["legality"] == "LEGAL", (vol, info)
    assert vms.img not in images(vms, st.sd)  # the source was deleted before the merge
    faulty.fs.heal()
    done = m.resume()
    assert done.returncode == 0, done.stdout + done.stderr
    assert_on_destination(m, merged=True)
    disk = Path(vms.stats(vm_id)["disks"]["vda"]["path"])
    result = checker.check(disk, "qcow2", console)
    assert result.ok, result.failures


# --- a domain that stops answering ------------------------------------------------------------

PROBE_TIMEOUT = 2  # vdsmd's --domain-probe-timeout here (the monitors check every second)


def answers_within(seconds: float, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``call()``'s reply, which must come within ``seconds`` (measured here, generously).
    The call runs in a thread of its own, so a call that hangs fails the test instead of
    hanging it (the thread ends when the storage answers again)."""
    outcome: dict[str, Any] = {}
    started = time.monotonic()
    caller = threading.Thread(target=lambda: outcome.update(reply=call()), daemon=True)
    caller.start()
    caller.join(seconds)
    took = time.monotonic() - started
    assert not caller.is_alive(), f"no answer within {seconds}s"
    assert "reply" in outcome, "the call raised (see the thread's traceback above)"
    assert took < seconds, (took, outcome["reply"])
    reply: dict[str, Any] = outcome["reply"]
    return reply


def domain_stats(daemon: VdsmdProcess, sd: str) -> dict[str, Any]:
    stats: dict[str, Any] = ok(daemon.xmlrpc().repoStats())[sd]
    return stats


def wait_stats(daemon: VdsmdProcess, sd: str, valid: bool, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (stats := domain_stats(daemon, sd))["valid"] != valid or not stats["acquired"] and valid:
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    return stats


def refused_create(daemon: VdsmdProcess, sp: str, sd: str) -> str:
    """createVolume of a new image on the hung domain ``sd``: it meets a probe first and is
    refused with 379 once the probe timeout has passed. Returns the image's UUID."""
    img, vol = new_uuid(), new_uuid()
    create = answers_within(
        PROBE_TIMEOUT + 2,
        lambda: daemon.xmlrpc().createVolume(
            sd, sp, img, str(GiB), "COW", "SPARSE", "DATA", vol, "d", img, BLANK
        ),
    )
    assert code(create) == 379 and sd in create["status"]["message"], create
    assert "did not answer a read within" in create["status"]["message"], create
    return img


def test_a_hung_domain_never_freezes_the_agent(tmp_path: Path) -> None:
    with FaultFs(tmp_path / "dst-backing", tmp_path / "dst", tmp_path / "dst-fault") as fs:
        # Every touch of a domain probes it first here (--domain-probe-fresh 0; 1 s by
        # default), so what is refused below does not depend on when the monitor last probed.
        args = ["--domain-probe-timeout", str(PROBE_TIMEOUT), "--domain-probe-fresh", "0"]
        daemon = VdsmdProcess(tmp_path / "vdsmd", args)
        with running(daemon):
            st = Storage(daemon, tmp_path)
            rpc = daemon.xmlrpc()
            wait_stats(daemon, st.sd2, True, timeout=30)
            img_dir = tmp_path / "dst-backing" / st.sd2 / "images"

            def list_images() -> dict[str, Any]:
                reply: dict[str, Any] = daemon.xmlrpc().getImagesList(st.sd2)
                return reply

            # The domain's images stop answering while its metadata still does (the probes
            # pass): a verb that reads them blocks in the kernel, and its caller gets 379 once
            # the bound (the probe timeout) has passed, not whenever the storage answers.
            fs.set("hang", f"{st.sd2}/images")
            early = answers_within(PROBE_TIMEOUT + 2, list_images)
            assert code(early) == 379, early
            assert f"did not finish within {PROBE_TIMEOUT}s" in early["status"]["message"], early
            fs.heal()

            fs.set("hang", "/")  # every operation on the destination domain's mount blocks
            # At once, before the monitor can have marked the domain: a verb that changes it
            # meets a probe first and is refused once the probe timeout has passed, having
            # touched nothing of the domain.
            img = refused_create(daemon, st.sp, st.sd2)
            hung = wait_stats(daemon, st.sd2, False, timeout=PROBE_TIMEOUT + 8)
            assert hung["code"] == 379 and "does not answer" in hung["error"], hung
            assert float(hung["lastCheck"]) >= PROBE_TIMEOUT - 1, hung
            # What does not touch it answers at once; what does is refused at once.
            assert answers_within(1, rpc.ping)["status"]["code"] == 0
            assert answers_within(1, rpc.list)["status"]["code"] == 0
            assert answers_within(1, rpc.repoStats)[st.sd]["valid"] is True
            assert code(answers_within(1, lambda: rpc.getStorageDomainInfo(st.sd))) == 0
            refused = answers_within(1, lambda: rpc.getStorageDomainInfo(st.sd2))
            assert code(refused) == 379 and st.sd2 in refused["status"]["message"], refused
            # The pool answers: the hung member is marked, the others are as they were.
            pool = answers_within(1, lambda: rpc.getStoragePoolInfo(st.sp))
            assert code(pool) == 0, pool
            member = pool["dominfo"][st.sd2]
            assert (member["status"], member["code"]) == ("Inaccessible", 379), member
            assert "does not answer" in member["error"] and "diskfree" not in member, member
            assert pool["dominfo"][st.sd]["status"] == "Active", pool
            assert int(pool["dominfo"][st.sd]["diskfree"]) > 0, pool

            fs.heal()  # the storage comes back: valid again, without a restart
            back = wait_stats(daemon, st.sd2, True, timeout=30)
            assert back["code"] == 0 and back["error"] == "", back
            assert code(rpc.getStorageDomainInfo(st.sd2)) == 0
            assert ok(rpc.getStoragePoolInfo(st.sp))["dominfo"][st.sd2]["status"] == "Active"

            assert not (img_dir / img).exists(), "the refused createVolume created its image"
            tasks = ok(rpc.getAllTasksInfo())["allTasksInfo"].values()
            assert all(task["verb"] != "createVolume" for task in tasks), tasks

            # SIGTERM still stops vdsmd while a thread of it is blocked in the kernel on the
            # hung storage (as on a hard NFS mount, the exit's SIGKILL frees the thread).
            fs.set("hang", f"{st.sd2}/images")
            assert code(answers_within(PROBE_TIMEOUT + 2, list_images)) == 379
            started = time.monotonic()
            assert daemon.stop(timeout=30) == 0
            assert time.monotonic() - started < 30
            fs.heal()


def test_a_hung_domain_on_two_hosts(tmp_path: Path) -> None:
    """The destination domain hangs under a pool of two hosts, a VM running on host 2 from the
    other domain: on both hosts what does not touch it answers within a second (the VM's
    stats, the SPM's status), both report it not answering, the SPM's createVolume on it and
    host 2's read of it answer 379 within the probe timeout, and both find it valid again once
    the storage answers, with nothing of the refused createVolume on it."""
    with (
        FaultFs(tmp_path / "dst-backing", tmp_path / "dst", tmp_path / "dst-fault") as fs,
        two_hosts_factory(tmp_path) as make,
    ):
        pool = make("--domain-probe-timeout", str(PROBE_TIMEOUT), "--domain-probe-fresh", "0")
        st, spm, vm_host = pool.storage, pool.spm_daemon, pool.daemon
        vm_id = pool.start()
        for daemon in (spm, vm_host):
            wait_stats(daemon, st.sd2, True, timeout=30)

        fs.set("hang", "/")
        img = refused_create(spm, st.sp, st.sd2)
        read = answers_within(PROBE_TIMEOUT + 2, lambda: vm_host.xmlrpc().getImagesList(st.sd2))
        assert code(read) == 379 and st.sd2 in read["status"]["message"], read
        for daemon in (spm, vm_host):
            hung = wait_stats(daemon, st.sd2, False, timeout=PROBE_TIMEOUT + 8)
            assert hung["code"] == 379 and "does not answer" in hung["error"], hung
            rpc = daemon.xmlrpc()
            assert answers_within(1, rpc.ping)["status"]["code"] == 0
            assert answers_within(1, rpc.repoStats)[st.sd]["valid"] is True
        stats = answers_within(1, lambda: vm_host.xmlrpc().getVmStats(vm_id))
        assert code(stats) == 0 and stats["statsList"][0]["status"] == "Up", stats
        status = answers_within(1, lambda: spm.xmlrpc().getSpmStatus(st.sp))
        assert status["spm_st"]["spmStatus"] == "SPM", status

        fs.heal()
        for daemon in (spm, vm_host):
            back = wait_stats(daemon, st.sd2, True, timeout=30)
            assert back["code"] == 0, back
        assert not (tmp_path / "dst-backing" / st.sd2 / "images" / img).exists()
