"""The "Figures" part of docs/benchmarks.md: one section of tables per measure (throughput,
sparse disks, pivot stall, convergence, guest impact, overhead, scale, tuning, SPM failover,
moves across hosts and their volume leases),
each from that measure's results, plus the number formatting the whole report shares.
bench/report.py assembles the page around it."""

from __future__ import annotations

from typing import Any

GiB = 1024**3
MiB = 1024**2


def fmt(value: Any, digits: int = 3) -> str:
    """A value for a table cell or a placeholder: "—" when the run did not measure it, floats
    to ``digits`` significant figures, and from 1000 up whole (where ``g`` would go to 1e+03)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def fmt_spread(spread: dict[str, float]) -> str:
    """Repeated timings as "median s (min–max)"; "—" when there were none."""
    if not spread:
        return "—"
    return f"{spread['median']:.3g} s ({spread['min']:.3g}–{spread['max']:.3g})"


def sections(results: dict[str, Any]) -> list[str]:
    """The lines of every measure's section, in the order of the docs; a measure that was not
    run, or failed (the targets table shows its error), has no section."""
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
            f"| vdsm migration, snapshot → pivot | {fmt_spread(t['vdsm_until_pivot_s'])} | "
            f"{t['data_bytes'] / MiB / t['vdsm_until_pivot_s']['median']:.0f} MiB/s |",
            f"| vdsm copy phase (replicate start → READY) | {t['vdsm_copy_phase_s']:.3g} s | "
            f"{t['vdsm_rate_mib_s']:.0f} MiB/s |",
            f"| vdsm whole move incl. delete + merge | {fmt_spread(t['vdsm_total_s'])} | |",
            f"| (a) qemu-img convert `{t['best_flags']}` + fsync | {fmt_spread(t['convert_s'])} | "
            f"{t['convert_rate_mib_s']:.0f} MiB/s |",
            f"| cp --sparse=always of the 3 files + fsync | {fmt_spread(t['cp_s'])} | "
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
                f"{lay[name]['data'] / GiB:.3g} GiB | {fmt_spread(sp['until_pivot_s'][name])} | "
                f"{fmt_spread(sp['convert_s'][name])} |"
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
            f"Writer: 4 KiB, queue depth 1; idle (no migration) p50 {fmt(p['idle']['p50_ms'])} ms, "
            f"p99 {fmt(p['idle']['p99_ms'])} ms.",
            "",
            "| run | Finish call | steady p50 / p99 (READY mirror) | steady max, same length "
            "| max around the pivot | max overlapping the call | added (max − p99) | "
            "then deleting the source: max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, x in enumerate(p["runs"], start=1):
            delete = x.get("delete_source", {}).get("max_ms")
            out.append(
                f"| {n} | {x['pivot_call_ms']:.1f} ms | {fmt(x['steady']['p50_ms'])} / "
                f"{fmt(x['steady']['p99_ms'])} ms | {fmt(x['steady_same_length_max_ms'])} ms | "
                f"{fmt(x['around_max_ms'])} ms ({x['around_writes']} writes) | "
                f"{fmt(x['during_call_max_ms'])} ms | {fmt(x['stall_ms'])} ms | {fmt(delete)} ms |"
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
                f"| {fmt(x['writer_during']['p99_ms'])} ms |"
            )
        out.append("")
    g = s.get("guest")
    if g and "error" not in g:
        out += [
            "### 5. Guest impact",
            "",
            f"Writers: 64 KiB, queue depth 1, over {g['area_bytes'] / MiB:.0f} MiB; paced at "
            f"{g['writers']['paced']['rate_mib_s']} MiB/s, or unpaced. Chain holding "
            f"{g['data_bytes'] / GiB:.3g} GiB; during = snapshot → pivot. The copy rate "
            "adaptive (vdsmd's default; the governors see the writer's counters), then not "
            "(`--no-adaptive-copy-rate`, no cap: every copy at full speed).",
            "",
            "| writer | copy mode | rate | before MiB/s | during MiB/s | share | p99 before | "
            "p99 during | migration |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        fixed = g.get("not_adaptive")
        rows = [
            (writer, mode, "adaptive" if fixed is not None else "", x)
            for writer, modes in g["results"].items()
            for mode, x in modes.items()
        ]
        rows += [(writer, "auto", "not adaptive", x) for writer, x in (fixed or {}).items()]
        for writer, mode, rate, x in rows:
            out.append(
                f"| {writer} | {mode} | {rate} | {x['before']['mib_s']} | "
                f"{x['during']['mib_s']} | {x['throughput_share']} | "
                f"{fmt(x['before']['p99_ms'])} ms | {fmt(x['during']['p99_ms'])} ms | "
                f"{x['until_pivot_s']} s |"
            )
        idle = g.get("idle_until_pivot_s")
        if idle:
            out += [
                "",
                "The idle guest (no writer), auto mode, snapshot → pivot, alternating: adaptive "
                + ", ".join(f"{x} s" for x in idle["adaptive"])
                + "; not adaptive "
                + ", ".join(f"{x} s" for x in idle["not adaptive"])
                + f"; ratio of the medians {g['idle_ratio']}.",
            ]
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
            out.append(f"| {name} | {kind} | {fmt_spread(spread)} |")
        out += [
            f"| **non-copy steps together** | | **{fmt_spread(o['control_s'])}** |",
            f"| whole move | | {fmt_spread(o['total_s'])} |",
            "",
        ]
        cli = o.get("vdsclient_movedisk")
        if cli and cli.get("rc") == 0:
            steps = cli["runs"][0]["steps"]
            out += [
                f"`vdsClient --json moveDisk` of the same disk, {len(cli['runs'])} times: "
                f"{fmt_spread(cli['seconds'])} end to end, "
                f"non-copy steps {fmt_spread(cli['control_s'])}; "
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
            f"each: one after another {fmt_spread(cc['sequential_s'])}, "
            f"at once {fmt_spread(cc['concurrent_s'])}"
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
            "twin (made by cloneImageStructure) with image_copy.py's argv (less its cache "
            "options) plus the variant's options; cold cache; median (min–max) of the rounds.",
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
        z = tu.get("zero_detection")
        if z:
            out += [
                f"Zero detection, on a chain of {z['data_bytes'] / GiB:.3g} GiB of data of which "
                f"{z['zero_share']:.0%} is zero-filled chunks (source volumes allocate "
                f"{z['source_allocated_bytes'] / MiB:.0f} MiB); vdsm's recipe as above:",
                "",
                "| variant | time | allocated by the twins |",
                "|---|---|---|",
            ]
            for name, v in z["variants"].items():
                out.append(
                    f"| {name} | {v['median']:.3g} s ({v['min']:.3g}–{v['max']:.3g}) | "
                    f"{v['allocated_bytes'] / MiB:.0f} MiB |"
                )
            out.append("")
    sp_ = s.get("spm")
    if sp_ and "error" not in sp_:
        out += spm_section(sp_)
    h = s.get("hosts")
    if h and "error" not in h:
        out += hosts_section(h)
    p = s.get("peers")
    if p and "error" not in p:
        out += peers_section(p)
    d = s.get("devices")
    if d and "error" not in d:
        out += devices_section(d)
    return out


def devices_section(d: dict[str, Any]) -> list[str]:
    """12. The destination on a second device (bench/measures/devices.py)."""
    src, dst = d["source_read"], d["destination_write"]
    chain, reads = d["chain_read"], d["chain_read_mib_s"]
    return [
        "### 12. Two devices: the destination on a device of its own",
        "",
        f"The same idle VM's 3-volume chain ({d['data_bytes'] / MiB:.0f} MiB allocated) moved "
        "from a domain on the disk to a domain on XFS over a loop device backed by memory, "
        "and between the disk's two domains, alternating; copy phase = replicate + sync + "
        "wait_ready, median (min–max):",
        "",
        "| destination | copy phase | data rate |",
        "|---|---|---|",
        f"| a second device (memory) | {fmt_spread(d['two_devices_copy_s'])} | "
        f"{d['two_devices_mib_s']} MiB/s |",
        f"| the same disk | {fmt_spread(d['one_device_copy_s'])} | {d['one_device_mib_s']} MiB/s |",
        "",
        f"The source's read rate, the reference: the chain's own allocated data read next to "
        f"each copy to the memory device (O_DIRECT, 4 MiB requests, cold), "
        f"{chain['mib_s']} MiB/s, the median of the better way ({chain['best']}); one file "
        f"after another {fmt_list(reads['one_after_another'])}, the three at once "
        f"{fmt_list(reads['at_once'])} MiB/s.",
        "",
        f"Beside it, a scratch file on the source's file system reads {src['mib_s']} MiB/s "
        f"({src['best']}), and the memory device writes {dst['mib_s']} MiB/s ({dst['best']}); "
        "O_DIRECT, 4 MiB requests, the best median of each tool's runs.",
        "",
    ]


def fmt_list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in values) + "]"


def peers_section(p: dict[str, Any]) -> list[str]:
    """11. The peers: the same chain and writer, moved four ways (bench/measures/peers.py)."""
    w = p["writer"]
    out = [
        "### 11. The peers, side by side",
        "",
        f"The same chain layout ({p['volumes']} volumes, {p['data_bytes'] / MiB:.0f} MiB "
        f"allocated) on a fresh running VM for each row, a writer of {w['block_size'] // 1024} "
        f"KiB at queue depth {w['queue_depth']} paced at {w['rate_mib_s']:g} MiB/s throughout.",
        "",
        "Time: until the VM runs on the destination (the pivot; the peers end there). vdsm's "
        "move then deletes the source and merges its auto-snapshot: the whole move in brackets.",
        "",
        "| how | time | bytes on the destination | volumes after | writer during / before "
        "| p99 before → during |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in p["rows"].items():
        before, during = row["before"], row["during"]
        whole = row.get("whole_seconds", row["seconds"])
        time_s = f"{row['seconds']:.3g} s" + (
            f" ({whole:.3g} s)" if whole > row["seconds"] + 0.0005 else ""
        )
        out.append(
            f"| {name} | {time_s} | {row['bytes_on_destination'] / MiB:.1f} MiB "
            f"| {row['chain_volumes']} | {fmt(row['throughput_share'])} "
            f"| {fmt(before['p99_ms'])} → {fmt(during['p99_ms'])} ms |"
        )
    return [*out, ""]


# The rows of the SPM table: label, the figure, sanlock's figure for it, the runs it sums up
# (a failover's runs also show the lease version before and after).
SPM_ROWS = (
    ("lockspace join: connectStoragePool → repoStats shows the host id acquired", "join", "join",
     "joins"),
    ("… the host's sanlock daemon lists the lockspace joined", "join_sanlock", "join", "joins"),
    ("spmStart, the lease free: task start → getSpmStatus says SPM", "spm_start", "spm_start",
     "clean"),
    ("(a) clean handoff: spmStop on the SPM → the other host's spmStart → SPM", "clean", "clean",
     "clean"),
    ("(b) the SPM's vdsmd SIGKILLed → the other host's spmStart → SPM", "crash", "crash",
     "crash"),
    ("(c) hung SPM (vdsmd SIGSTOPped) → fenceSpmStorage → spmStart → SPM", "fence", "fence",
     "fence"),
    ("… of which: until the holder was killed by its sanlock daemon and the lease free",
     "fence_lease_free_s", "fence", "fence"),
    ("(d) the whole SPM host dies → spmStart retried → SPM", "dead_host", "dead_host",
     "dead_host"),
)  # fmt: skip
FAILOVERS = ("clean", "crash", "fence", "dead_host")


def _spm_spread(spread: dict[str, float], runs: int) -> str:
    """Seconds to 3 significant figures, and tenths from 100 s up (sanlock's dead-host delays
    are whole seconds: 140 s and 140.8 s differ); one run has no range."""

    def sec(v: float) -> str:
        return f"{v:.3g}" if v < 100 else f"{v:.1f}"

    if runs == 1:
        return f"{sec(spread['median'])} s"
    return f"{sec(spread['median'])} s ({sec(spread['min'])}–{sec(spread['max'])})"


def spm_section(sp: dict[str, Any]) -> list[str]:
    """Section 9: one row per figure and io_timeout, with sanlock's own figure beside it."""
    profiles = sp["profiles"]
    out = [
        "### 9. SPM: lockspace join, spmStart and failover",
        "",
        "Two hosts on this machine (vdsm_guest/cluster.py: each its own sanlock daemon, host id "
        "and vdsmd on an address of its own) sharing two file domains of the local disk; the "
        "domains made with sanlock io_timeout "
        + " or ".join(str(n) for n in sp["io_timeouts"])
        + " (1: the test machines'; 10: VDSM's production default, vdsmd's too). vdsmd's domain "
        f"monitor checks every {sp['monitor_interval_s']} s (its default is 10 s). Failover "
        "time: from the fault (or the spmStop call) until the new SPM's getSpmStatus says SPM, "
        "as the client sees it (tasks polled every 20 ms); the hosts ran no VM and no SPM "
        "task, and the bench acts on a fault at once, as an engine that had already decided "
        f"would. Median (min–max) of {sp['repeat']} runs, "
        "alternating the SPM between the hosts; the dead host "
        + (
            f"once per io_timeout (it waits out sanlock's dead-host delay), spmStart retried "
            f"every {sp['retry_s']} s after each refusal."
            if sp.get("dead_host_runs")
            else "not in this run (smoke)."
        ),
        "",
        "| what | io_timeout | runs | measured | sanlock's own figure | lease version (lver) |",
        "|---|---|---|---|---|---|",
    ]
    for label, key, exp, source in SPM_ROWS:
        for n, p in profiles.items():
            spread = p["figures"].get(key)
            if not spread:
                continue
            runs = p["joins"] if source == "joins" else p["runs"].get(source, [])
            lo, hi = p["expected"][exp]["range_s"]
            lver = ""
            if key in FAILOVERS:
                growth = "/".join(sorted({str(x["lver_growth"]) for x in runs}))
                each = ", ".join(f"{x['lver_before']}→{x['lver_after']}" for x in runs)
                lver = f"+{growth} ({each})"
            out.append(
                f"| {label} | {n} | {len(runs)} | {_spm_spread(spread, len(runs))} | "
                f"{lo}–{hi} s | {lver} |"
            )
    out.append("")
    out += [
        "sanlock's figures (its src/timeouts.h, N = io_timeout): joining with a free host id "
        "takes delta_short_delay = 2N plus up to 3 I/Os of N each (2N–5N); a free paxos lease "
        "(spmStart, and (a), (b), where the lease is free at once) takes 6 I/Os of up to N "
        "(0–6N); a forced request (c) is published in the fencing host's next delta-lease "
        "renewal and read in the holder's (each every 2N), whose daemon then SIGKILLs the "
        "holder (0–4N); a dead host's leases are free host_dead_seconds = 8N + 60 after its "
        "last renewal, which came up to 2N before the kill.",
        "",
    ]
    for n, p in profiles.items():
        for x in p["runs"].get("dead_host", []):
            out += [
                f"(d) at io_timeout {n}: {x['attempts']} spmStart attempts; sanlock refused "
                f"(651) for the first {x['refused_until_s']:.3g} s, while host {x['from']} "
                f"still looked alive, then the last attempt waited {x['last_attempt_s']:.3g} s "
                "in sanlock until the lease was free.",
                "",
            ]
    firsts = ", ".join(
        f"{p['first_spm_start_s']:.3g} s at io_timeout {n}" for n, p in profiles.items()
    )
    out += [f"The first spmStart of the new pool (host 1, just joined) took {firsts}.", ""]
    return out


