"""The host set-up: libvirt answers, holds VM leases in sanlock, scripts/setup-host.sh is
idempotent and restarts libvirtd only when it changed its configuration, the README's commands.

These run the real script, the real virsh, libvirtd and sanlock daemon; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LIBVIRT_URI, missing, require_command

REPO = Path(__file__).resolve().parent.parent
SETUP_HOST = REPO / "scripts" / "setup-host.sh"
README = REPO / "README.md"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_SANLOCK_CONF = Path("/etc/libvirt/qemu-sanlock.conf")
LIBVIRTD_PID_FILE = Path("/run/libvirtd.pid")
WATCHED_FILES = (QEMU_CONF, QEMU_SANLOCK_CONF, Path("/etc/passwd"), Path("/etc/group"))
MARKER = "# Written by vdsm scripts/setup-host.sh (container settings, no systemd)."
# What vdsm's volume leases need of libvirt, on any host (blanks stripped).
LEASE_SETTINGS = {
    QEMU_CONF: ['lock_manager="sanlock"'],
    QEMU_SANLOCK_CONF: ["auto_disk_leases=0", "require_lease_for_disks=0"],
}
MiB = 1024**2
HOST_ID = 250  # in a lockspace of its own: never one a pool of the other tests would use


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


def have_systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


def libvirtd_pid() -> int | None:
    """The machine's libvirtd, by its pid file: test hosts run libvirtds of their own."""
    try:
        pid = int(LIBVIRTD_PID_FILE.read_text())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "libvirtd" else None


def host_state() -> dict[str, object]:
    """What a second run must leave alone: config files and the daemons' processes."""
    state: dict[str, object] = {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        for path in WATCHED_FILES
    }
    state["libvirtd pid"] = libvirtd_pid()
    state["libvirtd pids"] = pids("libvirtd")
    state["virtlogd pids"] = pids("virtlogd")
    state["sanlock pids"] = pids("sanlock")
    return state


def active_settings(path: Path) -> list[str]:
    """The settings of a libvirt configuration file, blanks stripped, comments dropped."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [
        re.sub(r"\s", "", line)
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def sanlock_status() -> str:
    proc = subprocess.run(
        [require_command("sanlock"), "client", "status"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@dataclass
class Lockspace:
    """A lockspace the machine's sanlock daemon joined, and volume leases in it."""

    sanlock: Any
    name: str
    directory: Path

    def lease(self) -> tuple[str, Path]:
        """A new volume lease (resource VOL at offset 0 of VOL.lease, as vdsm makes them)."""
        volume = str(uuid.uuid4())
        path = self.directory / f"{volume}.lease"
        with open(path, "wb") as f:
            f.truncate(MiB)
        self.sanlock.write_resource(self.name.encode(), volume.encode(), [(str(path), 0)])
        return volume, path

    def lease_xml(self, volume: str, path: Path) -> str:
        """The ``<lease>`` vdsm puts in a domain's XML for that volume."""
        return (
            f"<lease><lockspace>{self.name}</lockspace><key>{volume}</key>"
            f"<target path='{path}' offset='0'/></lease>"
        )

    def holder(self, volume: str, path: Path) -> int | None:
        """The pid holding that lease through the machine's daemon, None if none does."""
        pattern = rf"^r {re.escape(self.name)}:{volume}:{re.escape(str(path))}:0:\d+ p (\d+)$"
        match = re.search(pattern, sanlock_status(), re.MULTILINE)
        return int(match.group(1)) if match else None


@pytest.fixture(scope="module")
def lockspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lockspace]:
    """A lockspace of its own on the machine's sanlock daemon (joining costs ~3 s, once)."""
    monkeypatch = pytest.MonkeyPatch()
    # The binding reaches the daemon SANLOCK_RUN_DIR names: the machine's, here.
    monkeypatch.delenv("SANLOCK_RUN_DIR", raising=False)
    try:
        import sanlock  # type: ignore[import-not-found]
    except ImportError:
        missing("sanlock's Python binding is not importable from the venv (make sanlock-binding)")
    directory = tmp_path_factory.mktemp("lockspace")
    ids = directory / "ids"
    with open(ids, "wb") as f:
        f.truncate(MiB)
    name = str(uuid.uuid4())
    try:
        sanlock.write_lockspace(name.encode(), str(ids), iotimeout=1)
    except sanlock.SanlockException as e:
        missing(f"the sanlock daemon does not serve requests (make host): {e}")
    sanlock.add_lockspace(name.encode(), HOST_ID, str(ids), iotimeout=1)
    try:
        yield Lockspace(sanlock, name, directory)
    finally:
        sanlock.rem_lockspace(name.encode(), HOST_ID, str(ids))
        monkeypatch.undo()


