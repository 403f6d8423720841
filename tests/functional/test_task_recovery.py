"""Tasks across failures of a real vdsmd: stopped mid-copy, killed with SIGKILL mid-create and
mid-copy, stopped with SIGTERM. Every case ends rolled back and reported, with nothing
half-made left behind and no orphaned qemu-img still running.

The in-flight moments come from tests/fakes/slow-qemu-img, a named fake that holds a chosen
qemu-img subcommand (a real qemu-img cannot be paused on demand) and then runs the real one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, running, wait_task
from tests.functional.storage_helpers import Storage, ok
from vdsm.copy_governor import GuestIo
from vdsm.storage import volume as volumes
from vdsm.storage.repository import StorageRepository
from vdsm.storage.runner import TASK_ID_ENV
from vdsm.virt import unaccounted_io
from vdsm_guest.cluster import processes_with_env

FAKE_QEMU_IMG = Path(__file__).resolve().parents[1] / "fakes" / "slow-qemu-img"
MiB = 1024**2


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_hold(marker: Path, subcommand: str, timeout: float = 60) -> int:
    """Wait until the fake holds ``subcommand``; return the held process's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            for line in marker.read_text().splitlines():
                pid, held = line.split()
                if held == subcommand:
                    return int(pid)
        time.sleep(0.02)
    raise AssertionError(f"qemu-img {subcommand} was never started")


@pytest.fixture
def held_vdsmd(tmp_path: Path) -> Iterator[tuple[VdsmdProcess, Path]]:
    """A vdsmd whose qemu-img create and convert are held until killed."""
    marker = tmp_path / "held"
    env = {
        "VDSM_QEMU_IMG": str(FAKE_QEMU_IMG),
        "FAKE_QEMU_IMG_HOLD": "create,convert",
        "FAKE_QEMU_IMG_MARKER": str(marker),
        "FAKE_QEMU_IMG_DELAY": "600",
    }
    # Not adaptive: the copies go through qemu-img convert, which the fake holds. The adaptive
    # copy (a qemu-storage-daemon) is stopped and killed in the *_adaptive_copy tests below.
    args = ["--shutdown-grace", "2", "--no-adaptive-copy-rate"]
    daemon = VdsmdProcess(tmp_path / "vdsmd", args, env=env)
    daemon.start()
    try:
        yield daemon, marker
    finally:
        if daemon.running:
            daemon.kill()


def files_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "master/tasks" not in str(p))


