"""Fixtures of the functional tests: a real vdsmd, the tiny test guest, VMs on a pool.

The plain ``vdsmd`` fixture is in tests/conftest.py (the guest tools' tests use it too). The
helpers these are built from live in support modules: daemon_helpers (the daemon process,
``wait_task``), storage_helpers, lsm_helpers (VMs and migrations), mover (moveDisk).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, running
from tests.functional.lsm_helpers import VmFixture
from tests.functional.mover import prefill
from vdsm_guest.build import GuestImage, ensure_guest


@pytest.fixture(scope="session")
def guest() -> GuestImage:
    return ensure_guest()


@pytest.fixture
def lsm_vdsmd(tmp_path: Path) -> Iterator[VdsmdProcess]:
    """vdsmd with a short convergence window, so a test sees the switch to sync quickly."""
    daemon = VdsmdProcess(tmp_path / "vdsmd", ["--replication-convergence-window", "3"])
    with running(daemon):
        yield daemon


@pytest.fixture
def vms(lsm_vdsmd: VdsmdProcess, tmp_path: Path) -> Iterator[VmFixture]:
    fixture = VmFixture(lsm_vdsmd, tmp_path)
    try:
        yield fixture
    finally:
        fixture.cleanup()


@pytest.fixture
def moving_vms(lsm_vdsmd: VdsmdProcess, tmp_path: Path) -> Iterator[VmFixture]:
    fixture = VmFixture(lsm_vdsmd, tmp_path)
    prefill(fixture, tmp_path)
    try:
        yield fixture
    finally:
        fixture.cleanup()
