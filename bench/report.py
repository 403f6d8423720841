"""docs/benchmarks.md from a results JSON: the machine, the command, every figure side by side
with its target, the plots, and the analysis (bench/analysis.md, written by people from the
numbers; ``{placeholders}`` in it are filled from the results). This module assembles the page
and draws the plots; each measure's tables come from bench/report_sections.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench import svg
from bench.daemon import REPO
from bench.report_sections import GiB, fmt, sections

ANALYSIS = Path(__file__).with_name("analysis.md")


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


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| # | measure | target | measured | met |", "|---|---|---|---|---|"]
    for n, (name, section) in enumerate(results["sections"].items(), start=1):
        if "error" in section:
            lines.append(f"| {n} | {name} | — | **failed**: {section['error']} | no |")
            continue
        for t in section.get("targets", []):
            lines.append(
                f"| {n} | {t['name']} | {t['op']} {fmt(t['limit'])}{t['unit']} | "
                f"{fmt(t['value'], 4)}{t['unit']} | {'yes' if t['met'] else '**no**'} |"
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


def provenance(results: dict[str, Any], shown: Path) -> list[str]:
    """Which run measured what: one run, or (``composed``) sections measured in later runs
    put together with the sections of an earlier results file."""
    composed = results.get("composed")
    if not composed:
        return [f"This run: `{results.get('command')}` — results in `{shown}`."]
    base = composed["base"]
    lines = [
        f"This page puts together sections measured in separate runs — results in `{shown}`:",
        "",
    ]
    for run in composed["runs"]:
        lines.append(
            f"- {_section_list(results, run['sections'])}: measured by "
            f"`{run['command']}`, started {run['started']}, took {run['seconds']} s, at vdsm "
            f"commit {run['commit']}" + (f" ({run['tree']})" if run.get("tree") else "") + "."
        )
    lines.append(
        f"- {_section_list(results, base['sections'])}: from the earlier run in "
        f"`{base['file']}` (`{base['command']}`, started {base['started']}, at vdsm commit "
        f"{base['commit']}), not measured again."
    )
    if composed.get("note"):
        lines += ["", composed["note"]]
    return lines


def _section_list(results: dict[str, Any], names: list[str]) -> str:
    """``names`` with the numbers the targets table gives them: "sections 1–8 (…)"."""
    order = list(results["sections"])
    numbers = [order.index(name) + 1 for name in names if name in order]
    label = ", ".join(names)
    if not numbers:
        return label
    if len(numbers) == 1:
        return f"section {numbers[0]} ({label})"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"sections {numbers[0]}–{numbers[-1]} ({label})"
    return f"sections {', '.join(map(str, numbers))} ({label})"


def machine_intro(results: dict[str, Any]) -> list[str]:
    composed = results.get("composed")
    if not composed:
        return []
    return [f"{_section_list(results, composed['base']['sections']).capitalize()}:", ""]


def other_machines(results: dict[str, Any]) -> list[str]:
    """The machine of each composed run whose machine is not the page's."""
    keys = ("cpu", "cores", "kernel", "memory_gib")
    own = results.get("machine", {})
    lines = []
    shown: list[dict[str, Any]] = []  # the runs listed so far, on machines other than the page's
    for run in (results.get("composed") or {}).get("runs", []):
        m = run.get("machine", {})
        if not m or all(m.get(k) == own.get(k) for k in keys):
            continue
        same = next((x for x in shown if all(x["machine"].get(k) == m.get(k) for k in keys)), None)
        where = (
            f"on the machine of {_section_list(results, same['sections'])} (the same CPU, "
            "memory and kernel)"
            if same
            else "on another machine"
        )
        shown.append(run)
        fs = m.get("filesystem", {})
        lines += [
            "",
            f"{_section_list(results, run['sections']).capitalize()}, {where}:",
            "",
            f"- CPU: {m.get('cpu')} — {m.get('cores')} cores; memory {m.get('memory_gib')} GiB",
            f"- Disk: one local disk `{fs.get('device')}`, {fs.get('fstype')} on "
            f"`{fs.get('mount')}` ({fs.get('size_gib')} GiB, {fs.get('free_gib')} GiB free at "
            "the start)",
            f"- Kernel {m.get('kernel')}; {m.get('qemu_img')}; libvirt {m.get('libvirt')}; "
            f"Python {m.get('python')}",
            f"- vdsm commit {run['commit']}; run started {run['started']}, took {run['seconds']} s",
        ]
    return lines


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
        return fmt(found)

    # Keys may hold spaces, commas, slashes and dashes ("auto, capped 64 MiB/s", "virsh
    # blockcopy --pivot"), never dots.
    return re.sub(r"\{\{([\w., /-]+)\}\}", value, text)


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
        *provenance(results, shown),
        "",
        "## Machine",
        "",
        *machine_intro(results),
        *machine(results),
        *other_machines(results),
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
