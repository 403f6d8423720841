"""The host's sanlock daemon, through the binding the venv links in (make sanlock-binding).

The set-up's promise for the multi-host work: Debian's python3-sanlock imports from the project's
venv, and the daemon that scripts/setup-host.sh started answers: a lockspace joins on a real
``ids`` file and the SDM lease of a real ``leases`` file is acquired, read back and released.
"""

from __future__ import annotations

import errno
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import missing, require_command

MiB = 1024**2
SDM_OFFSET = 1 * MiB  # the SDM lease's slot in dom_md/leases, as VDSM lays it out
HOST_ID = 250  # the highest host id: never one a pool of the other tests would use


def sanlock_module() -> object:
    try:
        import sanlock  # type: ignore[import-not-found]
    except ImportError:
        missing("sanlock's Python binding is not importable from the venv (make sanlock-binding)")
    return sanlock


def test_the_daemon_answers() -> None:
    proc = subprocess.run(
        [require_command("sanlock"), "client", "status"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        missing(f"the sanlock daemon does not answer (make host): {proc.stderr.strip()}")
    assert proc.stdout.startswith("daemon "), proc.stdout


def test_a_lockspace_and_the_sdm_lease_on_real_files(tmp_path: Path) -> None:
    sanlock = sanlock_module()
    ids, leases = tmp_path / "ids", tmp_path / "leases"
    with open(ids, "wb") as f:
        f.truncate(MiB)
    with open(leases, "wb") as f:
        f.truncate(2 * MiB)
    lockspace = str(uuid.uuid4()).encode()
    disks = [(str(leases), SDM_OFFSET)]
    try:
        sanlock.write_lockspace(lockspace, str(ids), iotimeout=1)
        sanlock.write_resource(lockspace, b"SDM", disks)
    except sanlock.SanlockException as e:
        missing(f"the sanlock daemon does not serve requests (make host): {e}")
    started = time.monotonic()
    sanlock.add_lockspace(lockspace, HOST_ID, str(ids), iotimeout=1)
    try:
        assert time.monotonic() - started < 60
        fd = sanlock.register()
        sanlock.acquire(lockspace, b"SDM", disks, slkfd=fd)
        owners = sanlock.read_resource_owners(lockspace, b"SDM", disks)
        assert [o["host_id"] for o in owners] == [HOST_ID]
        assert sanlock.read_resource(str(leases), SDM_OFFSET)["version"] == 1
        sanlock.release(lockspace, b"SDM", disks, slkfd=fd)
        assert sanlock.read_resource_owners(lockspace, b"SDM", disks) == []
    finally:
        sanlock.rem_lockspace(lockspace, HOST_ID, str(ids))
    assert lockspace not in [ls["lockspace"] for ls in sanlock.get_lockspaces()]


def test_a_lockspace_not_joined_is_refused_with_a_misleading_reason(tmp_path: Path) -> None:
    """sanlock answers ENOSPC ("No space left on device") for a lease in a lockspace this host
    has not joined: the multi-host code must check the join itself before it acquires, and say
    so in its own words. This pins the fact down, for sanlock upgrades."""
    sanlock = sanlock_module()
    leases = tmp_path / "leases"
    with open(leases, "wb") as f:
        f.truncate(2 * MiB)
    fd = sanlock.register()
    with pytest.raises(sanlock.SanlockException) as raised:
        sanlock.acquire(b"no-such-lockspace", b"SDM", [(str(leases), SDM_OFFSET)], slkfd=fd)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.args[1:] == ("Sanlock resource not acquired", "No space left on device")
