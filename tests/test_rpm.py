"""`make rpm` builds the RPMs from vdsm.spec.in: the daemon with its systemd unit and
commands, and the test tools in their own subpackage."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_command

REPO = Path(__file__).resolve().parents[1]


def test_make_rpm_builds_the_daemon_package() -> None:
    require_command("rpmbuild")
    build = subprocess.run(["make", "rpm"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    rpms = sorted((REPO / "build" / "rpm" / "RPMS" / "noarch").glob("*.rpm"))
    names = {p.name.split("-0")[0] for p in rpms}
    assert names == {"vdsm", "vdsm-guest"}, rpms
    main = next(p for p in rpms if p.name.startswith("vdsm-0"))
    files = subprocess.run(
        ["rpm", "-qlp", str(main)], capture_output=True, text=True, check=True
    ).stdout.split()
    for wanted in (
        "/usr/bin/vdsmd",
        "/usr/bin/vdsClient",
        "/usr/bin/vdsm-tool",
        "/usr/lib/systemd/system/vdsmd.service",
    ):
        assert wanted in files
    assert any(f.endswith("vdsm_api/vdsm-api.yml") for f in files)
    assert any(f.endswith("vdsm/observe/page.html") for f in files), "the host's web page"
    scripts = subprocess.run(
        ["rpm", "-qp", "--scripts", str(main)], capture_output=True, text=True, check=True
    ).stdout
    assert "vdsm-tool configure" in scripts, "installing makes the host's certificates"
    assert not any("vdsm_guest" in f for f in files), "test tools belong in vdsm-guest"
