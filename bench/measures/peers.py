"""11. The peers side by side: one chain, one paced writer, the disk moved four ways.

- ``virsh blockcopy --wait --pivot`` (libvirt's way, and Proxmox's ``qm disk move``): a full
  mirror of what the VM reads into a new qcow2 on the destination, the chain flattened;
- a full mirror into a pre-created raw file (``--reuse-external``, not shallow): the same
  engine, the target made by the caller;
- ``qemu-img convert`` of the chain (offline: ``-U`` while the VM runs, for its time only);
- vdsm's move (bench.flow.move_disk, moveDisk's flow: live snapshot, shallow mirror of the
  new leaf, syncImageData of the rest, pivot, merge): the chain kept; twice, with the copy
  rate not adaptive (every copy at full speed, as the peers copy: the speed target's row)
  and adaptive (vdsmd's default: it yields to the writer, whose counters it sees through
  Env.visible).

Each live row on a fresh copy of the same chain layout and a fresh VM (a peer leaves the VM on
a file vdsm does not know), the writer of measure 5 (64 KiB at queue depth 1, paced at
``guest_rate_mib``) running throughout. For each: seconds (the whole copy, to the pivot for
the live ones), bytes allocated on the destination, the volumes of the chain afterwards, and
the writer's throughput and p99 before and during.

"Time" ends when the VM runs on the destination: the pivot. The peers end there (blockcopy
leaves the source in place); vdsm's move then deletes the source and merges its auto-snapshot
back into the chain, which its row gives apart as the whole move's time.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.baseline import convert_chain
from bench.context import Context, r, target
from bench.disks import Chain, GiB, Layout, MiB
from bench.env import LIBVIRT_URI
from bench.flow import move_disk
from bench.measures.writer import window
from vdsm_guest.block_writer import BlockWriter

VDSM_FIXED = "vdsm moveDisk, rate not adaptive"
VDSM_ADAPTIVE = "vdsm moveDisk, adaptive rate"
BLOCK = 64 * 1024
SLOTS = 256
COPY_TIMEOUT = 1800


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    layout = Layout(virtual=max(GiB, 2 * st.guest_data), data=st.guest_data)
    scratch = env.root / "dst" / "bench-peers"  # the destination's disk, outside its domain
    scratch.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for name, mover in (
        ("virsh blockcopy --pivot", _blockcopy(scratch / "flat.qcow2", reuse=False)),
        ("full mirror, raw target", _blockcopy(scratch / "full.raw", reuse=True)),
        ("qemu-img convert (offline)", _convert(scratch / "convert.qcow2")),
        (VDSM_FIXED, _vdsm),
        (VDSM_ADAPTIVE, _vdsm),
    ):
        chain = env.build(layout)
        if name == VDSM_FIXED:
            env.restart_daemon(["--no-adaptive-copy-rate"])
        elif name == VDSM_ADAPTIVE:
            env.restart_daemon([])
        vm_id = env.start_vm(chain)
        try:
            rows[name] = _measure(ctx, vm_id, chain, mover)
        finally:
            env.destroy_vm(vm_id)
            env.remove_image(chain.img)
            for leftover in scratch.iterdir():
                leftover.unlink()
    scratch.rmdir()
    vdsm, blockcopy = rows[VDSM_FIXED], rows["virsh blockcopy --pivot"]
    return {
        "writer": {"block_size": BLOCK, "queue_depth": 1, "rate_mib_s": st.guest_rate_mib},
        "data_bytes": layout.data,
        "volumes": len(layout.shares),
        "rows": rows,
        "targets": [
            target(
                "vdsm moveDisk time to the pivot (rate not adaptive) / virsh blockcopy --pivot "
                "time (the chain kept)",
                r(vdsm["seconds"] / blockcopy["seconds"], 3),
                "<=",
                1.0,
                "×",
            )
        ],
    }


# A move: the new leaf (None: none to inspect), the files on the destination, and the seconds
# until the VM ran on the destination when the move goes on after that (None: it ends there).
Mover = Callable[[Context, str, Chain], tuple[Path | None, list[Path], float | None]]


def _measure(ctx: Context, vm_id: str, chain: Chain, mover: Mover) -> dict[str, Any]:
    """One move under the writer: what it cost the writer, and what it left."""
    env, st = ctx.env, ctx.settings
    env.cold()
    writer = BlockWriter(
        vm_id, chain.img, block_size=BLOCK, slots=SLOTS, rate_limit=st.guest_rate_mib * MiB
    )
    with env.visible(writer):
        steady = st.steady_seconds * 1.5
        time.sleep(steady)
        before = window(writer, time.monotonic() - steady, time.monotonic())
        started = time.monotonic()
        leaf, files, to_pivot = mover(ctx, vm_id, chain)
        ended = time.monotonic()
        during = window(writer, started, ended)
        if writer.error is not None:
            raise RuntimeError(f"the writer failed: {writer.error!r}")
    return {
        "seconds": r(ended - started if to_pivot is None else to_pivot, 3),
        "whole_seconds": r(ended - started, 3),
        "bytes_on_destination": sum(os.stat(f).st_blocks * 512 for f in files),
        "chain_volumes": _chain_length(leaf) if leaf is not None else None,
        "before": before,
        "during": during,
        "throughput_share": r(during["mib_s"] / before["mib_s"], 3) if before["mib_s"] else None,
    }


def _blockcopy(dest: Path, *, reuse: bool) -> Mover:
    """``virsh blockcopy`` of the VM's whole disk into ``dest``, waited for and pivoted."""

    def move(ctx: Context, vm_id: str, chain: Chain) -> tuple[Path | None, list[Path], None]:
        argv = ["virsh", "-c", LIBVIRT_URI, "blockcopy", vm_id, "vda", str(dest)]
        if reuse:
            dest.write_bytes(b"")
            os.truncate(dest, chain.layout.virtual)
            argv += ["--reuse-external", "--format", "raw"]
        else:
            argv += ["--format", "qcow2"]
        argv += ["--wait", "--pivot", "--transient-job"]
        subprocess.run(argv, check=True, capture_output=True, timeout=COPY_TIMEOUT)
        return dest, [dest], None

    return move


def _convert(out: Path) -> Mover:
    def move(ctx: Context, vm_id: str, chain: Chain) -> tuple[Path | None, list[Path], None]:
        convert_chain(ctx.env.image_dir(chain.sd, chain.img) / chain.leaf, out, [])
        return out, [out], None

    return move


def _vdsm(ctx: Context, vm_id: str, chain: Chain) -> tuple[Path | None, list[Path], float]:
    env = ctx.env
    dst = env.other(chain.sd)
    move = move_disk(env.client, vm_id, chain, dst, copy_mode="auto")
    if move.total <= 0:
        raise RuntimeError("the move did not run")
    files = env.volume_files(dst, chain.img)
    return env.image_dir(dst, chain.img) / chain.leaf, files, move.until_pivot


def _chain_length(leaf: Path) -> int:
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(leaf)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return len(json.loads(info.stdout))
