"""The README's walkthrough, run exactly as written (in its own directory and port): a pool,
two domains, a disk with a snapshot chain, a VM with a live snapshot, and a restart of vdsmd
the VM does not notice — all with vdsClient."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_command
from tests.functional.daemon_helpers import REPO
from vdsm_guest.local_vdsmd import leave_lockspaces

pytestmark = pytest.mark.libvirt

START, END = "<!-- walkthrough-start -->", "<!-- walkthrough-end -->"


def walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split(START, 1)[1].split(END, 1)[0]
    return block.split("```sh\n", 1)[1].rsplit("```", 1)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_walkthrough_works_as_written(tmp_path: Path) -> None:
    require_command("qemu-img")
    require_command("virsh")
    if not (REPO / ".venv" / "bin" / "vdsmd").exists():
        pytest.fail("the README assumes .venv (make venv); it is missing")
    env = {**os.environ, "PORT": str(free_port()), "WORK": str(tmp_path / "work")}
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walkthrough()],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        leave_lockspaces([tmp_path])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # After the restart: still Up, on the 3-volume chain, and the guest still writing.
    after = out.rsplit("status = Up", 2)
    assert len(after) == 3, out[-3000:]
    assert out.count("finished success") == 5  # three createVolume, spmStart twice
    assert "spmStatus = SPM" in out
    assert "VDSMW seq=" in out
    assert out.count("moved to domain") == 2  # live, then back offline
    assert "offline (the VM is Down)" in out
