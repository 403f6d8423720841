"""vdsClient moveDisk against a real vdsmd and libvirt, interrupted, killed or failing.

The real CLI, run as a subprocess (tests/functional/mover.py):

- The client killed (SIGKILL, by the client's test-only hook) before and while each step of
  the flow, then ``--resume``: the disk ends fully on the destination (past the pivot) or
  fully on the source; the VM never stops (same QEMU pid); nothing of the image is left on
  the other domain, and QEMU has no file of it open there.
- vdsmd killed under a live client at key steps (during the sync, with the mirror running,
  just before the pivot, during the merge), then restarted and ``--resume``.
- Ctrl-C: a clean rollback (130); a second Ctrl-C stops where it is (4); the client killed
  before and while each step of that rollback, then ``--resume``.
- A real failure under guest writes (a mirror that cannot be READY in time): rolled back
  with its cause, every write on the source.

The tests that leave vdsmd running share one pool (``pooled_moving_vms``: an image and VMs
of their own on it); those that kill vdsmd have a pool each.

The moves that go through, and the refusals before a move starts: test_move_disk_moves.py.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.functional.lsm_helpers import VmFixture, guest_params, wait_writes
from tests.functional.mover import Mover, assert_on_destination, assert_on_source, images
from vdsm_cli.move.fault import TEST_PAUSE_AT, TEST_STOP_AT
from vdsm_cli.move.steps import FORWARD_STEPS, ROLLBACK_STEPS
from vdsm_guest import checker
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt


# --- the client killed at each step, then --resume ----------------------------------------------

PIVOT_AT = FORWARD_STEPS.index("pivot")
# STEP: killed right after the journal recorded the step, before it ran; STEP+: killed right
# after the step's action was issued (its task submitted, its call answered). Left out: the
# STEP+ that leave the same state to resume from as the next STEP (snapshot+ and clone,
# replicate+ and sync; wait_ready issues nothing).
KILL_POINTS = [
    *FORWARD_STEPS,
    *(f"{s}+" for s in FORWARD_STEPS if s not in ("snapshot", "replicate", "wait_ready")),
]
ROLLBACK_KILL_POINTS = [*ROLLBACK_STEPS, *(f"{s}+" for s in ROLLBACK_STEPS[1:])]


def expected_side(point: str) -> str:
    step = point.rstrip("+")
    past = FORWARD_STEPS.index(step) > PIVOT_AT or point == "pivot+"
    return "destination" if past else "source"


@pytest.mark.parametrize("point", KILL_POINTS)
def test_client_killed_then_resume(
    pooled_moving_vms: VmFixture, tmp_path: Path, point: str
) -> None:
    vm_id = pooled_moving_vms.start()
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    killed = m.run(hooks={TEST_STOP_AT: point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal = m.journal()
    assert journal is not None and journal["step"] == point.rstrip("+")
    assert journal["direction"] == "forward"
    again = m.run()  # a new move of the same disk must not start over the recorded one
    assert again.returncode == 1 and "--resume" in again.stderr, again.stderr

    resumed = m.resume()
    if expected_side(point) == "source":
        assert resumed.returncode == 1, resumed.stderr + resumed.stdout
        assert "rolled back" in resumed.stderr
        assert_on_source(m)
    else:
        assert resumed.returncode == 0, resumed.stderr + resumed.stdout
        assert_on_destination(m)
    twice = m.resume()
    assert twice.returncode == 0 and "nothing to resume" in twice.stdout


def test_a_pivot_that_completed_after_all_is_finished_not_undone(
    pooled_moving_vms: VmFixture, tmp_path: Path
) -> None:
    """A Ctrl-C inside the pivot call: the client turned to rolling back, but vdsmd finished
    the pivot. The journal of that moment is made from a real one; --resume must finish."""
    vm_id = pooled_moving_vms.start()
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    assert m.run(hooks={TEST_STOP_AT: "pivot+"}).returncode == -signal.SIGKILL
    path = m.state_dir / f"{vm_id}--{pooled_moving_vms.img}.json"
    journal = json.loads(path.read_text())
    assert journal["step"] == "pivot" and "pivot" not in journal["done"]
    journal.update(direction="rollback", step="abort_replication", stoppedAt="pivot")
    path.write_text(json.dumps(journal))
    resumed = m.resume()
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "the pivot had completed after all" in resumed.stdout
    assert_on_destination(m)


# --- vdsmd killed under a live client ---------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "restart_before_continue", "side"),
    [
        ("sync+", False, "source"),  # during the sync: the client gives up, --resume undoes
        ("replicate+", True, "destination"),  # mirror running, vdsmd back at once: carries on
        ("pivot", False, "source"),  # just before the pivot: the client gives up, --resume undoes
        ("merge+", False, "destination"),  # during the merge: --resume finishes
    ],
)
def test_vdsmd_killed_under_the_client(
    moving_vms: VmFixture, tmp_path: Path, point: str, restart_before_continue: bool, side: str
) -> None:
    vm_id = moving_vms.start()
    m = Mover(moving_vms, vm_id, tmp_path)
    proc = m.start(**{TEST_PAUSE_AT: point})
    proc.wait_paused()
    moving_vms.daemon.kill()
    if restart_before_continue:
        moving_vms.daemon.restart()
    proc.signal(signal.SIGCONT)
    code, text = proc.finish()
    if restart_before_continue:
        assert code == 0, text
    else:
        assert code == 4, text
        assert "connection refused" in text and "--resume" in text and "Left:" in text
        moving_vms.daemon.restart()
        resumed = m.resume()
        assert resumed.returncode == (1 if side == "source" else 0), resumed.stderr
    if side == "source":
        assert_on_source(m)
    else:
        assert_on_destination(m)


# --- Ctrl-C -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "side"), [("wait_ready", "source"), ("delete_source", "destination")]
)
def test_ctrl_c_rolls_back_or_after_the_pivot_finishes(
    pooled_moving_vms: VmFixture, tmp_path: Path, point: str, side: str
) -> None:
    vm_id = pooled_moving_vms.start()
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    proc = m.start(**{TEST_PAUSE_AT: point})
    proc.wait_paused()
    proc.signal(signal.SIGINT, signal.SIGCONT)  # SIGINT is delivered when it goes on
    code, text = proc.finish()
    if side == "source":
        assert code == 130 and "rolled back: interrupted" in text, text
        assert "undo 1/4] abort_replication" in text
        assert_on_source(m)
    else:
        assert code == 0 and "interrupted after the pivot: finishing the move" in text, text
        assert_on_destination(m)


def test_a_failure_under_writes_rolls_back_with_its_cause(
    pooled_moving_vms: VmFixture, guest: GuestImage, tmp_path: Path
) -> None:
    """A guest writing ~6 MB/s against a mirror capped at 1 MiB/s cannot be READY within 1 s:
    the real cause is reported, the mirror aborted, the destination deleted, and the source
    has every write."""
    vm_id = pooled_moving_vms.start(**guest_params(guest, slots=64, pause=0))
    console = Path(pooled_moving_vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 20)
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    proc = m.start("--bandwidth", "1", "--ready-timeout", "1", **{TEST_PAUSE_AT: "replicate"})
    proc.wait_paused()
    wait_writes(console, wait_writes(console, 0) + 40)  # 2.5 MiB in the auto-snapshot first
    proc.signal(signal.SIGCONT)
    code, text = proc.finish()
    assert code == 1, text
    assert "the mirror was not READY after 1s" in text
    assert "rolled back" in text and "--sync-writes" in text
    wait_writes(console, wait_writes(console, 0) + 20)
    assert_on_source(m)
    result = checker.check(
        Path(pooled_moving_vms.stats(vm_id)["disks"]["vda"]["path"]), "qcow2", console
    )
    assert result.ok, result.failures


def test_second_ctrl_c_stops_where_it_is(pooled_moving_vms: VmFixture, tmp_path: Path) -> None:
    vm_id = pooled_moving_vms.start()
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    proc = m.start(**{TEST_PAUSE_AT: "sync+,delete_destination"})
    proc.wait_paused()
    proc.signal(signal.SIGINT, signal.SIGCONT)  # the first Ctrl-C: roll back...
    proc.wait_paused()  # ...paused again in the rollback, before deleting the destination
    proc.signal(signal.SIGINT, signal.SIGCONT)  # the second Ctrl-C: stop where it is
    code, text = proc.finish()
    assert code == 4 and "interrupted again" in text and "--resume" in text, text
    journal = m.journal()
    assert journal is not None and journal["direction"] == "rollback"
    assert pooled_moving_vms.img in images(
        pooled_moving_vms, pooled_moving_vms.storage.sd2
    )  # nothing was deleted on the way out
    resumed = m.resume()
    assert resumed.returncode == 1 and "interrupted" in resumed.stderr, resumed.stderr
    assert_on_source(m)


@pytest.mark.parametrize("point", ROLLBACK_KILL_POINTS)  # abort_replication+ ~ delete_destination
def test_client_killed_during_rollback_then_resume(
    pooled_moving_vms: VmFixture, tmp_path: Path, point: str
) -> None:
    vm_id = pooled_moving_vms.start()
    m = Mover(pooled_moving_vms, vm_id, tmp_path)
    proc = m.start(**{TEST_PAUSE_AT: "sync+", TEST_STOP_AT: point})
    proc.wait_paused()
    proc.signal(signal.SIGINT, signal.SIGCONT)  # Ctrl-C: the rollback starts
    code, text = proc.finish()
    assert code == -signal.SIGKILL, text
    journal = m.journal()
    assert journal is not None and journal["direction"] == "rollback"
    assert journal["step"] == point.rstrip("+") and journal["stoppedAt"] == "sync"
    resumed = m.resume()
    assert resumed.returncode == 1, resumed.stderr + resumed.stdout
    assert "rolled back: interrupted (Ctrl-C)" in resumed.stderr
    assert_on_source(m)
