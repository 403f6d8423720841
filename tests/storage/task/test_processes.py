"""Tagging children with their task (runner) and killing what a dead daemon left (recovery),
with real processes in their own sessions, as qemu-img runs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.storage.support import alive, new_uuid
from vdsm.storage import runner
from vdsm.storage.runner import Cancellation
from vdsm.storage.task import processes


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start real sleeps in their own sessions; every one is killed and reaped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def start_sleep(procs: list[subprocess.Popen[bytes]], task_id: str | None) -> int:
    env = dict(os.environ)
    env.pop(runner.TASK_ID_ENV, None)
    if task_id is not None:
        env[runner.TASK_ID_ENV] = task_id
    proc = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    procs.append(proc)
    return proc.pid


def test_labelled_cancellation_tags_the_child() -> None:
    label = new_uuid()
    result = runner.run(
        ["sh", "-c", 'echo "$VDSM_TASK_ID $KEPT"'],
        cancellation=Cancellation(label=label),
        env={"KEPT": "yes", "PATH": os.environ["PATH"]},
    )
    assert result.stdout.decode().split() == [label, "yes"]
    untagged = runner.run(["sh", "-c", 'echo "[$VDSM_TASK_ID]"'], cancellation=Cancellation())
    assert untagged.stdout == b"[]\n"


def test_kill_tagged_kills_only_that_task(spawn: list[subprocess.Popen[bytes]]) -> None:
    task_id = new_uuid()
    tagged = [start_sleep(spawn, task_id), start_sleep(spawn, task_id)]
    other_task = start_sleep(spawn, new_uuid())
    untagged = start_sleep(spawn, None)

    assert processes.kill_tagged(task_id, timeout=5) == sorted(tagged)
    # kill_tagged returns once they exited; our Popen still has to reap them.
    for proc in spawn[:2]:
        assert proc.wait(5) == -9
    assert alive(other_task) and alive(untagged)
    assert processes.kill_tagged(task_id, timeout=5) == []


def test_kill_tagged_with_nothing_to_kill() -> None:
    assert processes.kill_tagged(new_uuid(), timeout=1) == []
