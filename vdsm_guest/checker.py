"""Check a disk image written by the test guest against the guest's serial log: no lost write.

The guest (init.sh) writes block after block, each to slot ``(seq - 1) % slots``, and logs
``VDSMW seq=<n> slot=<s> md5=<hex>`` once a write is stable. The log is read first, then
the image, so every logged write finished before the image was read, while the guest may
still be writing. The rules, for each slot, where "expected" is the last logged write to it:

- it holds the expected block, its payload matching the md5 in both its header and the log;
- or a LATER write to that slot (seq above every logged one) with a valid payload: a write
  that finished after the log was read;
- a block OLDER than the expected one, or no block of this run where one was logged, is a
  LOST write; a block whose slot or seq does not belong there is MISPLACED; a payload that
  does not match its checksum, or a damaged header, is CORRUPT;
- a slot no logged write reached may hold anything but a block of this run that belongs
  elsewhere (an unwritten disk, or leftovers of an earlier run, are fine).

A read that races the guest can catch the one block being written half old, half new: every
suspicious slot is read a second time, and at most one block whose header names a write
newer than the log but whose payload does not match is accepted as the write in flight
(a guest killed in the middle of a write leaves exactly that). A read of a live qcow2 chain
(``-U``, beside the running QEMU) can also see the one cluster QEMU is allocating in the top
layer as zeros, neither the old block (in the backing file) nor the new one: measured about
once in 400 reads under load, with O_DIRECT reads too, and a read a moment later finds the
new block (qemu-img(1) on ``--force-share``: "this could produce inconsistent results because
of concurrent metadata changes"). So a slot read as empty where a write was logged passes
only when a new read finds a complete write newer than the log there (the guest was
rewriting it); empty again, it is read once more; an older block, or empty and then the
logged block, is a lost write.

The log itself must be consistent: write numbers 1, 2, 3... each in its own slot, and no
failed write.

Usage::

    python -m vdsm_guest.checker --log SERIAL_LOG --image IMAGE [--format qcow2|raw]

exits 0 when the image passes, 1 with the failures listed, 2 when it cannot check.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vdsm.errors import CommandError
from vdsm.storage import qemuimg
from vdsm.storage.runner import run

BLOCK_SIZE = 65536
HEADER_SIZE = 512
HEADER_MAGIC = b"VDSMW1 "

# Failure kinds.
LOST = "LOST"  # an acknowledged write is not on the disk (an older block, or none)
CORRUPT = "CORRUPT"  # a block's payload does not match its checksum, or its header is damaged
MISPLACED = "MISPLACED"  # a block of this run sits in a slot it was never written to
LOG = "LOG"  # the log itself is wrong: a gap in the writes, a failed write, a guest error

_READY = re.compile(r"VDSMW ready run=(\S+) disk=(\S+) slots=(\d+) block=(\d+)")
_WRITE = re.compile(r"VDSMW seq=(\d+) slot=(\d+) md5=([0-9a-f]{32})\s*$")
_FAIL = re.compile(r"VDSMW fail seq=(\d+) slot=(\d+)(.*)")
_ERROR = re.compile(r"VDSMW error (.*)")
_HEADER = re.compile(rb"VDSMW1 run=(\S+) seq=(\d+) slot=(\d+) md5=([0-9a-f]{32}) *\n")

# Seconds before each new read of suspicious slots: a guest write takes a few ms, more on a
# loaded machine.
_REREAD_DELAYS = (0.2, 1.0)
_READ_TIMEOUT = 300.0


class CheckError(Exception):
    """The check cannot be made: no guest log, an unreadable image, ..."""


@dataclass(frozen=True)
class Failure:
    kind: str
    slot: int | None
    message: str

    def __str__(self) -> str:
        where = "" if self.slot is None else f"slot {self.slot}: "
        return f"{self.kind}: {where}{self.message}"


@dataclass
class CheckResult:
    """The verdict: ``ok`` when ``failures`` is empty; the counts say how much was proven."""

    run: str = ""
    slots: int = 0
    writes_logged: int = 0  # completed writes in the log
    last_seq: int = 0  # the newest logged write
    slots_verified: int = 0  # slots with a logged write that hold it, or a later one
    later_writes: int = 0  # slots holding a complete write newer than the log
    in_flight: int = 0  # a half-written block newer than the log, accepted as in flight
    raced_reads: int = 0  # a slot read as empty beside QEMU's allocation, then found intact
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class GuestLog:
    """The last run in a serial log: its parameters and completed writes, in log order."""

    run: str
    slots: int
    writes: list[tuple[int, int, str]]  # (seq, slot, md5)
    failures: list[Failure]


def parse_log(text: str) -> GuestLog:
    """The last guest run in ``text``; earlier runs (a reboot) only left foreign blocks."""
    lines = text.splitlines()
    if lines and not text.endswith(("\n", "\r")):
        # The guest is still writing its last line (a log read while it runs): a part of a
        # line is no record yet ("block=655" of "block=65536" would read as a wrong guest).
        lines.pop()
    starts = [index for index, line in enumerate(lines) if _READY.search(line)]
    if not starts:
        raise CheckError("no 'VDSMW ready' line: not the serial log of a guest that started")
    ready = _READY.search(lines[starts[-1]])
    assert ready is not None
    run_id, slots, block = ready[1], int(ready[3]), int(ready[4])
    if block != BLOCK_SIZE or slots <= 0:
        raise CheckError(f"unsupported guest: block={block} slots={slots}")

    writes: list[tuple[int, int, str]] = []
    failures: list[Failure] = []
    failed: set[int] = set()
    for line in lines[starts[-1] + 1 :]:
        if match := _WRITE.search(line):
            writes.append((int(match[1]), int(match[2]), match[3]))
        elif match := _FAIL.search(line):
            failed.add(int(match[1]))
            failures.append(
                Failure(LOG, int(match[2]), f"the guest failed write seq={match[1]}:{match[3]}")
            )
        elif match := _ERROR.search(line):
            failures.append(Failure(LOG, None, f"the guest reported: {match[1].strip()}"))

    expected_seq = 1
    for seq, slot, _ in writes:
        while expected_seq in failed:
            expected_seq += 1
        if seq != expected_seq:
            failures.append(
                Failure(
                    LOG,
                    None,
                    f"write seq={seq} logged where seq={expected_seq} "
                    "was due: writes missing from the log, or out of order",
                )
            )
        if slot != (seq - 1) % slots:
            failures.append(Failure(LOG, slot, f"write seq={seq} logged in the wrong slot"))
        expected_seq = seq + 1
    return GuestLog(run_id, slots, writes, failures)


@dataclass(frozen=True)
class _Verdict:
    state: str  # "verified", "later", "unwritten", "torn", or a failure kind
    message: str = ""
    empty: bool = False  # LOST with no block of this run in the slot (not an older one)


def _judge(
    block: bytes, slot: int, log: GuestLog, expected: tuple[int, str] | None, last_seq: int
) -> _Verdict:
    """What the content of one slot says, given the last logged write to it (if any)."""
    if not block.startswith(HEADER_MAGIC):
        if expected is None:
            return _Verdict("unwritten")
        return _Verdict(LOST, f"no block where write seq={expected[0]} was logged", empty=True)
    header = _HEADER.fullmatch(block[:HEADER_SIZE])
    if header is None:
        return _Verdict(CORRUPT, f"damaged header {block[:80]!r}")
    run_id, seq, where, md5 = header[1].decode(), int(header[2]), int(header[3]), header[4].decode()
    if run_id != log.run:
        if expected is None:
            return _Verdict("unwritten")  # left by an earlier run: never overwritten by this one
        return _Verdict(
            LOST,
            f"a block of another run (run={run_id} seq={seq}) where write "
            f"seq={expected[0]} of this run was logged",
            empty=True,
        )
    if where != slot or (seq - 1) % log.slots != slot:
        return _Verdict(MISPLACED, f"holds write seq={seq} of slot {where}")
    valid = hashlib.md5(block[HEADER_SIZE:]).hexdigest() == md5
    if expected is not None and seq < expected[0]:
        return _Verdict(LOST, f"holds write seq={seq}, but seq={expected[0]} was logged after it")
    if seq > last_seq:
        if valid:
            return _Verdict("later")
        return _Verdict("torn", f"write seq={seq} (newer than the log) is incomplete")
    if not valid:
        return _Verdict(CORRUPT, f"write seq={seq}: payload does not match its md5 {md5}")
    if expected is not None and md5 != expected[1]:
        return _Verdict(CORRUPT, f"write seq={seq} has md5 {md5}, the log says {expected[1]}")
    return _Verdict("verified")


def check(image: Path, fmt: str, serial_log: Path) -> CheckResult:
    """Check ``image`` (format ``fmt``, read through its backing chain) against the log."""
    try:
        text = Path(serial_log).read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise CheckError(f"cannot read the log: {e}") from e
    # The log is read before the image: every write it lists finished before the image read.
    log = parse_log(text)
    expected: dict[int, tuple[int, str]] = {}  # slot -> (seq, md5) of its last logged write
    for seq, slot, md5 in log.writes:
        if seq > expected.get(slot, (0, ""))[0]:
            expected[slot] = (seq, md5)
    last_seq = max((seq for seq, _, _ in log.writes), default=0)

    with tempfile.TemporaryDirectory(prefix="vdsm-guest-check-") as scratch:
        first = read_slots(image, fmt, log.slots, Path(scratch) / "first.raw")
        verdicts = {
            slot: _judge(_block(first, slot), slot, log, expected.get(slot), last_seq)
            for slot in range(log.slots)
        }
        suspicious = [s for s, v in verdicts.items() if v.state in ("torn", CORRUPT, LOST)]
        raced: list[int] = []  # read empty, then holding a write newer than the log
        for attempt, delay in enumerate(_REREAD_DELAYS):
            if not suspicious:
                break
            # A read that raced a guest write settles once the write is done.
            time.sleep(delay)
            again = read_slots(image, fmt, log.slots, Path(scratch) / f"again{attempt}.raw")
            unsettled = []
            for slot in suspicious:
                before = verdicts[slot]
                now = _judge(_block(again, slot), slot, log, expected.get(slot), last_seq)
                if before.state != LOST:
                    verdicts[slot] = now
                elif before.empty and now.state == "later":
                    # The guest was rewriting this slot as it was read (its new write
                    # is not in the log): the first read caught QEMU allocating it.
                    verdicts[slot] = now
                    raced.append(slot)
                elif before.empty and now.empty:
                    unsettled.append(slot)  # still being written? read once more
                # else: an older block, or the logged write back again, stays lost
            suspicious = unsettled

    result = CheckResult(
        run=log.run,
        slots=log.slots,
        writes_logged=len(log.writes),
        last_seq=last_seq,
        failures=list(log.failures),
    )
    result.raced_reads = len(raced)
    for slot, verdict in sorted(verdicts.items()):
        if verdict.state in ("verified", "later"):
            result.slots_verified += slot in expected
            result.later_writes += verdict.state == "later"
        elif verdict.state == "torn":
            # The guest writes one block at a time: only one can be caught half written.
            if result.in_flight == 0:
                result.in_flight = 1
            else:
                result.failures.append(Failure(CORRUPT, slot, verdict.message))
        elif verdict.state != "unwritten":
            result.failures.append(Failure(verdict.state, slot, verdict.message))
    return result


def read_slots(image: Path, fmt: str, slots: int, copy: Path) -> Path:
    """Copy the first ``slots`` blocks of the image, read through its backing chain, to ``copy``.

    ``-U``: the image may be open by a running QEMU; qemu-img must not wait for its lock.
    """
    argv = [
        qemuimg.qemu_img(),
        "dd",
        "-U",
        "-f",
        fmt,
        "-O",
        "raw",
        f"bs={BLOCK_SIZE}",
        f"count={slots}",
        f"if={os.path.abspath(image)}",
        f"of={copy}",
    ]
    try:
        run(argv, timeout=_READ_TIMEOUT)
    except CommandError as e:
        raise CheckError(f"cannot read {image}: {e}") from e
    if copy.stat().st_size < slots * BLOCK_SIZE:
        raise CheckError(f"{image} is smaller than the {slots} slots the guest wrote")
    return copy


def _block(copy: Path, slot: int) -> bytes:
    with copy.open("rb") as f:
        f.seek(slot * BLOCK_SIZE)
        return f.read(BLOCK_SIZE)


def _detect_format(image: Path) -> str:
    try:
        return str(qemuimg.info(image, force_share=True)["format"])
    except CommandError as e:
        raise CheckError(f"cannot read {image}: {e}") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vdsm_guest.checker",
        description="Check a disk image written by the vdsm test guest against its serial log.",
    )
    parser.add_argument("--log", type=Path, required=True, help="the guest's serial log")
    parser.add_argument("--image", type=Path, required=True, help="the disk image (leaf)")
    parser.add_argument(
        "--format",
        choices=("qcow2", "raw"),
        default=None,
        help="the image format (default: as qemu-img detects it)",
    )
    args = parser.parse_args(argv)
    try:
        fmt = args.format or _detect_format(args.image)
        result = check(args.image, fmt, args.log)
    except CheckError as e:
        print(f"cannot check: {e}", file=sys.stderr)
        return 2
    print(
        f"run {result.run}: {result.writes_logged} writes logged (last seq={result.last_seq}), "
        f"{result.slots_verified} of {result.slots} slots verified "
        f"({result.later_writes} with a later write, {result.in_flight} in flight, "
        f"{result.raced_reads} read again)"
    )
    for failure in result.failures:
        print(failure)
    print("OK" if result.ok else f"FAILED: {len(result.failures)} failures")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
