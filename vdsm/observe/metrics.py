"""/metrics: the host in Prometheus' text format, built with prometheus-client.

Two kinds of series:

- what happened, counted as it happens: every API call by verb and code with its latency
  (reported by the dispatcher), every replication that ended by outcome with its duration
  from diskReplicateStart and the time libvirt took to pivot or abort (reported by the
  replications);
- what is, read at each scrape from one host snapshot (vdsm/observe/host_state.py, the API's
  own answers): tasks by state, VMs by status, replications and merges in flight with their
  bytes, rate limit and measured rate, storage domain checks and space, SPM role and lease.

Labels stay bounded: a verb is a schema verb (unknown names never reach the dispatcher), a
code one of the error hierarchy's; a VM, a drive and a domain are labels since operators look
for them, and a series of one goes away with it; no task or request id is ever a label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from vdsm.virt.replication import ReplicationEnded

METRICS_PATH = "/metrics"

# Seconds: an API call (most take milliseconds; a storage read may take the probe timeout).
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Seconds from diskReplicateStart to the pivot: a small disk in seconds, a large one in hours.
REPLICATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
# Seconds libvirt takes to pivot or abort a mirror (the guest's I/O pauses for part of it).
SWITCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The task states getAllTasksStatuses reports, each always exported (0 when none).
TASK_STATES = ("init", "running", "aborting", "cleaning", "finished", "unknown")


class HostMetrics:
    """The host's registry: the counters the dispatcher and the replications feed, and a
    collector that reads the host's state at every scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """``snapshot``: the host's state now (host_state.snapshot over the dispatcher)."""
        self.registry = CollectorRegistry()
        self._calls = Counter(
            "vdsm_rpc_calls",
            "API calls answered, by verb and result code (0: success).",
            ["verb", "code"],
            registry=self.registry,
        )
        self._call_seconds = Histogram(
            "vdsm_rpc_call_duration_seconds",
            "Time an API call took, from its arguments' check to its answer.",
            ["verb"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self._replication_seconds = Histogram(
            "vdsm_replication_duration_seconds",
            "Replications that ended, from diskReplicateStart to the pivot (outcome pivot) "
            "or the abort (outcome abort).",
            ["outcome"],
            buckets=REPLICATION_BUCKETS,
            registry=self.registry,
        )
        self._switch_seconds = Histogram(
            "vdsm_replication_switch_duration_seconds",
            "Time libvirt took to pivot a mirror to its destination or to abort it.",
            ["outcome"],
            buckets=SWITCH_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(snapshot))

    def rpc_call(self, verb: str, code: int, seconds: float) -> None:
        """The dispatcher's hook: one call of ``verb`` answered ``code``."""
        self._calls.labels(verb, str(code)).inc()
        self._call_seconds.labels(verb).observe(seconds)

    def replication_ended(self, ended: ReplicationEnded) -> None:
        """The replications' hook: one replication pivoted or was aborted."""
        outcome = "pivot" if ended.pivot else "abort"
        self._replication_seconds.labels(outcome).observe(ended.seconds)
        if ended.switch_seconds is not None:
            self._switch_seconds.labels(outcome).observe(ended.switch_seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The GET /metrics view."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector(Collector):
    """The gauges of the host's state, from one snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot
        self._lock = threading.Lock()
        # (vm, drive, kind) → (monotonic time, bytes done) at the last scrape: the measured rate.
        self._last_done: dict[tuple[str, str, str], tuple[float, int]] = {}

    def describe(self) -> list[Metric]:
        return []  # built at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        state = self._snapshot()
        yield from _tasks(state)
        yield from self._jobs(state)
        yield from _domains(state)
        yield from _pools(state)
        errors = GaugeMetricFamily(
            "vdsm_scrape_errors",
            "Parts of the host's state the last scrape could not read (the web page says why).",
        )
        errors.add_metric([], len(state["errors"]))
        yield errors

    def _jobs(self, state: dict[str, Any]) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "vdsm_block_jobs_in_flight", "Replications and merges running.", labels=["kind"]
        )
        labels = ["vm_id", "drive", "kind"]
        series = [
            (GaugeMetricFamily(name, documentation, labels=labels), of_job)
            for name, documentation, of_job in _JOB_SERIES
        ]
        rate = GaugeMetricFamily(
            "vdsm_block_job_rate_bytes_per_second",
            "Bytes a second the copy moved since the previous scrape.",
            labels=labels,
        )
        counts = {"replication": 0, "merge": 0}
        now = time.monotonic()
        seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        with self._lock:
            for vm in state["vms"]:
                for job in vm["jobs"]:
                    key = (vm["vmId"], job["drive"], job["kind"])
                    counts[job["kind"]] = counts.get(job["kind"], 0) + 1
                    for family, of_job in series:
                        family.add_metric(list(key), of_job(job))
                    seen[key] = (now, job["done"])
                    last = self._last_done.get(key)
                    if last is not None and now > last[0] and job["done"] >= last[1]:
                        rate.add_metric(list(key), (job["done"] - last[1]) / (now - last[0]))
            self._last_done = seen  # a job that ended is forgotten with its series
        for kind, count in sorted(counts.items()):
            in_flight.add_metric([kind], count)
        yield in_flight
        yield from (family for family, _ in series)
        yield rate


# The gauges of a running block job: name, help, and its value from the job's state.
_JOB_SERIES: tuple[tuple[str, str, Callable[[dict[str, Any]], float]], ...] = (
    (
        "vdsm_block_job_done_bytes",
        "Bytes a running replication or merge has copied.",
        lambda job: job["done"],
    ),
    (
        "vdsm_block_job_total_bytes",
        "Bytes a running replication or merge has to copy (grows while the guest writes).",
        lambda job: job["total"],
    ),
    (
        "vdsm_block_job_rate_limit_bytes_per_second",
        "The copy's rate limit now (0: none): the operator's cap or the adaptive rate.",
        lambda job: job["rateLimit"],
    ),
    (
        "vdsm_block_job_held_back",
        "1 while the adaptive rate holds the copy back for the guests' sake.",
        lambda job: 1 if job["heldBack"] else 0,
    ),
)


def _tasks(state: dict[str, Any]) -> Iterator[Metric]:
    tasks = GaugeMetricFamily("vdsm_tasks", "Storage tasks by state.", labels=["state"])
    counts = dict.fromkeys(TASK_STATES, 0)
    for task in state["tasks"]:
        counts[task["state"]] = counts.get(task["state"], 0) + 1
    for task_state, count in counts.items():
        tasks.add_metric([task_state], count)
    vms = GaugeMetricFamily("vdsm_vms", "VMs of this host by status.", labels=["status"])
    statuses: dict[str, int] = {}
    for vm in state["vms"]:
        statuses[vm["status"]] = statuses.get(vm["status"], 0) + 1
    for status, count in sorted(statuses.items()):
        vms.add_metric([status], count)
    yield from (tasks, vms)


def _domains(state: dict[str, Any]) -> Iterator[Metric]:
    valid = GaugeMetricFamily(
        "vdsm_storage_domain_valid",
        "1 when the domain's last check read it, 0 when it did not answer.",
        labels=["domain"],
    )
    delay = GaugeMetricFamily(
        "vdsm_storage_domain_check_delay_seconds",
        "How long the domain's last check took to read it.",
        labels=["domain"],
    )
    age = GaugeMetricFamily(
        "vdsm_storage_domain_last_check_age_seconds",
        "Seconds since the domain's last check.",
        labels=["domain"],
    )
    host_id = GaugeMetricFamily(
        "vdsm_storage_domain_host_id_acquired",
        "1 when this host holds its host id in the domain's sanlock lockspace.",
        labels=["domain"],
    )
    size = GaugeMetricFamily(
        "vdsm_storage_domain_size_bytes", "Size of the domain's storage.", labels=["domain"]
    )
    free = GaugeMetricFamily(
        "vdsm_storage_domain_free_bytes", "Free space of the domain's storage.", labels=["domain"]
    )
    for domain in state["domains"]:
        labels = [domain["uuid"]]
        valid.add_metric(labels, 1 if domain["valid"] else 0)
        delay.add_metric(labels, domain["delay"])
        if domain["lastCheck"] is not None:
            age.add_metric(labels, domain["lastCheck"])
        host_id.add_metric(labels, 1 if domain["acquired"] else 0)
        if "total" in domain:
            size.add_metric(labels, domain["total"])
            free.add_metric(labels, domain["free"])
    yield from (valid, delay, age, host_id, size, free)


def _pools(state: dict[str, Any]) -> Iterator[Metric]:
    spm = GaugeMetricFamily(
        "vdsm_spm_role",
        "This host's SPM status in the pool (SPM, Contend, Stopping or Free): 1, from the lease.",
        labels=["pool", "status"],
    )
    spm_id = GaugeMetricFamily(
        "vdsm_spm_host_id",
        "The host id holding the pool's SPM lease (-1: none).",
        labels=["pool"],
    )
    lver = GaugeMetricFamily(
        "vdsm_spm_lease_version",
        "The SPM lease's version (sanlock's lver; -1: never held).",
        labels=["pool"],
    )
    for pool in state["pools"]:
        spm.add_metric([pool["uuid"], pool["spmStatus"]], 1)
        spm_id.add_metric([pool["uuid"]], pool["spmId"])
        lver.add_metric([pool["uuid"]], pool["spmLver"])
    yield from (spm, spm_id, lver)
