"""The host set-up: libvirt answers, scripts/setup-host.sh is idempotent, the README's commands.

These run the real script and the real virsh; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LIBVIRT_URI, missing, require_command

REPO = Path(__file__).resolve().parent.parent
SETUP_HOST = REPO / "scripts" / "setup-host.sh"
README = REPO / "README.md"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
WATCHED_FILES = (QEMU_CONF, Path("/etc/passwd"), Path("/etc/group"))


def run_setup_host() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SETUP_HOST)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def pids(name: str) -> list[int]:
    proc = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return sorted(int(pid) for pid in proc.stdout.split())


def host_state() -> dict[str, object]:
    """What a second run must leave alone: config files and the daemons' processes."""
    state: dict[str, object] = {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        for path in WATCHED_FILES
    }
    state["libvirtd pids"] = pids("libvirtd")
    state["virtlogd pids"] = pids("virtlogd")
    state["sanlock pids"] = pids("sanlock")
    return state


@pytest.mark.libvirt
def test_virsh_answers_with_the_running_hypervisor() -> None:
    virsh = require_command("virsh")
    proc = subprocess.run(
        [virsh, "-c", LIBVIRT_URI, "version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^Running hypervisor: QEMU \d+\.\d+\.\d+$", proc.stdout, re.MULTILINE), (
        proc.stdout
    )


@pytest.mark.libvirt
def test_setup_host_twice_changes_nothing() -> None:
    if os.geteuid() != 0:
        missing("scripts/setup-host.sh must run as root")
    require_command("pgrep")
    first = run_setup_host()  # normally not the first run at all: `make check` ran it already
    assert first.returncode == 0, first.stdout + first.stderr
    before = host_state()
    assert before["libvirtd pids"], "libvirtd is not running after scripts/setup-host.sh"

    second = run_setup_host()

    assert second.returncode == 0, second.stdout + second.stderr
    assert host_state() == before
    assert "nothing to do" in second.stdout, second.stdout
    assert not re.search(r"\b(starting|creating|writing|installing)\b", second.stdout), (
        second.stdout
    )


def test_readme_opens_with_demo_and_check_commands() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:12]
    assert head[0].startswith("# "), "the README starts with its title"
    fences = [i for i, line in enumerate(head) if line.startswith("```")]
    assert len(fences) >= 2, f"no code block in the README's first lines: {head}"
    block = head[fences[0] + 1 : fences[1]]
    commands = [line.split("#")[0].strip() for line in block if line.split("#")[0].strip()]
    assert commands == ["make demo", "make check"], block
