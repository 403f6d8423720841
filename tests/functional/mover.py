"""Shared by the vdsClient moveDisk functional tests (test_move_disk_*.py).

``Mover`` runs the real CLI as a subprocess for one VM's disk, in the foreground or in the
background (``Running``); ``world`` is everything a move may change, as vdsmd reports it;
``assert_on_source`` and ``assert_on_destination`` check that a disk ended fully on one side,
the VM never stopped, and nothing of the image is left on the other domain. The ``vms``
fixture gives each test VMs on a base prefilled with data, so the sync has bytes to move.

The helpers take any fixture shaped as :class:`MovingVms`: lsm_helpers.VmFixture (one vdsmd),
or the two-host one of test_move_disk_cluster.py, whose ``daemon`` is the VM's host. A Mover's
``options`` go before HOST on every command line (e.g. ``--pki-dir``), its ``extra`` after the
command's own words (e.g. ``--hosts``); ``pid_of`` finds the VM's QEMU (lsm_helpers.qemu_pid:
the machine's libvirtd).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.functional.daemon_helpers import REPO, VdsmdProcess
from tests.functional.lsm_helpers import PoolIds, chain_of, qemu_pid

MiB = 1024**2
PREFILL = 24 * MiB  # data in the base, so the sync has something real to copy
PREFILL_OFFSET = 256 * MiB  # where it lies: far from the guest's write slots
CLI_TIMEOUT = 180
Done = subprocess.CompletedProcess[str]


class MovingVms(Protocol):
    """What these helpers need of a VMs' fixture: the vdsmd that runs the VMs (and answers the
    reads), the pool, the image and its base, and a VM's stats."""

    @property
    def daemon(self) -> VdsmdProcess: ...

    @property
    def storage(self) -> PoolIds: ...

    @property
    def img(self) -> str: ...

    @property
    def base(self) -> str: ...

    def stats(self, vm_id: str) -> dict[str, Any]: ...


def prefill(vms: MovingVms, root: Path) -> None:
    """Random data far from the guest's slots: allocated bytes for the sync to move."""
    base = root / "src" / vms.storage.sd / "images" / vms.img / vms.base
    with open(base, "r+b") as f:
        f.seek(PREFILL_OFFSET)
        f.write(os.urandom(PREFILL))


class Mover:
    """Runs `vdsClient HOST moveDisk ...` for one VM's disk, with its own journal dir."""

    def __init__(
        self,
        vms: MovingVms,
        vm_id: str,
        root: Path,
        *,
        pid_of: Callable[[str], int] = qemu_pid,
        options: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
    ) -> None:
        self.vms, self.vm_id = vms, vm_id
        self.state_dir = root / "moves"
        self.root = root
        self.pid_of = pid_of
        self.options, self.extra = list(options), list(extra)
        self.pid = pid_of(vm_id)
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
            *self.options,
            *(["--json"] if json_output else []),
            self.vms.daemon.address,
            "moveDisk",
            *words,
            *(["--resume"] if resume else []),
            *extra,
            *self.extra,
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

    def start(self, *extra: str, dst: str | None = None, **hooks: str) -> Running:
        log = self.root / f"client-{time.monotonic_ns()}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                self.argv(*extra, dst=dst), cwd=REPO, env=self.env(**hooks), stdout=out, stderr=out
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
        """Until the client stopped itself (SIGSTOP: the fault hook's PAUSE_AT,
        vdsm_cli.move.fault)."""
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


def images(vms: MovingVms, sd: str) -> list[str]:
    return vms.daemon.api().images(sd)


def volumes(vms: MovingVms, sd: str) -> list[str]:
    """The image's volumes in domain ``sd``; [] when it has none there."""
    return vms.daemon.api().volumes(sd, vms.storage.sp, vms.img)


def world(vms: MovingVms, vm_id: str) -> dict[str, Any]:
    """Everything a move may change, as vdsmd reports it."""
    st = vms.storage
    stats = vms.stats(vm_id)
    return {
        "status": stats["status"],
        "domain": stats["disks"]["vda"]["domainID"],
        "chain": chain_of(stats),
        # Which jobs run on which disk; not their progress or their adaptive rate, which
        # change on their own while a refused move changes nothing.
        "jobs": {
            drive: (job["blockJobType"], job["imgUUID"])
            for drive, job in stats["blockJobs"].items()
        },
        "src": volumes(vms, st.sd),
        "dst": volumes(vms, st.sd2),
        "src_images": images(vms, st.sd),
        "dst_images": images(vms, st.sd2),
    }


def assert_nothing_of_the_image(m: Mover, sd: str) -> None:
    vms = m.vms
    assert vms.img not in images(vms, sd)
    assert vms.storage.root.is_dir()
    assert not list(vms.storage.root.glob(f"*/{sd}/images/{vms.img}")), "image directory left"
    kept_open = [f for f in open_files(m.pid_of(m.vm_id)) if f"/{sd}/" in f]
    assert kept_open == [], "QEMU keeps files open"


def assert_on_source(m: Mover) -> None:
    """Fully on the source, as before the move: same chain, nothing on the destination."""
    vms, st = m.vms, m.vms.storage
    w = world(vms, m.vm_id)
    assert w["status"] == "Up" and m.pid_of(m.vm_id) == m.pid, "the VM must never stop"
    assert (w["domain"], w["chain"], w["src"], w["jobs"]) == (st.sd, m.chain, m.chain, {})
    assert w["dst"] == []
    leaf = vms.daemon.api().volume_info(st.sd, st.sp, vms.img, m.chain[-1])
    assert leaf["voltype"] == "LEAF" and leaf["legality"] == "LEGAL"
    assert_nothing_of_the_image(m, st.sd2)
    assert m.leftover_state() == [], "journal or lock left behind"


def assert_on_destination(m: Mover, *, merged: bool = True, kept: bool = False) -> list[str]:
    vms, st = m.vms, m.vms.storage
    w = world(vms, m.vm_id)
    assert w["status"] == "Up" and m.pid_of(m.vm_id) == m.pid, "the VM must never stop"
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
        assert [f for f in open_files(m.pid_of(m.vm_id)) if f"/{st.sd}/" in f] == []
    else:
        assert_nothing_of_the_image(m, st.sd)
    assert m.leftover_state() == [], "journal or lock left behind"
    return list(w["chain"])


def open_files(pid: int) -> list[str]:
    """The paths process ``pid`` (a VM's QEMU) has open (lsm_helpers.open_files, by pid)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:
            continue
    return found
