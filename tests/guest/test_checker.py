"""The checker's rules on synthetic images and logs: each way a disk can be wrong, and the
ways a disk read while the guest writes can look odd but be right.

The images are raw files laid out as the guest writes them (see vdsm_guest/init.sh); the
checker still reads them with ``qemu-img dd``, as it reads real ones.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_command
from vdsm_guest import checker
from vdsm_guest.checker import BLOCK_SIZE, CORRUPT, HEADER_SIZE, LOG, LOST, MISPLACED

RUN = "11111111-2222-3333-4444-555555555555"
SLOTS = 4


def block(seq: int, slot: int | None = None, run: str = RUN, payload: bytes | None = None) -> bytes:
    slot = (seq - 1) % SLOTS if slot is None else slot
    payload = os.urandom(BLOCK_SIZE - HEADER_SIZE) if payload is None else payload
    md5 = hashlib.md5(payload).hexdigest()
    header = f"VDSMW1 run={run} seq={seq} slot={slot} md5={md5}".ljust(HEADER_SIZE - 1) + "\n"
    return header.encode() + payload


class Disk:
    """A raw image and a serial log, built write by write as the guest would."""

    def __init__(self, tmp_path: Path) -> None:
        require_command("qemu-img")
        self.image = tmp_path / "disk.raw"
        self.log = tmp_path / "serial.log"
        self.image.write_bytes(bytes(SLOTS * BLOCK_SIZE))
        self.lines = [
            "[    1.0] some kernel message",
            f"VDSMW ready run={RUN} disk=/dev/vda slots={SLOTS} block={BLOCK_SIZE} pause=0 count=0",
        ]
        self.seq = 0

    def put(self, data: bytes, slot: int) -> None:
        with self.image.open("r+b") as f:
            f.seek(slot * BLOCK_SIZE)
            f.write(data)

    def write(self, logged: bool = True) -> bytes:
        """The guest's next write; ``logged=False``: it finished after the log was read."""
        self.seq += 1
        data = block(self.seq)
        self.put(data, (self.seq - 1) % SLOTS)
        if logged:
            md5 = data[:HEADER_SIZE].split(b"md5=")[1][:32].decode()
            self.lines.append(f"VDSMW seq={self.seq} slot={(self.seq - 1) % SLOTS} md5={md5}\r")
        return data

    def check(self) -> checker.CheckResult:
        self.log.write_text("\n".join(self.lines) + "\n")
        return checker.check(self.image, "raw", self.log)


@pytest.fixture
def disk(tmp_path: Path) -> Disk:
    return Disk(tmp_path)


def kinds(result: checker.CheckResult) -> list[tuple[str, int | None]]:
    return [(failure.kind, failure.slot) for failure in result.failures]


def test_overwritten_slots_pass(disk: Disk) -> None:
    for _ in range(10):
        disk.write()
    result = disk.check()
    assert result.ok, result.failures
    assert (result.writes_logged, result.last_seq, result.slots_verified) == (10, 10, SLOTS)


def test_unwritten_slots_pass(disk: Disk) -> None:
    disk.write()
    result = disk.check()
    assert result.ok, result.failures
    assert result.slots_verified == 1


def test_writes_after_the_log_pass(disk: Disk) -> None:
    for _ in range(5):
        disk.write()
    disk.write(logged=False)
    disk.write(logged=False)  # lands on a slot no logged write reached
    result = disk.check()
    assert result.ok, result.failures
    assert result.later_writes == 2


def test_older_block_is_a_lost_write(disk: Disk) -> None:
    old = disk.write()
    for _ in range(SLOTS):
        disk.write()
    disk.put(old, 0)
    result = disk.check()
    assert kinds(result) == [(LOST, 0)]
    assert (
        "seq=1" in result.failures[0].message and f"seq={SLOTS + 1}" in result.failures[0].message
    )


def test_missing_block_is_a_lost_write(disk: Disk) -> None:
    disk.write()
    disk.write()
    disk.put(bytes(BLOCK_SIZE), 1)
    assert kinds(disk.check()) == [(LOST, 1)]


def test_corrupt_payload_fails(disk: Disk) -> None:
    data = bytearray(disk.write())
    data[HEADER_SIZE + 7] ^= 1
    disk.put(bytes(data), 0)
    assert kinds(disk.check()) == [(CORRUPT, 0)]


def test_block_that_differs_from_the_log_fails(disk: Disk) -> None:
    disk.write()
    disk.put(block(1), 0)  # the same write number, another payload: valid but not the one logged
    assert kinds(disk.check()) == [(CORRUPT, 0)]


def test_misplaced_block_fails(disk: Disk) -> None:
    first = disk.write()
    disk.put(first, 2)  # e.g. a copy to the wrong offset
    assert kinds(disk.check()) == [(MISPLACED, 2)]


