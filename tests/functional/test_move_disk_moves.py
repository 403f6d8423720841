"""vdsClient moveDisk against a real vdsmd and libvirt, the moves that go through or never start.

The real CLI, run as a subprocess (tests/functional/mover.py):

- The one-command move under continuous guest writes (the tiny guest): zero lost writes on
  the destination chain, with and without keeping the source, with and without the merge
  (merged: the same volume ids, base to leaf, as before the move); running it again is
  harmless.
- The human output, the dry run, and the move back to the first domain.
- Pre-flight refusals (no room on a small tmpfs domain, a domain of another pool, a VM that
  is down, a disk busy with a replication, a move already running) change nothing.
- Every disk of a VM with --all, one after another.

The tests share one vdsmd and pool (``pooled_moving_vms``: an image and VMs of their own on
it), but for the pre-flight refusals, which attach a domain on a tmpfs of their own to the
pool and unmount it after.

Interrupted, killed and failed moves, and ``--resume``: test_move_disk_recovery.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.functional.daemon_helpers import new_uuid
from tests.functional.lsm_helpers import VmFixture, chain_of, guest_params, qemu_pid, wait_writes
from tests.functional.mover import PREFILL, Done, Mover, assert_on_destination, images, world
from vdsm_cli.move.fault import TEST_PAUSE_AT
from vdsm_cli.move.steps import FORWARD_STEPS
from vdsm_guest import checker
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt

# --- the whole move under guest writes --------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "merge"), [(False, True), (True, True), (False, False), (True, False)]
)
def test_move_under_guest_writes(
    pooled_moving_vms: VmFixture, guest: GuestImage, tmp_path: Path, keep: bool, merge: bool
) -> None:
    vm_id = pooled_moving_vms.start(**guest_params(guest, slots=64, pause=0.02))
    console = Path(pooled_moving_vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 10)
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    extra = [*(["--keep-source"] if keep else []), *([] if merge else ["--no-merge"])]
    before = wait_writes(console, 0)
    proc = m.run(*extra, json_output=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert wait_writes(console, before + 10) > before, "the guest wrote during the move"

    steps = [e["step"] for e in events if e["event"] == "step"]
    expected = [s for s in FORWARD_STEPS if not (keep and s == "delete_source")]
    expected = [s for s in expected if merge or s not in ("merge", "delete_snapshot")]
    assert steps == expected
    sync = [e for e in events if e["event"] == "progress" and e["step"] == "sync"]
    assert sync and sync[-1]["bytesDone"] == sync[-1]["bytesTotal"] >= PREFILL
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["dataBytes"] >= PREFILL and summary["pivotSeconds"] > 0
    assert events[-1] == {"event": "result", "exitCode": 0, "message": events[-1]["message"]}

    wait_writes(console, wait_writes(console, 0) + 20)  # and it keeps writing on the destination
    chain = assert_on_destination(m, merged=merge, kept=keep)
    leaf = Path(pooled_moving_vms.stats(vm_id)["disks"]["vda"]["path"])
    result = checker.check(leaf, "qcow2", console)
    assert result.ok, result.failures
    assert result.slots_verified == min(64, result.writes_logged)
    if keep:
        # The kept source is the disk as it was at the pivot: it missed what came after.
        st = pooled_moving_vms.storage
        src_leaf = st.root / "src" / st.sd / "images" / pooled_moving_vms.img / chain[-1]
        if not merge:
            assert checker.check(src_leaf, "qcow2", console).failures

    # Running it again does no harm: nothing to do, nothing to resume.
    again = m.run(*extra)
    assert again.returncode == 0 and "already in domain" in again.stdout, again.stderr
    resumed = m.resume()
    assert resumed.returncode == 0 and "nothing to resume" in resumed.stdout
    assert world(pooled_moving_vms, vm_id)["chain"] == chain


def test_human_output_dry_run_and_the_source_back(
    pooled_moving_vms: VmFixture, tmp_path: Path
) -> None:
    vm_id = pooled_moving_vms.start()
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    before = world(pooled_moving_vms, vm_id)
    plan = m.run("--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "data to copy: 24." in plan.stdout and "estimate: about" in plan.stdout
    assert world(pooled_moving_vms, vm_id) == before and m.leftover_state() == []

    done = m.run("--bandwidth", "100", "--sync-writes")
    assert done.returncode == 0, done.stderr
    for text in ("[7/10] pivot", "time in pivot:", "average rate:", "data moved:"):
        assert text in done.stdout
    assert_on_destination(m)
    # And back again: the same command towards the first domain.
    back = m.run(dst=pooled_moving_vms.storage.sd)
    assert back.returncode == 0, back.stderr
    assert world(pooled_moving_vms, vm_id)["domain"] == pooled_moving_vms.storage.sd
    assert chain_of(pooled_moving_vms.stats(vm_id)) == m.chain and qemu_pid(vm_id) == m.pid
    plan = m.run("--dry-run", dst=pooled_moving_vms.storage.sd2)
    assert "measured moves" in plan.stdout  # the estimate now uses the measured rate


# --- pre-flight -----------------------------------------------------------------------------------


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs: a real domain too small for the test disk's data plus overhead."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        missing(f"cannot mount a small tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_preflight_refusals_change_nothing(
    moving_vms: VmFixture, tmp_path: Path, small_mount: Path
) -> None:
    api, st = moving_vms.daemon.api(), moving_vms.storage
    small, foreign = new_uuid(), new_uuid()
    api.create_domain(small, "small", str(small_mount))
    api.attach_domain(small, st.sp)
    (tmp_path / "foreign").mkdir()
    api.create_domain(foreign, "foreign", str(tmp_path / "foreign"))
    vm_id = moving_vms.start()
    m = Mover(moving_vms, vm_id, tmp_path)
    before = world(moving_vms, vm_id)

    def refused(proc: Done, *words: str) -> None:
        assert proc.returncode == 1, proc.stderr + proc.stdout
        for word in words:
            assert word in proc.stderr, proc.stderr
        assert world(moving_vms, vm_id) == before
        assert images(moving_vms, small) == [] and m.leftover_state() == []

    refused(m.run(dst=small), "not enough room", small, "× 1.1 + 64.0 MiB")
    refused(m.run(dst=foreign), f"{foreign} is not in pool {st.sp}")
    refused(m.run(dst=new_uuid()), "is not in pool")
    refused(m.run(image=new_uuid()), "is not attached to VM")

    # Busy: a replication already runs on the disk.
    api.wait_success(api.clone_structure(st.sp, st.sd, moving_vms.img, st.sd2))
    src = {
        "domainID": st.sd,
        "poolID": st.sp,
        "imageID": moving_vms.img,
        "volumeID": moving_vms.leaf,
    }
    api.replicate_start(vm_id, src, {**src, "domainID": st.sd2}, "background", 1)
    before = world(moving_vms, vm_id)
    refused(m.run(), "is busy: a replication")
    api.replicate_finish(vm_id, src, src)
    api.wait_success(api.delete_image(st.sd2, st.sp, moving_vms.img))

    # A VM no host knows (a Down one moves offline: test_move_disk_offline.py).
    proc = m.run(vm=new_uuid())
    assert proc.returncode == 1 and "is not known on" in proc.stderr


def test_a_second_client_on_the_same_disk_is_refused(
    pooled_moving_vms: VmFixture, tmp_path: Path
) -> None:
    vm_id = pooled_moving_vms.start()
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    proc = m.start(**{TEST_PAUSE_AT: "clone"})
    proc.wait_paused()
    second = m.run()
    assert second.returncode == 1 and f"another vdsClient (pid {proc.pid})" in second.stderr
    proc.signal(signal.SIGCONT)
    code, text = proc.finish()
    assert code == 0, text
    assert_on_destination(m)


# --- every disk of a VM ---------------------------------------------------------------------------


def test_all_disks_one_after_another(pooled_moving_vms: VmFixture, tmp_path: Path) -> None:
    st = pooled_moving_vms.storage
    img2, vol2 = new_uuid(), new_uuid()
    st.create_volume(img2, vol2, fmt="RAW")
    first = {
        "type": "disk",
        "device": "disk",
        "domainID": st.sd,
        "poolID": st.sp,
        "imageID": pooled_moving_vms.img,
        "volumeID": pooled_moving_vms.leaf,
        "iface": "virtio",
        "index": 0,
    }
    second = {**first, "imageID": img2, "volumeID": vol2, "index": 1}
    vm_id = pooled_moving_vms.start(devices=[first, second])
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    # The other tests' images on the shared pool: they must stay where they are.
    src_before, dst_before = images(pooled_moving_vms, st.sd), images(pooled_moving_vms, st.sd2)
    assert {pooled_moving_vms.img, img2} <= set(src_before)
    proc = m.run(all_disks=True, json_output=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    notes = [e["message"] for e in events if e["event"] == "note"]
    assert "moving 2 disks one after another: vda, vdb" in notes
    assert [e["imageID"] for e in events if e["event"] == "start"] == [pooled_moving_vms.img, img2]
    stats = pooled_moving_vms.stats(vm_id)
    assert {d["domainID"] for d in stats["disks"].values()} == {st.sd2}
    assert chain_of(stats, "vda") == m.chain and chain_of(stats, "vdb") == [vol2]
    moved = {pooled_moving_vms.img, img2}
    assert sorted(images(pooled_moving_vms, st.sd)) == sorted(set(src_before) - moved)
    assert sorted(images(pooled_moving_vms, st.sd2)) == sorted([*dst_before, *moved])
    assert m.leftover_state() == []
