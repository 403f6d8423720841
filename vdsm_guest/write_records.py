"""The block writer's block format and its records of acknowledged writes: the latency and
throughput figures over them, and the guest-style log that ``vdsm_guest.checker`` verifies.

Block format: exactly the tiny guest's (``vdsm_guest/init.sh``), so that
``vdsm_guest.checker`` verifies both. Write number ``seq`` (1, 2, ...) goes to slot
``(seq - 1) % slots`` at offset ``slot * block_size``; the first 512 bytes are the header
``VDSMW1 run=<run> seq=<n> slot=<s> md5=<hex>`` space-padded to 511 bytes plus ``"\\n"``; the
rest is a random payload whose md5 is in the header.

Everything here is a pure function of what it is given: the writer (``block_writer``) owns the
records and their lock, and passes a consistent copy.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vdsm_guest import checker


@dataclass(frozen=True)
class Write:
    """One acknowledged write."""

    seq: int
    slot: int
    md5: str  # of the payload (the block after its 512-byte header)
    latency: float  # seconds from sending the request to receiving the server's reply
    timestamp: float  # wall clock (time.time()) at acknowledgment
    acked: float  # time.monotonic() at acknowledgment, to compare with a test's own marks


@dataclass(frozen=True)
class WriteFailure:
    """A write the server answered with an error (errno as NBD reports it)."""

    seq: int
    slot: int
    error: int


def make_block(
    rng: random.Random, run: str, seq: int, slot: int, block_size: int
) -> tuple[bytes, str]:
    """Block number ``seq`` for ``slot``, and the md5 of its payload."""
    payload = rng.randbytes(block_size - checker.HEADER_SIZE)
    md5 = hashlib.md5(payload).hexdigest()
    header = f"VDSMW1 run={run} seq={seq} slot={slot} md5={md5}".encode()
    header = header.ljust(checker.HEADER_SIZE - 1) + b"\n"
    assert header.startswith(checker.HEADER_MAGIC) and len(header) == checker.HEADER_SIZE
    return header + payload, md5


def latency_summary(latencies: Iterable[float]) -> dict[str, float]:
    """p50, p99 and max latency in seconds (empty without writes)."""
    values = sorted(latencies)
    if not values:
        return {}
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return {"p50": statistics.median(values), "p99": p99, "max": values[-1]}


def throughput(writes: list[Write], block_size: int, started_at: float) -> float:
    """Acknowledged bytes per second, from ``started_at`` (monotonic) to the last ack."""
    if not writes:
        return 0.0
    elapsed = max(w.acked for w in writes) - started_at
    return len(writes) * block_size / elapsed if elapsed > 0 else 0.0


def guest_log(
    run: str,
    export: str,
    slots: int,
    block_size: int,
    writes: Iterable[Write],
    failures: Iterable[WriteFailure],
) -> str:
    """The writes as the tiny guest's serial log, for vdsm_guest.checker.

    Writes numbered 1, 2, ... without a gap: a write neither acknowledged nor failed (still in
    flight) ends the log, and acknowledged writes after it are left out (the checker then
    accepts them as "later" writes).
    """
    done = {w.seq: w for w in writes}
    failed = {f.seq: f for f in failures}
    lines = [f"VDSMW ready run={run} disk=nbd:{export} slots={slots} block={block_size}"]
    seq = 1
    while True:
        if seq in done:
            w = done[seq]
            lines.append(f"VDSMW seq={w.seq} slot={w.slot} md5={w.md5}")
        elif seq in failed:
            f = failed[seq]
            lines.append(f"VDSMW fail seq={f.seq} slot={f.slot} errno={f.error}")
        else:
            break
        seq += 1
    return "\n".join(lines) + "\n"


def verify(image_path: Path, fmt: str, block_size: int, log_text: str) -> checker.CheckResult:
    """Run vdsm_guest.checker on ``image_path`` against the guest-style log ``log_text``.

    Raises checker.CheckError when it cannot check, such as for blocks of another size than
    the checker reads.
    """
    if block_size != checker.BLOCK_SIZE:
        raise checker.CheckError(
            f"the checker reads {checker.BLOCK_SIZE}-byte blocks, not {block_size}"
        )
    with tempfile.TemporaryDirectory(prefix="vdsm-bw-check-") as scratch:
        log_path = Path(scratch) / "writes.log"
        log_path.write_text(log_text)
        return checker.check(Path(image_path), fmt, log_path)
