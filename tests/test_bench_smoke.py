"""CI's run of the benchmark suite: ``python -m bench --smoke`` (16 MiB disks, one repetition)
against a real vdsmd and libvirt, to prove the harness works end to end. It checks the
results' shape, not the figures: the benchmark is not a test (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_command

pytestmark = pytest.mark.libvirt

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {
    "throughput",
    "sparse",
    "pivot",
    "convergence",
    "guest",
    "overhead",
    "scale",
    "tuning",
    "spm",
    "hosts",
    "peers",
    "devices",
}


def test_smoke_run_produces_every_section(tmp_path: Path) -> None:
    for command in ("qemu-img", "qemu-io", "dd"):
        require_command(command)
    out, work = tmp_path / "out", tmp_path / "work"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--workdir", str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    results = json.loads((out / "smoke.json").read_text())
    assert set(results["sections"]) == SECTIONS
    for name, section in results["sections"].items():
        assert "error" not in section, (name, section.get("traceback"))
        for t in section["targets"]:
            assert {"name", "value", "op", "limit", "met"} <= set(t), (name, t)
    assert results["machine"]["cores"] >= 1
    assert results["sections"]["throughput"]["plot"]["vdsm"], "no throughput samples"
    assert (out / "smoke-throughput.svg").read_text().startswith("<svg")
    assert (out / "smoke-growth.svg").exists()
    # Across hosts, the leases were really in play: held by the VMs' QEMUs with volume leases
    # on, not without, and each attached lease listed held by its host's sanlock daemon.
    hosts = results["sections"]["hosts"]
    assert all(hosts["with_leases"]["top_lease_held_after"].values()), hosts["with_leases"]
    assert not any(hosts["without_leases"]["top_lease_held_after"].values())
    for host in hosts["lease_calls"]["hosts"].values():
        assert host["held_after_attach"] and host["free_after_detach"], host
    # Everything it made is gone: no VM, no disk, no daemon.
    assert list(work.iterdir()) == []
    running = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--uuid"], capture_output=True, text=True
    ).stdout.split()
    assert results["vms"] and not set(results["vms"]) & set(running)
    print(f"smoke run: {seconds:.0f} s")
