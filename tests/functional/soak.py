"""The randomized soak: many live moves of disks of random shapes under the tiny guest's
writes, each with a random interruption, and after each one the whole truth checked.

Everything is real (vdsmd, sanlock, libvirt, QEMU, qemu-img, the real vdsClient moveDisk as a
subprocess) except the storage faults, which come from the FAKE fault file system
(tests/fakes/faultfs.py): both domains of the pool are mounted through it, passing everything
through until a storage fault is drawn.

Each VM gets a disk of a random shape (base raw or qcow2, 1 to 4 volumes, a raw base sparse or
preallocated, 256 MiB to 1 GiB, the raw base holding random data for the sync to copy), boots
the tiny guest writing all the time, and its disk is moved back and forth between the two
domains a few times. Each move draws an interruption:

- ``none``: the move as it is;
- ``client_kill``: the client SIGKILLed at a random point of the flow, then ``--resume``;
- ``vdsmd_kill``: vdsmd SIGKILLed while the client waits at a random step, restarted (and made
  SPM again, as the engine would), the client goes on, ``--resume`` if it gave up;
- ``ctrl_c``: SIGINT to the client at a random step (a rollback, or past the pivot a finish);
- ``libvirtd_restart``: the machine's libvirtd restarted while the client waits at a random step
  (one host only);
- ``spm_kill`` (two hosts only): the SPM's vdsmd SIGKILLed while the client waits at a random
  step, restarted once it rejoined the pool and made SPM again (the engine's part); the VM
  host's vdsmd is ``vdsmd_kill``'s;
- ``storage_fault``: the destination's image directory fails every write with EIO from a
  random step before the pivot (clone, mirror or sync), healed once the client is done.

After each move, whatever the outcome: no journal is left (the move finished or rolled back),
the VM runs in the same QEMU, its whole chain is in one domain and LEGAL, the other domain has
nothing of the image (no volume, no directory, no file open by QEMU), and every write the guest
logged as acknowledged is on the disk where the VM now runs (vdsm_guest.checker).

On two hosts (``--hosts 2``), the same on a pool of the multi-host harness: host 1 is the
SPM (the clone and the sync run there), host 2 runs the VMs (the snapshot, the mirror, the
pivot and the merge), each host with its own sanlock daemon, so the volume leases are on; the
client finds the SPM among ``--hosts``, and after each move the VM's QEMU is checked on host 2.

Run ``make soak`` (SOAK_MOVES, default 200; SOAK_SEED; then the load run and the two-host
soak) or ``python -m tests.functional.soak --moves N [--seed S] [--hosts 2] [--report
build/soak.json]``; CI runs a short one of each (test_soak.py). It prints one line per move
and the figures at the end, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.faultfs import FaultFs
from tests.functional.cluster_helpers import joined, make_pool, spm_start, vdsmd_of, wait_for
from tests.functional.cluster_helpers import qemu_pid as cluster_qemu_pid
from tests.functional.daemon_helpers import REPO, VdsmdProcess, new_uuid, running, wait_task
from tests.functional.load import Load, fuzz_target
from tests.functional.lsm_helpers import (
    PoolIds,
    disk,
    guest_params,
    qemu_pid,
    restart_libvirtd,
    virsh,
    wait_writes,
)
from tests.functional.mover import Mover, open_files
from tests.functional.storage_helpers import BLANK, Storage, ok
from vdsm_cli.move.fault import TEST_PAUSE_AT, TEST_STOP_AT
from vdsm_cli.move.steps import FORWARD_STEPS
from vdsm_guest import checker
from vdsm_guest.build import GuestImage, ensure_guest
from vdsm_guest.cluster import Cluster, ClusterHost
from vdsm_guest.libvirt_daemon import LibvirtDaemonError

MiB = 1024**2
KINDS = ("none", "client_kill", "vdsmd_kill", "ctrl_c", "libvirtd_restart", "storage_fault")
# On two hosts: the SPM's vdsmd killed too (the VM host's is vdsmd_kill); libvirtd's restart
# is the one-host soak's (the harness's libvirtd lives in a mount namespace that a restart
# would not keep, and it is the VM host's business alone).
TWO_HOST_KINDS = (
    "none",
    "client_kill",
    "vdsmd_kill",
    "spm_kill",
    "ctrl_c",
    "storage_fault",
)
VDSMD_ARGS = ["--replication-convergence-window", "3"]
# Under load (--load), every kind but vdsmd's kill: while vdsmd is down the callers would only
# count refused connections, and the fuzzer's checks would fail on them.
LOAD_KINDS = tuple(k for k in KINDS if k != "vdsmd_kill")
# Where a client is killed: before a step ran (STEP) or right after it was issued (STEP+).
KILL_POINTS = [*FORWARD_STEPS, *(f"{s}+" for s in FORWARD_STEPS if s != "wait_ready")]
# Where the destination starts failing: before the mirror can be READY, so a rollback is the
# outcome (at wait_ready the client may pivot before a guest write meets the fault, and the
# VM would then pause on its own disk's error: a different scenario, not this one).
FAULT_POINTS = ("clone", "replicate", "sync")
PREFILL = 8 * MiB
MOVES_PER_VM = (2, 4)  # each VM's disk is moved this many times (at random), back and forth
# The shapes drawn: `make soak` draws from the full range; CI's short soak from the small end
# (the same kinds of chain, less data to copy, so its time does not swing with the draw).
FULL_SHAPES = ((256, 512, 1024), 4)  # sizes in MiB, most volumes in a chain
SMALL_SHAPES = ((128, 256), 2)
RESUME_TRIES = 3
RESUME_PAUSE = 3.0  # seconds between two --resume (after the first)


class SoakFailure(AssertionError):
    """A check after a move failed: the soak stops there (the state is not to be trusted)."""


@dataclass(frozen=True)
class Shape:
    """A disk's shape, drawn at random."""

    base_format: str  # RAW or COW
    volumes: int  # 1..4
    allocation: str  # SPARSE or PREALLOCATED (a raw base only)
    size_mib: int

    @classmethod
    def draw(cls, rng: random.Random, shapes: tuple[tuple[int, ...], int] = FULL_SHAPES) -> Shape:
        sizes_mib, most_volumes = shapes
        base_format = rng.choice(("RAW", "COW"))
        allocation = rng.choice(("SPARSE", "PREALLOCATED")) if base_format == "RAW" else "SPARSE"
        return cls(base_format, rng.randint(1, most_volumes), allocation, rng.choice(sizes_mib))

    def __str__(self) -> str:
        kind = f"{self.base_format.lower()}/{self.allocation.lower()}"
        return f"{self.volumes} vol, base {kind}, {self.size_mib} MiB"