# The steps of a move across hosts: where each goes, and which leases it moves (volume leases
# on): "+" QEMU acquires (attachDeviceFlags), "−" QEMU releases (detachDeviceFlags), "SPM"
# the SPM's vdsmd holds them for the write or the delete.
HOSTS_STEPS = (
    ("create_snapshot", "SPM", "— (createVolume formats the new volume's lease)"),
    ("snapshot", "VM host", "+ the new top's, − the old top's"),
    ("clone", "SPM", "— (the twins' leases formatted)"),
    ("replicate", "VM host", "+ the destination leaf's"),
    ("sync", "SPM", "SPM: the twins', while it writes them"),
    ("wait_ready", "VM host", "—"),
    ("pivot", "VM host", "− the source leaf's"),
    ("delete_source", "SPM", "SPM: each deleted volume's, until it is gone"),
    ("merge", "VM host", "+ the base's; − the merged top's when the commit ends"),
    ("delete_snapshot", "SPM", "SPM: the deleted volume's"),
)


def _ms(spread: dict[str, float]) -> str:
    """Seconds shown as "median ms (min–max)"."""
    if not spread:
        return "—"
    return (
        f"{1000 * spread['median']:.3g} ms ({1000 * spread['min']:.3g}–{1000 * spread['max']:.3g})"
    )


