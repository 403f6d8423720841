"""9. The SPM lease: lockspace join, spmStart and SPM failover on two real hosts
(vdsm_guest.cluster: each host its own sanlock daemon and its own vdsmd), at sanlock
io_timeout 1 (the test machines' setting) and 10 (VDSM's production default).

A profile is one cluster whose domains were made with that io_timeout (vdsmd's
``--sanlock-io-timeout``, written into each new domain's lockspace). Host 1 makes two domains
and a pool, joins it and starts the SPM; host 2 joins. Then, each timed by the client:

- join: connectStoragePool until repoStats shows the host id acquired in every domain of the
  pool (host 2, disconnected and connected again between samples); also when this host's
  sanlock daemon lists the lockspace as joined. The domain monitors check every
  ``MONITOR_INTERVAL`` s, so repoStats shows a join up to that much after sanlock.
- spmStart: the task's start until getSpmStatus says SPM, the lease free (clean handoffs).
- failover, from the fault until the new SPM's getSpmStatus says SPM, with the lease's lver
  before and after: (a) spmStop on the SPM, spmStart on the other host; (b) the SPM's vdsmd
  SIGKILLed, spmStart on the other; (c) the SPM's vdsmd hung (SIGSTOP), fenceSpmStorage from
  the other host, spmStart there once the lease is free; (d) the whole SPM host dies
  (ClusterHost.kill), spmStart on the other retried until it succeeds, as an engine does.

(a)-(c) run ``repeat`` times each, alternating the SPM between the hosts (the host that lost
it restarts its vdsmd and rejoins before the next run); (d), which waits for sanlock's
dead-host delay, once per profile, last. No SPM task is in flight: what is timed is the lease.
Smoke runs do (a)-(c) once at io_timeout 1 and no (d).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.context import Context, r, target
from bench.daemon import POLL
from bench.stats import spread
from vdsm_cli.api import Vdsm
from vdsm_guest.cluster import Cluster, ClusterHost
from vdsm_guest.sanlock_daemon import MAX_SOCKET_PATH

log = logging.getLogger("bench")

IO_TIMEOUTS = (1, 10)  # sanlock io_timeout of the profiles (seconds)
MONITOR_INTERVAL = 1  # vdsmd's --domain-monitor-interval (its default is 10)
WATCH = 0.05  # seconds between two looks at repoStats, getSpmStatus or a process
RETRY = 0.5  # seconds between two spmStart attempts an engine would make
LEASE_HELD = 651  # spmStart's code while another live host holds the lease
NO_SPM = -1
CASES = ("clean", "crash", "fence", "dead_host")
# What follows the hosts' parent directory in the longest sanlock socket path of a cluster.
SOCKET_TAIL = "/vdsm-spm-12345678/c/host2/sanlock/sanlock.sock"
# Targets (seconds); the others are sanlock's own figures plus slack (_targets).
MAX_HANDOFF_S = 1.0  # clean handoff: a release and a free acquire
MAX_CRASH_S = 5.0  # sanlock frees a dead process's lease at once, whatever the io_timeout


def dead_host_s(io_timeout: int) -> int:
    """sanlock's host_dead_seconds: a host id that stopped renewing is dead (its leases free)
    this long after its last renewal: id_renewal_fail (8 x io_timeout) + watchdog fire (60)."""
    return 8 * io_timeout + 60


def expected(io_timeout: int) -> dict[str, dict[str, Any]]:
    """sanlock's own figures (its timeouts.h) for each row, as [low, high] seconds and words."""
    n = io_timeout
    dead = dead_host_s(n)
    return {
        "join": {
            "range_s": [2 * n, 5 * n],
            "text": f"{2 * n}–{5 * n} s: a free host id takes delta_short_delay (2 × io_timeout) "
            "plus up to 3 I/Os of io_timeout",
        },
        "spm_start": {
            "range_s": [0, 6 * n],
            "text": f"0–{6 * n} s: a free paxos lease, 6 I/Os of up to io_timeout each",
        },
        "clean": {"range_s": [0, 6 * n], "text": "release, then a free paxos acquire"},
        "crash": {
            "range_s": [0, 6 * n],
            "text": "sanlock frees a dead process's leases at once; then a free acquire",
        },
        "fence": {
            "range_s": [0, 4 * n],
            "text": f"0–{4 * n} s to the kill: the request bit is published at the fencing "
            "host's next renewal and read at the holder's (each every 2 × io_timeout), whose "
            "daemon then SIGKILLs the holder",
        },
        "dead_host": {
            "range_s": [dead - 2 * n, dead],
            "text": f"{dead - 2 * n}–{dead} s: host_dead_seconds = 8 × io_timeout + 60 = {dead} s "
            "after the dead host's last renewal (up to 2 × io_timeout before the kill)",
        },
    }


