"""Fixtures for storage tests: a repository and domains in temporary directories (``src`` and
``dst`` for copies), processes killed at teardown, and the qemu tools checked."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_command
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository

# Helper modules with asserts: pytest rewrites only test files and conftests by itself, and a
# failed check must show its values there too. Registered before any test module imports them.
pytest.register_assert_rewrite(
    "tests.storage.support",
    "tests.storage.image_copy_support",
    "tests.storage.qemuimg_support",
    "tests.storage.task.support",
)


@pytest.fixture
def kill_leftovers() -> Iterator[Callable[[int], None]]:
    """Register pids to SIGKILL at teardown, so a failing test leaves no process behind."""
    pids: list[int] = []
    yield pids.append
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def qemu_tools() -> None:
    """The storage tests drive real qemu-img and qemu-io; fail under CI if they are missing."""
    require_command("qemu-img")
    require_command("qemu-io")


@pytest.fixture
def repository(tmp_path: Path, qemu_tools: None) -> StorageRepository:
    return StorageRepository(tmp_path / "repository")


@pytest.fixture
def make_domain(tmp_path: Path, repository: StorageRepository) -> Callable[..., FileStorageDomain]:
    """Create a domain in its own directory (as if each were a separate mount)."""

    def make(name: str = "data") -> FileStorageDomain:
        root = tmp_path / f"mnt-{name}"
        root.mkdir()
        return repository.create_domain(root, str(uuid.uuid4()), name)

    return make


@pytest.fixture
def domain(make_domain: Callable[..., FileStorageDomain]) -> FileStorageDomain:
    return make_domain("data")


@pytest.fixture
def src(make_domain: Callable[..., FileStorageDomain]) -> FileStorageDomain:
    """The source domain of a clone or a sync."""
    return make_domain("src")


@pytest.fixture
def dst(make_domain: Callable[..., FileStorageDomain]) -> FileStorageDomain:
    """The destination domain of a clone or a sync."""
    return make_domain("dst")


@pytest.fixture
def qemu_io() -> str:
    """qemu-io's path; with qemu-img checked too (skip, or fail under CI, when missing).

    The qemu-img adapter tests use it in every test (``pytestmark``): each runs qemu-img,
    also those that never ask for qemu-io's path."""
    require_command("qemu-img")
    return require_command("qemu-io")
