"""6. Orchestration overhead: every non-copy step of the whole move (auto-snapshot, clone
structure, replicate start, pivot, delete the source, merge the auto-snapshot and delete it)
for a 3-volume chain holding little data, timed ``repeat`` + 2 times (back and forth).

The step times are what the verbs cost plus at most one 20 ms poll per wait. When
``vdsClient moveDisk`` exists, the same disk is also moved by it once, end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from bench.context import Context, r, target
from bench.daemon import REPO
from bench.disks import Chain, GiB, Layout, MiB
from bench.flow import CONTROL, COPY, move_disk
from bench.stats import median, spread

MAX_OVERHEAD = 1.5
CLI_COPY_STEPS = ("sync", "wait_ready")  # moveDisk's step names for the copy steps


def run(ctx: Context) -> dict[str, Any]:
    env, st = ctx.env, ctx.settings
    chain = env.build(Layout(virtual=GiB, data=min(st.data, 48 * MiB)))
    vm_id = env.start_vm(chain, share_rw=False)
    moves = []
    for _ in range(st.repeat + 2):
        moves.append(move_disk(env.client, vm_id, chain, env.other(chain.sd)))
    cli = _move_disk_cli(ctx, vm_id, chain, st.repeat)
    env.destroy_vm(vm_id)
    env.remove_image(chain.img)
    steps = {name: spread([m.seconds(name) for m in moves]) for name in (*CONTROL, *COPY)}
    control = median([m.control for m in moves])
    targets = [
        target(
            "non-copy steps together, verb by verb (median)", r(control, 3), "<=", MAX_OVERHEAD, "s"
        )
    ]
    if cli is not None:
        value = cli["control_s"]["median"] if cli["rc"] == 0 else float("nan")
        targets.append(
            target(
                "non-copy steps together, vdsClient moveDisk (median)",
                r(value, 3),
                "<=",
                MAX_OVERHEAD,
                "s",
            )
        )
    return {
        "data_bytes": sum(chain.written.values()),
        "volumes": len(chain.vols),
        "runs": len(moves),
        "steps_s": steps,
        "control_s": spread([m.control for m in moves]),
        "total_s": spread([m.total for m in moves]),
        "vdsclient_movedisk": cli,
        "targets": targets,
    }


def _move_disk_cli(ctx: Context, vm_id: str, chain: Chain, runs: int) -> dict[str, Any] | None:
    """Move the disk with ``vdsClient --json moveDisk`` ``runs`` times (back and forth) and
    read its per-step times from its ``stepDone`` events. None when the command is absent."""
    if not (REPO / "vdsm_cli" / "move" / "command.py").exists():
        return None
    env = ctx.env
    moves: list[dict[str, Any]] = []
    for _ in range(runs):
        dst = env.other(chain.sd)
        argv = [sys.executable, "-m", "vdsm_cli.vdsclient", "--json"]
        argv += [f"127.0.0.1:{env.daemon.port}", "moveDisk", vm_id, chain.img, dst]
        argv += ["--state-dir", str(env.root / "moves")]
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO)
        seconds = time.monotonic() - start
        steps: dict[str, float] = {}
        for line in proc.stdout.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "stepDone":
                steps[event["step"]] = steps.get(event["step"], 0.0) + float(event["seconds"])
        if proc.returncode != 0:
            return {
                "argv": argv[3:],
                "rc": proc.returncode,
                "output": (proc.stdout + proc.stderr)[-2000:],
            }
        chain.sd = dst
        moves.append(
            {
                "seconds": r(seconds, 3),
                "steps": {k: r(v, 3) for k, v in steps.items()},
                "control": r(sum(v for k, v in steps.items() if k not in CLI_COPY_STEPS), 3),
            }
        )
    return {
        "argv": ["vdsClient", "--json", "HOST:PORT", "moveDisk", "VM", "IMG", "DST"],
        "rc": 0,
        "runs": moves,
        "seconds": spread([m["seconds"] for m in moves]),
        "control_s": spread([m["control"] for m in moves]),
    }