def run(ctx: Context) -> dict[str, Any]:
    st = ctx.settings
    io_timeouts = IO_TIMEOUTS[:1] if st.smoke else IO_TIMEOUTS
    profiles: dict[str, Any] = {}
    for io_timeout in io_timeouts:
        log.info("   io_timeout %d", io_timeout)
        profiles[str(io_timeout)] = _profile(
            ctx.env.root, io_timeout, repeat=st.repeat, dead_host=not st.smoke
        )
    return {
        "io_timeouts": list(io_timeouts),
        "repeat": st.repeat,
        "dead_host_runs": 0 if st.smoke else 1,
        "monitor_interval_s": MONITOR_INTERVAL,
        "retry_s": RETRY,
        "profiles": profiles,
        "targets": _targets(profiles),
    }


# --- one profile ------------------------------------------------------------------------------


def _profile(parent: Path, io_timeout: int, *, repeat: int, dead_host: bool) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        # The shared storage on the bench's disk; the hosts (sanlock's run directories, whose
        # socket path must fit in 107 bytes) there too if the path is short enough, else in /tmp.
        storage = Path(tempfile.mkdtemp(prefix=f"spm-io{io_timeout}-", dir=parent))
        stack.callback(shutil.rmtree, storage, ignore_errors=True)
        fits = len(str(parent)) + len(SOCKET_TAIL) <= MAX_SOCKET_PATH
        root = Path(tempfile.mkdtemp(prefix="vdsm-spm-", dir=parent if fits else None))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        cluster = stack.enter_context(
            Cluster(
                root / "c",
                hosts=2,
                storage_roots=[storage],
                sanlock_io_timeout=io_timeout,
                extra_args=["--domain-monitor-interval", str(MONITOR_INTERVAL)],
            )
        )
        result = _Profile(cluster, storage, io_timeout).measure(repeat, dead_host)
    return result


