"""The real test guest under QEMU (TCG), and the checker proven to pass and to fail on it.

One guest run is shared by the module: it boots from the cached build (the first build
downloads two .debs), writes to a qcow2 leaf over a raw base, and meanwhile the fixture takes
a stale copy of the disk (after a few writes) and checks the live disk once; then QEMU is
killed and each test checks one image against the final log.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_command
from vdsm_guest import checker
from vdsm_guest.build import GuestImage, ensure_guest

SLOTS = 8  # small, so that 20 writes overwrite every slot at least twice
PAUSE = 0.05  # seconds between writes: slow enough to copy the disk after a few of them
MIN_WRITES = 20
BOOT_TIMEOUT = 90.0  # TCG boots in 2-6 s; a noisy CI machine gets plenty of slack

_WRITE = re.compile(r"VDSMW seq=(\d+) slot=\d+ md5=[0-9a-f]{32}")


@dataclass
class GuestRun:
    disk: Path  # qcow2 leaf over a raw base, as the guest left it
    log: Path  # the full serial log
    stale: Path  # raw copy of the disk taken after a few writes, the guest still writing
    stale_seq: int  # last write logged before the stale copy started
    live: checker.CheckResult  # the checker run on the disk while the guest was writing


def _logged_writes(log: Path) -> int:
    if not log.exists():
        return 0
    text = log.read_bytes().decode(errors="replace")
    return max((int(seq) for seq in _WRITE.findall(text)), default=0)


def _wait_writes(proc: subprocess.Popen[bytes], log: Path, count: int, output: Path) -> int:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while (seen := _logged_writes(log)) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_bytes()[-2000:].decode(errors="replace") if log.exists() else ""
            pytest.fail(
                f"guest logged {seen} of {count} writes (QEMU rc={proc.poll()}):\n"
                f"--- serial ---\n{tail}\n--- qemu ---\n{output.read_text(errors='replace')}"
            )
        time.sleep(0.02)
    return seen


def _qemu_img(*args: str) -> None:
    proc = subprocess.run(
        [require_command("qemu-img"), *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"qemu-img {' '.join(args)}: {proc.stderr}"


@pytest.fixture(scope="module")
def guest() -> GuestImage:
    for command in ("apt-get", "apt-cache", "dpkg"):
        require_command(command)
    return ensure_guest()


@pytest.fixture(scope="module")
def guest_run(guest: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestRun]:
    qemu = require_command("qemu-system-x86_64")
    tmp = tmp_path_factory.mktemp("guest")
    base, disk, log, stale = tmp / "base.raw", tmp / "disk.qcow2", tmp / "serial.log", tmp / "s.raw"
    _qemu_img("create", "-f", "raw", str(base), "16M")
    _qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "raw", str(disk))
    argv = [
        qemu, "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
        "-nodefaults", "-display", "none", "-no-reboot",
        "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
        "-append", guest.kernel_cmdline(slots=SLOTS, pause=PAUSE),
        "-drive", f"file={disk},format=qcow2,if=virtio,cache=none",
        "-serial", f"file:{log}",
    ]  # fmt: skip
    output = tmp / "qemu.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        stale_seq = _wait_writes(proc, log, 5, output)
        _qemu_img("convert", "-U", "-f", "qcow2", "-O", "raw", str(disk), str(stale))
        # Every slot is rewritten after the stale copy, so every slot of it is a lost write.
        _wait_writes(proc, log, max(MIN_WRITES, stale_seq + 2 * SLOTS), output)
        live = checker.check(disk, "qcow2", log)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    yield GuestRun(disk=disk, log=log, stale=stale, stale_seq=stale_seq, live=live)


def test_good_disk_passes(guest_run: GuestRun) -> None:
    result = checker.check(guest_run.disk, "qcow2", guest_run.log)
    assert result.ok, result.failures
    assert result.writes_logged >= MIN_WRITES
    assert result.last_seq == result.writes_logged
    assert result.slots == SLOTS
    assert result.slots_verified == SLOTS


def test_live_disk_passes(guest_run: GuestRun) -> None:
    # Read while the guest kept writing: writes newer than the log are accepted.
    assert guest_run.live.ok, guest_run.live.failures
    assert guest_run.live.slots_verified == SLOTS


def test_stale_disk_fails_with_lost_writes(guest_run: GuestRun) -> None:
    result = checker.check(guest_run.stale, "raw", guest_run.log)
    assert not result.ok
    assert {failure.kind for failure in result.failures} == {checker.LOST}
    assert {failure.slot for failure in result.failures} == set(range(SLOTS))
    assert any(re.search(r"seq=\d+", failure.message) for failure in result.failures)


def test_corrupted_disk_fails(guest_run: GuestRun, tmp_path: Path) -> None:
    result = checker.check(guest_run.disk, "qcow2", guest_run.log)
    slot = (result.last_seq - 1) % SLOTS
    image = tmp_path / "corrupt.raw"
    _qemu_img("convert", "-f", "qcow2", "-O", "raw", str(guest_run.disk), str(image))
    with image.open("r+b") as f:
        offset = slot * checker.BLOCK_SIZE + checker.HEADER_SIZE + 1000
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))

    result = checker.check(image, "raw", guest_run.log)
    assert [(f.kind, f.slot) for f in result.failures] == [(checker.CORRUPT, slot)]


def test_log_read_before_the_last_writes_passes(guest_run: GuestRun, tmp_path: Path) -> None:
    lines = guest_run.log.read_bytes().splitlines(keepends=True)
    last_seq = _logged_writes(guest_run.log)
    cut = next(i for i, line in enumerate(lines) if f"VDSMW seq={last_seq - 5} ".encode() in line)
    early_log = tmp_path / "early.log"
    early_log.write_bytes(b"".join(lines[: cut + 1]))

    result = checker.check(guest_run.disk, "qcow2", early_log)
    assert result.ok, result.failures
    assert result.last_seq == last_seq - 5
    assert result.later_writes >= 5
    assert result.slots_verified == SLOTS


@pytest.mark.parametrize(
    ("image", "expected_rc"),
    [("disk", 0), ("stale", 1), ("missing", 2)],
)
def test_checker_exit_codes(guest_run: GuestRun, image: str, expected_rc: int) -> None:
    paths = {"disk": guest_run.disk, "stale": guest_run.stale, "missing": Path("/nonexistent")}
    proc = subprocess.run(
        [sys.executable, "-m", "vdsm_guest.checker", "--log", str(guest_run.log),
         "--image", str(paths[image])],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == expected_rc, proc.stdout + proc.stderr


def test_build_is_cached(guest: GuestImage) -> None:
    started = time.monotonic()
    again = ensure_guest()
    assert again == guest
    assert time.monotonic() - started < 5.0
    assert guest.initrd.stat().st_size < 4 * 1024 * 1024
