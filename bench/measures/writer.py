"""Windows over a BlockWriter's acknowledged writes: throughput and latencies between two
instants (time.monotonic()), the writer being the guest-like load of measures 3, 4 and 5."""

from __future__ import annotations

from typing import Any

from bench.context import r
from bench.stats import median, percentile
from vdsm_guest.block_writer import BlockWriter
from vdsm_guest.write_records import Write


def acked_between(writer: BlockWriter, start: float, end: float) -> list[Write]:
    return [w for w in writer.writes if start <= w.acked < end]


def window(writer: BlockWriter, start: float, end: float) -> dict[str, Any]:
    """Throughput (MiB/s) and latencies (ms) of the writes acknowledged in [start, end)."""
    writes = acked_between(writer, start, end)
    ms = [w.latency * 1000 for w in writes]
    seconds = end - start
    return {
        "seconds": r(seconds, 3),
        "writes": len(writes),
        "mib_s": r(len(writes) * writer.block_size / seconds / 2**20, 2) if seconds > 0 else 0.0,
        "p50_ms": r(median(ms), 3) if ms else None,
        "p99_ms": r(percentile(ms, 99), 3) if ms else None,
        "max_ms": r(max(ms), 3) if ms else None,
    }


def in_flight_across(writer: BlockWriter, start: float, end: float) -> list[Write]:
    """Writes that were in flight at some moment of [start, end] (sent before ``end``,
    acknowledged after ``start``): the ones a stall in that interval delays."""
    return [w for w in writer.writes if w.acked >= start and w.acked - w.latency <= end]
