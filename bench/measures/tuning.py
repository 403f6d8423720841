"""The evidence behind syncImageData's copy recipe: qemu-img convert options for copying each
volume of a chain into its twin, measured on the exact argv image_copy.py runs.

The chain (3 volumes holding ``data`` bytes) is cloned with cloneImageStructure, so the twins
are what vdsmd makes; then each variant copies every volume into its twin (base first) and
the clone is deleted. ``repeat`` rounds, variants alternated; every copy starts cold.
Every variant but the first ends with the twins on stable storage (fsync, or qemu-img's own
flush); "no flush" is what vdsm ran before it flushed, shown for reference only.

Zero detection is measured apart, on a chain whose data is half zero-filled chunks: vdsm's
recipe with qemu-img's default zero detection against ``-S 0``, time and bytes allocated.
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
from bench.daemon import TASK_TIMEOUT
from bench.disks import Chain, Layout, MiB
from bench.stats import median, spread

# name: (extra qemu-img options, how the twins are flushed, copy the volumes in parallel).
# Flushing: "each" fsync after each volume's copy; "end" one fsync per twin after the last
# copy; "kick" as "end", with each twin's writeback started as its copy ends. vdsm now, with
# both domains on one device as here: the page cache and "kick"; into another device it
# copies with O_DIRECT at both ends (-t none -T none) and "end" (VolumeCopy.direct_io).
DIRECT = ["-t", "none", "-T", "none"]
VARIANTS: dict[str, tuple[list[str], str, bool]] = {
    "page cache, no flush (not durable)": ([], "", False),
    "page cache, fsync after each volume": ([], "each", False),
    "page cache, fsync at end": ([], "end", False),
    "page cache, writeback started after each, fsync at end (vdsm now, one device)": (
        [],
        "kick",
        False,
    ),
    "vdsm now + -W": (["-W"], "kick", False),
    "vdsm now + -m 16": (["-m", "16"], "kick", False),
    "vdsm now + -W -m 16": (["-W", "-m", "16"], "kick", False),
    "O_DIRECT both ends, fsync at end (vdsm now, into another device)": (DIRECT, "end", False),
    "O_DIRECT target only (-t none)": (["-t", "none"], "end", False),
    "-t writeback (qemu-img flushes)": (["-t", "writeback"], "", False),
    "vdsm now, volumes in parallel": ([], "kick", True),
}
NOT_DURABLE = "page cache, no flush (not durable)"
VDSM_NOW = "page cache, writeback started after each, fsync at end (vdsm now, one device)"
# Zero detection: qemu-img's default (-S 4k) finds zero-filled data and does not write it
# (a hole in the base twin, a zero cluster in a layer); -S 0 writes every byte it reads.
ZERO_VARIANTS = {
    "zero detection on (qemu-img default; vdsm now)": [],
    "zero detection off (-S 0)": ["-S", "0"],
}
ZERO_SHARE = 0.5  # of the zero-detection chain's allocated data


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
    """What image_copy does after each copy through the page cache: POSIX_FADV_DONTNEED
    starts writing the dirty pages back (without waiting) and drops the clean ones."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _copy(
    ctx: Context, chain: Chain, variant: str, extra_options: list[str] | None = None
) -> tuple[float, int]:
    """Seconds to copy every volume of ``chain`` into a fresh clone, durably, and the bytes
    the twins allocate."""
    env = ctx.env
    extra, flush, parallel = VARIANTS[variant]
    extra = [*extra, *(extra_options or [])]
    clone = env.client.clone_structure(chain.sp, chain.sd, chain.img, env.sd2)
    env.client.wait_success(clone, "cloneImageStructure", timeout=TASK_TIMEOUT)
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
    allocated = sum(os.stat(dst_dir / vol).st_blocks * 512 for vol in chain.vols)
    env.delete_image(env.sd2, chain.img)
    return seconds, allocated


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    chain = env.build(Layout(virtual=max(2 * st.data, 1024 * MiB), data=st.data))
    data = sum(chain.written.values())
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(st.repeat):
        for name in VARIANTS:
            times[name].append(_copy(ctx, chain, name)[0])
    env.remove_image(chain.img)
    os.sync()
    zeros = _zero_detection(ctx)
    durable = {k: v for k, v in times.items() if k != NOT_DURABLE}
    best = min(durable, key=lambda k: median(durable[k]))
    return {
        "data_bytes": data,
        "variants": {
            name: {**spread(v), "mib_s": r(mib_s(data, median(v)), 1)} for name, v in times.items()
        },
        "best_durable": best,
        "zero_detection": zeros,
        "targets": [],
    }


def _zero_detection(ctx: Context) -> dict[str, Any]:
    """vdsm's recipe with and without zero detection, on a chain whose data is half zeros."""
    env, st = ctx.env, ctx.settings
    layout = Layout(virtual=max(2 * st.data, 1024 * MiB), data=st.data, zero_share=ZERO_SHARE)
    chain = env.build(layout)
    source = sum(
        os.stat(env.image_dir(chain.sd, chain.img) / vol).st_blocks * 512 for vol in chain.vols
    )
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in ZERO_VARIANTS}
    for _ in range(st.repeat):
        for name, options in ZERO_VARIANTS.items():
            runs[name].append(_copy(ctx, chain, VDSM_NOW, options))
    env.remove_image(chain.img)
    os.sync()
    return {
        "zero_share": ZERO_SHARE,
        "data_bytes": sum(chain.written.values()),
        "source_allocated_bytes": source,
        "variants": {
            name: {
                **spread([seconds for seconds, _ in v]),
                "allocated_bytes": median([allocated for _, allocated in v]),
            }
            for name, v in runs.items()
        },
    }
