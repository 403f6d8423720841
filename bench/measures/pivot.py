"""3. Pivot stall: a queue-depth-1 4 KiB writer through the VM's block layer (the test-only
NBD export); the largest write latency in the second around the pivot against the steady
state's p99.

Each of ``pivot_runs`` migrations (back and forth between the domains, no snapshot) waits
until the mirror is READY, lets the writer run ``steady_seconds`` more (the steady state:
mirror READY, guest writing), then pivots. "Around the pivot": every write in flight at some
moment of [pivot call − 0.5 s, pivot return + 0.5 s]. The stall the pivot adds is that
window's largest latency minus the steady state's p99; the target applies to its median over
the runs (the worst run is reported too, with the largest latency of a steady window of the
same length and no pivot in it: the writer's own tail on this shared 2-core machine). The
source is deleted after the window, and the writes meanwhile are reported apart: a whole
move deletes it right after the pivot, and that has a stall of its own.
"""

from __future__ import annotations

import time
from typing import Any

from bench.context import Context, r, target
from bench.disks import GiB, Layout, MiB
from bench.flow import move_disk
from bench.measures.writer import in_flight_across, window
from bench.stats import median
from vdsm_guest.block_writer import BlockWriter

MAX_STALL_MS = 5.0
HALF_WINDOW = 0.5


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    chain = env.build(Layout(virtual=GiB, data=min(st.data, 64 * MiB)))
    vm_id = env.start_vm(chain)
    runs: list[dict[str, Any]] = []
    writer = BlockWriter(vm_id, chain.img, block_size=4096, queue_depth=1, slots=256)
    with env.visible(writer):
        time.sleep(st.steady_seconds)
        idle = window(writer, time.monotonic() - st.steady_seconds, time.monotonic())
        for _ in range(st.pivot_runs):
            marks: dict[str, float] = {}

            def steady(marks: dict[str, float] = marks) -> None:
                marks["ready"] = time.monotonic()
                time.sleep(st.steady_seconds)

            source = chain.sd
            move = move_disk(
                env.client,
                vm_id,
                chain,
                env.other(chain.sd),
                snapshot=False,
                cleanup=False,
                before_pivot=steady,
            )
            pivot = next(s for s in move.steps if s.name == "pivot")
            time.sleep(HALF_WINDOW + 0.1)
            runs.append(_analyse(writer, marks["ready"], pivot.start, pivot.end))
            # Deleting the source right after the pivot (as a whole move does) stalls writes
            # for a few ms of its own (ext4 discarding the freed blocks): outside the window.
            delete_start = time.monotonic()
            env.delete_image(source, chain.img)
            time.sleep(0.3)
            runs[-1]["delete_source"] = window(writer, delete_start, time.monotonic())
            if writer.error is not None:
                raise RuntimeError(f"the writer failed: {writer.error!r}")
    env.destroy_vm(vm_id)
    env.remove_image(chain.img)
    stalls = [x["stall_ms"] for x in runs]
    worst, typical = max(stalls), median(stalls)
    return {
        "writer": {"block_size": 4096, "queue_depth": 1},
        "idle": idle,
        "runs": runs,
        "stall_ms_median": r(median(stalls), 3),
        "stall_ms_worst": r(worst, 3),
        "targets": [
            target(
                f"pivot stall: max latency around the pivot − steady p99 (median of {len(runs)})",
                r(typical, 3),
                "<=",
                MAX_STALL_MS,
                "ms",
            )
        ],
    }


def _analyse(writer: BlockWriter, ready: float, start: float, end: float) -> dict[str, Any]:
    steady = window(writer, ready, start)
    around = in_flight_across(writer, start - HALF_WINDOW, end + HALF_WINDOW)
    worst = max((w.latency * 1000 for w in around), default=float("nan"))
    p99 = steady["p99_ms"] if steady["p99_ms"] is not None else float("nan")
    # For scale: the largest latency of a steady window as long as the one around the pivot
    # (the writer's own tail, with no pivot in it), and of the writes overlapping the call.
    length = (end - start) + 2 * HALF_WINDOW
    calm = window(writer, max(ready, start - length), start)
    during_call = in_flight_across(writer, start, end)
    return {
        "pivot_call_ms": r((end - start) * 1000, 3),
        "steady": steady,
        "steady_same_length_max_ms": calm["max_ms"],
        "around_writes": len(around),
        "around_max_ms": r(worst, 3),
        "during_call_max_ms": r(max((w.latency * 1000 for w in during_call), default=0.0), 3),
        "stall_ms": r(max(0.0, worst - p99), 3),
    }
