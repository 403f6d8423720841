"""vdsClient moveDisk against a real vdsmd and libvirt: the real CLI, run as a subprocess.

- The one-command move under continuous guest writes (the tiny guest): zero lost writes on
  the destination chain, with and without keeping the source, with and without the merge
  (merged: the same volume ids, base to leaf, as before the move); running it again is
  harmless.
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
- Pre-flight refusals (no room on a small tmpfs domain, a domain of another pool, a VM that
  is down, a disk busy with a replication, a move already running) change nothing.
- Every disk of a VM with --all, one after another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing
from tests.functional.conftest import REPO, VdsmdProcess, new_uuid, wait_task
from tests.functional.test_lsm import guest, guest_params, lsm_vdsmd, open_files, wait_writes
from tests.functional.test_storage_api import ok
from tests.functional.test_vms import VmFixture, chain_of, qemu_pid
from vdsm_cli.move_journal import TEST_PAUSE_AT, TEST_STOP_AT
from vdsm_cli.move_plan import STEPS
from vdsm_cli.move_rollback import ROLLBACK_STEPS
from vdsm_guest import checker
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt
__all__ = ["guest", "lsm_vdsmd"]  # fixtures shared with test_lsm

MiB = 1024**2
PREFILL = 24 * MiB  # data in the base, so the sync has something real to copy
CLI_TIMEOUT = 180
Done = subprocess.CompletedProcess[str]


@pytest.fixture
def vms(lsm_vdsmd: VdsmdProcess, tmp_path: Path) -> Iterator[VmFixture]:
    fixture = VmFixture(lsm_vdsmd, tmp_path)
    prefill(fixture, tmp_path)
    try:
        yield fixture
    finally:
        fixture.cleanup()


def prefill(vms: VmFixture, root: Path) -> None:
    """Random data far from the guest's slots: allocated bytes for the sync to move."""
    base = root / "src" / vms.storage.sd / "images" / vms.img / vms.base
    with open(base, "r+b") as f:
        f.seek(256 * MiB)
        f.write(os.urandom(PREFILL))


class Mover:
    """Runs `vdsClient HOST moveDisk ...` for one VM's disk, with its own journal dir."""

    def __init__(self, vms: VmFixture, vm_id: str, root: Path) -> None:
        self.vms, self.vm_id = vms, vm_id
        self.state_dir = root / "moves"
        self.root = root
        self.pid = qemu_pid(vm_id)
        self.chain = chain_of(vms.stats(vm_id))

    def argv(
        self,
        *extra: str,
        dst: str | None = None,
        image: str | None = None,
        vm: str | None = None,
        json_output: bool = False,
        resume: bool = False,
        all_disks: bool = False,
    ) -> list[str]:
        """The command line; with ``resume`` DST_SD_UUID is left out (the journal knows it)."""
        words = [vm or self.vm_id, "--all" if all_disks else image or self.vms.img]
        if not resume:
            words.append(dst or self.vms.storage.sd2)
        return [
            sys.executable,
            "-m",
            "vdsm_cli.vdsclient",
            *(["--json"] if json_output else []),
            self.vms.daemon.address,
            "moveDisk",
            *words,
            *(["--resume"] if resume else []),
            *extra,
        ]

    def env(self, **hooks: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VDSM_MOVE_TEST_")}
        return {**env, "VDSM_MOVE_STATE_DIR": str(self.state_dir), **hooks}

    def run(self, *extra: str, hooks: dict[str, str] | None = None, **where: Any) -> Done:
        return subprocess.run(
            self.argv(*extra, **where),
            cwd=REPO,
            env=self.env(**(hooks or {})),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )

    def resume(self, *extra: str, **hooks: str) -> Done:
        return self.run(*extra, hooks=hooks, resume=True)

    def start(self, *extra: str, **hooks: str) -> Running:
        log = self.root / f"client-{time.monotonic_ns()}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                self.argv(*extra), cwd=REPO, env=self.env(**hooks), stdout=out, stderr=out
            )
        return Running(proc, log)

    def journal(self) -> dict[str, Any] | None:
        path = self.state_dir / f"{self.vm_id}--{self.vms.img}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def leftover_state(self) -> list[str]:
        if not self.state_dir.exists():
            return []
        return sorted(p.name for p in self.state_dir.iterdir() if p.name != "history.jsonl")


