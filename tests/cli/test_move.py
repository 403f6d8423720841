"""vdsClient moveDisk without a daemon: its command line, its steps, the journal (version 2, and
version 1 converted), finding the SPM and the VM's host among the answers of several hosts, the
plan's room check, the fault hook and the progress events."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from vdsm_cli.api import Drive
from vdsm_cli.errors import ApiError, ConnectionFailed, ConnectionRefused, UsageError
from vdsm_cli.move import command, fault
from vdsm_cli.move.hosts import (
    SPM_TIMEOUT,
    HostNotFound,
    NoSpm,
    SpmView,
    elsewhere,
    failover_sign,
    spm_of,
    vm_host_of,
)
from vdsm_cli.move.journal import FORWARD, JOURNAL_VERSION, NO_SPM, Journal, JournalStore
from vdsm_cli.move.plan import DiskPlan, Refused, VolumeFacts, check_room, host_lines
from vdsm_cli.move.progress import Reporter
from vdsm_cli.move.steps import (
    FORWARD_STEPS,
    OFFLINE_STEPS,
    PIVOT,
    ROLLBACK_STEPS,
    SPM_STEPS,
    TITLES,
    forward_steps,
)

VM = "6a8d4c1e-0f43-4a0c-9a66-5e2a4f1f3b11"
IMG = "1b3e5f7a-9c2d-4e6f-8a0b-2c4d6e8f0a1b"
SD1 = "2c4d6e8f-0a1b-4c3d-9e5f-7a9b1c3d5e7f"
SD2 = "3d5e7f9a-1b2c-4d4e-8f6a-8b0c2d4e6f8a"
SP = "4e6f8a0b-2c3d-4e5f-9a7b-9c1d3e5f7a9b"
HOST1, HOST2 = "127.0.0.2:54321", "127.0.0.3:54321"


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


def test_parse_the_hosts_of_a_move_across_hosts() -> None:
    default = command.parse([VM, IMG, SD2], json_output=False)
    assert (default.hosts, default.spm_host, default.vm_host) == ([], None, None)
    assert default.spm_timeout == SPM_TIMEOUT
    options = command.parse(
        [VM, IMG, SD2, "--hosts", "127.0.0.2, 127.0.0.3:99,127.0.0.2", "--spm-timeout=5"],
        json_output=False,
    )
    # Spelt as the journal spells them, HOST:PORT, each once.
    assert options.hosts == ["127.0.0.2:54321", "127.0.0.3:99"] and options.spm_timeout == 5
    named = command.parse([VM, IMG, "--resume", "--spm-host", "[::1]:7", "--vm-host", "h"], False)
    assert (named.spm_host, named.vm_host) == ("[::1]:7", "h:54321")
    assert named.journal_options()["keepSource"] is False  # the hosts are not options


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([VM, IMG, SD2, "--hosts", " , "], "--hosts needs at least one HOST"),
        ([VM, IMG, SD2, "--hosts", "a,b:x"], "--hosts: bad port 'x'"),
        ([VM, IMG, SD2, "--spm-host", "[::1"], "--spm-host: bad address"),
        ([VM, IMG, SD2, "--spm-timeout", "-1"], "--spm-timeout must be at least 0"),
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
    names = [*FORWARD_STEPS, *ROLLBACK_STEPS, *OFFLINE_STEPS]
    assert len(set(names)) == len(names)
    assert set(TITLES) == set(names)
    assert FORWARD_STEPS.index(PIVOT) == 6


def test_forward_steps_skip_what_the_options_leave_out() -> None:
    assert forward_steps(keep_source=False, merge=True) == FORWARD_STEPS
    kept = forward_steps(keep_source=True, merge=False)
    assert "delete_source" not in kept and "merge" not in kept
    assert "delete_snapshot" not in kept and kept[-1] == PIVOT


def test_an_offline_move_is_one_spm_step_whatever_the_options() -> None:
    for keep_source in (False, True):
        assert forward_steps(keep_source=keep_source, merge=True, offline=True) == ["move_image"]
    assert "move_image" in SPM_STEPS
    (line,) = host_lines(HOST1, HOST2, 1, 2, offline=True)
    assert f"SPM: {HOST1}" in line and "moveImage" in line and f"Down on {HOST2}" in line


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
        spm_address=HOST1,
        vm_address=HOST2,
        hosts=[HOST1, HOST2],
        spm_id=1,
        spm_lver=3,
    )


def test_journal_on_disk_is_camel_case_with_vdsm_ids(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    j = journal()
    j.step = "sync"
    j.tasks["sync"] = "t1"
    j.task_lvers["sync"] = 3
    store.save(j)
    data = json.loads(store.path(VM, IMG).read_text())
    assert data["imageID"] == IMG and data["srcDomainID"] == SD1
    assert data["snapshotVolumeID"] == "c" and data["leafCapacity"] == 1024
    assert data["version"] == JOURNAL_VERSION == 2 and "address" not in data
    assert (data["spmAddress"], data["vmAddress"], data["hosts"]) == (HOST1, HOST2, [HOST1, HOST2])
    assert (data["spmId"], data["spmLver"], data["taskLvers"]) == (1, 3, {"sync": 3})
    loaded = store.load(VM, IMG)
    assert loaded is not None and loaded.step == "sync" and loaded.tasks == {"sync": "t1"}
    assert loaded.direction == FORWARD and loaded.leaf == "b"
    assert loaded.task_lvers == {"sync": 3}
    assert store.images_of(VM) == [IMG]
    assert sorted(os.listdir(tmp_path)) == [store.path(VM, IMG).name], "no temporary left"
    store.remove(j)
    assert store.load(VM, IMG) is None and store.images_of(VM) == []


def test_the_journal_records_the_mode_and_an_older_one_is_live(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    j = journal()
    j.mode = "offline"
    store.save(j)
    path = store.path(VM, IMG)
    data = json.loads(path.read_text())
    assert data["mode"] == "offline"
    loaded = store.load(VM, IMG)
    assert loaded is not None and loaded.mode == "offline"
    del data["mode"]  # written before offline moves existed
    path.write_text(json.dumps(data))
    loaded = store.load(VM, IMG)
    assert loaded is not None and loaded.mode == "live"


def test_a_version_1_journal_is_converted(tmp_path: Path) -> None:
    """A journal an older vdsClient left: one vdsmd (``address``), which was the SPM and the
    VM's host; no lease version recorded, so none of its tasks counts as lost to a failover."""
    store = JournalStore(tmp_path)
    data = journal().to_json()
    for key in ("spmAddress", "vmAddress", "hosts", "spmId", "spmLver", "taskLvers"):
        del data[key]
    data.update(version=1, address="127.0.0.1:4242", step="sync", tasks={"sync": "t1"})
    store.path(VM, IMG).write_text(json.dumps(data))
    loaded = store.load(VM, IMG)
    assert loaded is not None and loaded.version == JOURNAL_VERSION
    assert (loaded.spm_address, loaded.vm_address) == ("127.0.0.1:4242", "127.0.0.1:4242")
    assert loaded.hosts == ["127.0.0.1:4242"]
    assert (loaded.spm_id, loaded.spm_lver, loaded.task_lvers) == (NO_SPM, NO_SPM, {})
    assert loaded.step == "sync" and loaded.tasks == {"sync": "t1"}
    assert loaded.notes == [
        "converted from a version-1 journal: 127.0.0.1:4242 is both the SPM and the VM host"
    ]
    store.save(loaded)  # written back as version 2
    assert json.loads(store.path(VM, IMG).read_text())["version"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 3}, "version 3, written by a newer vdsClient: resume it with that one"),
        ({"version": None}, "no version"),
        ({"version": "2"}, "version '2'"),
        ({"surprise": 1}, "unknown keys \\['surprise'\\]"),
        ({"version": 1}, "a version-1 move journal without its vdsmd address"),
        ({"mode": "sideways"}, "mode 'sideways' is neither live nor offline"),
    ],
)
def test_a_journal_this_client_cannot_read_is_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    store = JournalStore(tmp_path)
    store.save(journal())
    path = store.path(VM, IMG)
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(Exception, match=message) as caught:
        store.load(VM, IMG)
    assert str(path) in str(caught.value)


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


