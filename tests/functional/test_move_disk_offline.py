"""vdsClient moveDisk on a VM that is Down: the offline move, one moveImage task on the SPM.

The real CLI (tests/functional/mover.py) against a real vdsmd, sanlock and libvirt. The VM is
started, then its QEMU killed, so its host lists it Down with its drive. Checked:

- ``--dry-run`` plans the offline move and changes nothing; the move itself (MOVE, and COPY
  with ``--keep-source``) ends with the chain's twins on the destination, LEGAL, reading the
  same as the source did (``qemu-img compare`` against a copy taken before), as thin as the
  source, the source gone (or kept), no journal left; and the VM starts on the destination;
- a VM created on the image while the task runs is refused by the volume leases (error 9);
- the client killed before it submitted the task, and after: ``--resume`` rolls back (source
  whole, destination clean) or waits for the task and finishes;
- vdsmd killed mid-copy: the client rolls back (exit 1), the source whole and LEGAL; Ctrl-C
  stops the task and rolls back (130).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, running
from tests.functional.lsm_helpers import VmFixture, qemu_pid
from tests.functional.mover import Mover, images, volumes
from tests.functional.storage_helpers import code, ok
from vdsm_cli.move.fault import TEST_PAUSE_AT, TEST_STOP_AT

pytestmark = pytest.mark.libvirt

MiB = 1024**2
SLOW_DATA = 6 * MiB  # at 1 MiB/s: the task still copies while a test acts on it


@pytest.fixture
def slow_vms(tmp_path: Path) -> Iterator[VmFixture]:
    """A vdsmd whose copies run at 1 MiB/s, and an image with SLOW_DATA in its base."""
    daemon = VdsmdProcess(tmp_path / "vdsmd", ["--copy-rate-limit", "1"])
    with running(daemon):
        fixture = VmFixture(daemon, tmp_path)
        write_base(fixture, tmp_path, SLOW_DATA)
        try:
            yield fixture
        finally:
            fixture.cleanup()


def write_base(vms: VmFixture, root: Path, size: int) -> None:
    with open(volume_path(vms, root, vms.storage.sd, vms.base), "r+b") as f:
        f.seek(128 * MiB)
        f.write(os.urandom(size))


def volume_path(vms: VmFixture, root: Path, sd: str, vol: str) -> Path:
    side = "src" if sd == vms.storage.sd else "dst"
    return root / side / sd / "images" / vms.img / vol


def down_vm(vms: VmFixture) -> str:
    """A VM that ran on the image and is Down now (its QEMU killed): its host still lists it,
    with its drive."""
    vm_id = vms.start()
    os.kill(qemu_pid(vm_id), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while vms.stats(vm_id)["status"] != "Down":
        assert time.monotonic() < deadline, "the VM was never reported Down"
        time.sleep(0.1)
    return vm_id


def offline_mover(vms: VmFixture, vm_id: str, root: Path) -> Mover:
    return Mover(vms, vm_id, root, pid_of=lambda _vm: 0)  # no QEMU: the VM is Down


def snapshot_of_source(vms: VmFixture, root: Path) -> Path:
    """The disk's content before the move, collapsed into one qcow2 file (thin)."""
    copy = root / "before.qcow2"
    leaf = volume_path(vms, root, vms.storage.sd, vms.leaf)
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "qcow2", str(leaf), str(copy)],
        check=True,
        capture_output=True,
    )
    return copy


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def legal(vms: VmFixture, sd: str, vol: str) -> bool:
    st = vms.storage
    info = ok(vms.daemon.xmlrpc().getVolumeInfo(sd, st.sp, vms.img, vol))["info"]
    return bool(info["legality"] == "LEGAL")


def assert_source_whole(m: Mover) -> None:
    vms, st = m.vms, m.vms.storage
    assert volumes(vms, st.sd) == [vms.base, vms.leaf]
    assert all(legal(vms, st.sd, v) for v in (vms.base, vms.leaf))
    assert vms.img not in images(vms, st.sd2)
    assert not list(m.root.glob(f"*/{st.sd2}/images/{vms.img}")), "image directory left behind"
    assert m.leftover_state() == [], "journal or lock left behind"