def test_kill_9_during_volume_create_rolls_back_on_restart(
    held_vdsmd: tuple[VdsmdProcess, Path], tmp_path: Path
) -> None:
    daemon, marker = held_vdsmd
    storage = Storage(daemon, tmp_path)
    before = files_of(tmp_path / "src")
    img, vol = new_uuid(), new_uuid()
    task = ok(
        storage.rpc.createVolume(
            storage.sd, storage.sp, img, str(MiB), "RAW", "SPARSE", "DATA", vol
        )
    )["uuid"]
    qemu_img_pid = wait_for_hold(marker, "create")
    # The create is in flight: metadata (ILLEGAL) and lease exist, the data file does not yet.
    assert (tmp_path / "src" / storage.sd / "images" / img / f"{vol}.meta").exists()

    daemon.kill()
    # Its children die with it (PR_SET_PDEATHSIG): nothing writes while nobody owns the task.
    deadline = time.monotonic() + 10
    while pid_alive(qemu_img_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(qemu_img_pid), "qemu-img must die with vdsmd"
    daemon.restart()  # and spmStart: the master's tasks are recovered by the SPM

    status = wait_task(daemon, task, timeout=60)  # recovery rolls back in the background
    assert status["taskState"] == "finished" and status["taskResult"] == "cleanSuccess", status
    assert "restart" in status["message"]
    # No volume, no .meta, no image directory: the domain is as before the create.
    assert files_of(tmp_path / "src") == before
    assert ok(storage.rpc.getImagesList(storage.sd))["imageslist"] == []


def test_stop_mid_copy_rolls_back(held_vdsmd: tuple[VdsmdProcess, Path], tmp_path: Path) -> None:
    daemon, marker = held_vdsmd
    storage = Storage(daemon, tmp_path)
    img, base, leaf = _cloned_image(storage, daemon, marker, tmp_path)
    task = ok(storage.rpc.syncImageData(storage.sp, storage.sd, img, storage.sd2, "INTERNAL"))[
        "uuid"
    ]
    convert_pid = wait_for_hold(marker, "convert")
    assert ok(storage.rpc.getTaskStatus(task))["taskStatus"]["taskState"] == "running"

    assert_stop_rolls_back(storage, task, img, base, convert_pid)


def assert_stop_rolls_back(storage: Storage, task: str, img: str, base: str, copier: int) -> None:
    """stopTask of a running sync: cleaned up (411), its copy process gone, the half-copied
    twin ILLEGAL, the source untouched and still LEGAL."""
    ok(storage.rpc.stopTask(task))
    status = wait_task(storage.daemon, task, timeout=30)
    assert status["taskResult"] == "cleanSuccess" and status["code"] == 411, status
    assert not pid_alive(copier), "stopTask ends the copy"
    info = ok(storage.rpc.getVolumeInfo(storage.sd2, storage.sp, img, base))["info"]
    assert info["legality"] == "ILLEGAL", "a half-copied twin must never look valid"
    source = ok(storage.rpc.getVolumeInfo(storage.sd, storage.sp, img, base))["info"]
    assert source["legality"] == "LEGAL"


def test_kill_9_during_copy_rolls_back_on_restart(
    held_vdsmd: tuple[VdsmdProcess, Path], tmp_path: Path
) -> None:
    daemon, marker = held_vdsmd
    storage = Storage(daemon, tmp_path)
    img, base, leaf = _cloned_image(storage, daemon, marker, tmp_path)
    task = ok(storage.rpc.syncImageData(storage.sp, storage.sd, img, storage.sd2, "ALL"))["uuid"]
    convert_pid = wait_for_hold(marker, "convert")

    daemon.kill()
    daemon.restart()
    status = wait_task(daemon, task, timeout=60)  # recovery rolls back in the background
    assert status["taskState"] == "finished" and status["taskResult"] == "cleanSuccess", status
    assert not pid_alive(convert_pid)
    for vol in (base, leaf):
        info = ok(storage.rpc.getVolumeInfo(storage.sd2, storage.sp, img, vol))["info"]
        assert info["legality"] == "ILLEGAL" or vol == leaf


@pytest.fixture
def slow_adaptive_vdsmd(tmp_path: Path) -> Iterator[VdsmdProcess]:
    """A vdsmd whose copies adapt (the default), capped at 16 MiB/s, with busy guests: a copy
    then starts held back at the floor, as a qemu-storage-daemon mirror job in flight for
    seconds. The guests are a named fake: growing counters published through the TEST-ONLY
    hook of vdsm/virt/unaccounted_io.py (this test is about the daemon's life, not the
    signal; test_copy_rate_limit.py reads a real guest's)."""
    counters = tmp_path / "guest-io.json"
    stop = threading.Event()

    def busy() -> None:
        ops = 0
        while not stop.wait(0.05):
            ops += 100
            unaccounted_io.write(counters, GuestIo(ops, ops * 4096, ops * 100_000))

    publisher = threading.Thread(target=busy, daemon=True)
    publisher.start()
    args, env = ["--copy-rate-limit", "16"], {unaccounted_io.ENV: str(counters)}
    try:
        with running(VdsmdProcess(tmp_path / "vdsmd", args, env=env)) as daemon:
            yield daemon
    finally:
        stop.set()
        publisher.join()


def storage_daemon_of(task_id: str, timeout: float = 30) -> int:
    """The pid of the qemu-storage-daemon copying for the task, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in processes_with_env(TASK_ID_ENV, task_id):
            try:
                if os.readlink(f"/proc/{pid}/exe").endswith("qemu-storage-daemon"):
                    return pid
            except OSError:
                continue  # gone meanwhile
        time.sleep(0.02)
    raise AssertionError(f"no qemu-storage-daemon of task {task_id} was seen")


def test_stop_mid_adaptive_copy_rolls_back(
    slow_adaptive_vdsmd: VdsmdProcess, tmp_path: Path
) -> None:
    daemon = slow_adaptive_vdsmd
    storage = Storage(daemon, tmp_path)
    img, base, _ = _image_with_twins(storage, daemon, tmp_path)
    task = ok(storage.rpc.syncImageData(storage.sp, storage.sd, img, storage.sd2, "ALL"))["uuid"]
    assert_stop_rolls_back(storage, task, img, base, storage_daemon_of(task))


def test_kill_9_during_adaptive_copy_rolls_back_on_restart(
    slow_adaptive_vdsmd: VdsmdProcess, tmp_path: Path
) -> None:
    daemon = slow_adaptive_vdsmd
    storage = Storage(daemon, tmp_path)
    img, base, leaf = _image_with_twins(storage, daemon, tmp_path)
    task = ok(storage.rpc.syncImageData(storage.sp, storage.sd, img, storage.sd2, "ALL"))["uuid"]
    copier = storage_daemon_of(task)

    daemon.kill()
    # It dies with vdsmd (PR_SET_PDEATHSIG), though a helper thread of the copy forked it.
    deadline = time.monotonic() + 10
    while pid_alive(copier) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(copier), "the copy's qemu-storage-daemon must die with vdsmd"
    daemon.restart()
    status = wait_task(daemon, task, timeout=60)
    assert status["taskState"] == "finished" and status["taskResult"] == "cleanSuccess", status
    for vol in (base, leaf):
        info = ok(storage.rpc.getVolumeInfo(storage.sd2, storage.sp, img, vol))["info"]
        assert info["legality"] == "ILLEGAL" or vol == leaf


def _image_with_twins(
    storage: Storage, daemon: VdsmdProcess, tmp_path: Path
) -> tuple[str, str, str]:
    """A raw base holding 64 MiB (seconds from the floor to the cap) and a qcow2 leaf,
    cloned onto sd2."""
    img, base, leaf = new_uuid(), new_uuid(), new_uuid()
    storage.create_volume(img, base, fmt="RAW")
    storage.create_volume(img, leaf, parent=base)
    src_base = tmp_path / "src" / storage.sd / "images" / img / base
    with open(src_base, "r+b") as f:
        f.write(os.urandom(64 * MiB))
    clone = ok(storage.rpc.cloneImageStructure(storage.sp, storage.sd, img, storage.sd2))
    assert wait_task(daemon, clone["uuid"])["taskResult"] == "success"
    return img, base, leaf


def test_sigterm_stops_cleanly_and_rolls_back_running_tasks(
    held_vdsmd: tuple[VdsmdProcess, Path], tmp_path: Path
) -> None:
    daemon, marker = held_vdsmd
    storage = Storage(daemon, tmp_path)
    img, vol = new_uuid(), new_uuid()
    task = ok(
        storage.rpc.createVolume(
            storage.sd, storage.sp, img, str(MiB), "RAW", "SPARSE", "DATA", vol
        )
    )["uuid"]
    qemu_img_pid = wait_for_hold(marker, "create")
    started = time.monotonic()
    assert daemon.stop(timeout=90) == 0
    # The grace is 2 s here; the held create never finishes, so it is stopped and rolled back.
    assert time.monotonic() - started < 60
    assert not pid_alive(qemu_img_pid)
    assert "vdsmd stopped" in daemon.log()
    assert not (daemon.run_dir / "vdsmd.pid").exists()
    daemon.restart()
    status = wait_task(daemon, task, timeout=60)  # recovery rolls back in the background
    assert status["taskResult"] == "cleanSuccess", status
    assert ok(storage.rpc.getImagesList(storage.sd))["imageslist"] == []


def _cloned_image(
    storage: Storage, daemon: VdsmdProcess, marker: Path, tmp_path: Path
) -> tuple[str, str, str]:
    """An image of a raw base and a qcow2 leaf on src, its empty twin chain on dst.

    Volume creation goes through the held qemu-img too, so the files are made here with the
    real qemu-img through vdsm's storage library, sharing the daemon's domains on disk."""
    repository = StorageRepository(daemon.state_dir / "storage")
    img, base, leaf = new_uuid(), new_uuid(), new_uuid()
    for sd in (storage.sd, storage.sd2):
        domain = repository.domain(sd)
        volumes.create(
            domain, img, base, capacity=64 * MiB, volume_format="RAW", allocation="SPARSE"
        )
        volumes.create(
            domain,
            img,
            leaf,
            capacity=64 * MiB,
            volume_format="COW",
            allocation="SPARSE",
            parent_uuid=base,
        )
    src_base = repository.domain(storage.sd).path / "images" / img / base
    with open(src_base, "r+b") as f:
        f.write(os.urandom(4 * MiB))
    return img, base, leaf
