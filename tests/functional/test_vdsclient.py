"""vdsClient end to end against a real vdsmd: the verbs and their output (and TLS).

The real CLI, as a subprocess (tests/functional/vdsclient_helpers.py). The tests build what an
operator would: two file domains, a pool, and an image with a three-volume snapshot chain, all
through vdsClient, then check its output (text and --json), waitTask, the API errors vdsmd
answers (exit 1, with the code and its name), the flow id reaching the daemon's log, and TLS
with a client certificate.

Help, usage errors, connection failures and a stub server: test_vdsclient_errors.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid
from tests.functional.vdsclient_helpers import ok, vdsclient


def run_task(address: str, *args: str) -> str:
    """Start a task verb, check it printed a task id, wait for it; return the id."""
    task_id = ok(address, *args).strip()
    assert len(task_id) == 36 and task_id.count("-") == 4, task_id
    waited = ok(address, "waitTask", task_id)
    assert waited.splitlines()[-1].startswith(f"task {task_id}: finished success 100%")
    return task_id


@dataclass
class Chain:
    address: str
    pool: str
    domains: tuple[str, str]
    image: str
    volumes: tuple[str, str, str]  # base → leaf
    task: str  # the last createVolume's task


@pytest.fixture
def chain(vdsmd: VdsmdProcess, tmp_path: Path) -> Chain:
    """Two LOCALFS domains in a pool this host is the SPM of, and an image base (RAW) → snap1
    → snap2 (COW)."""
    address = vdsmd.address
    domains = (new_uuid(), new_uuid())
    for index, sd in enumerate(domains):
        directory = tmp_path / f"sd{index}"
        directory.mkdir()
        assert ok(address, "createStorageDomain", "4", sd, f"dom{index}", str(directory), "1") == ""
    pool = new_uuid()
    assert ok(address, "createStoragePool", "0", pool, "pool", domains[0], ",".join(domains)) == ""
    # As an engine does: join the pool as host 1, then become its SPM (the sanlock lease).
    assert ok(address, "connectStoragePool", pool, "1", "", domains[0], "1") == ""
    run_task(address, "spmStart", pool)
    image = new_uuid()
    base, snap1, snap2 = new_uuid(), new_uuid(), new_uuid()
    sd = domains[0]
    where = [sd, pool, image]
    run_task(address, "createVolume", *where, "1G", "RAW", "SPARSE", "DATA", base, "base")
    snap = ["1G", "COW", "SPARSE", "DATA", snap1, "snap 1", image, base]
    run_task(address, "createVolume", *where, *snap)
    # The legacy numbers work as well as the names: 4 COW, 2 SPARSE, 2 DATA.
    snap = ["1073741824", "4", "2", "2", snap2, "snap 2", image, snap1]
    task = run_task(address, "createVolume", *where, *snap)
    return Chain(address, pool, domains, image, (base, snap1, snap2), task)


def test_snapshot_chain(chain: Chain) -> None:
    sd, pool, image = chain.domains[0], chain.pool, chain.image
    base, snap1, snap2 = chain.volumes
    listed = ok(chain.address, "getVolumesList", sd, pool, image)
    assert listed.splitlines() == [base, snap1, snap2]

    info = json.loads(ok("--json", chain.address, "getVolumeInfo", sd, pool, image, snap2))
    assert set(info) == {"info"}
    assert info["info"]["voltype"] == "LEAF"
    assert info["info"]["parent"] == snap1
    assert info["info"]["format"] == "COW"
    assert info["info"]["description"] == "snap 2"
    assert int(info["info"]["capacity"]) == 1024**3

    # --json may come after the verb, too.
    base_info = json.loads(ok(chain.address, "getVolumeInfo", "--json", sd, pool, image, base))
    assert base_info["info"]["voltype"] == "INTERNAL"
    assert base_info["info"]["format"] == "RAW"

    text = ok(chain.address, "getVolumeInfo", sd, pool, image, snap1).splitlines()
    assert f"parent = {base}" in text and "voltype = INTERNAL" in text
    assert text == sorted(text)  # key = value lines, sorted

    pool_info = ok(chain.address, "getStoragePoolInfo", pool)
    assert "info:" in pool_info and f"    master_uuid = {sd}" in pool_info


def test_wait_task_on_a_finished_task(chain: Chain) -> None:
    proc = vdsclient(chain.address, "waitTask", chain.task)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"task {chain.task}: finished success 100%")

    lines = ok("--json", chain.address, "waitTask", chain.task).splitlines()
    assert len(lines) == 1
    status = json.loads(lines[0])
    assert status["taskID"] == chain.task
    assert (status["taskState"], status["taskResult"], status["code"]) == ("finished", "success", 0)


def test_wait_task_of_a_reverted_task_fails(chain: Chain) -> None:
    ok(chain.address, "revertTask", chain.task)
    proc = vdsclient(chain.address, "waitTask", chain.task, "--timeout", "60")
    assert proc.returncode == 1
    assert f"task {chain.task} ended with result cleanSuccess" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_api_errors_exit_1_with_code_and_name(chain: Chain) -> None:
    sd, pool, image = chain.domains[0], chain.pool, chain.image
    unknown = new_uuid()
    proc = vdsclient(chain.address, "getVolumeInfo", sd, pool, image, unknown)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("vdsClient: error 201 (VolumeDoesNotExist): ")
    assert unknown in proc.stderr

    proc = vdsclient(chain.address, "getVolumeInfo", sd, pool, image, "not-a-uuid")
    assert proc.returncode == 1
    assert proc.stderr.startswith("vdsClient: error 1000 (InvalidParameterException): ")
    assert "volumeID" in proc.stderr

    proc = vdsclient(chain.address, "getTaskStatus", new_uuid())
    assert proc.returncode == 1
    assert proc.stderr.startswith("vdsClient: error 401 (UnknownTask): ")

    proc = vdsclient(chain.address, "waitTask", new_uuid())
    assert proc.returncode == 1
    assert proc.stderr.startswith("vdsClient: error 401 (UnknownTask): ")


def test_bad_enum_is_refused_by_the_daemon(vdsmd: VdsmdProcess, tmp_path: Path) -> None:
    proc = vdsclient(
        vdsmd.address, "createStorageDomain", "99", new_uuid(), "d", str(tmp_path), "1"
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("vdsClient: error 1000 (InvalidParameterException): ")
    assert "domainType" in proc.stderr


def test_flow_id_reaches_the_daemon_log(vdsmd: VdsmdProcess) -> None:
    ok("--flow-id", "cli-test-flow-42", vdsmd.address, "ping")
    assert "flow_id=cli-test-flow-42" in vdsmd.log()
    ok(vdsmd.address, "getAllTasksStatuses")  # without --flow-id: one is generated
    finished = [
        line for line in vdsmd.log().splitlines() if "FINISH Host.getAllTasksStatuses" in line
    ]
    assert finished and "flow_id=None" not in finished[-1]