@dataclass
class Running:
    """A client started in the background; its stdout and stderr go to ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_paused(self, timeout: float = 120) -> None:
        """Until the client stopped itself (SIGSTOP, its test-only PAUSE_AT hook)."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            assert code is None, f"the client exited ({code}): {self.output()}"
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "T":
                return
            assert time.monotonic() < deadline, "the client never reached its pause point"
            time.sleep(0.05)

    def signal(self, *signals: int) -> None:
        for number in signals:
            os.kill(self.pid, number)

    def finish(self) -> tuple[int, str]:
        self.proc.wait(timeout=CLI_TIMEOUT)
        return self.proc.returncode, self.output()


def images(vms: VmFixture, sd: str) -> list[str]:
    found: list[str] = ok(vms.daemon.xmlrpc().getImagesList(sd))["imageslist"]
    return found


def volumes(vms: VmFixture, sd: str) -> list[str]:
    reply = vms.daemon.xmlrpc().getVolumesList(sd, vms.storage.sp, vms.img)
    return list(reply.get("uuidlist", [])) if reply["status"]["code"] == 0 else []


def world(vms: VmFixture, vm_id: str) -> dict[str, Any]:
    """Everything a move may change, as vdsmd reports it."""
    st = vms.storage
    stats = vms.stats(vm_id)
    return {
        "status": stats["status"],
        "domain": stats["disks"]["vda"]["domainID"],
        "chain": chain_of(stats),
        "jobs": stats["blockJobs"],
        "src": volumes(vms, st.sd),
        "dst": volumes(vms, st.sd2),
        "src_images": images(vms, st.sd),
        "dst_images": images(vms, st.sd2),
    }


def assert_nothing_of_the_image(m: Mover, sd: str) -> None:
    vms = m.vms
    assert vms.img not in images(vms, sd)
    assert not list(m.root.glob(f"*/{sd}/images/{vms.img}")), "image directory left behind"
    assert [f for f in open_files(m.vm_id) if f"/{sd}/" in f] == [], "QEMU keeps files open"


def assert_on_source(m: Mover) -> None:
    """Fully on the source, as before the move: same chain, nothing on the destination."""
    vms, st = m.vms, m.vms.storage
    w = world(vms, m.vm_id)
    assert w["status"] == "Up" and qemu_pid(m.vm_id) == m.pid, "the VM must never stop"
    assert (w["domain"], w["chain"], w["src"], w["jobs"]) == (st.sd, m.chain, m.chain, {})
    assert w["dst"] == []
    leaf = ok(vms.daemon.xmlrpc().getVolumeInfo(st.sd, st.sp, vms.img, m.chain[-1]))["info"]
    assert leaf["voltype"] == "LEAF" and leaf["legality"] == "LEGAL"
    assert_nothing_of_the_image(m, st.sd2)
    assert m.leftover_state() == [], "journal or lock left behind"


def assert_on_destination(m: Mover, *, merged: bool = True, kept: bool = False) -> list[str]:
    vms, st = m.vms, m.vms.storage
    w = world(vms, m.vm_id)
    assert w["status"] == "Up" and qemu_pid(m.vm_id) == m.pid, "the VM must never stop"
    assert w["domain"] == st.sd2 and w["jobs"] == {}
    if merged:
        assert w["chain"] == m.chain, "merged: the same volumes, base to leaf"
    else:
        assert w["chain"][:-1] == m.chain and len(w["chain"]) == len(m.chain) + 1
    assert w["dst"] == w["chain"]
    paths = [v["path"] for v in vms.stats(m.vm_id)["disks"]["vda"]["volumeChain"]]
    assert all(f"/{st.sd2}/images/" in p for p in paths)
    if kept:
        assert w["src"][: len(m.chain)] == m.chain
        assert [f for f in open_files(m.vm_id) if f"/{st.sd}/" in f] == []
    else:
        assert_nothing_of_the_image(m, st.sd)
    assert m.leftover_state() == [], "journal or lock left behind"
    return list(w["chain"])


