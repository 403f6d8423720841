"""The command: ``python -m bench [--data-gib 2] [--only NAME] [--out DIR] [--smoke]``.

Runs the measurements in one vdsmd and one work dir, writes the results JSON and SVG plots
into the output directory, and (for a full run, or with ``--docs``) regenerates
docs/benchmarks.md from them. ``--report RESULTS.json`` only regenerates the docs.
Exit status: 0 when every measurement ran (targets met or not: the doc says which),
1 when a measurement failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report, sysinfo
from bench.context import Context, Settings
from bench.daemon import REPO
from bench.disks import GiB
from bench.env import Env
from bench.measures import (
    convergence,
    devices,
    guest_impact,
    hosts,
    overhead,
    peers,
    pivot,
    scale,
    sparse,
    spm,
    throughput,
    tuning,
)

log = logging.getLogger("bench")

MEASURES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "throughput": throughput.run,
    "sparse": sparse.run,
    "pivot": pivot.run,
    "convergence": convergence.run,
    "guest": guest_impact.run,
    "overhead": overhead.run,
    "scale": scale.run,
    "tuning": tuning.run,
    "spm": spm.run,
    "hosts": hosts.run,
    "peers": peers.run,
    "devices": devices.run,
}
DEFAULT_OUT = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark vdsm's live storage migration against qemu-img/dd, side by side, "
        "its SPM lease and failover on two hosts, and moves across two hosts with their "
        "volume leases.",
    )
    parser.add_argument(
        "--data-gib",
        type=float,
        default=2.0,
        help="allocated data of the throughput chain, GiB (default 2)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(MEASURES),
        help="run only this measurement (repeatable); default: all",
    )
    parser.add_argument("--repeat", type=int, help="timed repetitions (default 3; smoke 1)")
    parser.add_argument(
        "--out", type=Path, help=f"directory for results JSON and plots (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where to build the disks (default /var/tmp; local disk)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: proves the harness works (< 60 s)"
    )
    parser.add_argument(
        "--docs",
        type=Path,
        nargs="?",
        const=DOCS,
        help=f"write the report there (default for a full run: {DOCS.relative_to(REPO)})",
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="do not write the report, even for a full run"
    )
    parser.add_argument(
        "--report", type=Path, metavar="RESULTS_JSON", help="only regenerate the report"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.data_gib <= 0:
        parser.error("--data-gib must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.report is not None:
        docs = args.docs or DOCS
        report.write(json.loads(args.report.read_text()), args.report, docs)
        log.info("wrote %s", docs)
        return 0

    settings = Settings.smoke_run() if args.smoke else Settings(data=int(args.data_gib * GiB))
    if args.repeat is not None:
        repeat = max(1, args.repeat)
        settings = dataclasses.replace(settings, repeat=repeat, throughput_rounds=repeat)
    names = args.only or list(MEASURES)
    out = args.out or DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_path = out / ("smoke.json" if args.smoke else f"{stamp}.json")
    results: dict[str, Any] = {
        "command": "python -m bench " + shlex.join(argv) if argv else "python -m bench",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "settings": dataclasses.asdict(settings),
        "sections": {},
    }
    failed = False
    began = time.monotonic()
    env = Env(args.workdir, convergence_window=settings.convergence_window)
    try:
        caps = env.client.capabilities()
        results["machine"] = sysinfo.collect(env.root, caps, env.can_drop_caches)
        ctx = Context(env, settings)
        for name in names:
            log.info("== %s", name)
            started = time.monotonic()
            try:
                section = MEASURES[name](ctx)
            except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
                failed = True
                log.error("%s failed: %s", name, e)
                section = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                env.reset()
            section["seconds"] = round(time.monotonic() - started, 1)
            results["sections"][name] = section
            _log_targets(name, section)
            results_path.write_text(json.dumps(results, indent=1))
    finally:
        env.close()
    results["vms"] = env.created
    results["seconds"] = round(time.monotonic() - began, 1)
    results_path.write_text(json.dumps(results, indent=1))
    log.info("results: %s (%.0f s)", results_path, results["seconds"])
    write_docs = args.docs is not None or (
        not args.smoke and args.only is None and not args.no_docs and not failed
    )
    if write_docs and not args.no_docs:
        docs = args.docs or DOCS
        report.write(results, results_path, docs)
        log.info("wrote %s", docs)
    else:
        report.write_plots(results, out, results_path.stem)
    return 1 if failed else 0


def _log_targets(name: str, section: dict[str, Any]) -> None:
    for t in section.get("targets", []):
        log.info(
            "   %s %s: %s %s %s%s",
            "MET " if t["met"] else "MISS",
            t["name"],
            t["value"],
            t["op"],
            t["limit"],
            t["unit"],
        )
