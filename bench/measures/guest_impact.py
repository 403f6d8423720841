"""5. Guest impact: a guest-like writer's throughput and p99 latency before vs during a
migration, per copy mode.

Two writers, both 64 KiB writes at queue depth 1 over a 16 MiB area, through the VM's block
layer:

- "paced": a busy guest writing ``guest_rate_mib`` MiB/s (the figure the target applies to);
- "unpaced": a guest writing as fast as it can, so its throughput is the inverse of its
  latency: the worst case, a guest competing with the copy for the one disk.

One VM on a 3-volume chain holding ``guest_data`` bytes, moved back and forth; per copy mode
and writer: ``steady_seconds`` × 1.5 of writing before, then the whole migration (snapshot to
pivot, the sync of the internal volumes included): "during" is that span. The rows that
miss the target on one disk run once more with the copy capped (vdsmd's copy_rate_limit and
the mirror's bandwidth), to show what a cap buys the guest and costs the move.
"""

from __future__ import annotations

import time
from typing import Any

from bench.context import Context, r, target
from bench.disks import Chain, GiB, Layout, MiB
from bench.flow import move_disk
from bench.measures.writer import window
from vdsm_guest.block_writer import BlockWriter

BLOCK = 64 * 1024
SLOTS = 256
MIN_SHARE = 0.70


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    chain = env.build(Layout(virtual=max(GiB, 2 * st.guest_data), data=st.guest_data))
    vm_id = env.start_vm(chain)
    writers = {"paced": st.guest_rate_mib * MiB, "unpaced": None}
    results: dict[str, dict[str, Any]] = {name: {} for name in writers}
    for mode in st.guest_modes:
        for name, rate in writers.items():
            results[name][mode] = _during_move(ctx, vm_id, chain, mode, rate)
    # The rows that missed the target, again with the copy capped: syncImageData by vdsmd's
    # copy_rate_limit, the mirror by diskReplicateStart's bandwidth. What a guest keeps
    # against how much longer the move takes.
    cap = st.guest_copy_cap_mib
    capped = [("unpaced", "auto"), ("paced", "sync")]
    env.restart_daemon(["--copy-rate-limit", str(cap)])
    try:
        for name, mode in capped:
            if mode in st.guest_modes:
                results[name][f"{mode}, capped {cap} MiB/s"] = _during_move(
                    ctx, vm_id, chain, mode, writers[name], bandwidth=cap
                )
    finally:
        env.restart_daemon([])
    env.destroy_vm(vm_id)
    env.remove_image(chain.img)
    return {
        "writers": {
            "paced": {"block_size": BLOCK, "queue_depth": 1, "rate_mib_s": st.guest_rate_mib},
            "unpaced": {"block_size": BLOCK, "queue_depth": 1, "rate_mib_s": None},
        },
        "copy_cap_mib_s": cap,
        "area_bytes": BLOCK * SLOTS,
        "data_bytes": sum(chain.written.values()),
        "results": results,
        "targets": [
            target(
                f"{name} writer, {mode} mode: throughput during / before",
                row["throughput_share"],
                ">=",
                MIN_SHARE,
                "×",
            )
            for name, rows in results.items()
            for mode, row in rows.items()
        ],
    }


def _during_move(
    ctx: Context, vm_id: str, chain: Chain, mode: str, rate: float | None, bandwidth: int = 0
) -> dict[str, Any]:
    """The writer's throughput and latency before vs during one move of the VM's disk."""
    env, st = ctx.env, ctx.settings
    env.cold()
    with BlockWriter(vm_id, chain.img, block_size=BLOCK, slots=SLOTS, rate_limit=rate) as writer:
        steady = st.steady_seconds * 1.5
        time.sleep(steady)
        before = window(writer, time.monotonic() - steady, time.monotonic())
        move = move_disk(
            env.client, vm_id, chain, env.other(chain.sd), copy_mode=mode, bandwidth=bandwidth
        )
        first, pivot = move.steps[0], next(s for s in move.steps if s.name == "pivot")
        during = window(writer, first.start, pivot.end)
        if writer.error is not None:
            raise RuntimeError(f"the writer failed: {writer.error!r}")
    return {
        "before": before,
        "during": during,
        "throughput_share": r(during["mib_s"] / before["mib_s"], 3),
        "until_pivot_s": r(move.until_pivot, 3),
    }
