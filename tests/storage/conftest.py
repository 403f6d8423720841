"""Fixtures for storage tests: a repository and domains in temporary directories, and real
qemu-io reads and writes through volume chains."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_command
from vdsm.storage import runner
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository

# Helper modules with asserts: pytest rewrites only test files and conftests by itself, and a
# failed check must show its values there too. Registered before any test module imports them.
pytest.register_assert_rewrite(
    "tests.storage.image_copy_helpers", "tests.storage.task_manager_helpers"
)


def new_uuid() -> str:
    return str(uuid.uuid4())


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


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
        return repository.create_domain(root, new_uuid(), name)

    return make


@pytest.fixture
def domain(make_domain: Callable[..., FileStorageDomain]) -> FileStorageDomain:
    return make_domain("data")


def qemu_io(path: Path, fmt: str, command: str) -> str:
    """Run one qemu-io command on an image (and so through its backing chain)."""
    result = runner.run(["qemu-io", "-f", fmt, "-c", command, str(path)], timeout=60)
    output = result.stdout.decode()
    # qemu-io reports a failed pattern check on stdout and still exits 0.
    assert "Pattern verification failed" not in output, output
    assert "failed" not in output.lower(), output
    return output
