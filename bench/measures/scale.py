"""7. Scale: ``scale_vms`` disks of as many VMs moved at once vs one after another; and how
a migration's time grows with allocated data (``scale_sizes``, in ``scale_virtual``-byte
disks), with qemu-img convert of the same chains side by side.

At once: one thread (and one connection) per disk, each running the whole move. One after
another: the same moves in a row. Rounds alternate which goes first; each disk holds
``data / scale_vms`` bytes, so both move the throughput chain's data in total. For growth,
each size is moved and converted twice, in alternating order (medians).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench import baseline
from bench.context import Context, r, target
from bench.disks import Chain, GiB, Layout, MiB
from bench.flow import move_disk
from bench.stats import linear_fit, median, spread

MAX_CONCURRENT_RATIO = 1.1
MIN_R2 = 0.95


def run(ctx: Context) -> dict[str, Any]:
    concurrency, growth = _concurrency(ctx), _growth(ctx)
    targets = concurrency.pop("_targets") + growth.pop("_targets")
    return {**concurrency, **growth, "targets": targets}


def _concurrency(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    per_disk = max(8 * MiB, st.data // st.scale_vms)
    layout = Layout(virtual=max(GiB, 2 * per_disk), data=per_disk)
    chains = [env.build(layout) for _ in range(st.scale_vms)]
    vms = [env.start_vm(chain, share_rw=False) for chain in chains]
    sequential: list[float] = []
    concurrent: list[float] = []
    failures: list[str] = []
    for n in range(st.repeat):
        order = ("seq", "conc") if n % 2 == 0 else ("conc", "seq")
        for kind in order:
            env.cold()
            if kind == "seq":
                sequential.append(_one_after_another(ctx, vms, chains, failures))
            else:
                concurrent.append(_at_once(ctx, vms, chains, failures))
    for vm_id, chain in zip(vms, chains, strict=True):
        env.destroy_vm(vm_id)
        env.remove_image(chain.img)
    ratio = median(concurrent) / median(sequential)
    return {
        "concurrency": {
            "disks": st.scale_vms,
            "data_per_disk": sum(chains[0].written.values()),
            "sequential_s": spread(sequential),
            "concurrent_s": spread(concurrent),
            "ratio": r(ratio, 3),
            "failures": failures,
        },
        "_targets": [
            target(
                f"{st.scale_vms} disks at once: failures",
                float(len(failures)),
                "<=",
                0,
                "",
            ),
            target(
                f"{st.scale_vms} disks: time at once / one after another",
                r(ratio, 3),
                "<=",
                MAX_CONCURRENT_RATIO,
                "×",
            ),
        ],
    }


def _one_after_another(
    ctx: Context, vms: list[str], chains: list[Chain], failures: list[str]
) -> float:
    start = time.monotonic()
    for vm_id, chain in zip(vms, chains, strict=True):
        try:
            move_disk(ctx.env.client, vm_id, chain, ctx.env.other(chain.sd))
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(f"sequential {vm_id}: {e}")
    return time.monotonic() - start


def _at_once(ctx: Context, vms: list[str], chains: list[Chain], failures: list[str]) -> float:
    def one(vm_id: str, chain: Chain) -> None:
        try:
            move_disk(ctx.env.new_client(), vm_id, chain, ctx.env.other(chain.sd))
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(f"concurrent {vm_id}: {e}")

    threads = [
        threading.Thread(target=one, args=(vm_id, chain), name=f"move-{vm_id[:8]}")
        for vm_id, chain in zip(vms, chains, strict=True)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - start


def _growth(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    points: list[dict[str, Any]] = []
    flat = env.root / "scale-flat.qcow2"
    for size in st.scale_sizes:
        chain = env.build(Layout(virtual=st.scale_virtual, data=size))
        vm_id = env.start_vm(chain, share_rw=False)
        moves, converts = [], []
        for n in range(min(2, st.repeat)):  # two rounds in alternating order (one if smoke)
            for what in ("move", "convert") if n % 2 == 0 else ("convert", "move"):
                env.cold()
                if what == "move":
                    moves.append(move_disk(env.client, vm_id, chain, env.other(chain.sd)))
                else:
                    leaf = env.image_dir(chain.sd, chain.img) / chain.leaf
                    converts.append(baseline.convert_chain(leaf, flat, []))
                    flat.unlink()
        env.destroy_vm(vm_id)
        env.remove_image(chain.img)
        copies = [m.seconds("sync") + m.seconds("wait_ready") for m in moves]
        points.append(
            {
                "data_bytes": sum(chain.written.values()),
                "until_pivot_s": r(median([m.until_pivot for m in moves]), 3),
                "copy_s": r(median(copies), 3),
                "convert_s": r(median(converts), 3),
            }
        )
    xs = [p["data_bytes"] / GiB for p in points]
    intercept, slope, r2 = linear_fit(xs, [p["until_pivot_s"] for p in points])
    c_intercept, c_slope, c_r2 = linear_fit(xs, [p["convert_s"] for p in points])
    return {
        "growth": {
            "virtual_bytes": st.scale_virtual,
            "points": points,
            "fit": {"intercept_s": r(intercept, 3), "s_per_gib": r(slope, 3), "r2": r(r2, 4)},
            "convert_fit": {
                "intercept_s": r(c_intercept, 3),
                "s_per_gib": r(c_slope, 3),
                "r2": r(c_r2, 4),
            },
        },
        "_targets": [
            target("time vs allocated data: linear fit r²", r(r2, 4), ">=", MIN_R2, ""),
        ],
    }
