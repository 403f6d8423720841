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
# The flags of ``lsm_vdsmd`` and ``shared_pool``'s daemon: a short convergence window, so a
# test sees the switch to sync quickly.
LSM_ARGS = ["--replication-convergence-window", "3"]


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
    daemon = VdsmdProcess(tmp_path / "vdsmd", LSM_ARGS)
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


def _shared(root: Path, extra_args: list[str]) -> Iterator[tuple[Storage, Path]]:
    """A vdsmd started on ``root`` with ``extra_args``, and its pool of two domains there."""
    daemon = VdsmdProcess(root / "vdsmd", extra_args)
    with running(daemon):
        yield Storage(daemon, root), root


def _vms_on(shared: tuple[Storage, Path], *, prefilled: bool) -> Iterator[VmFixture]:
    """A fresh image and VMs of a test's own on a module's shared pool; after the test, its
    VMs destroyed, and the shared daemon still running (the next test needs it)."""
    storage, root = shared
    fixture = VmFixture(storage.daemon, root, storage=storage)
    if prefilled:
        prefill(fixture, root)
    try:
        yield fixture
    finally:
        fixture.cleanup()
        assert storage.daemon.running, "a test on the shared pool stopped its vdsmd"


@pytest.fixture(scope="module")
def shared_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Storage, Path]]:
    """One lsm_vdsmd and its pool for the tests of a module that leave the daemon running:
    a new pool costs ~3 s of sanlock's host id acquire (2 x io_timeout + 1 s), paid here once.
    Each test still gets an image and VMs of its own (``pooled_vms``, ``pooled_moving_vms``)."""
    yield from _shared(tmp_path_factory.mktemp("shared-pool"), LSM_ARGS)


@pytest.fixture
def pooled_vms(shared_pool: tuple[Storage, Path]) -> Iterator[VmFixture]:
    """``vms`` on the module's shared pool: a fresh image and VMs of its own. For tests that
    never kill, stop or restart vdsmd, and check only their own ids (other tests' images and
    VMs are on the pool and in the daemon's log too)."""
    yield from _vms_on(shared_pool, prefilled=False)


@pytest.fixture
def pooled_moving_vms(shared_pool: tuple[Storage, Path]) -> Iterator[VmFixture]:
    """``moving_vms`` on the module's shared pool: a fresh image (prefilled) and VMs of its
    own. For tests that never kill, stop or restart vdsmd."""
    yield from _vms_on(shared_pool, prefilled=True)


@pytest.fixture(scope="module")
def shared_plain_pool(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Storage, Path]]:
    """``shared_pool`` with the plain vdsmd (the ``vdsmd`` fixture's flags: the default
    convergence window), for the modules whose per-test daemon is that one."""
    yield from _shared(tmp_path_factory.mktemp("shared-plain-pool"), [])


@pytest.fixture
def pooled_plain_vms(shared_plain_pool: tuple[Storage, Path]) -> Iterator[VmFixture]:
    """``pooled_vms`` on the plain vdsmd's shared pool (``shared_plain_pool``)."""
    yield from _vms_on(shared_plain_pool, prefilled=False)