def assert_moved(m: Mover, before: Path, *, kept: bool = False) -> None:
    vms, st = m.vms, m.vms.storage
    assert volumes(vms, st.sd2) == [vms.base, vms.leaf]
    assert all(legal(vms, st.sd2, v) for v in (vms.base, vms.leaf))
    leaf = volume_path(vms, m.root, st.sd2, vms.leaf)
    done = subprocess.run(
        ["qemu-img", "compare", "-U", str(before), str(leaf)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    if kept:
        assert volumes(vms, st.sd) == [vms.base, vms.leaf]
    else:
        assert vms.img not in images(vms, st.sd)
        assert not list(m.root.glob(f"*/{st.sd}/images/{vms.img}")), "source directory left"
    assert m.leftover_state() == [], "journal or lock left behind"


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def start_on(vms: VmFixture, sd: str) -> dict[str, Any]:
    """create of a new VM on the image in domain ``sd``: its answer."""
    params = vms.params()
    params["devices"][0]["domainID"] = sd
    vms.started.append(params["vmId"])
    answer: dict[str, Any] = vms.daemon.xmlrpc().create(params)
    return answer


@pytest.mark.parametrize("keep_source", [False, True], ids=["move", "keep-source"])
def test_a_down_vms_disk_moves_offline_and_the_vm_starts_there(
    moving_vms: VmFixture, tmp_path: Path, keep_source: bool
) -> None:
    vms, st = moving_vms, moving_vms.storage
    vm_id = down_vm(vms)
    m = offline_mover(vms, vm_id, tmp_path)
    before = snapshot_of_source(vms, tmp_path)
    src_allocated = allocated(volume_path(vms, tmp_path, st.sd, vms.base))

    plan = m.run("--dry-run", json_output=True)
    assert plan.returncode == 0, plan.stderr
    (shown,) = [e for e in events(plan.stdout) if e["event"] == "plan"]
    assert (shown["mode"], shown["steps"]) == ("offline", ["move_image"]), shown
    assert volumes(vms, st.sd2) == [] and volumes(vms, st.sd) == [vms.base, vms.leaf]

    extra = ("--keep-source",) if keep_source else ()
    done = m.run(*extra, json_output=True)
    assert done.returncode == 0, done.stderr + done.stdout
    seen = events(done.stdout)
    start = next(e for e in seen if e["event"] == "start")
    assert start["mode"] == "offline" and start["steps"] == ["move_image"]
    step = next(e for e in seen if e["event"] == "step")
    assert (step["step"], step["role"]) == ("move_image", "SPM"), step
    assert any(e["event"] == "progress" for e in seen), "no progress shown"
    assert seen[-1]["event"] == "result" and seen[-1]["exitCode"] == 0, seen[-1]
    assert_moved(m, before, kept=keep_source)
    dst_allocated = allocated(volume_path(vms, tmp_path, st.sd2, vms.base))
    assert dst_allocated < src_allocated + 4 * MiB, (src_allocated, dst_allocated)  # thin

    # The engine starts the VM again with its disk where it is now.
    ok(vms.daemon.xmlrpc().destroy(vm_id))
    answer = start_on(vms, st.sd2)
    assert ok(answer)["vmList"]["status"] == "Up"


def test_a_vm_started_during_an_offline_move_is_refused(
    slow_vms: VmFixture, tmp_path: Path
) -> None:
    vms, st = slow_vms, slow_vms.storage
    vm_id = down_vm(vms)
    m = offline_mover(vms, vm_id, tmp_path)
    before = snapshot_of_source(vms, tmp_path)
    client = m.start(**{TEST_PAUSE_AT: "move_image+"})  # the task submitted, still copying
    client.wait_paused()
    ok(vms.daemon.xmlrpc().destroy(vm_id))
    answer = start_on(vms, st.sd)
    assert code(answer) == 9 and "lease" in answer["status"]["message"], answer
    client.signal(signal.SIGCONT)
    exit_code, output = client.finish()
    assert exit_code == 0, output
    assert_moved(m, before)
    assert ok(start_on(vms, st.sd2))["vmList"]["status"] == "Up"


@pytest.mark.parametrize("point", ["move_image", "move_image+"])
def test_the_client_killed_then_resume(slow_vms: VmFixture, tmp_path: Path, point: str) -> None:
    vms = slow_vms
    vm_id = down_vm(vms)
    m = offline_mover(vms, vm_id, tmp_path)
    before = snapshot_of_source(vms, tmp_path)
    killed = m.run(hooks={TEST_STOP_AT: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal = m.journal()
    assert journal is not None and (journal["mode"], journal["step"]) == ("offline", "move_image")
    resumed = m.resume()
    if point == "move_image":  # killed before moveImage was sent: nothing to finish
        assert resumed.returncode == 1, resumed.stderr
        assert "rolled back" in resumed.stderr
        assert_source_whole(m)
    else:  # the task ran on without the client: --resume waits for it and finishes
        assert resumed.returncode == 0, resumed.stderr + resumed.stdout
        assert "moved to domain" in resumed.stdout + resumed.stderr
        assert_moved(m, before)


def test_vdsmd_killed_mid_copy_rolls_back(slow_vms: VmFixture, tmp_path: Path) -> None:
    vms = slow_vms
    vm_id = down_vm(vms)
    m = offline_mover(vms, vm_id, tmp_path)
    client = m.start(**{TEST_PAUSE_AT: "move_image+"})
    client.wait_paused()
    task = m.journal()["tasks"]["move_image"]  # type: ignore[index]
    deadline = time.monotonic() + 20
    while int(ok(vms.daemon.xmlrpc().getTaskStatus(task))["taskStatus"]["bytesDone"] or 0) == 0:
        assert time.monotonic() < deadline, "the copy never started"
        time.sleep(0.05)
    vms.daemon.kill()
    vms.daemon.restart()  # and spmStart: the SPM rolls the task back
    client.signal(signal.SIGCONT)
    exit_code, output = client.finish()
    assert exit_code == 1, output
    assert "rolled back" in output and "whole in the source domain" in output, output
    assert_source_whole(m)


def test_ctrl_c_stops_the_task_and_rolls_back(slow_vms: VmFixture, tmp_path: Path) -> None:
    vms = slow_vms
    vm_id = down_vm(vms)
    m = offline_mover(vms, vm_id, tmp_path)
    client = m.start(**{TEST_PAUSE_AT: "move_image+"})
    client.wait_paused()
    client.signal(signal.SIGINT, signal.SIGCONT)  # Ctrl-C while the task copies
    exit_code, output = client.finish()
    assert exit_code == 130, output
    assert "rolled back: interrupted (Ctrl-C)" in output, output
    assert_source_whole(m)
