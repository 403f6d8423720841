"""Load on a real vdsmd while disks move: many concurrent callers, and the fuzzer.

Used by the soak (tests/functional/soak.py, ``--load``): while its moves run, ``callers``
threads, each with its own connection, call the verbs an engine and its monitoring call all the
time (ping, list, getVmStats of the moving VMs, repoStats, getStorageDomainInfo,
getVolumesList, getAllTasksStatuses, getSpmStatus) and a share of bad requests (a malformed
UUID, which must get 1000); one more thread runs the fuzzer (tests/functional/fuzzer.py)
without pause. A sampler reads vdsmd's resident memory and thread count from /proc.

What must hold, checked by :meth:`Load.stop`: no answer with code 100 (an unexpected error), no
traceback and no HTTP error; a bad UUID answered 1000; every fuzzer check; and the moves
themselves still verify (the soak's checks). The figures: callers, requests, answers by code,
latency (p50, p99, max), and vdsmd's RSS and threads at most.
"""

from __future__ import annotations

import collections
import random
import threading
import time
import uuid
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.functional.daemon_helpers import VdsmdProcess
from tests.functional.fuzzer import Target, fuzz

FUZZ_BATCH = 100  # requests per fuzz() run; runs follow one another until the load stops
SAMPLE_EVERY = 0.2  # seconds between two readings of vdsmd's RSS and threads


@dataclass
class LoadFigures:
    callers: int
    requests: int = 0
    codes: collections.Counter[int] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    fuzz_requests: int = 0
    rss_max_kib: int = 0
    threads_max: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def at(share: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 1)

        return {
            "callers": self.callers,
            "requests": self.requests,
            "answers_by_code": {str(c): n for c, n in sorted(self.codes.items())},
            "latency_ms": {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)} if ordered else {},
            "fuzz_requests": self.fuzz_requests,
            "vdsmd_rss_max_mib": round(self.rss_max_kib / 1024, 1),
            "vdsmd_threads_max": self.threads_max,
            "failures": self.failures[:20],
        }


class Load:
    """Callers, a fuzzer and a sampler against ``daemon`` until :meth:`stop`."""

    def __init__(
        self,
        daemon: VdsmdProcess,
        pool: tuple[str, str, str],  # (spUUID, one sdUUID, the other)
        vm_ids: Callable[[], list[str]],
        images: Callable[[], list[str]],
        fuzz_target: Target,
        callers: int = 50,
        seed: int = 0,
    ) -> None:
        self.daemon, self.pool, self.vm_ids, self.images = daemon, pool, vm_ids, images
        self.fuzz_target, self.seed = fuzz_target, seed
        self.figures = LoadFigures(callers)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        for n in range(self.figures.callers):
            self._spawn(self._caller, random.Random(self.seed + n), f"caller-{n}")
        self._spawn(self._fuzzer, None, "fuzzer")
        self._spawn(self._sampler, None, "sampler")
        return self

    def stop(self) -> LoadFigures:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
            if thread.is_alive():
                self._failed(f"{thread.name} did not stop within 120 s (a call hangs)")
        # A fuzzed create that happened to be good started a VM (as test_fuzz's clean-up
        # says): destroy every VM that is not the soak's, or it outlives the run.
        rpc = self.daemon.xmlrpc()
        ours = set(self.vm_ids())
        for vm in rpc.list().get("vmList", []):
            vm_id = vm["vmId"] if isinstance(vm, dict) else vm
            if vm_id not in ours:
                rpc.destroy(vm_id)
        return self.figures

    def _spawn(self, target: Callable[..., None], arg: object, name: str) -> None:
        args = () if arg is None else (arg,)
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _failed(self, what: str) -> None:
        with self._lock:
            self.figures.failures.append(what)

    def _calls(self, rng: random.Random) -> tuple[str, tuple[Any, ...], int | None]:
        """A verb, its arguments, and the code it must answer (None: any but 100)."""
        sp, sd, sd2 = self.pool
        vms, images = self.vm_ids(), self.images()
        choice = rng.random()
        if choice < 0.1:
            return "getVmStats", ("not-a-uuid",), 1000
        if choice < 0.15:
            return "getVolumesList", (sd, sp, "../../etc"), 1000
        plain: list[tuple[str, tuple[Any, ...]]] = [
            ("ping", ()),
            ("list", ()),
            ("repoStats", ()),
            ("getStorageDomainInfo", (rng.choice((sd, sd2)),)),
            ("getAllTasksStatuses", ()),
            ("getSpmStatus", (sp,)),
        ]
        if vms:
            plain += [("getVmStats", (rng.choice(vms),))] * 3
        if images:
            plain.append(("getVolumesList", (rng.choice((sd, sd2)), sp, rng.choice(images))))
        verb, args = rng.choice(plain)
        return verb, args, None

    def _caller(self, rng: random.Random) -> None:
        proxy = self.daemon.xmlrpc()
        while not self._stop.is_set():
            verb, args, must = self._calls(rng)
            started = time.monotonic()
            try:
                reply = getattr(proxy, verb)(*args)
            except (OSError, xmlrpc.client.ProtocolError, xmlrpc.client.Fault) as e:
                if not self.daemon.running:  # vdsmd is being restarted by the soak
                    time.sleep(0.2)
                    proxy = self.daemon.xmlrpc()
                    continue
                self._failed(f"{verb}{args}: {type(e).__name__}: {e}")
                proxy = self.daemon.xmlrpc()
                continue
            took = time.monotonic() - started
            code = int(reply.get("status", {}).get("code", -1))
            with self._lock:
                self.figures.requests += 1
                self.figures.codes[code] += 1
                self.figures.latencies.append(took)
            message = str(reply.get("status", {}).get("message", ""))
            if code == 100 or "Traceback" in message or (must is not None and code != must):
                self._failed(f"{verb}{args}: code {code}: {message[:300]}")

    def _fuzzer(self) -> None:
        seed = self.seed
        while not self._stop.is_set():
            seed += 1
            try:
                outcome = fuzz(self.fuzz_target, seed, FUZZ_BATCH)
            except (OSError, AssertionError) as e:
                if not self.daemon.running:
                    time.sleep(0.2)
                    continue
                self._failed(f"fuzz seed {seed}: {type(e).__name__}: {e}")
                return
            with self._lock:
                self.figures.fuzz_requests += outcome.sent
            for failure in outcome.failures:
                self._failed(f"fuzz seed {seed}: {failure}")

    def _sampler(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            proc = self.daemon.proc
            if proc is None or proc.poll() is not None:
                continue
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            rss = int(fields.get("VmRSS", "0 kB").split()[0])
            threads = int(fields.get("Threads", "0").strip())
            with self._lock:
                self.figures.rss_max_kib = max(self.figures.rss_max_kib, rss)
                self.figures.threads_max = max(self.figures.threads_max, threads)


def fuzz_target(daemon: VdsmdProcess, root: Path, roots: Path) -> Target:
    """A fuzzer's target on a daemon that is busy with other work: its own directories, and
    objects it names that are not the soak's (a pool and a domain no one created), so its good
    requests never touch the disks that move."""
    outside = root / "outside"
    (outside / "tree" / "deep").mkdir(parents=True, exist_ok=True)
    (outside / "sentinel.txt").write_text("do not touch\n")
    spare = roots / f"fuzz-spare-{uuid.uuid4().hex[:8]}"
    spare.mkdir()
    escape = roots / "escape"
    if not escape.is_symlink():
        escape.symlink_to(outside)
    sd, sp = str(uuid.uuid4()), str(uuid.uuid4())
    return Target(daemon, root, roots, outside, sd, sp, spare, [sd, sp])
