"""5. Guest impact: a guest-like writer's throughput and p99 latency before vs during a
migration, per copy mode, with the adaptive copy rate (vdsm/copy_governor.py, vdsmd's
default) and without it.

Two writers, both 64 KiB writes at queue depth 1 over a 16 MiB area, through the VM's block
layer:

- "paced": a busy guest writing ``guest_rate_mib`` MiB/s;
- "unpaced": a guest writing as fast as it can, so its throughput is the inverse of its
  latency: the worst case, a guest competing with the copy for the one disk.

The governors see the writer as they would see a guest doing these writes (Env.visible: QEMU
does not count an NBD export's I/O for the drive, the TEST-ONLY hook of
vdsm/virt/unaccounted_io.py publishes the writer's own counters).

One VM on a 3-volume chain holding ``guest_data`` bytes, moved back and forth; per copy mode
and writer: ``steady_seconds`` × 1.5 of writing before, then the whole migration (snapshot to
pivot, the sync of the internal volumes included): "during" is that span. Then the same in
auto mode with the rate not adaptive (vdsmd restarted with --no-adaptive-copy-rate): what
the governor buys the guest. Last, the idle guest: the same move with no writer, adaptive and
not, in blocks of not-adaptive, adaptive, adaptive, not-adaptive (ABBA), at least
``repeat`` moves of each (two per block): what the governor costs when there is nothing to
yield to. The chain goes back and forth between the two domains, and a plain
alternation gave each daemon one direction only: in one run of this measure every adaptive
move read its chain from the second domain and took 0.5 s longer, move after move. ABBA
gives each daemon both directions, as many times each.
"""

from __future__ import annotations

import time
from typing import Any

from bench.context import Context, r, target
from bench.disks import Chain, GiB, Layout, MiB
from bench.flow import move_disk
from bench.measures.writer import window
from bench.stats import median
from vdsm_guest.block_writer import BlockWriter

BLOCK = 64 * 1024
SLOTS = 256
MIN_SHARE_UNPACED = 0.70
MIN_SHARE_PACED = 0.90
MAX_P99_ADDED_MS = 5.0
MAX_IDLE_RATIO = 1.10
NOT_ADAPTIVE = ["--no-adaptive-copy-rate"]


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    chain = env.build(Layout(virtual=max(GiB, 2 * st.guest_data), data=st.guest_data))
    vm_id = env.start_vm(chain)
    writers = {"paced": st.guest_rate_mib * MiB, "unpaced": None}
    adaptive: dict[str, dict[str, Any]] = {name: {} for name in writers}
    for mode in st.guest_modes:
        for name, rate in writers.items():
            adaptive[name][mode] = _during_move(ctx, vm_id, chain, mode, rate)
    fixed: dict[str, dict[str, Any]] = {}
    idle: dict[str, list[float]] = {"adaptive": [], "not adaptive": []}
    idle_steps: dict[str, list[dict[str, Any]]] = {"adaptive": [], "not adaptive": []}
    env.restart_daemon(NOT_ADAPTIVE)
    try:
        for name, rate in writers.items():
            fixed[name] = _during_move(ctx, vm_id, chain, "auto", rate)
        # The idle guest: ABBA blocks, so that each daemon moves the chain both ways.
        running = "not adaptive"
        for name in _abba(st.repeat):
            if name != running:
                env.restart_daemon([] if name == "adaptive" else NOT_ADAPTIVE)
                running = name
            idle[name].append(_idle_move(ctx, vm_id, chain, idle_steps[name]))
    finally:
        env.restart_daemon([])
    env.destroy_vm(vm_id)
    env.remove_image(chain.img)
    idle_ratio = median(idle["adaptive"]) / median(idle["not adaptive"])
    targets = []
    for mode, row in adaptive["unpaced"].items():
        targets += [
            target(
                f"unpaced writer, {mode} mode, adaptive rate: throughput during / before",
                row["throughput_share"],
                ">=",
                MIN_SHARE_UNPACED,
                "×",
            ),
            target(
                f"unpaced writer, {mode} mode, adaptive rate: p99 during − p99 before",
                row["p99_added_ms"],
                "<=",
                MAX_P99_ADDED_MS,
                "ms",
            ),
        ]
    targets += [
        target(
            f"paced writer, {mode} mode, adaptive rate: throughput during / before",
            row["throughput_share"],
            ">=",
            MIN_SHARE_PACED,
            "×",
        )
        for mode, row in adaptive["paced"].items()
    ]
    targets.append(
        target(
            "idle guest: move time, adaptive / not adaptive (medians)",
            r(idle_ratio, 3),
            "<=",
            MAX_IDLE_RATIO,
            "×",
        )
    )
    return {
        "writers": {
            "paced": {"block_size": BLOCK, "queue_depth": 1, "rate_mib_s": st.guest_rate_mib},
            "unpaced": {"block_size": BLOCK, "queue_depth": 1, "rate_mib_s": None},
        },
        "area_bytes": BLOCK * SLOTS,
        "data_bytes": sum(chain.written.values()),
        "results": adaptive,
        "not_adaptive": fixed,
        "idle_until_pivot_s": {k: [r(x, 3) for x in v] for k, v in idle.items()},
        "idle_ratio": r(idle_ratio, 3),
        "idle_steps_s": idle_steps,
        "targets": targets,
    }


def _abba(repeat: int) -> list[str]:
    """The order of the idle moves: blocks of not-adaptive, adaptive, adaptive, not-adaptive,
    at least ``repeat`` moves of each (two per block)."""
    block = ["not adaptive", "adaptive", "adaptive", "not adaptive"]
    return block * max(1, (repeat + 1) // 2)


def _idle_move(ctx: Context, vm_id: str, chain: Chain, steps: list[dict[str, Any]]) -> float:
    """Seconds from snapshot to pivot of one auto-mode move with no writer (its steps' times
    and the domain it left appended to ``steps``)."""
    env = ctx.env
    env.cold()
    source = "first domain" if chain.sd == env.sd else "second domain"
    move = move_disk(env.client, vm_id, chain, env.other(chain.sd), copy_mode="auto")
    steps.append({"from": source, **{name: r(t, 3) for name, t in move.as_dict()["steps"].items()}})
    return float(move.until_pivot)


def _during_move(
    ctx: Context, vm_id: str, chain: Chain, mode: str, rate: float | None
) -> dict[str, Any]:
    """The writer's throughput and latency before vs during one move of the VM's disk."""
    env, st = ctx.env, ctx.settings
    env.cold()
    writer = BlockWriter(vm_id, chain.img, block_size=BLOCK, slots=SLOTS, rate_limit=rate)
    with env.visible(writer):
        steady = st.steady_seconds * 1.5
        time.sleep(steady)
        before = window(writer, time.monotonic() - steady, time.monotonic())
        move = move_disk(env.client, vm_id, chain, env.other(chain.sd), copy_mode=mode)
        first, pivot = move.steps[0], next(s for s in move.steps if s.name == "pivot")
        during = window(writer, first.start, pivot.end)
        if writer.error is not None:
            raise RuntimeError(f"the writer failed: {writer.error!r}")
    return {
        "before": before,
        "during": during,
        "throughput_share": r(during["mib_s"] / before["mib_s"], 3),
        "p99_added_ms": r((during["p99_ms"] or 0.0) - (before["p99_ms"] or 0.0), 3),
        "until_pivot_s": r(move.until_pivot, 3),
    }