# --- the whole move under guest writes --------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "merge"), [(False, True), (True, True), (False, False), (True, False)]
)
def test_move_under_guest_writes(
    vms: VmFixture, guest: GuestImage, tmp_path: Path, keep: bool, merge: bool
) -> None:
    vm_id = vms.start(**guest_params(guest, slots=64, pause=0.02))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 10)
    m = Mover(vms, vm_id, tmp_path)
    extra = [*(["--keep-source"] if keep else []), *([] if merge else ["--no-merge"])]
    before = wait_writes(console, 0)
    proc = m.run(*extra, json_output=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert wait_writes(console, before + 10) > before, "the guest wrote during the move"

    steps = [e["step"] for e in events if e["event"] == "step"]
    expected = [s for s in STEPS if not (keep and s == "delete_source")]
    expected = [s for s in expected if merge or s not in ("merge", "delete_snapshot")]
    assert steps == expected
    sync = [e for e in events if e["event"] == "progress" and e["step"] == "sync"]
    assert sync and sync[-1]["bytesDone"] == sync[-1]["bytesTotal"] >= PREFILL
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["dataBytes"] >= PREFILL and summary["pivotSeconds"] > 0
    assert events[-1] == {"event": "result", "exitCode": 0, "message": events[-1]["message"]}

    wait_writes(console, wait_writes(console, 0) + 20)  # and it keeps writing on the destination
    chain = assert_on_destination(m, merged=merge, kept=keep)
    leaf = Path(vms.stats(vm_id)["disks"]["vda"]["path"])
    result = checker.check(leaf, "qcow2", console)
    assert result.ok, result.failures
    assert result.slots_verified == min(64, result.writes_logged)
    if keep:
        # The kept source is the disk as it was at the pivot: it missed what came after.
        src_leaf = tmp_path / "src" / vms.storage.sd / "images" / vms.img / chain[-1]
        if not merge:
            assert checker.check(src_leaf, "qcow2", console).failures

    # Running it again does no harm: nothing to do, nothing to resume.
    again = m.run(*extra)
    assert again.returncode == 0 and "already in domain" in again.stdout, again.stderr
    resumed = m.resume()
    assert resumed.returncode == 0 and "nothing to resume" in resumed.stdout
    assert world(vms, vm_id)["chain"] == chain


def test_human_output_dry_run_and_the_source_back(vms: VmFixture, tmp_path: Path) -> None:
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
    before = world(vms, vm_id)
    plan = m.run("--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "data to copy: 24." in plan.stdout and "estimate: about" in plan.stdout
    assert world(vms, vm_id) == before and m.leftover_state() == []

    done = m.run("--bandwidth", "100", "--sync-writes")
    assert done.returncode == 0, done.stderr
    for text in ("[7/10] pivot", "time in pivot:", "average rate:", "data moved:"):
        assert text in done.stdout
    assert_on_destination(m)
    # And back again: the same command towards the first domain.
    back = m.run(dst=vms.storage.sd)
    assert back.returncode == 0, back.stderr
    assert world(vms, vm_id)["domain"] == vms.storage.sd
    assert chain_of(vms.stats(vm_id)) == m.chain and qemu_pid(vm_id) == m.pid
    plan = m.run("--dry-run", dst=vms.storage.sd2)
    assert "measured moves" in plan.stdout  # the estimate now uses the measured rate


# --- the client killed at each step, then --resume ----------------------------------------------

PIVOT_AT = STEPS.index("pivot")
# STEP: killed right after the journal recorded the step, before it ran; STEP+: killed right
# after the step's action was issued (its task submitted, its call answered). Left out: the
# STEP+ that leave the same state to resume from as the next STEP (snapshot+ and clone,
# replicate+ and sync; wait_ready issues nothing).
KILL_POINTS = [
    *STEPS,
    *(f"{s}+" for s in STEPS if s not in ("snapshot", "replicate", "wait_ready")),
]
ROLLBACK_KILL_POINTS = [*ROLLBACK_STEPS, *(f"{s}+" for s in ROLLBACK_STEPS[1:])]


def expected_side(point: str) -> str:
    step = point.rstrip("+")
    past = STEPS.index(step) > PIVOT_AT or point == "pivot+"
    return "destination" if past else "source"


@pytest.mark.parametrize("point", KILL_POINTS)
def test_client_killed_then_resume(vms: VmFixture, tmp_path: Path, point: str) -> None:
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
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
    vms: VmFixture, tmp_path: Path
) -> None:
    """A Ctrl-C inside the pivot call: the client turned to rolling back, but vdsmd finished
    the pivot. The journal of that moment is made from a real one; --resume must finish."""
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
    assert m.run(hooks={TEST_STOP_AT: "pivot+"}).returncode == -signal.SIGKILL
    path = m.state_dir / f"{vm_id}--{vms.img}.json"
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
    vms: VmFixture, tmp_path: Path, point: str, restart_before_continue: bool, side: str
) -> None:
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
    proc = m.start(**{TEST_PAUSE_AT: point})
    proc.wait_paused()
    vms.daemon.kill()
    if restart_before_continue:
        vms.daemon.restart()
    proc.signal(signal.SIGCONT)
    code, text = proc.finish()
    if restart_before_continue:
        assert code == 0, text
    else:
        assert code == 4, text
        assert "connection refused" in text and "--resume" in text and "Left:" in text
        vms.daemon.restart()
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
    vms: VmFixture, tmp_path: Path, point: str, side: str
) -> None:
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
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
    vms: VmFixture, guest: GuestImage, tmp_path: Path
) -> None:
    """A guest writing ~6 MB/s against a mirror capped at 1 MiB/s cannot be READY within 1 s:
    the real cause is reported, the mirror aborted, the destination deleted, and the source
    has every write."""
    vm_id = vms.start(**guest_params(guest, slots=64, pause=0))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 20)
    m = Mover(vms, vm_id, tmp_path)
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
    result = checker.check(Path(vms.stats(vm_id)["disks"]["vda"]["path"]), "qcow2", console)
    assert result.ok, result.failures