def test_blocks_of_another_run(disk: Disk) -> None:
    disk.write()
    # Leftovers of an earlier run are fine where this run never wrote, lost where it did.
    disk.put(block(3, run="another-run"), 2)
    assert disk.check().ok
    disk.put(block(1, run="another-run"), 0)
    assert kinds(disk.check()) == [(LOST, 0)]


def test_one_half_written_newer_block_is_in_flight(disk: Disk) -> None:
    for _ in range(3):
        disk.write()
    torn = bytearray(block(4))
    torn[-100:] = bytes(100)  # the end of the write did not land
    disk.put(bytes(torn), 3)
    result = disk.check()
    assert result.ok, result.failures
    assert result.in_flight == 1

    disk.put(bytes(torn[:HEADER_SIZE]) + bytes(BLOCK_SIZE - HEADER_SIZE), 3)
    disk.put(bytes(bytearray(block(5))[:-1]) + b"x", 0)  # a second one cannot be in flight
    assert [kind for kind, _ in kinds(disk.check())] == [CORRUPT]


def between_reads(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run ``change`` on the image after the checker's first read and before its second,
    as QEMU finishing the cluster it was allocating would (the reads stay real qemu-img)."""
    read = checker.read_slots
    calls = []

    def read_then_change(*args: Any) -> Path:
        copy = read(*args)
        calls.append(copy)
        if len(calls) == 1:
            change()
        return copy

    monkeypatch.setattr(checker, "read_slots", read_then_change)


def test_slots_read_empty_while_being_rewritten_pass(
    disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(4):
        disk.write()
    # The guest's next writes (seq=5, 6) land in slots 0 and 1 as the checker reads them.
    disk.put(bytes(BLOCK_SIZE), 0)
    disk.put(bytes(BLOCK_SIZE), 1)
    between_reads(monkeypatch, lambda: [disk.write(logged=False) for _ in range(2)])
    result = disk.check()
    assert result.ok, result.failures
    assert (result.raced_reads, result.later_writes, result.slots_verified) == (2, 2, 4)


def test_an_empty_slot_is_lost_unless_rewritten(
    disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = [disk.write() for _ in range(4)]
    disk.put(bytes(BLOCK_SIZE), 1)
    disk.put(bytes(BLOCK_SIZE), 2)
    # Slot 2 stays empty through every read: lost. Slot 1 shows its logged block again:
    # a write that vanishes and comes back is not a guest write in flight, so lost too.
    between_reads(monkeypatch, lambda: disk.put(blocks[1], 1))
    assert kinds(disk.check()) == [(LOST, 1), (LOST, 2)]


def test_an_older_block_is_lost_whatever_a_second_read_finds(
    disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = [disk.write() for _ in range(8)]
    disk.put(block(4), 3)  # slot 3 holds seq=4, but seq=8 was logged after it
    between_reads(monkeypatch, lambda: disk.put(blocks[7], 3))
    assert kinds(disk.check()) == [(LOST, 3)]


def test_log_gaps_and_guest_failures_fail(disk: Disk) -> None:
    disk.write()
    disk.write(logged=False)
    disk.write()
    disk.lines.append("VDSMW fail seq=4 slot=3 rc=1 dd: error writing '/dev/vda': I/O error")
    disk.lines.append("VDSMW error /dev/vda did not appear in 20 s")
    result = disk.check()
    messages = [str(failure) for failure in result.failures]
    assert [kind for kind, _ in kinds(result)] == [LOG, LOG, LOG], messages
    assert "seq=3" in messages[2] and "seq=2" in messages[2]


def test_cut_last_line_is_ignored(disk: Disk) -> None:
    disk.write()
    disk.write()
    disk.lines[-1] = disk.lines[-1][:-12]  # the log was read while the guest was printing
    result = disk.check()
    assert result.ok, result.failures
    assert result.last_seq == 1 and result.later_writes == 1


def test_log_of_a_guest_that_never_started(disk: Disk) -> None:
    disk.lines = ["[    1.0] Kernel panic - not syncing: no init found"]
    with pytest.raises(checker.CheckError, match="ready"):
        disk.check()


def test_a_line_still_being_written_is_not_read() -> None:
    """A log read while the guest runs may end inside a line: that part is no record yet."""
    ready = "VDSMW ready run=r1 disk=/dev/vda slots=64 block=65536"
    write = "VDSMW seq=1 slot=0 md5=" + "0" * 32
    log = checker.parse_log(f"{ready}\n{write}\nVDSMW seq=2 slot=1 md5=00")
    assert [seq for seq, _, _ in log.writes] == [1]
    with pytest.raises(checker.CheckError, match="no 'VDSMW ready' line"):
        checker.parse_log(ready[:-3])  # "block=655": the ready line itself not whole yet