class _Profile:
    def __init__(self, cluster: Cluster, storage: Path, io_timeout: int) -> None:
        self.cluster = cluster
        self.storage = storage
        self.io_timeout = io_timeout
        self.sp, self.sd, self.sd2 = (str(uuid.uuid4()) for _ in range(3))
        self.domains = [self.sd, self.sd2]
        self.spm = 1  # the host that holds the lease
        # Generous bounds: a wait that passes one is a failure, not a measurement.
        self.timeout = 2.0 * dead_host_s(io_timeout) + 60

    def client(self, index: int) -> Vdsm:
        return self.cluster.host(index).api(interval=POLL)

    def measure(self, repeat: int, dead_host: bool) -> dict[str, Any]:
        c1 = self.client(1)
        for sd, name in ((self.sd, "a"), (self.sd2, "b")):
            (self.storage / name).mkdir()
            c1.create_domain(sd, name, str(self.storage / name))
        c1.create_pool(self.sp, "bench-spm", self.sd)
        first_join = self._join(1, [self.sd])
        started = time.monotonic()
        status = c1.start_spm(self.sp, timeout=self.timeout)
        first_start = time.monotonic() - started
        _check_spm(status, 1)
        c1.attach_domain(self.sd2, self.sp)
        self._wait_acquired(1)
        # Host 2 learns the domains from its storage connections, then joins the pool.
        c2 = self.client(2)
        connections = [
            {"id": str(uuid.uuid4()), "connection": str(self.storage / name)} for name in "ab"
        ]
        reply = c2.call("connectStorageServer", 4, self.sp, connections)
        if [c["status"] for c in reply["statuslist"]] != [0, 0]:
            raise RuntimeError(f"host 2 could not connect the storage: {reply}")
        joins = []
        for n in range(repeat):
            if n:
                c2.call("disconnectStoragePool", self.sp, 2, "")
            joins.append(self._join(2, self.domains))
        runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
        for case, action in (("clean", self._clean), ("crash", self._crash),
                             ("fence", self._fence)):  # fmt: skip
            for _ in range(repeat):
                runs[case].append(self._failover(case, action))
        if dead_host:
            runs["dead_host"].append(self._failover("dead_host", self._dead_host))
        return self._summary(first_join, first_start, joins, runs)

    # --- the lockspace ----------------------------------------------------------------------

    def _join(self, index: int, domains: list[str]) -> dict[str, Any]:
        """connectStoragePool as host id ``index``; when repoStats, and the host's sanlock
        daemon, first show each domain's lockspace joined."""
        host, client = self.cluster.host(index), self.client(index)
        started = time.monotonic()
        client.connect_pool(self.sp, index, self.sd)
        returned = time.monotonic() - started
        repo: dict[str, float] = {}
        sanlock: dict[str, float] = {}
        while len(repo) < len(domains) or len(sanlock) < len(domains):
            stats = client.call("repoStats")
            now = time.monotonic() - started
            for sd in domains:
                if sd not in repo and (stats.get(sd) or {}).get("acquired"):
                    repo[sd] = now
            joined = _sanlock_joined(host)
            now = time.monotonic() - started
            for sd in domains:
                if sd not in sanlock and (sd, index) in joined:
                    sanlock[sd] = now
            if now > self.timeout:
                raise RuntimeError(f"host {index} not joined after {now:.0f} s: {stats}")
            time.sleep(WATCH)
        return {
            "host": index,
            "domains": len(domains),
            "call_s": r(returned),
            "repostats_s": r(max(repo.values())),
            "sanlock_s": r(max(sanlock.values())),
            "per_domain_repostats_s": [r(repo[sd]) for sd in domains],
        }

    def _wait_acquired(self, index: int) -> float:
        """Until repoStats of host ``index`` shows every domain of the pool acquired."""
        client = self.client(index)
        started = time.monotonic()
        while True:
            stats = client.call("repoStats")
            if all((stats.get(sd) or {}).get("acquired") for sd in self.domains):
                return time.monotonic() - started
            if time.monotonic() - started > self.timeout:
                raise RuntimeError(f"host {index} did not rejoin: {stats}")
            time.sleep(WATCH)

    # --- failovers ----------------------------------------------------------------------------

    def _failover(self, case: str, action: Any) -> dict[str, Any]:
        old, new = self.spm, 3 - self.spm
        before = self.client(new).spm_status(self.sp)
        if before.get("spmId") != old:
            raise RuntimeError(f"before {case}: host {old} is not the SPM: {before}")
        result: dict[str, Any] = {"from": old, "to": new, "lver_before": before["spmLver"]}
        result.update(action(self.cluster.host(old), self.cluster.host(new), before))
        status = result.pop("status")
        _check_spm(status, new)
        result["lver_after"] = status["spmLver"]
        result["lver_growth"] = status["spmLver"] - before["spmLver"]
        self.spm = new
        log.info(
            "   %s: host %d -> %d in %.2f s (lver %d -> %d)",
            case, old, new, result["seconds"], result["lver_before"], result["lver_after"],
        )  # fmt: skip
        # The host that lost the lease is made whole again (vdsmd, or the whole host, back and
        # joined) before the next run, unless it died for good.
        if case != "dead_host":
            host = self.cluster.host(old)
            started = time.monotonic()
            if not host.vdsmd.running:
                host.start_vdsmd()
            result["restart_s"] = r(time.monotonic() - started, 3)
            result["rejoin_s"] = r(self._wait_acquired(old), 3)
        return result

    def _clean(self, old: ClusterHost, new: ClusterHost, before: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        self.client(old.index).call("spmStop", self.sp)
        stopped = time.monotonic()
        status, attempts = self._take_over(new)
        done = time.monotonic()
        return {
            "seconds": r(done - started),
            "spm_stop_s": r(stopped - started),
            "spm_start_s": r(done - stopped),
            **attempts,
            "status": status,
        }

    def _crash(self, old: ClusterHost, new: ClusterHost, before: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        old.kill_vdsmd()
        killed = time.monotonic()
        status, attempts = self._take_over(new)
        done = time.monotonic()
        return {
            "seconds": r(done - started),
            "kill_s": r(killed - started),
            **attempts,
            "status": status,
        }

    def _fence(self, old: ClusterHost, new: ClusterHost, before: dict[str, Any]) -> dict[str, Any]:
        client = self.client(new.index)
        started = time.monotonic()
        old.suspend()  # hung: deaf to the API, alive to sanlock, its lease held
        reply = client.call("fenceSpmStorage", self.sp, old.host_id, before["spmLver"])
        fenced = time.monotonic()
        killed = free = None
        while killed is None or free is None:
            now = time.monotonic()
            if killed is None and not old.vdsmd.running:
                killed = now  # its sanlock daemon killed the holder
            if free is None and client.spm_status(self.sp)["spmId"] == NO_SPM:
                free = now
            if now - started > self.timeout:
                raise RuntimeError(f"host {old.index}'s lease not freed by fencing it")
            time.sleep(WATCH)
        start = time.monotonic()
        status, attempts = self._take_over(new)
        done = time.monotonic()
        return {
            "seconds": r(done - started),
            "fence_call_s": r(fenced - started),
            "holder_killed_s": r(killed - started),
            "lease_free_s": r(free - started),
            "spm_start_s": r(done - start),
            "fence_reply": reply.get("spm_st"),
            **attempts,
            "status": status,
        }

    def _dead_host(
        self, old: ClusterHost, new: ClusterHost, before: dict[str, Any]
    ) -> dict[str, Any]:
        started = time.monotonic()
        old.kill()
        killed = time.monotonic()
        status, attempts = self._take_over(new)
        done = time.monotonic()
        return {"seconds": r(done - started), "kill_s": r(killed - started), **attempts,
                "status": status}  # fmt: skip

    def _take_over(self, host: ClusterHost) -> tuple[dict[str, Any], dict[str, Any]]:
        """spmStart on ``host`` until it succeeds, again ``RETRY`` s after each refusal (651:
        the lease is held by a host that still looks alive), as an engine does. Returns the
        SPM status and the attempts: how many, when the last refusal came (from the first
        attempt) and how long the successful one took (sanlock blocks it while the holder's
        host id is failing, until it is dead)."""
        client = self.client(host.index)
        began = time.monotonic()
        count = 0
        refused = 0.0
        while True:
            count += 1
            attempt = time.monotonic()
            task = client.call("spmStart", self.sp, -1, -1, -1, "false", 250, 5)["uuid"]
            status = client.wait_task(task, timeout=self.timeout)
            client.clear_task(task)
            ended = time.monotonic()
            if status.get("taskResult") == "success":
                attempts = {
                    "attempts": count,
                    "refused_until_s": r(refused),
                    "last_attempt_s": r(ended - attempt),
                }
                return client.spm_status(self.sp), attempts
            if int(status.get("code") or 0) != LEASE_HELD:
                raise RuntimeError(f"spmStart on host {host.index} failed: {status}")
            refused = ended - began
            if refused > self.timeout:
                raise RuntimeError(f"spmStart on host {host.index} refused for {refused:.0f} s")
            time.sleep(RETRY)

    # --- the results --------------------------------------------------------------------------

    def _summary(
        self,
        first_join: dict[str, Any],
        first_start: float,
        joins: list[dict[str, Any]],
        runs: dict[str, list[dict[str, Any]]],
    ) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "join": spread([j["repostats_s"] for j in joins]),
            "join_sanlock": spread([j["sanlock_s"] for j in joins]),
            "spm_start": spread([x["spm_start_s"] for x in runs["clean"]]),
        }
        for case in CASES:
            if runs[case]:
                figures[case] = spread([x["seconds"] for x in runs[case]])
        if runs["fence"]:
            for key in ("holder_killed_s", "lease_free_s", "spm_start_s"):
                figures[f"fence_{key}"] = spread([x[key] for x in runs["fence"]])
        return {
            "io_timeout": self.io_timeout,
            "dead_host_seconds": dead_host_s(self.io_timeout),
            "expected": expected(self.io_timeout),
            "first_join": first_join,
            "first_spm_start_s": r(first_start),
            "joins": joins,
            "runs": {case: x for case, x in runs.items() if x},
            "figures": figures,
            "lver_growth": sorted({x["lver_growth"] for xs in runs.values() for x in xs}),
        }


def _sanlock_joined(host: ClusterHost) -> set[tuple[str, int]]:
    """(lockspace, host id) of every lockspace the host's sanlock daemon has joined (listed,
    and neither being added nor removed)."""
    joined = set()
    for line in host.sanlock.status().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "s":
            name, host_id = fields[1].split(":")[:2]
            joined.add((name, int(host_id)))
    return joined


def _check_spm(status: dict[str, Any], index: int) -> None:
    if status.get("spmStatus") != "SPM" or status.get("spmId") != index:
        raise RuntimeError(f"host {index} is not the SPM: {status}")


# --- targets ------------------------------------------------------------------------------


def _targets(profiles: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for p in profiles.values():
        n, f = p["io_timeout"], p["figures"]
        exp = p["expected"]
        at = f"io_timeout {n}"
        targets.append(
            target(
                f"lockspace join, connectStoragePool → repoStats acquired, {at} (median)",
                r(f["join"]["median"], 3),
                "<=",
                exp["join"]["range_s"][0] + 2,
                "s",
                reason="sanlock's minimum (2 × io_timeout) + 2 s (I/O, one monitor check)",
            )
        )
        if n == 1:
            targets.append(
                target(
                    f"failover after spmStop (clean handoff), {at} (median)",
                    r(f["clean"]["median"], 3),
                    "<=",
                    MAX_HANDOFF_S,
                    "s",
                )
            )
        targets.append(
            target(
                f"failover after the SPM's vdsmd is SIGKILLed, {at} (median)",
                r(f["crash"]["median"], 3),
                "<=",
                MAX_CRASH_S,
                "s",
                reason="sanlock frees a dead process's lease at once",
            )
        )
        targets.append(
            target(
                f"failover of a hung SPM by fenceSpmStorage, {at} (median)",
                r(f["fence"]["median"], 3),
                "<=",
                exp["fence"]["range_s"][1] + 2,
                "s",
                reason="two renewals (4 × io_timeout) + 2 s",
            )
        )
        if "dead_host" in f:
            value = r(f["dead_host"]["max"], 3)
            targets.append(
                target(
                    f"failover after the SPM host dies, {at} (1 run)",
                    value,
                    "<=",
                    dead_host_s(n) + 10,
                    "s",
                    reason="host_dead_seconds (8 × io_timeout + 60) + 10 s",
                )
            )
            targets.append(
                target(
                    f"no takeover before the dead host's leases expire, {at}: failover time",
                    r(f["dead_host"]["min"], 3),
                    ">=",
                    exp["dead_host"]["range_s"][0],
                    "s",
                    reason="host_dead_seconds − 2 × io_timeout (its last renewal)",
                )
            )
        growth = p["lver_growth"]
        targets.append(
            target(
                f"lver growth per failover, {at} (smallest)",
                float(min(growth)) if growth else float("nan"),
                ">=",
                1,
                reason="every new SPM holds a newer lease version than the one it replaced",
            )
        )
    return targets