def test_second_ctrl_c_stops_where_it_is(vms: VmFixture, tmp_path: Path) -> None:
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
    proc = m.start(**{TEST_PAUSE_AT: "sync+,delete_destination"})
    proc.wait_paused()
    proc.signal(signal.SIGINT, signal.SIGCONT)  # the first Ctrl-C: roll back...
    proc.wait_paused()  # ...paused again in the rollback, before deleting the destination
    proc.signal(signal.SIGINT, signal.SIGCONT)  # the second Ctrl-C: stop where it is
    code, text = proc.finish()
    assert code == 4 and "interrupted again" in text and "--resume" in text, text
    journal = m.journal()
    assert journal is not None and journal["direction"] == "rollback"
    assert vms.img in images(vms, vms.storage.sd2)  # nothing was deleted on the way out
    resumed = m.resume()
    assert resumed.returncode == 1 and "interrupted" in resumed.stderr, resumed.stderr
    assert_on_source(m)


@pytest.mark.parametrize("point", ROLLBACK_KILL_POINTS)  # abort_replication+ ~ delete_destination
def test_client_killed_during_rollback_then_resume(
    vms: VmFixture, tmp_path: Path, point: str
) -> None:
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
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


# --- pre-flight -----------------------------------------------------------------------------------


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs: a real domain too small for the test disk's data plus overhead."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        missing(f"cannot mount a small tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_preflight_refusals_change_nothing(
    vms: VmFixture, tmp_path: Path, small_mount: Path
) -> None:
    rpc, st = vms.daemon.xmlrpc(), vms.storage
    small, foreign = new_uuid(), new_uuid()
    ok(rpc.createStorageDomain(4, small, "small", str(small_mount), 1))
    ok(rpc.attachStorageDomain(small, st.sp))
    (tmp_path / "foreign").mkdir()
    ok(rpc.createStorageDomain(4, foreign, "foreign", str(tmp_path / "foreign"), 1))
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
    before = world(vms, vm_id)

    def refused(proc: Done, *words: str) -> None:
        assert proc.returncode == 1, proc.stderr + proc.stdout
        for word in words:
            assert word in proc.stderr, proc.stderr
        assert world(vms, vm_id) == before
        assert images(vms, small) == [] and m.leftover_state() == []

    refused(m.run(dst=small), "not enough room", small, "× 1.1 + 64.0 MiB")
    refused(m.run(dst=foreign), f"{foreign} is not in pool {st.sp}")
    refused(m.run(dst=new_uuid()), "is not in pool")
    refused(m.run(image=new_uuid()), "is not attached to VM")

    # Busy: a replication already runs on the disk.
    task = ok(rpc.cloneImageStructure(st.sp, st.sd, vms.img, st.sd2))["uuid"]
    assert wait_task(vms.daemon, task)["taskResult"] == "success"
    src = {"domainID": st.sd, "poolID": st.sp, "imageID": vms.img, "volumeID": vms.leaf}
    ok(rpc.diskReplicateStart(vm_id, src, {**src, "domainID": st.sd2}, True, "background", 1))
    before = world(vms, vm_id)
    refused(m.run(), "is busy: a replication")
    ok(rpc.diskReplicateFinish(vm_id, src, src))
    assert wait_task(vms.daemon, ok(rpc.deleteImage(st.sd2, st.sp, vms.img))["uuid"])

    # Down: QEMU is gone.
    os.kill(qemu_pid(vm_id), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while vms.stats(vm_id)["status"] != "Down":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    before = world(vms, vm_id)
    refused(m.run(), "is Down: a live move needs a running VM")
    proc = m.run(vm=new_uuid())
    assert proc.returncode == 1 and "is not running on" in proc.stderr


def test_a_second_client_on_the_same_disk_is_refused(vms: VmFixture, tmp_path: Path) -> None:
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
    proc = m.start(**{TEST_PAUSE_AT: "clone"})
    proc.wait_paused()
    second = m.run()
    assert second.returncode == 1 and f"another vdsClient (pid {proc.pid})" in second.stderr
    proc.signal(signal.SIGCONT)
    code, text = proc.finish()
    assert code == 0, text
    assert_on_destination(m)


# --- every disk of a VM ---------------------------------------------------------------------------


def test_all_disks_one_after_another(vms: VmFixture, tmp_path: Path) -> None:
    st = vms.storage
    img2, vol2 = new_uuid(), new_uuid()
    st.create_volume(img2, vol2, fmt="RAW")
    first = {
        "type": "disk",
        "device": "disk",
        "domainID": st.sd,
        "poolID": st.sp,
        "imageID": vms.img,
        "volumeID": vms.leaf,
        "iface": "virtio",
        "index": 0,
    }
    second = {**first, "imageID": img2, "volumeID": vol2, "index": 1}
    vm_id = vms.start(devices=[first, second])
    m = Mover(vms, vm_id, tmp_path)
    proc = m.run(all_disks=True, json_output=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    notes = [e["message"] for e in events if e["event"] == "note"]
    assert "moving 2 disks one after another: vda, vdb" in notes
    assert [e["imageID"] for e in events if e["event"] == "start"] == [vms.img, img2]
    stats = vms.stats(vm_id)
    assert {d["domainID"] for d in stats["disks"].values()} == {st.sd2}
    assert chain_of(stats, "vda") == m.chain and chain_of(stats, "vdb") == [vol2]
    assert images(vms, st.sd) == [] and sorted(images(vms, st.sd2)) == sorted([vms.img, img2])
    assert m.leftover_state() == []
