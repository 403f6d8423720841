"""/metrics of a real vdsmd, scraped over its TLS listener and parsed with prometheus-client's
own parser: the values are what the API answers (tasks by state, domain checks and space, the
SPM's lease), the calls are counted by verb and code exactly, the same client-certificate
policy as the API holds, and the read-only views speak HTTP as strictly as the API does.
(The replication histograms are checked after a real move: test_web_page.py.)"""

from __future__ import annotations

import http.client
import socket
import ssl
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, wait_task
from tests.functional.storage_helpers import Storage, ok
from vdsm_api import schema


@pytest.fixture
def storage(vdsmd: VdsmdProcess, tmp_path: Path) -> Storage:
    return Storage(vdsmd, tmp_path)


def get(daemon: VdsmdProcess, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request with the admin certificate, as a Prometheus server configured with it."""
    conn = http.client.HTTPSConnection(daemon.host, daemon.port, context=daemon.ssl_context())
    try:
        conn.request(method, path)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(daemon: VdsmdProcess) -> Samples:
    status, headers, body = get(daemon, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version="), headers
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_scrape_says_what_the_api_says(storage: Storage) -> None:
    daemon, rpc = storage.daemon, storage.rpc
    img, vol = new_uuid(), new_uuid()
    task = ok(rpc.createVolume(storage.sd, storage.sp, img, "1048576", 5, 2, "DATA", vol))["uuid"]
    wait_task(daemon, task)
    before = scrape(daemon)
    for _ in range(3):
        ok(rpc.ping())
    assert rpc.getTaskStatus("not-a-uuid")["status"]["code"] == 1000  # refused by the schema
    after = scrape(daemon)

    # Calls: counted once each, by verb and code, with their latency.
    calls = "vdsm_rpc_calls_total"
    assert value(after, calls, verb="Host.ping", code="0") - value(
        before, calls, verb="Host.ping", code="0"
    ) == pytest.approx(3)
    assert value(after, calls, verb="Task.getStatus", code="1000") - value(
        before, calls, verb="Task.getStatus", code="1000"
    ) == pytest.approx(1)
    durations = "vdsm_rpc_call_duration_seconds_count"
    assert value(after, durations, verb="Host.ping") - value(
        before, durations, verb="Host.ping"
    ) == pytest.approx(3)
    # No label per request: only schema verbs, never a task id or a client's name.
    verbs = {dict(labels)["verb"] for (name, labels) in after if name == calls}
    assert verbs and verbs <= {verb.title for verb in schema.load().verbs}, verbs

    # Tasks by state: what getAllTasksStatuses reports.
    statuses = ok(rpc.getAllTasksStatuses())["allTasksStatus"]
    finished = sum(1 for s in statuses.values() if s["taskState"] == "finished")
    assert finished >= 1
    assert value(after, "vdsm_tasks", state="finished") == finished
    assert value(after, "vdsm_tasks", state="running") == 0

    # Domain checks and space: what repoStats and getStorageDomainStats report.
    repo = ok(rpc.repoStats())
    for sd in (storage.sd, storage.sd2):
        check = repo[sd]
        assert value(after, "vdsm_storage_domain_valid", domain=sd) == (1 if check["valid"] else 0)
        assert value(after, "vdsm_storage_domain_host_id_acquired", domain=sd) == (
            1 if check["acquired"] else 0
        )
        assert value(after, "vdsm_storage_domain_check_delay_seconds", domain=sd) >= 0
        space = ok(rpc.getStorageDomainStats(sd))["stats"]
        assert value(after, "vdsm_storage_domain_size_bytes", domain=sd) == int(space["disktotal"])
        # Free space moves with anything written meanwhile (logs): the same within 1 %.
        free = value(after, "vdsm_storage_domain_free_bytes", domain=sd)
        assert free == pytest.approx(int(space["diskfree"]), rel=0.01)

    # The SPM: the lease's truth, as getSpmStatus tells it.
    spm = ok(rpc.getSpmStatus(storage.sp))["spm_st"]
    assert value(after, "vdsm_spm_role", pool=storage.sp, status=spm["spmStatus"]) == 1
    assert value(after, "vdsm_spm_host_id", pool=storage.sp) == spm["spmId"]
    assert value(after, "vdsm_spm_lease_version", pool=storage.sp) == spm["spmLver"]
    assert value(after, "vdsm_scrape_errors") == 0


def test_metrics_need_a_client_certificate(vdsmd: VdsmdProcess) -> None:
    # The same policy as the API: TLS, and a certificate the host's CA signed.
    context = ssl.create_default_context(cafile=str(vdsmd.pki.ca_cert))
    conn = http.client.HTTPSConnection(vdsmd.host, vdsmd.port, context=context, timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        conn.request("GET", "/metrics")
        conn.getresponse().read()
    conn.close()
    # Plain HTTP to the TLS port gets no page either.
    with socket.create_connection((vdsmd.host, vdsmd.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except ConnectionError:
            answer = b""
    assert b"vdsm_rpc_calls_total" not in answer


def test_the_views_speak_strict_http(vdsmd: VdsmdProcess) -> None:
    status, headers, _ = get(vdsmd, "/metrics", method="POST")
    assert (status, headers["allow"]) == (405, "GET")
    status, headers, _ = get(vdsmd, "/RPC2")
    assert (status, headers["allow"]) == (405, "POST")
    status, _, body = get(vdsmd, f"/{uuid.uuid4()}")
    assert status == 404 and b"GET /, /metrics, /status.json" in body
    status, headers, body = get(vdsmd, "/status.json")
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    # A GET with a body is refused: the body could frame a request of its own.
    with vdsmd.connect() as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        answer = b""
        while chunk := sock.recv(4096):  # the server closes after an error answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400") and b"a GET request has no body" in answer
