"""2. Sparse disks: a chain of ``sparse_virtual`` bytes (64 GiB) holding ``sparse_data``
(1 GiB, in chunks spread over the whole disk) against one of ``sparse_data`` bytes holding
as much; and a chain whose RAW base is PREALLOCATED.

Each migration (until the pivot) is timed ``repeat`` times per chain, alternated, with
qemu-img convert of each chain side by side. After a migration, every destination volume's
allocation (``du``: st_blocks; ``qemu-img map``: data extents of that layer) is compared with
its source's, and the preallocated base must still be fully allocated.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench import baseline
from bench.context import Context, r, target
from bench.disks import Chain, Layout
from bench.flow import move_disk
from bench.stats import median, spread

MAX_TIME_RATIO = 1.2
MAX_ALLOCATION_RATIO = 1.05


def _layer_data(path: Path, fmt: str) -> int:
    """Bytes of data this layer holds itself (qemu-img map, depth 0)."""
    out = subprocess.run(
        ["qemu-img", "map", "-U", "--output", "json", "-f", fmt, str(path)],
        check=True,
        capture_output=True,
        timeout=300,
    ).stdout
    return sum(e["length"] for e in json.loads(out) if e["data"] and e.get("depth", 0) == 0)


def _allocation(ctx: Context, chain: Chain) -> dict[str, dict[str, int]]:
    directory = ctx.env.image_dir(chain.sd, chain.img)
    found: dict[str, dict[str, int]] = {}
    for n, vol in enumerate(chain.vols):
        path = directory / vol
        found[vol] = {
            "du": path.stat().st_blocks * 512,
            "map": _layer_data(path, "raw" if n == 0 else "qcow2"),
            "size": path.stat().st_size,
        }
    return found


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    layouts = {
        "sparse": Layout(virtual=st.sparse_virtual, data=st.sparse_data, spread=True),
        "full": Layout(virtual=st.sparse_data, data=st.sparse_data),
        "preallocated": Layout(
            virtual=st.sparse_data, data=st.sparse_data // 2, preallocated_base=True
        ),
    }
    chains = {name: env.build(layout) for name, layout in layouts.items()}
    vms = {name: env.start_vm(chain, share_rw=False) for name, chain in chains.items()}
    times: dict[str, list[float]] = {name: [] for name in chains}
    converts: dict[str, list[float]] = {name: [] for name in chains}
    allocation: dict[str, list[dict[str, Any]]] = {name: [] for name in chains}
    flat = env.root / "sparse-flat.qcow2"
    for _ in range(st.repeat):
        for name, chain in chains.items():
            before = _allocation(ctx, chain)
            env.cold()
            move = move_disk(env.client, vms[name], chain, env.other(chain.sd))
            times[name].append(move.until_pivot)
            after = _allocation(ctx, chain)
            allocation[name].append({"source": before, "destination": after})
            flat.unlink(missing_ok=True)
            env.cold()
            leaf = env.image_dir(chain.sd, chain.img) / chain.leaf
            converts[name].append(baseline.convert_chain(leaf, flat, []))
            flat.unlink()
    for name, chain in chains.items():
        env.destroy_vm(vms[name])
        env.remove_image(chain.img)

    ratio = median(times["sparse"]) / median(times["full"])
    convert_ratio = median(converts["sparse"]) / median(converts["full"])
    worst_du = max(_ratio(a, "du") for runs in allocation.values() for a in runs)
    worst_map = max(_ratio(a, "map") for runs in allocation.values() for a in runs)
    prealloc = chains["preallocated"]
    base_after = [a["destination"][prealloc.vols[0]]["du"] for a in allocation["preallocated"]]
    prealloc_share = min(base_after) / layouts["preallocated"].virtual
    return {
        "layouts": {
            name: {"virtual": lay.virtual, "data": sum(chains[name].written.values())}
            for name, lay in layouts.items()
        },
        "until_pivot_s": {name: spread(v) for name, v in times.items()},
        "convert_s": {name: spread(v) for name, v in converts.items()},
        "time_ratio": r(ratio, 3),
        "convert_time_ratio": r(convert_ratio, 3),
        "allocation": {name: runs[-1] for name, runs in allocation.items()},
        "allocation_ratio_du_worst": r(worst_du, 4),
        "allocation_ratio_map_worst": r(worst_map, 4),
        "preallocated_base_allocated_share": r(prealloc_share, 4),
        "targets": [
            target("time: 64 GiB holding 1 GiB / 1 GiB holding 1 GiB", r(ratio, 3), "<=", 1.2, "×"),
            target(
                "allocated on destination / on source (du, worst volume)",
                r(worst_du, 4),
                "<=",
                MAX_ALLOCATION_RATIO,
                "×",
            ),
            target(
                "allocated on destination / on source (qemu-img map, worst volume)",
                r(worst_map, 4),
                "<=",
                MAX_ALLOCATION_RATIO,
                "×",
            ),
            target(
                "preallocated base: allocated share of its capacity on the destination",
                r(prealloc_share, 4),
                ">=",
                1.0,
                "×",
            ),
        ],
    }


def _ratio(run: dict[str, Any], key: str) -> float:
    """Worst destination/source ratio over the volumes of one migration (volumes with at
    least 1 MiB on the source; smaller ones are qcow2 headers)."""
    worst = 0.0
    for vol, src in run["source"].items():
        dst = run["destination"][vol]
        if src[key] >= 2**20:
            worst = max(worst, dst[key] / src[key])
    return worst
