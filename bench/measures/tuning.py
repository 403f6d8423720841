"""The evidence behind syncImageData's copy recipe: qemu-img convert options for copying each
volume of a chain into its twin, measured on the exact argv image_copy.py runs.

The chain (3 volumes holding ``data`` bytes) is cloned with cloneImageStructure, so the twins
are what vdsmd makes; then each variant copies every volume into its twin (base first) and
the clone is deleted. ``repeat`` rounds, variants alternated; every copy starts cold.
Every variant but the first ends with the twins on stable storage (fsync, or qemu-img's own
flush); "no flush" is what vdsm ran before it flushed, shown for reference only.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import baseline
from bench.context import Context, mib_s, r
from bench.disks import Chain, Layout, MiB
from bench.stats import median, spread

# name: (extra qemu-img options, how the twins are flushed, copy the volumes in parallel).
# Flushing: "each" fsync after each volume's copy; "end" one fsync per twin after the last
# copy; "kick" as "end", with each twin's writeback started as its copy ends (vdsm now).
VARIANTS: dict[str, tuple[list[str], str, bool]] = {
    "no flush (vdsm before: not durable)": ([], "", False),
    "fsync after each volume": ([], "each", False),
    "fsync at end": ([], "end", False),
    "writeback started after each, fsync at end (vdsm now)": ([], "kick", False),
    "vdsm now + -W": (["-W"], "kick", False),
    "vdsm now + -m 16": (["-m", "16"], "kick", False),
    "vdsm now + -W -m 16": (["-W", "-m", "16"], "kick", False),
    "vdsm now + -T none": (["-T", "none"], "kick", False),
    "-t none -T none (O_DIRECT, qemu-img flushes)": (["-t", "none", "-T", "none"], "", False),
    "-t writeback (qemu-img flushes)": (["-t", "writeback"], "", False),
    "vdsm now, volumes in parallel": ([], "kick", True),
}
NOT_DURABLE = "no flush (vdsm before: not durable)"


def _argv(
    n: int, src: Path, dst: Path, parent: str | None, extra: list[str], parallel: bool
) -> list[str]:
    """image_copy.py's argv for volume ``n`` of the chain (0: the RAW base)."""
    if n == 0:
        head = ["qemu-img", "convert", "-f", "raw", "-O", "raw", *extra]
        return [*head, "-n", "--target-is-zero", str(src), str(dst)]
    target = str(dst)
    if parallel:
        # The twin opened without its backing file: a copy into its parent may run at the
        # same time (otherwise: 'Failed to get shared "write" lock' on the parent).
        target = "json:" + json.dumps(
            {"driver": "qcow2", "backing": None, "file": {"driver": "file", "filename": str(dst)}}
        )
    fmt = "raw" if n == 1 else "qcow2"
    head = ["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", *extra, "-n"]
    return [*head, "-B", str(parent), "-F", fmt, str(src), target]


def _start_writeback(path: Path) -> None:
    """What image_copy does after each copy: POSIX_FADV_DONTNEED starts writing the dirty
    pages back (without waiting) and drops the clean ones."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _copy(ctx: Context, chain: Chain, variant: str) -> float:
    env = ctx.env
    extra, flush, parallel = VARIANTS[variant]
    env.client.clone_structure(chain.sp, chain.sd, chain.img, env.sd2)
    src_dir, dst_dir = env.image_dir(chain.sd, chain.img), env.image_dir(env.sd2, chain.img)
    argvs = [
        _argv(n, src_dir / vol, dst_dir / vol, chain.vols[n - 1] if n else None, extra, parallel)
        for n, vol in enumerate(chain.vols)
    ]
    env.cold()
    start = time.monotonic()
    if parallel:
        procs = [
            subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for a in argvs
        ]
        for vol, p, a in zip(chain.vols, procs, argvs, strict=True):
            _, err = p.communicate(timeout=1800)
            if p.returncode:
                raise RuntimeError(f"{a}: {err.decode(errors='replace')}")
            if flush == "kick":
                _start_writeback(dst_dir / vol)
    else:
        for vol, a in zip(chain.vols, argvs, strict=True):
            subprocess.run(a, check=True, capture_output=True, timeout=1800)
            if flush == "each":
                baseline.fsync(dst_dir / vol)
            elif flush == "kick":
                _start_writeback(dst_dir / vol)
    if flush in ("end", "kick"):
        for vol in chain.vols:
            baseline.fsync(dst_dir / vol)
    seconds = time.monotonic() - start
    env.client.delete_image(chain.sp, env.sd2, chain.img)
    return seconds


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    chain = env.build(Layout(virtual=max(2 * st.data, 1024 * MiB), data=st.data))
    data = sum(chain.written.values())
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(st.repeat):
        for name in VARIANTS:
            times[name].append(_copy(ctx, chain, name))
    env.remove_image(chain.img)
    os.sync()
    durable = {k: v for k, v in times.items() if k != NOT_DURABLE}
    best = min(durable, key=lambda k: median(durable[k]))
    return {
        "data_bytes": data,
        "variants": {
            name: {**spread(v), "mib_s": r(mib_s(data, median(v)), 1)} for name, v in times.items()
        },
        "best_durable": best,
        "targets": [],
    }
