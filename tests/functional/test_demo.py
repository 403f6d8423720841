"""The demos run in CI: `make demo`'s live migration under guest writes, verified; and
`make cluster-demo`'s, across two hosts, then the SPM host killed and the other taking over."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import require_command
from tests.functional.background_demo import BackgroundDemo
from tests.functional.daemon_helpers import REPO

pytestmark = pytest.mark.libvirt


def run_demo(script: str) -> str:
    """Run one of the demos as `make` would; its output, once it succeeded."""
    require_command("qemu-img")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_demo_moves_the_disk_with_no_lost_write() -> None:
    out = run_demo("demo.py")
    assert "moved in" in out and "time in pivot" in out
    assert "acknowledged writes present" in out
    assert out.count(": identical") == 2
    assert "no lost write" in out.splitlines()[-1]


# It waits out sanlock's dead-host delay (about 70 s) on purpose, so it runs in the background
# from the start of the session (the cluster_demo fixture); here it is waited for and checked.
@pytest.mark.slow
def test_cluster_demo_moves_across_hosts_and_fails_over(cluster_demo: BackgroundDemo) -> None:
    require_command("qemu-img")
    code, out, err = cluster_demo.finish(timeout=600)
    assert code == 0, out[-4000:] + err[-4000:]
    assert "on the SPM 127.0.0.2" in out and "on the VM host 127.0.0.3" in out
    assert "acknowledged writes present" in out and out.count(": identical") == 2
    assert "held by pid" in out  # host 2's QEMU holds the disk's lease
    assert "host 2 is the SPM" in out and "spmId 1 → 2" in out
    assert "no lost write" in out.splitlines()[-1]