@dataclass
class MoveResult:
    number: int
    kind: str
    point: str
    shape: str
    exit_codes: list[int]
    side: str  # "src" or "dst": where the disk ended
    moved: bool  # it ended on the side it was moved to (else it stayed: rolled back)
    chain_length: int
    # The guest's acknowledged writes when the disk was checked (all on the disk, each slot
    # holding its last one), and those of them acknowledged since the previous check.
    writes_acknowledged: int
    writes_new: int
    seconds: float


@dataclass
class Figures:
    """What the soak prints and records."""

    seed: int
    moves_asked: int
    hosts: int = 1
    moves: list[MoveResult] = field(default_factory=list)
    failure: str = ""
    seconds: float = 0.0
    load: dict[str, Any] = field(default_factory=dict)  # the load run's figures (load.py)

    def summary(self) -> dict[str, Any]:
        kinds = Counter(m.kind for m in self.moves)
        ended = Counter(f"{m.kind}:{'moved' if m.moved else 'stayed'}" for m in self.moves)
        return {
            "seed": self.seed,
            "hosts": self.hosts,
            "moves_asked": self.moves_asked,
            "moves": len(self.moves),
            "by_interruption": dict(sorted(kinds.items())),
            "outcomes": dict(sorted(ended.items())),
            "writes_checked": sum(m.writes_new for m in self.moves),
            # A move whose check fails stops the soak (its failure says what was lost or
            # left), so the moves recorded lost nothing and left nothing.
            "lost_writes": 0 if not self.failure else "see failure",
            "leftovers": 0 if not self.failure else "see failure",
            "failure": self.failure,
            "seconds": round(self.seconds, 1),
            "seconds_per_move": round(self.seconds / max(1, len(self.moves)), 1),
            **({"load": self.load} if self.load else {}),
        }