# --- the hosts --------------------------------------------------------------------------------


def test_the_spm_is_the_host_whose_getspmstatus_says_so() -> None:
    free = {"spmStatus": "Free", "spmId": 1, "spmLver": 4}
    spm = {"spmStatus": "SPM", "spmId": 1, "spmLver": 4}
    assert spm_of(SP, {HOST1: spm, HOST2: free}) == SpmView(HOST1, 1, 4)
    assert spm_of(SP, {HOST1: free, HOST2: free}) is None
    assert spm_of(SP, {}) is None
    with pytest.raises(NoSpm, match="all say they are the SPM"):
        spm_of(SP, {HOST1: spm, HOST2: spm})
    assert str(SpmView(HOST1, 1, 4)) == f"{HOST1} (host id 1, lver 4)"


def test_an_spm_none_of_the_known_hosts_is_is_not_waited_for() -> None:
    free = {"spmStatus": "Free", "spmId": -1, "spmLver": 4}
    held = {"spmStatus": "Free", "spmId": 3, "spmLver": 5}  # host id 3 holds the lease
    assert elsewhere({HOST1: held, HOST2: held}, {})
    assert not elsewhere({HOST1: free, HOST2: free}, {})  # no SPM yet: an engine may start one
    assert not elsewhere({HOST1: held}, {HOST2: "connection refused"})  # HOST2 may hold it
    assert not elsewhere({HOST1: held, HOST2: {**held, "spmStatus": "Contend"}}, {})


