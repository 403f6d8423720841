"""docs/benchmarks.md from a results JSON: the machine, the command, every figure side by side
with its target, the plots, and the analysis (bench/analysis.md, written by people from the
numbers; ``{placeholders}`` in it are filled from the results)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench import svg
from bench.daemon import REPO

ANALYSIS = Path(__file__).with_name("analysis.md")
GiB = 1024**3
MiB = 1024**2


# --- plots ------------------------------------------------------------------------------------


def throughput_chart(results: dict[str, Any]) -> svg.Chart | None:
    section = results["sections"].get("throughput", {})
    plot = section.get("plot")
    if not plot:
        return None
    physical = bool(plot.get("device"))
    kind = "written" if physical else "allocated"
    chart = svg.Chart(
        title=f"{section['data_bytes'] / GiB:.3g} GiB, 3-volume chain: vdsm migration vs "
        f"qemu-img convert {section.get('best_flags', '')} (each from a cold cache)",
        x_label="seconds since the start (the migration's steps marked)",
        y_label=f"MiB/s ({plot['device']})" if physical else "MiB/s allocated",
    )
    chart.series.append(
        svg.Series(f"vdsm migration: disk {kind}", plot["vdsm"][kind], color="#1f77b4")
    )
    chart.series.append(
        svg.Series(f"qemu-img convert: disk {kind}", plot["qemu_img"][kind], color="#d62728")
    )
    if physical:
        chart.series.append(
            svg.Series(
                "vdsm migration: disk read", plot["vdsm"]["read"], style="dashed", color="#1f77b4"
            )
        )
        chart.series.append(
            svg.Series(
                "qemu-img convert: disk read",
                plot["qemu_img"]["read"],
                style="dashed",
                color="#d62728",
            )
        )
    storage = section["storage"]
    end = max((t for t, _ in plot["vdsm"][kind]), default=1.0)
    for label, value, color in (
        ("disk read limit", storage["read_mib_s"], "#2ca02c"),
        ("disk write limit", storage["write_mib_s"], "#7f7f7f"),
    ):
        chart.series.append(
            svg.Series(f"{label} (qemu-img bench/dd)", [[0, value], [end, value]], "dashed", color)
        )
    shown = {"snapshot", "clone", "replicate", "sync", "pivot", "merge"}
    chart.markers = [(start, name) for name, start, _ in plot["marks"] if name in shown]
    return chart


def growth_chart(results: dict[str, Any]) -> svg.Chart | None:
    growth = results["sections"].get("scale", {}).get("growth")
    if not growth:
        return None
    points = growth["points"]
    chart = svg.Chart(
        title=f"Migration time vs allocated data ({growth['virtual_bytes'] / GiB:.3g} GiB disks)",
        x_label="allocated data, GiB",
        y_label="seconds",
    )
    xs = [p["data_bytes"] / GiB for p in points]
    chart.series.append(
        svg.Series(
            "vdsm: snapshot to pivot",
            list(zip(xs, [p["until_pivot_s"] for p in points], strict=True)),
            style="points",
        )
    )
    chart.series.append(
        svg.Series(
            "qemu-img convert",
            list(zip(xs, [p["convert_s"] for p in points], strict=True)),
            style="points",
        )
    )
    fit = growth["fit"]
    if xs:
        line = [
            (0.0, fit["intercept_s"]),
            (max(xs), fit["intercept_s"] + fit["s_per_gib"] * max(xs)),
        ]
        chart.series.append(svg.Series("vdsm least-squares line", line, style="dashed"))
    return chart


def write_plots(results: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    written = []
    for name, chart in (
        ("throughput", throughput_chart(results)),
        ("growth", growth_chart(results)),
    ):
        if chart is not None:
            path = directory / f"{stem}-{name}.svg"
            path.write_text(svg.render(chart))
            written.append(path)
    return written


# --- the document -----------------------------------------------------------------------------


def _v(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _s(spread: dict[str, float]) -> str:
    if not spread:
        return "—"
    return f"{spread['median']:.3g} s ({spread['min']:.3g}–{spread['max']:.3g})"


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| # | measure | target | measured | met |", "|---|---|---|---|---|"]
    for n, (name, section) in enumerate(results["sections"].items(), start=1):
        if "error" in section:
            lines.append(f"| {n} | {name} | — | **failed**: {section['error']} | no |")
            continue
        for t in section.get("targets", []):
            lines.append(
                f"| {n} | {t['name']} | {t['op']} {_v(t['limit'])}{t['unit']} | "
                f"{_v(t['value'], 4)}{t['unit']} | {'yes' if t['met'] else '**no**'} |"
            )
    return lines


def machine(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    fs = m.get("filesystem", {})
    return [
        f"- CPU: {m.get('cpu')} — {m.get('cores')} cores; memory {m.get('memory_gib')} GiB",
        f"- Disk: one local disk `{fs.get('device')}`, {fs.get('fstype')} on `{fs.get('mount')}` "
        f"({fs.get('size_gib')} GiB, {fs.get('free_gib')} GiB free at the start); the source and "
        "destination domains are two directories of this one file system, so every copy reads "
        "and writes the same disk.",
        f"- Kernel {m.get('kernel')}; {m.get('qemu_img')}; QEMU {m.get('qemu')}; "
        f"libvirt {m.get('libvirt')}; Python {m.get('python')}",
        f"- VMs: domain type `{m.get('vm_domain_type')}` ({m.get('accelerator')}), BIOS only "
        "(no guest OS); the guest-like writer is the test-only NBD export of the VM's disk.",
        f"- Page cache dropped before every timed copy: {'yes' if m.get('drop_caches') else 'no'}",
        f"- vdsm commit {m.get('commit')}; run started {results.get('started')}, "
        f"took {results.get('seconds')} s",
    ]


def sections(results: dict[str, Any]) -> list[str]:
    s = results["sections"]
    out: list[str] = []
    t = s.get("throughput")
    if t and "error" not in t:
        st = t["storage"]
        out += [
            "### 1. Throughput",
            "",
            f"Chain: RAW base + 2 qcow2 layers, {t['data_bytes'] / GiB:.3g} GiB allocated "
            f"({t['virtual_bytes'] / GiB:.3g} GiB virtual). Medians of the repetitions "
            "(min–max in brackets); every copy starts with a cold page cache and ends on disk.",
            "",
            "| what | time | data rate |",
            "|---|---|---|",
            f"| vdsm migration, snapshot → pivot | {_s(t['vdsm_until_pivot_s'])} | "
            f"{t['data_bytes'] / MiB / t['vdsm_until_pivot_s']['median']:.0f} MiB/s |",
            f"| vdsm copy phase (replicate start → READY) | {t['vdsm_copy_phase_s']:.3g} s | "
            f"{t['vdsm_rate_mib_s']:.0f} MiB/s |",
            f"| vdsm whole move incl. delete + merge | {_s(t['vdsm_total_s'])} | |",
            f"| (a) qemu-img convert `{t['best_flags']}` + fsync | {_s(t['convert_s'])} | "
            f"{t['convert_rate_mib_s']:.0f} MiB/s |",
            f"| cp --sparse=always of the 3 files + fsync | {_s(t['cp_s'])} | "
            f"{t['cp_rate_mib_s']:.0f} MiB/s |",
            f"| (b) storage: read {st['read_mib_s']:.0f}, write {st['write_mib_s']:.0f} MiB/s "
            f"(best median of 3 runs: qemu-img bench depth 1/4/16, dd; O_DIRECT) | | "
            f"min {st['limit_mib_s']:.0f}; serial copy bound {st['serial_copy_mib_s']:.0f}; "
            f"dd copy {st['dd_copy_mib_s']:.0f}; read and write at once "
            f"{st.get('read_write_at_once_mib_s', 0):.0f} MiB/s |",
            "",
            "Ratios: migration (snapshot → pivot) / convert, medians "
            f"{t['vdsm_until_pivot_s']['median'] / t['convert_s']['median']:.3g}×, "
            f"best run of each {t['vdsm_until_pivot_s']['min'] / t['convert_s']['min']:.3g}×; "
            f"copy phase / convert, medians {t['vdsm_copy_phase_s'] / t['convert_s']['median']:.3g}"
            f"×. Data rate of the copy phase: {t['vdsm_rate_mib_s'] / st['limit_mib_s']:.3g}× "
            f"min(read, write), {t['vdsm_rate_mib_s'] / st['serial_copy_mib_s']:.3g}× the serial "
            "copy bound (each byte read, then written, on the same disk)"
            + (
                f", {t['vdsm_rate_mib_s'] / st['read_write_at_once_mib_s']:.3g}× the measured "
                "rate of reading and writing at once (two qemu-img bench together)."
                if st.get("read_write_at_once_mib_s")
                else "."
            ),
            "",
            "qemu-img convert flag search (one cold run each, seconds): "
            + ", ".join(f"`{k}` {v:.3g}" for k, v in t["convert_flags_search"].items()),
            "",
            "![throughput over time](benchmarks-throughput.svg)",
            "",
        ]
    sp = s.get("sparse")
    if sp and "error" not in sp:
        lay = sp["layouts"]
        out += [
            "### 2. Sparse disks",
            "",
            "| chain | virtual | allocated | vdsm snapshot → pivot | qemu-img convert |",
            "|---|---|---|---|---|",
        ]
        for name in ("sparse", "full", "preallocated"):
            out.append(
                f"| {name} | {lay[name]['virtual'] / GiB:.3g} GiB | "
                f"{lay[name]['data'] / GiB:.3g} GiB | {_s(sp['until_pivot_s'][name])} | "
                f"{_s(sp['convert_s'][name])} |"
            )
        out += [
            "",
            f"Time ratio sparse/full: vdsm {sp['time_ratio']}, qemu-img convert "
            f"{sp['convert_time_ratio']}. Worst destination/source allocation of any volume: "
            f"{sp['allocation_ratio_du_worst']} (du), {sp['allocation_ratio_map_worst']} "
            f"(qemu-img map). The preallocated RAW base is "
            f"{100 * sp['preallocated_base_allocated_share']:.1f}% allocated on the destination.",
            "",
        ]
    p = s.get("pivot")
    if p and "error" not in p:
        out += [
            "### 3. Pivot stall",
            "",
            f"Writer: 4 KiB, queue depth 1; idle (no migration) p50 {_v(p['idle']['p50_ms'])} ms, "
            f"p99 {_v(p['idle']['p99_ms'])} ms.",
            "",
            "| run | Finish call | steady p50 / p99 (READY mirror) | steady max, same length "
            "| max around the pivot | max overlapping the call | added (max − p99) | "
            "then deleting the source: max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, x in enumerate(p["runs"], start=1):
            delete = x.get("delete_source", {}).get("max_ms")
            out.append(
                f"| {n} | {x['pivot_call_ms']:.1f} ms | {_v(x['steady']['p50_ms'])} / "
                f"{_v(x['steady']['p99_ms'])} ms | {_v(x['steady_same_length_max_ms'])} ms | "
                f"{_v(x['around_max_ms'])} ms ({x['around_writes']} writes) | "
                f"{_v(x['during_call_max_ms'])} ms | {_v(x['stall_ms'])} ms | {_v(delete)} ms |"
            )
        out.append("")
    c = s.get("convergence")
    if c and "error" not in c:
        w = c["writer"]
        out += [
            "### 4. Convergence",
            "",
            f"Writer: {w['block_size'] // 1024} KiB blocks, queue depth {w['queue_depth']}, "
            f"paced at {w['rate_mib_s']} MiB/s over {w['region_bytes'] / MiB:.0f} MiB; "
            f"copy capped at {c['copy_cap_mib_s']} MiB/s; vdsmd's convergence window "
            f"{c['convergence_window_s']} s. Writer alone: {c['writer_before']['mib_s']} MiB/s.",
            "",
            "| copy mode | completed | time to READY | switched to sync | writer meanwhile | "
            "writer p99 |",
            "|---|---|---|---|---|---|",
        ]
        for mode, x in c["modes"].items():
            ready = (
                f"{x['ready_after_s']} s"
                if x["completed"]
                else f"not READY, given up after {x['gave_up_after_s']} s"
            )
            out.append(
                f"| {mode} | {'yes' if x['completed'] else 'no'} | {ready} | "
                f"{'yes' if x['switched_to_sync'] else 'no'} | {x['writer_during']['mib_s']} MiB/s "
                f"| {_v(x['writer_during']['p99_ms'])} ms |"
            )
        out.append("")
    g = s.get("guest")
    if g and "error" not in g:
        out += [
            "### 5. Guest impact",
            "",
            f"Writers: 64 KiB, queue depth 1, over {g['area_bytes'] / MiB:.0f} MiB; paced at "
            f"{g['writers']['paced']['rate_mib_s']} MiB/s, or unpaced. Chain holding "
            f"{g['data_bytes'] / GiB:.3g} GiB; during = snapshot → pivot.",
            "",
            "| writer | copy mode | before MiB/s | during MiB/s | share | p99 before | "
            "p99 during | migration |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for writer, modes in g["results"].items():
            for mode, x in modes.items():
                out.append(
                    f"| {writer} | {mode} | {x['before']['mib_s']} | {x['during']['mib_s']} | "
                    f"{x['throughput_share']} | {_v(x['before']['p99_ms'])} ms | "
                    f"{_v(x['during']['p99_ms'])} ms | {x['until_pivot_s']} s |"
                )
        out.append("")
    o = s.get("overhead")
    if o and "error" not in o:
        out += [
            "### 6. Orchestration overhead",
            "",
            f"{o['volumes']}-volume chain, {o['data_bytes'] / MiB:.0f} MiB allocated, "
            f"{o['runs']} moves; median (min–max) per step:",
            "",
            "| step | kind | time |",
            "|---|---|---|",
        ]
        for name, spread in o["steps_s"].items():
            kind = "copy" if name in ("sync", "wait_ready") else "control"
            out.append(f"| {name} | {kind} | {_s(spread)} |")
        out += [
            f"| **non-copy steps together** | | **{_s(o['control_s'])}** |",
            f"| whole move | | {_s(o['total_s'])} |",
            "",
        ]
        cli = o.get("vdsclient_movedisk")
        if cli and cli.get("rc") == 0:
            steps = cli["runs"][0]["steps"]
            out += [
                f"`vdsClient --json moveDisk` of the same disk, {len(cli['runs'])} times: "
                f"{_s(cli['seconds'])} end to end, non-copy steps {_s(cli['control_s'])}; "
                "its own step times (first run): "
                + ", ".join(f"{k} {v:.3g} s" for k, v in steps.items()),
                "",
            ]
        elif cli:
            out += [f"`vdsClient moveDisk` failed (exit {cli.get('rc')}): {cli.get('output')}", ""]
    sc = s.get("scale")
    if sc and "error" not in sc:
        cc, gr = sc["concurrency"], sc["growth"]
        out += [
            "### 7. Scale",
            "",
            f"{cc['disks']} disks of {cc['disks']} VMs, {cc['data_per_disk'] / MiB:.0f} MiB "
            f"each: one after another {_s(cc['sequential_s'])}, at once {_s(cc['concurrent_s'])}"
            f" (ratio {cc['ratio']}); failures: {len(cc['failures'])}.",
            "",
            "| allocated | vdsm snapshot → pivot | vdsm copy steps | qemu-img convert |",
            "|---|---|---|---|",
        ]
        for pt in gr["points"]:
            out.append(
                f"| {pt['data_bytes'] / GiB:.3g} GiB | {pt['until_pivot_s']} s | {pt['copy_s']} s"
                f" | {pt['convert_s']} s |"
            )
        f, cf = gr["fit"], gr["convert_fit"]
        out += [
            "",
            f"Least squares: vdsm {f['intercept_s']} s + {f['s_per_gib']} s/GiB (r² {f['r2']});"
            f" qemu-img convert {cf['intercept_s']} s + {cf['s_per_gib']} s/GiB (r² {cf['r2']}),"
            f" all in {gr['virtual_bytes'] / GiB:.3g} GiB disks.",
            "",
            "![time vs allocated data](benchmarks-growth.svg)",
            "",
        ]
    tu = s.get("tuning")
    if tu and "error" not in tu:
        out += [
            "### Tuning evidence: the copy recipe of syncImageData",
            "",
            f"Each volume of a {tu['data_bytes'] / GiB:.3g} GiB 3-volume chain copied into its "
            "twin (made by cloneImageStructure) with image_copy.py's argv plus the variant's "
            "options; cold cache; median (min–max) of the rounds.",
            "",
            "| variant | time | rate |",
            "|---|---|---|",
        ]
        for name, v in tu["variants"].items():
            out.append(
                f"| {name} | {v['median']:.3g} s ({v['min']:.3g}–{v['max']:.3g}) | "
                f"{v['mib_s']:.0f} MiB/s |"
            )
        out.append("")
    return out


def fill(text: str, results: dict[str, Any]) -> str:
    """Replace ``{{section.key.key}}`` with that value of this run's results."""

    def value(match: re.Match[str]) -> str:
        found: Any = results["sections"]
        for key in match[1].split("."):
            if isinstance(found, dict) and key in found:
                found = found[key]
            elif isinstance(found, list) and key.isdigit() and int(key) < len(found):
                found = found[int(key)]
            else:
                return f"?{match[1]}?"
        return _v(found)

    # Keys may hold spaces, commas and slashes ("auto, capped 64 MiB/s"), never dots.
    return re.sub(r"\{\{([\w., /]+)\}\}", value, text)


def render(results: dict[str, Any], results_path: Path) -> str:
    try:
        shown = results_path.resolve().relative_to(REPO)
    except ValueError:
        shown = results_path
    lines = [
        "# Benchmarks: live storage migration against qemu-img and the disk",
        "",
        "<!-- Generated by `python -m bench` from "
        f"{shown}; edit bench/analysis.md and bench/report.py, not this file. -->",
        "",
        "Command (from a fresh clone: `make venv`, `make host` for libvirt, then):",
        "",
        "    .venv/bin/python -m bench",
        "",
        f"This run: `{results.get('command')}` — results in `{shown}`.",
        "",
        "## Machine",
        "",
        *machine(results),
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        "## Figures",
        "",
        *sections(results),
    ]
    if ANALYSIS.exists():
        lines += ["## Analysis and tuning", "", fill(ANALYSIS.read_text().strip(), results), ""]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], results_path: Path, docs: Path) -> None:
    docs.parent.mkdir(parents=True, exist_ok=True)
    write_plots(results, docs.parent, docs.stem)
    docs.write_text(render(results, results_path))