class Soak:
    """A pool of two domains on the fault file system, and the moves. On one host (``hosts``
    1): one vdsmd, the SPM, runs the VMs on the machine's libvirtd. On two (the multi-host
    harness, vdsm_guest.cluster): host 1 is the SPM, host 2 runs the VMs on a libvirtd of its
    own, and the client is told both (``--hosts``)."""

    def __init__(self, root: Path, rng: random.Random, guest: GuestImage, hosts: int = 1) -> None:
        self.root, self.rng, self.guest = root, rng, guest
        self.fs: dict[str, FaultFs] = {}
        self.one_host = VdsmdProcess(root / "vdsmd", VDSMD_ARGS) if hosts == 1 else None
        self.cluster: Cluster | None = None
        self.pool: PoolIds | None = None
        self.vm_ids: list[str] = []
        self.images: list[str] = []

    @contextlib.contextmanager
    def running(self) -> Iterator[Soak]:
        with contextlib.ExitStack() as stack:
            for side in ("src", "dst"):
                self.fs[side] = stack.enter_context(
                    FaultFs(
                        self.root / f"{side}-backing", self.root / side, self.root / f"{side}-fault"
                    )
                )
            if self.one_host is not None:
                stack.enter_context(running(self.one_host))
                self.pool = Storage(self.one_host, self.root)
            else:
                self.cluster = stack.enter_context(
                    Cluster(
                        self.root / "cluster",
                        hosts=2,
                        storage_roots=[self.root],
                        extra_args=VDSMD_ARGS,
                        vdsmd_class=VdsmdProcess,
                        vm_hosts=(2,),
                    )
                )
                self.pool = make_pool(self.cluster, self.root)
            try:
                yield self
            finally:
                for vm_id in self.vm_ids:
                    self.virsh("destroy", vm_id)

    @property
    def st(self) -> PoolIds:
        assert self.pool is not None
        return self.pool

    # --- the hosts -------------------------------------------------------------------------

    def host(self, index: int) -> ClusterHost:
        assert self.cluster is not None
        return self.cluster.host(index)

    @property
    def daemon(self) -> VdsmdProcess:
        """The vdsmd of the VMs' host (HOST on the client's command line)."""
        return self.one_host if self.one_host is not None else vdsmd_of(self.host(2))

    @property
    def spm(self) -> VdsmdProcess:
        return self.one_host if self.one_host is not None else vdsmd_of(self.host(1))

    def virsh(self, *args: str) -> None:
        """virsh on the VMs' libvirtd; as lsm_helpers.virsh, its failure is not an error (a
        VM destroyed twice, at the end)."""
        if self.cluster is None:
            virsh(*args)
            return
        libvirt = self.host(2).libvirt
        if libvirt is not None and libvirt.running:
            with contextlib.suppress(LibvirtDaemonError):
                libvirt.virsh(*args)

    def qemu_pid(self, vm_id: str) -> int:
        return qemu_pid(vm_id) if self.cluster is None else cluster_qemu_pid(self.host(2), vm_id)

    def mover(self, view: DiskView) -> Mover:
        if self.cluster is None:
            return Mover(view, view.vm_id, view.work_dir)
        return Mover(
            view,
            view.vm_id,
            view.work_dir,
            pid_of=self.qemu_pid,
            options=("--pki-dir", str(self.cluster.pki.root)),
            extra=("--hosts", self.host(1).vdsmd.address),
        )

    def kill_vdsmd(self, spm: bool) -> None:
        """SIGKILL to the VMs' host's vdsmd (``spm``: to the SPM's), then started again; the
        SPM's is made SPM again, as the engine would. On two hosts, once it rejoined the
        pool (a few seconds of sanlock's)."""
        if self.cluster is None:
            self.daemon.kill()
            self.daemon.restart()  # and spmStart (VdsmdProcess.spm_pools)
            return
        host = self.host(1 if spm else 2)
        host.kill_vdsmd()
        host.start_vdsmd()
        wait_for(lambda: joined(host, [self.st.sd, self.st.sd2]), "rejoined", timeout=60)
        if spm:
            status = spm_start(host, self.st.sp)
            if status["taskResult"] != "success":
                raise SoakFailure(f"spmStart after the SPM's vdsmd was killed: {status}")

    def domain(self, side: str) -> str:
        return self.st.sd if side == "src" else self.st.sd2

    # --- a disk and its VM ---------------------------------------------------------------------

    def make_disk(self, shape: Shape) -> tuple[str, list[str]]:
        """The image (on the source domain) and its chain, base first."""
        img, chain = new_uuid(), [new_uuid() for _ in range(shape.volumes)]
        self.images.append(img)
        rpc = self.spm.xmlrpc()
        parent = BLANK
        for i, vol in enumerate(chain):
            fmt, allocation = (shape.base_format, shape.allocation) if i == 0 else ("COW", "SPARSE")
            size = str(shape.size_mib * MiB)
            reply = ok(
                rpc.createVolume(
                    self.st.sd,
                    self.st.sp,
                    img,
                    size,
                    fmt,
                    allocation,
                    "DATA",
                    vol,
                    "soak",
                    img,
                    parent,
                )
            )
            status = wait_task(self.spm, reply["uuid"])
            assert status["taskResult"] == "success", status
            parent = vol
        if shape.base_format == "RAW":  # data far from the guest's slots, for the sync to copy
            base = self.root / "src" / self.st.sd / "images" / img / chain[0]
            with open(base, "r+b") as f:
                f.seek(shape.size_mib * MiB // 2)
                f.write(os.urandom(PREFILL))
        return img, chain

    def start_vm(self, img: str, leaf: str) -> tuple[str, Path]:
        vm_id = new_uuid()
        device = disk(self.st, img, leaf)
        params = {
            "vmId": vm_id,
            "vmName": f"soak-{vm_id[:8]}",
            "smp": 1,
            "devices": [device],
            **guest_params(self.guest, slots=64, pause=0.02),
        }
        self.vm_ids.append(vm_id)
        reply = ok(self.daemon.xmlrpc().create(params))
        assert reply["vmList"]["status"] == "Up", reply
        console = Path(self.stats(vm_id)["consoleLog"])
        wait_writes(console, 10)
        return vm_id, console

    def stats(self, vm_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = ok(self.daemon.xmlrpc().getVmStats(vm_id))["statsList"][0]
        return stats

    # --- one move --------------------------------------------------------------------------------

    def move(self, view: DiskView, to_side: str, kind: str) -> tuple[str, list[int]]:
        """Move the disk to ``to_side`` with interruption ``kind``; every client exit code
        (the move, then each --resume) and the point drawn."""
        dst = self.domain(to_side)
        m = self.mover(view)
        codes: list[int] = []
        point = ""
        if kind == "none":
            codes.append(m.run(dst=dst).returncode)
        elif kind == "client_kill":
            point = self.rng.choice(KILL_POINTS)
            codes.append(m.run(dst=dst, hooks={TEST_STOP_AT: point}).returncode)
        else:
            point = self.rng.choice(FAULT_POINTS if kind == "storage_fault" else FORWARD_STEPS)
            client = m.start(dst=dst, **{TEST_PAUSE_AT: point})
            client.wait_paused()
            if kind in ("vdsmd_kill", "spm_kill"):
                self.kill_vdsmd(spm=kind == "spm_kill")
                client.signal(signal.SIGCONT)
            elif kind == "ctrl_c":
                client.signal(signal.SIGINT, signal.SIGCONT)
            elif kind == "libvirtd_restart":
                restart_libvirtd()
                client.signal(signal.SIGCONT)
            else:
                self.fs[to_side].set("eio", f"{dst}/images/{view.img}")
                client.signal(signal.SIGCONT)
            try:
                codes.append(client.finish()[0])
            finally:
                self.fs[to_side].heal()
        last = ""
        for attempt in range(RESUME_TRIES):
            if m.journal() is None:
                break
            if attempt:
                # As an operator would, not at once: a lease whose release failed under the
                # fault is written free by its host's vdsmd within seconds of the storage
                # working again (volume_lease.StaleLeases), and until then the rollback's
                # delete on another host is refused.
                time.sleep(RESUME_PAUSE)
            resumed = m.resume()
            codes.append(resumed.returncode)
            last = resumed.stderr.strip()[-3000:]
        if m.journal() is not None:
            raise SoakFailure(
                f"the journal is still there after {RESUME_TRIES} --resume: {codes}; the last "
                f"one said: {last}"
            )
        return point, codes

    # --- the checks --------------------------------------------------------------------------

    def check(self, view: DiskView, pid: int, console: Path) -> tuple[str, int, int]:
        """Fully on one side with every acknowledged write: (side, chain length, writes the
        guest logged as acknowledged, all checked); SoakFailure otherwise."""
        stats = self.stats(view.vm_id)
        qemu = self.qemu_pid(view.vm_id)
        if stats["status"] != "Up" or qemu != pid:
            raise SoakFailure(f"the VM stopped: {stats['status']}, QEMU {pid} -> {qemu}")
        if stats.get("blockJobs"):
            raise SoakFailure(f"a block job is left: {stats['blockJobs']}")
        drive = stats["disks"]["vda"]
        chain = [v["volumeID"] for v in drive["volumeChain"]]
        side = "src" if drive["domainID"] == self.st.sd else "dst"
        here, there = self.domain(side), self.domain("dst" if side == "src" else "src")
        api = self.daemon.api()
        held = api.volumes(here, self.st.sp, view.img)
        if held != chain:
            raise SoakFailure(f"domain {here} holds {held}, the chain is {chain}")
        for vol in chain:
            info = api.volume_info(here, self.st.sp, view.img, vol)
            if info["legality"] != "LEGAL":
                raise SoakFailure(f"volume {vol} is {info['legality']}")
        if view.img in api.images(there):
            raise SoakFailure(f"domain {there} still has image {view.img}")
        if list(self.root.glob(f"*/{there}/images/{view.img}")):
            raise SoakFailure(f"the image's directory is left on {there}")
        kept_open = [f for f in open_files(qemu) if f"/{there}/" in f]
        if kept_open:
            raise SoakFailure(f"QEMU keeps files open on {there}: {kept_open}")
        wait_writes(console, wait_writes(console, 0) + 5)  # the guest still writes
        leaf = Path(drive["path"])
        fmt = (
            "raw"
            if api.volume_info(here, self.st.sp, view.img, chain[-1])["format"] == "RAW"
            else "qcow2"
        )
        result = checker.check(leaf, fmt, console)
        if not result.ok:
            lost = sum(1 for f in result.failures if f.kind == checker.LOST)
            raise SoakFailure(
                f"the guest checker: {lost} lost: {[str(f) for f in result.failures]}"
            )
        return side, len(chain), result.writes_logged


@dataclass
class DiskView:
    """One VM's disk as tests.functional.mover.Mover sees it (its MovingVms shape)."""

    soak: Soak
    vm_id: str
    img: str
    base: str
    work_dir: Path

    @property
    def daemon(self) -> VdsmdProcess:
        return self.soak.daemon

    @property
    def storage(self) -> PoolIds:
        return self.soak.st

    def stats(self, vm_id: str) -> dict[str, Any]:
        return self.soak.stats(vm_id)


def expect_outcome(kind: str, codes: list[int], moved: bool, hosts: int = 1) -> None:
    """The outcomes that are certain: a move left alone finishes; a destination that fails
    before the pivot rolls back (exit 1); a killed client was killed; a Ctrl-C rolls back (130)
    or, past the pivot, finishes (0). The other kinds may go either way: only the checks hold."""
    first = codes[0] if codes else None
    if kind == "none" and (codes != [0] or not moved):
        raise SoakFailure(f"a move left alone ended with {codes}, moved: {moved}")
    # A destination that fails every write also fails the rollback's deletes there (each first
    # writes its volume's ILLEGAL mark): the client then stops (4) naming what is left, and
    # --resume, once the storage is healed, finishes the rollback (1). On two hosts the first
    # --resume may still be refused (4): the VM host's release of the mirror's lease failed
    # under the fault, and its vdsmd writes the lease free only a moment after the storage
    # heals (volume_lease.StaleLeases); until then the SPM's delete finds it held.
    rolled_back = ([1], [4, 1], [4, 4, 1]) if hosts == 2 else ([1], [4, 1])
    if kind == "storage_fault" and (codes not in rolled_back or moved):
        raise SoakFailure(f"a move whose destination failed ended with {codes}, moved: {moved}")
    if kind == "client_kill" and first != -signal.SIGKILL:
        raise SoakFailure(f"the client was to be killed, it ended with {codes}")
    if kind == "ctrl_c" and (first, moved) not in ((130, False), (0, True)):
        raise SoakFailure(f"a Ctrl-C ended with {codes}, moved: {moved}")


def kinds_for(moves: int, rng: random.Random, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """Each interruption at least once when there are enough moves, the rest at random."""
    drawn = list(kinds[:moves]) + [rng.choice(kinds) for _ in range(moves - len(kinds))]
    rng.shuffle(drawn)
    return drawn


def soak(
    root: Path,
    moves: int,
    seed: int,
    out: Callable[[str], object] = print,
    load: int = 0,
    shapes: tuple[tuple[int, ...], int] = FULL_SHAPES,
    hosts: int = 1,
    kinds: tuple[str, ...] | None = None,
) -> Figures:
    """Run ``moves`` moves (with ``load`` concurrent callers and the fuzzer all along, when
    not 0) on disks drawn from ``shapes``, on ``hosts`` hosts, each interrupted by one of
    ``kinds`` (by default every kind that applies); the figures, with ``failure`` set if a
    check failed."""
    rng = random.Random(seed)
    figures = Figures(seed=seed, moves_asked=moves, hosts=hosts)
    if load and hosts != 1:
        raise ValueError("the load run is on one host")
    if kinds is None:
        kinds = LOAD_KINDS if load else KINDS if hosts == 1 else TWO_HOST_KINDS
    plan = kinds_for(moves, rng, kinds)
    started = time.monotonic()
    with Soak(root, rng, ensure_guest(), hosts).running() as s:
        callers = None
        if load:
            (root / "fuzz").mkdir()
            target = fuzz_target(s.daemon, root / "fuzz", root)
            pool = (s.st.sp, s.st.sd, s.st.sd2)
            callers = Load(
                s.daemon, pool, lambda: list(s.vm_ids), lambda: list(s.images), target, load, seed
            )
            callers.start()
        try:
            while len(figures.moves) < moves:
                shape = Shape.draw(rng, shapes)
                img, chain = s.make_disk(shape)
                vm_id, console = s.start_vm(img, chain[-1])
                view = DiskView(s, vm_id, img, chain[0], root / f"vm-{len(s.vm_ids)}")
                view.work_dir.mkdir()
                pid = s.qemu_pid(vm_id)
                side, checked_before = "src", 0
                for _ in range(rng.randint(*MOVES_PER_VM)):
                    if len(figures.moves) >= moves:
                        break
                    kind = plan[len(figures.moves)]
                    to_side = "dst" if side == "src" else "src"
                    move_started = time.monotonic()
                    point, codes = s.move(view, to_side, kind)
                    try:
                        side, length, acknowledged = s.check(view, pid, console)
                        expect_outcome(kind, codes, moved=side == to_side, hosts=hosts)
                    except SoakFailure as e:
                        where = f" at {point}" if point else ""
                        raise SoakFailure(f"{kind}{where} ({shape}), exit {codes}: {e}") from None
                    result = MoveResult(
                        len(figures.moves) + 1,
                        kind,
                        point,
                        str(shape),
                        codes,
                        side,
                        side == to_side,
                        length,
                        acknowledged,
                        acknowledged - checked_before,
                        round(time.monotonic() - move_started, 1),
                    )
                    checked_before = acknowledged
                    figures.moves.append(result)
                    out(
                        f"move {result.number}/{moves}: {kind}{' at ' + point if point else ''}"
                        f" ({shape}): exit {codes}, {'moved' if result.moved else 'stayed'}, "
                        f"chain {length}, {result.writes_new} new writes checked "
                        f"({acknowledged} in all), {result.seconds:.1f}s"
                    )
                s.virsh("destroy", vm_id)
        except SoakFailure as e:
            figures.failure = f"move {len(figures.moves) + 1}: {e}"
            out(f"FAILED: {figures.failure}")
        finally:
            if callers is not None:
                loaded = callers.stop()
                figures.load = loaded.summary()
                if loaded.failures and not figures.failure:
                    figures.failure = f"under load: {loaded.failures[:5]}"
                    out(f"FAILED: {figures.failure}")
    figures.seconds = time.monotonic() - started
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=int(os.environ.get("SOAK_MOVES", 200)))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", time.time())))
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="CALLERS",
        help="that many concurrent callers, and the fuzzer, all along the moves (default: none)",
    )
    parser.add_argument(
        "--hosts",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: one vdsmd, the SPM, runs the VMs; 2: host 1 the SPM, host 2 the VMs (default 1)",
    )
    parser.add_argument("--report", type=Path, default=REPO / "build" / "soak.json")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="default: a new one under /var/tmp"
    )
    args = parser.parse_args(argv)
    if args.moves < 1:
        parser.error("--moves must be 1 or more")
    if args.load < 0:
        parser.error("--load must be 0 (none) or more callers")
    if args.load and args.hosts != 1:
        parser.error("--load runs on one host (--hosts 1)")
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="vdsm-soak-", dir="/var/tmp"))
    figures = soak(root, args.moves, args.seed, load=args.load, hosts=args.hosts)
    summary = figures.summary()
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        json.dumps({"summary": summary, "moves": [asdict(m) for m in figures.moves]}, indent=2)
    )
    print(json.dumps(summary, indent=2))
    print(f"recorded in {args.report}")
    return 1 if figures.failure else 0


if __name__ == "__main__":
    sys.exit(main())
