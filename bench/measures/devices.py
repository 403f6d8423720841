"""12. Two devices: the destination on a device of its own, so the copy meets the source's read
limit alone.

On this machine's one disk the source and the destination share the device: the copy reads
and writes the same disk (measure 1). Here the destination domain is XFS on a loop device
backed by memory (Env.memory_domain); the source domain stays on the disk. The copy engine
should then run at what the disk reads, and the target is its data rate against the source's
read rate.

The source's read rate is measured on the very data the copy reads: the allocated extents of
the chain's own files, read with O_DIRECT in 4 MiB requests (baseline.read_data), one file
after another and all three at once (the better of the two medians is the reference), next to
every timed copy, before it in even rounds and after it in odd ones, each from a cold page
cache. A scratch file's rate (qemu-img bench, dd) swung between 1.5 and 2.5 GiB/s from one run
to the next on this virtual disk, so it is reported beside, not divided by. The memory
device's write rate is measured the same way as the scratch read, since a loop device
writing into tmpfs may well be the slower of the two.

One idle VM on a 3-volume chain holding ``data`` bytes: an untimed warm-up move to the memory
domain and back, then ``repeat`` rounds of (a) a move from the disk to the memory domain,
timed, (b) back, untimed, (c) the same move between the disk's two domains, timed: the one-
device figure of this run beside the two-device one. The rate is the allocated data over the
copy phase (replicate + sync + wait_ready), as in measure 1. Every timed copy starts cold.
"""

from __future__ import annotations

import os
from typing import Any

from bench import baseline
from bench.context import Context, mib_s, r, target
from bench.disks import GiB, Layout, MiB
from bench.flow import Move, move_disk
from bench.stats import median, spread

MIN_READ_SHARE = 0.90


def device_rate(ctx: Context, sd: str, *, write: bool) -> dict[str, Any]:
    """What the file system of domain ``sd`` reads (or writes), MiB/s: the best tool's
    median of its runs (qemu-img bench at queue depths 1, 4 and 16, and dd; O_DIRECT, 4 MiB
    requests), on a scratch file holding data."""
    env = ctx.env
    size = max(ctx.settings.data, 64 * MiB)
    scratch = env.domain_dir(sd) / "bench-device-scratch.raw"
    runs: list[baseline.BenchRun] = []
    try:
        with open(scratch, "wb") as f:  # data, not an unwritten extent read as zeros
            chunk = os.urandom(4 * MiB)
            for _ in range(size // len(chunk)):
                f.write(chunk)
            os.fsync(f.fileno())
        for _ in range(1 if ctx.settings.smoke else 3):
            for depth in (1, 4, 16):
                env.cold()
                runs.append(baseline.qemu_img_bench(scratch, size, write=write, depth=depth))
            env.cold()
            if write:
                runs.append(
                    baseline.dd(
                        "/dev/zero", str(scratch), size, iflag="", oflag="direct", mode="write"
                    )
                )
            else:
                runs.append(
                    baseline.dd(
                        str(scratch), "/dev/null", size, iflag="direct", oflag="", mode="read"
                    )
                )
    finally:
        scratch.unlink(missing_ok=True)
    configs: dict[tuple[str, int], list[float]] = {}
    for x in runs:
        configs.setdefault((x.tool, x.depth), []).append(x.mib_s)
    best = max(configs, key=lambda k: median(configs[k]))
    return {
        "runs": [x.__dict__ for x in runs],
        "mib_s": r(median(configs[best]), 1),
        "best": f"{best[0]} depth {best[1]}",
    }


def chain_read(ctx: Context, sd: str, img: str, reads: dict[str, list[float]]) -> None:
    """Read the chain's allocated data, cold, one file after another and all at once; the
    rates (MiB/s) appended to ``reads``. ``sd``: where the chain is now, one of the disk's
    two domains (the one-device move leaves it in the other)."""
    files = ctx.env.volume_files(sd, img)
    for pattern, at_once in (("one_after_another", False), ("at_once", True)):
        ctx.env.cold()
        size, seconds = baseline.read_data(files, at_once=at_once)
        reads[pattern].append(mib_s(size, seconds))


def _copy_phase(move: Move) -> float:
    steps = move.as_dict()["steps"]
    return float(steps["replicate"] + steps["sync"] + steps["wait_ready"])


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    layout = Layout(virtual=max(2 * st.data, GiB), data=st.data)
    memory = env.memory_domain(2 * layout.virtual + 256 * MiB)
    chain = env.build(layout)
    data = sum(chain.written.values())
    vm_id = env.start_vm(chain)
    read = device_rate(ctx, chain.sd, write=False)
    write = device_rate(ctx, memory, write=True)
    disk_sd = chain.sd
    move_disk(env.client, vm_id, chain, memory)  # warm-up, untimed
    move_disk(env.client, vm_id, chain, disk_sd)
    two: list[float] = []
    one: list[float] = []
    reads: dict[str, list[float]] = {"one_after_another": [], "at_once": []}
    for n in range(st.repeat):
        if n % 2 == 0:
            chain_read(ctx, chain.sd, chain.img, reads)
        env.cold()
        two.append(_copy_phase(move_disk(env.client, vm_id, chain, memory)))
        move_disk(env.client, vm_id, chain, disk_sd)
        if n % 2 == 1:
            chain_read(ctx, chain.sd, chain.img, reads)
        env.cold()
        one.append(_copy_phase(move_disk(env.client, vm_id, chain, env.other(chain.sd))))
    env.destroy_vm(vm_id)
    env.remove_image(chain.img)
    two_rate, one_rate = mib_s(data, median(two)), mib_s(data, median(one))
    pattern = max(reads, key=lambda k: median(reads[k]))
    source = median(reads[pattern])
    pair = min(source, write["mib_s"])
    return {
        "data_bytes": data,
        "source_read": read,
        "chain_read_mib_s": {k: [r(x, 1) for x in v] for k, v in reads.items()},
        "chain_read": {"mib_s": r(source, 1), "best": pattern.replace("_", " ")},
        "destination_write": write,
        "two_devices_copy_s": spread(two),
        "one_device_copy_s": spread(one),
        "two_devices_mib_s": r(two_rate, 1),
        "one_device_mib_s": r(one_rate, 1),
        "targets": [
            target(
                "destination on a second device: copy data rate / the source's read rate",
                r(two_rate / source, 3),
                ">=",
                MIN_READ_SHARE,
                "×",
                reason=(
                    "the memory device writes slower than the disk reads"
                    if write["mib_s"] < source
                    else ""
                ),
            ),
            target(
                "destination on a second device: copy data rate / min(source read, "
                "destination write)",
                r(two_rate / pair, 3),
                ">=",
                MIN_READ_SHARE,
                "×",
            ),
        ],
    }
