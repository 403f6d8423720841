"""The demo (`make demo`'s main job) runs in CI: a live migration under guest writes, verified."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import require_command
from tests.functional.daemon_helpers import REPO

pytestmark = pytest.mark.libvirt


def test_demo_moves_the_disk_with_no_lost_write() -> None:
    require_command("qemu-img")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "moved in" in out and "time in pivot" in out
    assert "acknowledged writes present" in out
    assert out.count(": identical") == 2
    assert "no lost write" in out.splitlines()[-1]