def domain_xml(name: str, devices: str = "") -> str:
    """A transient domain with no OS and no disk: SeaBIOS spins under TCG, which is enough."""
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
        f"<devices>{devices}<controller type='usb' model='none'/>"
        "<memballoon model='none'/></devices></domain>"
    )


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [require_command("virsh"), "-c", LIBVIRT_URI, *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"virsh {' '.join(args)}: {proc.stderr}"
    return proc


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


@pytest.fixture
def domain(tmp_path: Path) -> Iterator[Any]:
    """``domain(devices)`` starts a transient domain on the machine's libvirtd; its name.
    Every one is destroyed at the end."""
    names: list[str] = []

    def start(devices: str = "") -> str:
        name = f"host-setup-{uuid.uuid4().hex[:8]}"
        xml = tmp_path / f"{name}.xml"
        xml.write_text(domain_xml(name, devices))
        names.append(name)
        virsh("create", str(xml))
        return name

    yield start
    for name in names:
        subprocess.run(
            [require_command("virsh"), "-c", LIBVIRT_URI, "destroy", name],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip


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
    assert before["libvirtd pid"], "libvirtd is not running after scripts/setup-host.sh"

    second = run_setup_host()

    assert second.returncode == 0, second.stdout + second.stderr
    assert host_state() == before
    assert "nothing to do" in second.stdout, second.stdout
    assert not re.search(
        r"\b(starting|restarting|creating|writing|updating|installing)\b", second.stdout
    ), second.stdout


@pytest.mark.libvirt
def test_libvirt_is_set_up_to_hold_vm_leases_in_sanlock() -> None:
    """What vdsm's volume leases need: without lock_manager = "sanlock", libvirt accepts a
    <lease> and ignores it. Written without systemd; under systemd only said."""
    if os.geteuid() != 0:
        missing("scripts/setup-host.sh must run as root")
    run = run_setup_host()
    assert run.returncode == 0, run.stdout + run.stderr
    held = all(
        setting in active_settings(path)
        for path, settings in LEASE_SETTINGS.items()
        for setting in settings
    )
    if have_systemd():
        # A systemd host's configuration is its owner's: the script says what is missing.
        assert held or "NOTE" in run.stdout and 'lock_manager = "sanlock"' in run.stdout, run.stdout
    else:
        assert held, {str(path): active_settings(path) for path in LEASE_SETTINGS}
    # sanlock first: under the sanlock lock manager every QEMU registers with its daemon.
    lines = run.stdout.splitlines()
    first = {
        what: next(i for i, line in enumerate(lines) if line.startswith(f"setup-host: {what}"))
        for what in ("sanlock:", "libvirt")
    }
    assert first["sanlock:"] < first["libvirt"], run.stdout


@pytest.mark.libvirt
def test_the_machines_libvirtd_holds_a_vm_lease_in_sanlock(
    lockspace: Lockspace, domain: Any
) -> None:
    volume, path = lockspace.lease()
    plain = domain()  # no lease: it still starts (require_lease_for_disks = 0)
    name = domain(lockspace.lease_xml(volume, path))
    # QEMU itself holds it, registered with the machine's daemon.
    assert lockspace.holder(volume, path) == qemu_pid(name)
    assert f"p {qemu_pid(plain)} {plain}" in sanlock_status()

    virsh("destroy", name)

    assert lockspace.holder(volume, path) is None


@pytest.mark.libvirt
def test_a_changed_configuration_restarts_libvirtd_and_vms_keep_their_leases(
    lockspace: Lockspace, domain: Any
) -> None:
    if os.geteuid() != 0:
        missing("scripts/setup-host.sh must run as root")
    if have_systemd():
        pytest.skip("under systemd the script never touches libvirt's configuration")
    original = QEMU_SANLOCK_CONF.read_text()
    if MARKER not in original.splitlines():
        pytest.skip(f"{QEMU_SANLOCK_CONF} was configured by hand: the script keeps it as it is")
    volume, path = lockspace.lease()
    name = domain(lockspace.lease_xml(volume, path))
    pid, old_libvirtd = qemu_pid(name), libvirtd_pid()
    assert old_libvirtd is not None
    # An older set-up's file: the script's own, one setting short.
    QEMU_SANLOCK_CONF.write_text(original.replace("require_lease_for_disks = 0\n", ""))
    try:
        started = time.monotonic()
        run = run_setup_host()
        took = time.monotonic() - started
    finally:
        if QEMU_SANLOCK_CONF.read_text() != original:
            QEMU_SANLOCK_CONF.write_text(original)
    assert run.returncode == 0, run.stdout + run.stderr
    assert QEMU_SANLOCK_CONF.read_text() == original
    assert f"restarting it (pid {old_libvirtd})" in run.stdout, run.stdout
    new_libvirtd = libvirtd_pid()
    assert new_libvirtd is not None and new_libvirtd != old_libvirtd
    assert took < 60
    # QEMU outlived its libvirtd and still holds its lease; the new libvirtd took it back.
    assert qemu_pid(name) == pid
    assert lockspace.holder(volume, path) == pid
    assert virsh("domstate", name).stdout.strip() == "running"

    virsh("destroy", name)

    assert lockspace.holder(volume, path) is None
    again = run_setup_host()
    assert again.returncode == 0 and libvirtd_pid() == new_libvirtd, again.stdout


def test_readme_opens_with_demo_and_check_commands() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:12]
    assert head[0].startswith("# "), "the README starts with its title"
    fences = [i for i, line in enumerate(head) if line.startswith("```")]
    assert len(fences) >= 2, f"no code block in the README's first lines: {head}"
    block = head[fences[0] + 1 : fences[1]]
    commands = [line.split("#")[0].strip() for line in block if line.split("#")[0].strip()]
    assert commands == ["make demo", "make check"], block
