"""Fixtures for the task tests: a task on real files, a tasks directory in a real domain, and
task managers running the test rollback steps, shut down at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.storage.support import new_uuid
from tests.storage.task.support import STEPS, TIMEOUT
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.task.manager import TaskManager
from vdsm.storage.task.state import Task


@pytest.fixture
def task(tmp_path: Path) -> Task:
    """A new createVolume task, persisted in state init."""
    return Task.create(tmp_path / "tasks", new_uuid(), "createVolume")


@pytest.fixture
def tasks_dir(domain: FileStorageDomain) -> Path:
    return domain.tasks_dir


@pytest.fixture
def make_manager(repository: StorageRepository) -> Iterator[Callable[..., TaskManager]]:
    made: list[TaskManager] = []

    def make(**kwargs: Any) -> TaskManager:
        manager = TaskManager(rollback_steps=STEPS, repository=repository, **kwargs)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.shutdown(0, stop_timeout=TIMEOUT)


@pytest.fixture
def manager(make_manager: Callable[..., TaskManager]) -> TaskManager:
    return make_manager()
