"""Fixtures of the functional tests: a real vdsmd, the tiny test guest, VMs on a pool.

The plain ``vdsmd`` fixture is in tests/conftest.py (the guest tools' tests use it too). The
helpers these are built from live in support modules: daemon_helpers (the daemon process,
``wait_task``), storage_helpers, lsm_helpers (VMs and migrations), mover (moveDisk).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.background_demo import BackgroundDemo
from tests.functional.daemon_helpers import VdsmdProcess, running
from tests.functional.lsm_helpers import VmFixture
from tests.functional.mover import prefill
from tests.functional.storage_helpers import Storage
from vdsm_guest.build import GuestImage, ensure_guest

# The test whose demo runs in the background of the session (tests/functional/background_demo.py).
CLUSTER_DEMO_TEST = "test_cluster_demo_moves_across_hosts_and_fails_over"
CLUSTER_DEMO = pytest.StashKey[BackgroundDemo]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Its test runs last: by then the demo has long finished, and the test only reads it.
    items.sort(key=lambda item: item.name == CLUSTER_DEMO_TEST)


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(item.name == CLUSTER_DEMO_TEST for item in session.items):
        session.config.stash[CLUSTER_DEMO] = BackgroundDemo("cluster_demo.py")


def pytest_sessionfinish(session: pytest.Session) -> None:
    demo = session.config.stash.get(CLUSTER_DEMO, None)
    if demo is not None:
        demo.stop()  # the session ended before the test collected it (interrupted, -x)


@pytest.fixture
def cluster_demo(request: pytest.FixtureRequest) -> BackgroundDemo:
    """The cluster demo, started when the session collected its test."""
    return request.config.stash[CLUSTER_DEMO]


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


@pytest.fixture(scope="module")
def shared_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Storage, Path]]:
    """One lsm_vdsmd and its pool for the tests of a module that leave the daemon running:
    a new pool costs ~3 s of sanlock's host id acquire (2 x io_timeout + 1 s), paid here once.
    Each test still gets an image and VMs of its own (``pooled_moving_vms``)."""
    root = tmp_path_factory.mktemp("shared-pool")
    daemon = VdsmdProcess(root / "vdsmd", ["--replication-convergence-window", "3"])
    with running(daemon):
        yield Storage(daemon, root), root


@pytest.fixture
def pooled_moving_vms(shared_pool: tuple[Storage, Path]) -> Iterator[VmFixture]:
    """``moving_vms`` on the module's shared pool: a fresh image (prefilled) and VMs of its
    own. For tests that never kill, stop or restart vdsmd."""
    storage, root = shared_pool
    fixture = VmFixture(storage.daemon, root, storage=storage)
    prefill(fixture, root)
    try:
        yield fixture
    finally:
        fixture.cleanup()
        assert storage.daemon.running, "a test on the shared pool stopped its vdsmd"
