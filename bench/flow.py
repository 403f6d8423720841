"""One disk's live migration, verb by verb, each step timed: the orchestration an engine (or
``vdsClient moveDisk``) runs, as docs/contract.md §1 lists it, through vdsClient's API.

    create_snapshot  createVolume: the auto-snapshot volume on the source      (control)
    snapshot         VM.snapshot: it becomes the active layer                    (control)
    clone            cloneImageStructure + wait                                  (control)
    replicate        diskReplicateStart: the mirror of the active layer starts   (control)
    sync             syncImageData INTERNAL + wait: the read-only volumes        (copy)
    wait_ready       until getVmStats says the mirror is READY                   (copy)
    pivot            diskReplicateFinish(src, dst)                               (control)
    delete_source    deleteImage on the source domain                            (control)
    merge            VM.merge of the auto-snapshot into its parent, until done   (control)
    delete_snapshot  deleteVolume of the merged auto-snapshot                    (control)

"control" steps move no guest data: their sum is the orchestration overhead. Waits poll every
``bench.daemon.POLL`` seconds (20 ms: the client's interval).

The storage verbs (createVolume, cloneImageStructure, syncImageData, deleteImage, deleteVolume
and their task waits) go to the pool's SPM, the VM verbs (snapshot, diskReplicateStart/Finish,
merge, getVmStats) to the VM's host: one vdsmd for both, or two (``vm_client``) when the VM runs
on another host than the SPM, as docs/design.md says of moves across hosts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.daemon import TASK_TIMEOUT
from bench.disks import Chain
from vdsm import errors
from vdsm_cli.api import Vdsm, disk_spec
from vdsm_cli.errors import ApiError

CONTROL = (
    "create_snapshot",
    "snapshot",
    "clone",
    "replicate",
    "pivot",
    "delete_source",
    "merge",
    "delete_snapshot",
)
COPY = ("sync", "wait_ready")
UNTIL_PIVOT = ("create_snapshot", "snapshot", "clone", "replicate", "sync", "wait_ready", "pivot")


class NotReady(Exception):
    """The mirror did not reach READY in time."""


@dataclass
class Step:
    name: str
    start: float  # time.monotonic()
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Move:
    steps: list[Step] = field(default_factory=list)
    copy_mode: str = "auto"
    started: float = 0.0

    def seconds(self, name: str) -> float:
        return sum(s.seconds for s in self.steps if s.name == name)

    def span(self, first: str, last: str) -> float:
        """Seconds from the start of step ``first`` to the end of step ``last``."""
        start = next(s.start for s in self.steps if s.name == first)
        end = next(s.end for s in self.steps if s.name == last)
        return end - start

    @property
    def total(self) -> float:
        return self.steps[-1].end - self.steps[0].start

    @property
    def until_pivot(self) -> float:
        """From the first step to the VM running on the destination."""
        return self.span(self.steps[0].name, "pivot")

    @property
    def control(self) -> float:
        return sum(s.seconds for s in self.steps if s.name in CONTROL)

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": {s.name: round(s.seconds, 4) for s in self.steps},
            "marks": [
                [s.name, round(s.start - self.started, 4), round(s.end - self.started, 4)]
                for s in self.steps
            ],
            "until_pivot": round(self.until_pivot, 4),
            "total": round(self.total, 4),
            "control": round(self.control, 4),
        }


class _Timer:
    def __init__(self, move: Move, on_step: Callable[[str], None] | None) -> None:
        self.move, self.on_step = move, on_step

    def step(self, name: str, action: Callable[[], Any]) -> Any:
        if self.on_step is not None:
            self.on_step(name)
        start = time.monotonic()
        result = action()
        self.move.steps.append(Step(name, start, time.monotonic()))
        return result


def move_disk(
    client: Vdsm,
    vm_id: str,
    chain: Chain,
    dst_sd: str,
    *,
    snapshot: bool = True,
    cleanup: bool = True,
    copy_mode: str = "auto",
    bandwidth: int = 0,
    ready_timeout: float = 600.0,
    before_pivot: Callable[[], None] | None = None,
    on_step: Callable[[str], None] | None = None,
    vm_client: Vdsm | None = None,
) -> Move:
    """Move ``chain`` (the disk of ``vm_id``) to ``dst_sd``; on success ``chain.sd`` is
    ``dst_sd``. ``client`` is the SPM's vdsmd, ``vm_client`` the VM's host's (by default the
    same). ``before_pivot`` runs once the mirror is READY (untimed), e.g. to let a writer
    reach a steady state. Raises NotReady when the mirror is not READY in time (the
    replication is left running: call :func:`abort`)."""
    vm = client if vm_client is None else vm_client
    sp, src_sd, img = chain.sp, chain.sd, chain.img
    move = Move(copy_mode=copy_mode, started=time.monotonic())
    timer = _Timer(move, on_step)
    leaf = chain.leaf
    snap = str(uuid.uuid4())

    def task(verb: str, task_id: str) -> None:
        client.wait_success(task_id, verb, timeout=TASK_TIMEOUT)

    if snapshot:
        timer.step(
            "create_snapshot",
            lambda: task(
                "createVolume",
                client.create_volume(
                    src_sd, sp, img, snap, _capacity(chain), parent=leaf, description="bench"
                ),
            ),
        )
        timer.step("snapshot", lambda: vm.snapshot(vm_id, src_sd, img, leaf, snap))
        active = snap
    else:
        active = leaf
    src = disk_spec(src_sd, sp, img, active)
    dst = disk_spec(dst_sd, sp, img, active)
    timer.step(
        "clone",
        lambda: task("cloneImageStructure", client.clone_structure(sp, src_sd, img, dst_sd)),
    )
    timer.step("replicate", lambda: vm.replicate_start(vm_id, src, dst, copy_mode, bandwidth))
    timer.step("sync", lambda: task("syncImageData", client.sync_data(sp, src_sd, img, dst_sd)))
    timer.step("wait_ready", lambda: wait_ready(vm, vm_id, ready_timeout))
    if before_pivot is not None:
        before_pivot()
    timer.step("pivot", lambda: _pivot(vm, vm_id, src, dst))
    chain.sd = dst_sd
    if cleanup:
        timer.step(
            "delete_source", lambda: task("deleteImage", client.delete_image(src_sd, sp, img))
        )
    if snapshot and cleanup:
        drive = disk_spec(dst_sd, sp, img, snap)
        timer.step("merge", lambda: _merge(vm, vm_id, drive, leaf, snap))
        timer.step(
            "delete_snapshot",
            lambda: task("deleteVolume", client.delete_volumes(dst_sd, sp, img, [snap])),
        )
    elif snapshot:
        chain.vols.append(snap)
    return move


def _capacity(chain: Chain) -> int:
    return chain.layout.virtual


def wait_ready(client: Vdsm, vm_id: str, timeout: float, target: str = "vda") -> None:
    deadline = time.monotonic() + timeout
    poller = client.poller()
    while True:
        job = client.vm(vm_id).jobs.get(target)
        if job is not None and job.get("ready"):
            return
        if time.monotonic() > deadline:
            raise NotReady(f"mirror of {vm_id} {target} not READY after {timeout}s: {job}")
        poller.pause()


def _finished(client: Vdsm, vm_id: str, src: dict[str, str], dst: dict[str, str]) -> bool:
    """diskReplicateFinish: True when done, False while the mirror is not READY."""
    try:
        client.replicate_finish(vm_id, src, dst)
    except ApiError as e:
        if e.code == errors.ReplicationNotReady.code:
            return False
        raise
    return True


def _pivot(client: Vdsm, vm_id: str, src: dict[str, str], dst: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    poller = client.poller()
    while not _finished(client, vm_id, src, dst):
        if time.monotonic() > deadline:
            raise NotReady(f"Finish answered 40 for 60s on {vm_id}")
        poller.pause()


def _merge(client: Vdsm, vm_id: str, drive: dict[str, str], base: str, top: str) -> None:
    client.merge(vm_id, drive, base, top, 0, str(uuid.uuid4()))
    deadline = time.monotonic() + 300
    poller = client.poller()
    while True:
        vm = client.vm(vm_id)
        if top not in vm.drives["vda"].chain and not vm.jobs:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"merge of {top} on {vm_id} not done: {vm.jobs}")
        poller.pause()


def abort(client: Vdsm, vm_id: str, chain: Chain, dst_sd: str, active: str) -> None:
    """Cancel a replication (Finish with srcDisk == dstDisk) and delete the destination."""
    src = disk_spec(chain.sd, chain.sp, chain.img, active)
    poller = client.poller()
    while not _finished(client, vm_id, src, src):
        poller.pause()
    if chain.img in client.images(dst_sd):
        task = client.delete_image(dst_sd, chain.sp, chain.img)
        client.wait_success(task, "deleteImage", timeout=TASK_TIMEOUT)
