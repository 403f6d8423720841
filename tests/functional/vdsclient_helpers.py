"""Shared by the vdsClient functional tests (test_vdsclient*.py): running the real CLI.

``vdsclient`` runs it as a subprocess from the repository, as an operator would, and returns
whatever it did; ``ok`` requires success. Not a test module: tests/functional/conftest.py
registers it for pytest's assert rewriting, so a failed ``ok`` shows the exit code and stderr.
"""

from __future__ import annotations

import subprocess
import sys

from tests.functional.daemon_helpers import REPO

CLI_TIMEOUT = 120


def vdsclient(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run vdsClient with ``args``; return what it did, whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "vdsm_cli.vdsclient", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(*args: str) -> str:
    """Run vdsClient, require exit 0 and a quiet stderr; return stdout."""
    proc = vdsclient(*args)
    assert proc.returncode == 0, f"vdsClient {' '.join(args)}: rc={proc.returncode}\n{proc.stderr}"
    assert proc.stderr == ""
    return proc.stdout
