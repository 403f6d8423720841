"""4. Convergence: a writer dirtying the disk faster than a bandwidth-capped copy; the
migration must still complete. Time to READY per copy mode, and the writer's throughput
meanwhile.

The writer (64 KiB blocks, queue depth 4, paced at ``converge_writer_mib`` MiB/s) rewrites
a ``converge_region`` area of the active layer; the mirror is capped at ``converge_cap_mib``
MiB/s (diskReplicateStart's bandwidth), below the writer's rate. Per copy mode, on the same VM
(migrations go back and forth, no snapshot): background (expected never READY: given up
after ``background_timeout`` s and aborted), auto (the default: background, switched by vdsmd
to synchronous writes when it stops converging), sync (write-blocking from the start).
"""

from __future__ import annotations

import time
from typing import Any

from bench.context import Context, r, target
from bench.disks import GiB, Layout, MiB
from bench.flow import NotReady, abort, move_disk
from bench.measures.writer import window
from vdsm_guest.block_writer import BlockWriter

BLOCK = 64 * 1024
SWITCH_LOG = "restarting it with synchronous writes"


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    # The data in the base (synced); the leaf, the mirror's source, holds only what the
    # writer writes.
    chain = env.build(Layout(virtual=GiB, data=min(st.data, 32 * MiB), shares=(1.0, 0.0)))
    vm_id = env.start_vm(chain)
    writer_rate = st.converge_writer_mib * MiB
    writer = BlockWriter(
        vm_id,
        chain.img,
        block_size=BLOCK,
        slots=st.converge_region // BLOCK,
        queue_depth=4,
        rate_limit=writer_rate,
    )
    modes: dict[str, dict[str, Any]] = {}
    with env.visible(writer):
        # Let the writer allocate its whole area first: that is what the mirror must copy.
        time.sleep(st.converge_region / writer_rate + st.steady_seconds)
        before = window(writer, time.monotonic() - st.steady_seconds, time.monotonic())
        for mode in st.converge_modes:
            modes[mode] = _one(ctx, vm_id, chain, writer, mode)
            if writer.error is not None:
                raise RuntimeError(f"the writer failed: {writer.error!r}")
    env.destroy_vm(vm_id)
    env.remove_image(chain.img)
    return {
        "writer": {
            "block_size": BLOCK,
            "queue_depth": 4,
            "rate_mib_s": st.converge_writer_mib,
            "region_bytes": st.converge_region,
        },
        "copy_cap_mib_s": st.converge_cap_mib,
        "convergence_window_s": st.convergence_window,
        "writer_before": before,
        "modes": modes,
        "targets": [
            target(
                f"{mode} mode: migration completes under a writer outrunning the copy",
                1.0 if modes[mode]["completed"] else 0.0,
                ">=",
                1.0,
                "",
            )
            for mode in modes
            if mode != "background"  # expected not to converge: that is what auto is for
        ],
    }


def _one(ctx: Context, vm_id: str, chain: Any, writer: BlockWriter, mode: str) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    switches_before = env.daemon.log_text().count(SWITCH_LOG)
    timeout = st.background_timeout if mode == "background" else st.convergence_window + 120
    dst = env.other(chain.sd)
    started = time.monotonic()
    marks: dict[str, float] = {}

    def ready() -> None:
        marks["ready"] = time.monotonic()

    try:
        move = move_disk(
            env.client,
            vm_id,
            chain,
            dst,
            snapshot=False,
            copy_mode=mode,
            bandwidth=st.converge_cap_mib,
            ready_timeout=timeout,
            before_pivot=ready,
        )
    except NotReady:
        gave_up = time.monotonic()
        abort(env.client, vm_id, chain, dst, chain.leaf)
        return {
            "completed": False,
            "ready_after_s": None,
            "gave_up_after_s": r(gave_up - started, 2),
            "writer_during": window(writer, started, gave_up),
            "switched_to_sync": env.daemon.log_text().count(SWITCH_LOG) > switches_before,
        }
    replicate = next(s for s in move.steps if s.name == "replicate")
    return {
        "completed": True,
        "ready_after_s": r(marks["ready"] - replicate.start, 2),
        "until_pivot_s": r(move.until_pivot, 2),
        "writer_during": window(writer, replicate.start, marks["ready"]),
        "switched_to_sync": env.daemon.log_text().count(SWITCH_LOG) > switches_before,
    }
