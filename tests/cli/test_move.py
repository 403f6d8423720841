"""vdsClient moveDisk without a daemon: its command line, its steps, the journal, the plan's
room check, the fault hook and the progress events."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from vdsm_cli.api import Drive
from vdsm_cli.errors import UsageError
from vdsm_cli.move import command, fault
from vdsm_cli.move.journal import FORWARD, Journal, JournalStore
from vdsm_cli.move.plan import DiskPlan, Refused, VolumeFacts, check_room
from vdsm_cli.move.progress import Reporter
from vdsm_cli.move.steps import (
    FORWARD_STEPS,
    PIVOT,
    ROLLBACK_STEPS,
    TITLES,
    forward_steps,
)

VM = "6a8d4c1e-0f43-4a0c-9a66-5e2a4f1f3b11"
IMG = "1b3e5f7a-9c2d-4e6f-8a0b-2c4d6e8f0a1b"
SD1 = "2c4d6e8f-0a1b-4c3d-9e5f-7a9b1c3d5e7f"
SD2 = "3d5e7f9a-1b2c-4d4e-8f6a-8b0c2d4e6f8a"
SP = "4e6f8a0b-2c3d-4e5f-9a7b-9c1d3e5f7a9b"


# --- the command line ----------------------------------------------------------------------


def test_parse_one_disk_with_options() -> None:
    options = command.parse(
        [VM, IMG, SD2, "--keep-source", "--no-merge", "--bandwidth", "5", "--ready-timeout=30"],
        json_output=True,
    )
    assert (options.vm_id, options.image_id, options.dst_domain) == (VM, IMG, SD2)
    assert options.keep_source and not options.merge and options.json
    assert options.journal_options() == {
        "keepSource": True,
        "merge": False,
        "bandwidth": 5,
        "copyMode": "auto",
        "readyTimeout": 30.0,
    }


def test_parse_all_disks_and_resume_without_a_destination() -> None:
    every = command.parse([VM, "--all", SD2, "--sync-writes"], json_output=False)
    assert every.image_id is None and every.dst_domain == SD2
    assert every.journal_options()["copyMode"] == "sync"
    resumed = command.parse([VM, IMG, "--resume"], json_output=False)
    assert resumed.resume and resumed.dst_domain is None


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([VM, IMG], "takes VM_ID, IMAGE_ID"),
        ([VM, "not-a-uuid", SD2], "IMAGE_ID 'not-a-uuid' is not a UUID"),
        ([VM, IMG, SD2, "--bandwidth", "-1"], "--bandwidth must be at least 0"),
        ([VM, IMG, SD2, "--ready-timeout", "soon"], "--ready-timeout needs a number"),
        ([VM, IMG, SD2, "--state-dir"], "option --state-dir needs a value"),
        ([VM, IMG, SD2, "--dry-run", "--resume"], "do not go together"),
        ([VM, IMG, SD2, "--fast"], "unknown option --fast"),
    ],
)
def test_parse_refuses_a_bad_command_line(words: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        command.parse(words, json_output=False)
    assert caught.value.usage == command.USAGE


# --- the steps -------------------------------------------------------------------------------


def test_step_names_are_distinct_and_each_has_a_title() -> None:
    names = [*FORWARD_STEPS, *ROLLBACK_STEPS]
    assert len(set(names)) == len(names)
    assert set(TITLES) == set(names)
    assert FORWARD_STEPS.index(PIVOT) == 6


def test_forward_steps_skip_what_the_options_leave_out() -> None:
    assert forward_steps(keep_source=False, merge=True) == FORWARD_STEPS
    kept = forward_steps(keep_source=True, merge=False)
    assert "delete_source" not in kept and "merge" not in kept
    assert "delete_snapshot" not in kept and kept[-1] == PIVOT


# --- the journal ----------------------------------------------------------------------------


def journal() -> Journal:
    return Journal(
        vm_id=VM,
        image_id=IMG,
        pool_id=SP,
        src_domain=SD1,
        dst_domain=SD2,
        target="vda",
        original_chain=["a", "b"],
        leaf_capacity=1024,
        snapshot_volume="c",
        merge_job="d",
        options={"keepSource": False, "merge": True},
        address="127.0.0.1:54321",
    )


def test_journal_on_disk_is_camel_case_with_vdsm_ids(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    j = journal()
    j.step = "sync"
    j.tasks["sync"] = "t1"
    store.save(j)
    data = json.loads(store.path(VM, IMG).read_text())
    assert data["imageID"] == IMG and data["srcDomainID"] == SD1
    assert data["snapshotVolumeID"] == "c" and data["leafCapacity"] == 1024
    loaded = store.load(VM, IMG)
    assert loaded is not None and loaded.step == "sync" and loaded.tasks == {"sync": "t1"}
    assert loaded.direction == FORWARD and loaded.leaf == "b"
    assert store.images_of(VM) == [IMG]
    assert sorted(os.listdir(tmp_path)) == [store.path(VM, IMG).name], "no temporary left"
    store.remove(j)
    assert store.load(VM, IMG) is None and store.images_of(VM) == []


def test_a_journal_of_another_version_is_refused(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    store.save(journal())
    path = store.path(VM, IMG)
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 2}))
    with pytest.raises(Exception, match="not a version-1 move journal"):
        store.load(VM, IMG)


def test_history_keeps_the_measured_rates(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    for rate in (10.0, 0, 30.0):
        store.record_history({"averageRate": rate})
    assert store.measured_rates() == [10.0, 30.0]


def test_a_second_client_cannot_take_the_disk_lock(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    lock = store.lock(VM, IMG)
    try:
        with pytest.raises(Exception, match="another vdsClient"):
            JournalStore(tmp_path).lock(VM, IMG)
    finally:
        lock.release(remove=True)
    store.lock(VM, IMG).release(remove=True)


# --- the plan's room check ------------------------------------------------------------------


def test_disks_moving_to_one_domain_must_fit_there_together() -> None:
    mib = 1024 * 1024

    def plan(image_id: str, allocated: int, free: int) -> DiskPlan:
        drive = Drive("vda", SD1, SP, image_id, "v", ("v",))
        facts = [VolumeFacts("v", "raw", 1024 * mib, allocated, "LEGAL")]
        return DiskPlan(VM, drive, SD2, chain=facts, free=free)

    check_room([plan(IMG, 100 * mib, 200 * mib)])
    with pytest.raises(Refused, match=f"not enough room in destination domain {SD2}"):
        check_room([plan(IMG, 100 * mib, 300 * mib), plan(SP, 100 * mib, 300 * mib)])


# --- the fault hook --------------------------------------------------------------------------


def test_no_fault_hook_outside_the_tests() -> None:
    assert fault.from_environment({}) is None
    assert fault.from_environment({fault.TEST_STOP_AT: " , "}) is None


def test_the_fault_hook_names_its_points() -> None:
    hook = fault.from_environment(
        {fault.TEST_STOP_AT: "sync, pivot+", fault.TEST_PAUSE_AT: "clone"}
    )
    assert isinstance(hook, fault.Hook)
    assert hook.stop_at == {"sync", "pivot+"} and hook.pause_at == {"clone"}
    hook("replicate")  # not a point: nothing happens


# --- progress ---------------------------------------------------------------------------------


def test_json_events_of_a_move() -> None:
    out = io.StringIO()
    now = [0.0]
    reporter = Reporter(out, json_lines=True, live=False, clock=lambda: now[0])
    reporter.start({"title": "t"}, ["sync", "pivot"], {"sync": 100}, ROLLBACK_STEPS)
    reporter.step("sync", TITLES["sync"], FORWARD)
    reporter.progress(10, 100)
    now[0] = 1.0
    reporter.progress(60, 100)
    reporter.step_done("sync", 1.5, 100)
    reporter.result(0, "moved")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == [
        "start",
        "step",
        "progress",
        "progress",
        "stepDone",
        "result",
    ]
    assert events[1]["index"] == 1 and events[1]["count"] == 2
    assert events[3]["rate"] == 50.0 and events[3]["stepEta"] == 0.8
    assert events[4] == {"event": "stepDone", "step": "sync", "seconds": 1.5, "bytes": 100}