def _signed(seconds: float) -> str:
    return f"{seconds:+.3f} s"


def _yes(flags: dict[str, bool]) -> str:
    return ", ".join(
        f"{'yes' if flags.get(kind) else 'no'} ({label})"
        for kind, label in (("same_host", "one host"), ("cross_host", "across hosts"))
    )


def hosts_section(h: dict[str, Any]) -> list[str]:
    """Section 10: the same move on one host and across hosts side by side, per step; the
    lease calls; the verbs with volume leases and without."""
    on, off = h["with_leases"], h["without_leases"]
    same, cross = on["kinds"]["same_host"], on["kinds"]["cross_host"]
    diff = on["cross_minus_same_s"]
    out = [
        "### 10. Across hosts: the SPM on one host, the VM on another",
        "",
        "Two hosts on this machine (vdsm_guest/cluster.py), both running VMs, each on a "
        "libvirtd of its own whose lock manager is sanlock on the host's own sanlock daemon: "
        "every QEMU holds its volume leases as its host. Host 1 made the pool and is its SPM; "
        "host 2 joined it (repoStats showed both lockspaces acquired on both hosts before any "
        "VM started). Each host runs one VM (BIOS only, 64 MiB) on a "
        f"{h['volumes']}-volume chain of {h['data_bytes'] / MiB:.0f} MiB allocated "
        f"({h['virtual_bytes'] / GiB:.3g} GiB virtual); two file domains of the local disk. "
        "**One host**: the disk of the VM on host 1 moved, every verb to host 1. **Across "
        "hosts**: the disk of the VM on host 2 moved, the storage verbs and task waits to host "
        "1 (the SPM), the VM verbs to host 2. Each disk moved back and forth "
        f"{h['repeat']} time{'s' if h['repeat'] != 1 else ''} with volume leases on (the "
        "default; in the blocks described below, each beginning with one untimed move per "
        "disk), the two kinds alternating (each round in the other order than the last); "
        "median (min–max) per step, as the client saw it (polling every 20 ms):",
        "",
        "| step | across hosts, sent to | one host | across hosts | difference of medians |",
        "|---|---|---|---|---|",
    ]
    for name, where, _ in HOSTS_STEPS:
        out.append(
            f"| {name} | {where} | {fmt_spread(same['steps_s'][name])} | "
            f"{fmt_spread(cross['steps_s'][name])} | {_signed(diff[name])} |"
        )
    out += [
        f"| non-copy steps together | | {fmt_spread(same['control_s'])} | "
        f"{fmt_spread(cross['control_s'])} | {_signed(diff['control'])} |",
        f"| **whole move** | | **{fmt_spread(same['total_s'])}** | "
        f"**{fmt_spread(cross['total_s'])}** | **{_signed(diff['total'])}** |",
        "",
        "After the moves, each VM's host's sanlock daemon listed the lease of the disk's top "
        f"volume held: {_yes(on['top_lease_held_after'])}.",
        "",
    ]
    calls = h["lease_calls"]
    hosts = calls["hosts"]
    out += [
        "The lease calls themselves: the lease of a spare volume (no other writer) attached to "
        "and detached from each running VM on its host's libvirt, "
        f"{calls['lease_ops']} times per VM, each call timed; XMLDesc is what vdsm reads "
        "before each attach (the leases the VM holds already):",
        "",
        "| libvirt call on a running VM | " + " | ".join(f"host {n}" for n in hosts) + " | all |",
        "|---|" + "---|" * (len(hosts) + 1),
    ]
    for op, label in (
        ("attach", "`attachDeviceFlags(<lease>, VIR_DOMAIN_AFFECT_LIVE)`: sanlock acquires it "
         "for QEMU"),
        ("detach", "`detachDeviceFlags(<lease>, VIR_DOMAIN_AFFECT_LIVE)`: released"),
        ("xmldesc", "`XMLDesc(0)`"),
    ):  # fmt: skip
        cells = " | ".join(_ms(x[f"{op}_s"]) for x in hosts.values())
        out.append(f"| {label} | {cells} | {_ms(calls[f'{op}_s'])} |")
    checks = ", ".join(
        f"host {n}: {'yes' if x['held_after_attach'] else 'no'} / "
        f"{'yes' if x['free_after_detach'] else 'no'}"
        for n, x in hosts.items()
    )
    out += [
        "",
        "Listed held by the host's sanlock daemon after the first attach / free after the last "
        f"detach: {checks}.",
        "",
    ]
    off_same, off_cross = off["kinds"]["same_host"], off["kinds"]["cross_host"]
    cost = h["lease_cost_s"]
    out += [
        "The verbs with volume leases and without: the same moves of the same disks with both "
        "vdsmds started with `--no-volume-leases`, in blocks one after the other: leases "
        + ", ".join(
            f"{setting} for {rounds} round{'s' if rounds != 1 else ''}"
            for setting, rounds in h["blocks"]
        )
        + ". Between two blocks the VMs were destroyed, both vdsmds "
        "restarted with the other setting ("
        + ", ".join(f"{x:.3g} s" for x in h["restarts_s"])
        + "; their sanlock daemons kept the lockspaces, host 1 started the SPM again) and the "
        "VMs started again, each block beginning with one untimed move per disk. "
        "Medians, seconds. The storage verbs are tasks, seen through the client's 20 ms polls: "
        "their times come in steps of about 20 ms, so a difference of one step there is a "
        "task that ended just before or just after a poll (the merge too is waited for by "
        "polling getVmStats); snapshot, replicate and pivot are single calls, timed as they "
        "return:",
        "",
        "| step | leases it moves | one host: on | off | on − off | across hosts: on | off | "
        "on − off |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def med(kind: dict[str, Any], name: str) -> str:
        figures = kind["steps_s"][name] if name in kind["steps_s"] else kind[f"{name}_s"]
        return f"{figures['median']:.3g}"

    rows = [(name, name, moved) for name, _, moved in HOSTS_STEPS]
    rows += [
        ("vm_verbs", "the VM verbs together (snapshot, replicate, pivot, merge)", "3 +, 3 −"),
        ("control", "non-copy steps together", ""),
        ("total", "**whole move**", ""),
    ]
    for name, label, moved in rows:
        out.append(
            f"| {label} | {moved} | {med(same, name)} | {med(off_same, name)} | "
            f"{_signed(cost['same_host'][name])} | {med(cross, name)} | "
            f"{med(off_cross, name)} | {_signed(cost['cross_host'][name])} |"
        )
    out += [
        "",
        "Without leases, the top volume's lease was listed held after the moves: "
        f"{_yes(off['top_lease_held_after'])}.",
        "",
    ]
    return out
