"""vdsClient's output without a daemon: answers as text and JSON, help texts, waitTask progress."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from vdsm_api import schema
from vdsm_cli import api, output, progress
from vdsm_cli import help as cli_help
from vdsm_cli.api import Vdsm, WaitTimeout
from vdsm_cli.client import Client, Endpoint
from vdsm_cli.errors import ApiError, CliError

TASK = "0d4f8a51-6bd5-4c5e-93a2-3c7e9cb1e0aa"
MIB = 1024 * 1024

# --- answers --------------------------------------------------------------------------------


def test_payload_drops_the_status() -> None:
    envelope = {"status": {"code": 0, "message": "Done"}, "uuid": TASK}
    assert output.payload(envelope) == {"uuid": TASK}
    assert output.payload({"status": {"code": 0, "message": "Done"}}) == {}


def test_text_of_a_single_value() -> None:
    assert output.to_text({"uuid": TASK}) == TASK
    assert output.to_text({}) == ""


def test_text_of_a_list_one_per_line() -> None:
    assert output.to_text({"uuidlist": ["a", "b", "c"]}) == "a\nb\nc"
    assert output.to_text({"uuidlist": []}) == ""


def test_text_of_a_mapping_sorted_key_value_lines() -> None:
    info = {"voltype": "LEAF", "capacity": "1024", "children": [], "parent": "p", "gen": 0}
    assert output.to_text({"info": info}).splitlines() == [
        "capacity = 1024",
        "children = ",
        "gen = 0",
        "parent = p",
        "voltype = LEAF",
    ]


def test_text_of_nested_mappings_and_lists_of_mappings() -> None:
    data = {
        "path": "/p/leaf",
        "volumeChain": [{"volumeID": "base", "path": "/p/base"}, {"volumeID": "leaf"}],
        "flags": {"legal": True, "none": None},
    }
    assert output.to_text(data).splitlines() == [
        "flags:",
        "    legal = true",
        "    none = ",
        "path = /p/leaf",
        "volumeChain:",
        "    path = /p/base",
        "    volumeID = base",
        "",
        "    volumeID = leaf",
    ]


def test_json_is_one_object() -> None:
    data = {"info": {"voltype": "LEAF"}}
    assert json.loads(output.to_json(data)) == data


# --- help -----------------------------------------------------------------------------------


def test_main_help_lists_every_legacy_verb_with_its_summary() -> None:
    text = cli_help.main_help(schema.load())
    for verb in schema.load().by_xmlrpc.values():
        assert f"    {verb.xmlrpc} " in text
        assert verb.summary.split()[0] in text
    assert "waitTask" in text
    assert "CA certificate(s) to verify the server with" in text  # --ca, and its default


def test_main_help_groups_legacy_only_verbs_with_their_siblings() -> None:
    text = cli_help.main_help(schema.load())
    volume = text.index("  Volume:")
    assert text.index("deleteVolume") > volume
    assert text.index("createVolume") > volume


def test_verb_help() -> None:
    text = cli_help.verb_help(schema.load().by_xmlrpc["createVolume"])
    assert text.startswith("usage: vdsClient HOST[:PORT] createVolume <storagedomainID>")
    assert "JSON-RPC: Volume.create" in text
    assert "VolumeFormat (COW, RAW; or 4=COW, 5=RAW), required" in text
    assert "DiskType (DATA, ISOF, MEMD, MEMM, OVFS; or 2=DATA), default DATA" in text
    assert "    212  VolumeAlreadyExists: Volume already exists" in text
    assert "   1000  InvalidParameterException" in text
    assert "returns: the task id" in text


@pytest.mark.parametrize("name", sorted(schema.load().by_xmlrpc))
def test_every_verb_help_names_its_parameters_in_order(name: str) -> None:
    verb = schema.load().by_xmlrpc[name]
    text = cli_help.verb_help(verb)
    body = text[text.index("arguments") :]
    positions = [body.index(f"\n  {p.name} ") for p in verb.xmlrpc_params]
    assert positions == sorted(positions)
    for code in verb.errors:
        assert f"  {code:>5}  " in text


# --- progress -------------------------------------------------------------------------------


def status(
    state: str = "running",
    progress_: float = 0,
    done: int | None = None,
    total: int | None = None,
    result: str = "",
    code: int = 0,
) -> dict[str, Any]:
    return {
        "taskID": TASK,
        "taskState": state,
        "taskResult": result,
        "code": code,
        "message": "",
        "progress": progress_,
        "bytesDone": "" if done is None else str(done),
        "bytesTotal": "" if total is None else str(total),
    }


def test_meter_rate_and_eta() -> None:
    meter = progress.Meter(window=10)
    assert meter.rate() is None
    meter.add(0.0, 0)
    meter.add(2.0, 200 * MIB)
    assert meter.rate() == pytest.approx(100 * MIB)
    assert meter.eta(1000 * MIB) == pytest.approx(8.0)


def test_meter_forgets_old_samples_and_restarts_when_the_count_goes_back() -> None:
    meter = progress.Meter(window=5)
    for t in range(21):
        meter.add(float(t), t * (10 if t < 10 else 20))  # faster after t=10
    assert meter.rate() == pytest.approx(20)
    meter.add(21.0, 0)  # the next volume
    assert meter.rate() is None


def test_describe_with_bytes() -> None:
    meter = progress.Meter()
    meter.add(0.0, 0)
    meter.add(1.0, 100 * MIB)
    text = progress.describe(status(progress_=25, done=100 * MIB, total=400 * MIB), meter)
    assert text == " 25%  100.0 MiB / 400.0 MiB  100.0 MiB/s  ETA 0:03"


def test_describe_without_bytes_uses_the_percentage() -> None:
    meter = progress.Meter()
    meter.add(0.0, 0)
    meter.add(10.0, 50)
    assert progress.describe(status(progress_=50), meter) == " 50%  ETA 0:10"


@pytest.mark.parametrize(
    "count, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * 1024**3, "3.0 GiB")]
)
def test_human_bytes(count: int, text: str) -> None:
    assert progress.human_bytes(count) == text


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (3725, "1:02:05")])
def test_human_duration(seconds: float, text: str) -> None:
    assert progress.human_duration(seconds) == text


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedClient(Client):
    """A Client whose getTaskStatus answers the scripted statuses, the last one for ever."""

    def __init__(self, statuses: list[dict[str, Any]]) -> None:
        super().__init__(Endpoint("localhost", 54321), "flow")
        self.pending = list(statuses)

    def call(self, method: str, args: list[Any]) -> dict[str, Any]:
        assert (method, args) == ("getTaskStatus", [TASK])
        answer = self.pending.pop(0) if len(self.pending) > 1 else self.pending[0]
        return {"status": {"code": 0, "message": "OK"}, "taskStatus": answer}


def scripted(statuses: list[dict[str, Any]], fake: FakeTime, sleep: Any = None) -> Vdsm:
    return Vdsm(ScriptedClient(statuses), sleep=sleep or fake.sleep, clock=fake.clock)


def test_wait_returns_the_finished_status_and_closes_the_display() -> None:
    out = io.StringIO()
    bar = progress.LiveBar(out, TASK)
    fake = FakeTime()
    final = status("finished", 100, 4 * MIB, 4 * MIB, result="success")
    statuses = [status("init"), status(progress_=50, done=2 * MIB, total=4 * MIB), final]
    got = progress.watch(scripted(statuses, fake), TASK, bar)
    assert got == final
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    assert "[###############---------------]  50%  2.0 MiB / 4.0 MiB" in text
    assert "4.0 MiB / 4.0 MiB" in text and "finished success" in text


def test_wait_timeout_leaves_the_task_running() -> None:
    fake = FakeTime()
    out = io.StringIO()
    with pytest.raises(WaitTimeout, match="not finished after 2s .*keeps running"):
        progress.watch(
            scripted([status(progress_=10)], fake),
            TASK,
            progress.PlainLines(out, TASK),
            timeout=2,
            interval=0.5,
        )
    assert fake.now == pytest.approx(2.0)


def test_wait_closes_the_bar_on_ctrl_c() -> None:
    out = io.StringIO()
    bar = progress.LiveBar(out, TASK)
    fake = FakeTime()

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        progress.watch(scripted([status()], fake, interrupted), TASK, bar)
    assert out.getvalue().endswith("\n")


def test_wait_task_default_pauses_are_a_tenth_of_the_wait_so_far_up_to_the_interval() -> None:
    """A wait ends at most about a tenth of its length late: 50 ms pauses for the first
    half second, then a tenth of the time waited, never more than POLL_INTERVAL."""
    fake = FakeTime()
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        fake.sleep(seconds)

    statuses = [status()] * 80 + [status("finished", 100, result="success")]
    got = scripted(statuses, fake, sleep).wait_task(TASK)
    assert got["taskResult"] == "success"
    assert pauses[:10] == [api.POLL_FIRST] * 10
    waited = 0.0
    for pause in pauses:
        assert pause == min(api.POLL_INTERVAL, max(api.POLL_FIRST, waited * api.POLL_SHARE))
        waited += pause
    assert pauses[-1] == api.POLL_INTERVAL


def test_wait_task_reports_every_status_and_wait_success_raises_on_failure() -> None:
    fake = FakeTime()
    seen: list[str] = []
    failed = {**status("finished", 100, result="cleanSuccess"), "code": 261, "message": "EIO"}
    api = scripted([status(), failed], fake)
    with pytest.raises(CliError, match="copy task .* ended with cleanSuccess .error 261.: EIO"):
        api.wait_success(TASK, "copy", on_progress=lambda s: seen.append(s["taskState"]))
    assert seen == ["running", "finished"]


def test_plain_lines_on_state_changes_and_at_most_every_few_seconds() -> None:
    out = io.StringIO()
    lines = progress.PlainLines(out, TASK, every=5)
    lines.update(status("init"), 0)
    for t in range(1, 12):
        lines.update(status(progress_=t * 5), float(t))
    lines.update(status("finished", 100, result="success"), 12)
    printed = out.getvalue().splitlines()
    assert [line.split(": ", 1)[1].split()[0] for line in printed] == [
        "init",
        "running",
        "running",
        "running",
        "finished",
    ]
    assert printed[1].startswith(f"task {TASK}: running   5%")
    assert printed[-1].startswith(f"task {TASK}: finished success 100%")


def test_json_lines_when_the_status_changes() -> None:
    out = io.StringIO()
    lines = progress.JsonLines(out)
    for s in (status(), status(), status(progress_=50), status("finished", 100, result="success")):
        lines.update(s, 0)
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [p["progress"] for p in printed] == [0, 50, 100]
    assert printed[-1]["taskResult"] == "success"


# --- server strings never drive the terminal ------------------------------------------------


def test_control_characters_in_answers_are_escaped() -> None:
    """A volume description or a VM name is a client's text: ESC, BEL and newlines in it are
    shown escaped, not sent to the terminal (which they would retitle, clear or forge)."""
    info = {
        "description": "\x1b]0;owned\x07\x1b[2J",
        "name\x1b[31m": "a\nforged = line",
        "t": "a\tb",
    }
    lines = output.to_text({"info": info}).splitlines()
    assert lines == [
        "description = \\x1b]0;owned\\x07\\x1b[2J",
        "name\\x1b[31m = a\\nforged = line",
        "t = a\tb",
    ]
    assert output.to_text({"uuidlist": ["\x9b31m", "\u2028"]}) == "\\x9b31m\n\\u2028"
    assert "\x1b" not in output.to_json({"d": "\x1b"})  # JSON escapes it: \u001b


def test_control_characters_in_error_messages_are_escaped() -> None:
    error = ApiError(1000, "Invalid parameter: desc='\x1b[2J' (control characters)\x07")
    assert "\x1b" not in error.message and "\x07" not in error.message
    assert "desc='\\x1b[2J'" in error.message
    assert CliError("two\nlines\tok\x1b").message == "two\nlines\tok\\x1b"
    assert output.terminal_safe("plain text") == "plain text"