def test_the_vm_host_is_where_the_vm_is_up() -> None:
    assert vm_host_of(VM, {HOST1: "Down", HOST2: "Up"}) == HOST2
    assert vm_host_of(VM, {HOST1: "Down"}) == HOST1  # the pre-flight then says it is Down
    assert vm_host_of(VM, {}) is None
    with pytest.raises(HostNotFound, match="Up on several hosts"):
        vm_host_of(VM, {HOST1: "Up", HOST2: "Up"})


@pytest.mark.parametrize(
    ("verb", "error", "sign"),
    [
        ("getTaskStatus", ApiError(654, "not SPM"), True),
        ("syncImageData", ApiError(654, "not SPM"), True),  # refused: nothing was started
        ("syncImageData", ConnectionRefused("refused"), True),  # never sent
        ("getTaskStatus", ConnectionFailed("closed the connection"), True),  # a read
        ("syncImageData", ConnectionFailed("closed the connection"), False),  # may have started
        ("moveImage", ConnectionFailed("closed the connection"), False),
        ("getTaskStatus", ApiError(401, "unknown task"), False),
    ],
)
def test_the_signs_of_a_failover(verb: str, error: ApiError, sign: bool) -> None:
    assert failover_sign(verb, error) is sign


def test_which_host_does_what() -> None:
    assert SPM_STEPS == {
        "create_snapshot",
        "clone",
        "sync",
        "delete_source",
        "delete_snapshot",
        "delete_destination",
        "unsnapshot_delete",
        "move_image",
    }
    one = host_lines(HOST1, HOST1, 1, 2)
    assert one == [f"  host: {HOST1}, the SPM (host id 1, lver 2) and the VM's host"]
    two = host_lines(HOST1, HOST2, 1, 2)
    assert two[0].startswith(f"  SPM: {HOST1} (host id 1, lver 2): createVolume")
    assert two[1].startswith(f"  VM host: {HOST2}: snapshot, diskReplicateStart/Finish")


def test_step_lines_say_which_host_does_the_step_when_there_are_two() -> None:
    def lines(spm: str, vm: str) -> list[str]:
        out = io.StringIO()
        reporter = Reporter(out, json_lines=False, live=False)
        header = {"title": "t", "spmAddress": spm, "vmAddress": vm, "hostLines": ["  h"]}
        reporter.start(header, ["sync", "pivot"], {}, ROLLBACK_STEPS)
        reporter.step("sync", "copy", FORWARD, ("SPM", spm))
        reporter.step("pivot", "switch", FORWARD, ("VM host", vm))
        return out.getvalue().splitlines()

    assert lines(HOST1, HOST2) == [
        "t",
        "  h",
        f"[1/2] sync: copy on the SPM {HOST1}",
        f"[2/2] pivot: switch on the VM host {HOST2}",
    ]
    assert lines(HOST1, HOST1)[2:] == ["[1/2] sync: copy", "[2/2] pivot: switch"]


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
    header = {"title": "t", "spmAddress": HOST1, "hostLines": ["text only"]}
    reporter.start(header, ["sync", "pivot"], {"sync": 100}, ROLLBACK_STEPS)
    reporter.step("sync", TITLES["sync"], FORWARD, ("SPM", HOST1))
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
    assert events[0] == {
        "event": "start",
        "title": "t",
        "spmAddress": HOST1,
        "steps": ["sync", "pivot"],
    }
    assert events[1]["index"] == 1 and events[1]["count"] == 2
    assert (events[1]["role"], events[1]["host"]) == ("SPM", HOST1)
    assert events[3]["rate"] == 50.0 and events[3]["stepEta"] == 0.8
    assert events[4] == {"event": "stepDone", "step": "sync", "seconds": 1.5, "bytes": 100}


def test_progress_says_when_and_why_vdsmd_holds_the_copy_back() -> None:
    out = io.StringIO()
    reporter = Reporter(out, json_lines=True, live=False, clock=lambda: 0.0)
    reporter.start({"title": "t", "spmAddress": HOST1}, ["wait_ready"], {}, ROLLBACK_STEPS)
    reporter.step("wait_ready", TITLES["wait_ready"], FORWARD, ("VM host", HOST1))
    reporter.progress(10, 100, held_back="guests busy (200 op/s)")
    reporter.progress(20, 100)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e.get("heldBack") for e in events if e["event"] == "progress"] == [
        "guests busy (200 op/s)",
        None,
    ]
    text = io.StringIO()
    plain = Reporter(text, json_lines=False, live=False, clock=lambda: 0.0)
    plain.start({"title": "t", "spmAddress": HOST1}, ["wait_ready"], {}, ROLLBACK_STEPS)
    plain.step("wait_ready", TITLES["wait_ready"], FORWARD, ("VM host", HOST1))
    plain.progress(100, 100, held_back="guests busy\x1b[2J")
    assert "held back: guests busy\\x1b[2J" in text.getvalue(), text.getvalue()
