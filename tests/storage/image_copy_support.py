"""Shared by the cloneImageStructure and syncImageData tests (test_image_copy_clone.py,
test_image_copy.py): ``RecordingTask``, the test double of the task a storage operation runs
in; a three-layer chain with known data in every layer; and the views of a volume the checks
compare (its own extents and bytes, its twin). The ``src`` and ``dst`` domain fixtures are in
conftest.py.

Not a test module: tests/storage/conftest.py registers it for pytest's assert rewriting, so a
failed check here shows its values.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.storage.support import new_uuid, run_qemu_io
from vdsm.copy_governor import GuestIo
from vdsm.errors import TaskAborted
from vdsm.storage import image_copy, qemuimg, rollback_steps
from vdsm.storage import volume as volumes
from vdsm.storage.constants import BLANK_UUID, VolumeFormat
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.runner import Cancellation
from vdsm.storage.volume import Volume

MiB = 1024**2
CAPACITY = 64 * MiB


class RecordingTask:
    """A test double of the task running a storage operation (vdsm.storage.task.context's
    TaskContext): it records rollback steps (checked to be JSON, as the real task persists
    them) and progress, and stops when its real Cancellation is cancelled."""

    def __init__(
        self,
        on_rollback: Callable[[int], None] | None = None,
        on_progress: Callable[[RecordingTask, float], None] | None = None,
    ) -> None:
        self.task_id = new_uuid()
        self.cancellation = Cancellation()
        self.rollbacks: list[tuple[str, dict[str, Any]]] = []
        self.progress: list[tuple[float, int | None, int | None]] = []
        self.held_back: list[str] = []  # every reason an adaptive copy gave
        self._lock = threading.Lock()
        self._on_rollback = on_rollback
        self._on_progress = on_progress

    def add_rollback(self, name: str, args: Mapping[str, Any]) -> None:
        assert name in rollback_steps.table()
        self.rollbacks.append((name, json.loads(json.dumps(args))))
        if self._on_rollback is not None:
            self._on_rollback(len(self.rollbacks))

    def replace_rollback(self, name: str, args: Mapping[str, Any]) -> None:
        assert name in rollback_steps.table()
        self.rollbacks[:] = [(name, json.loads(json.dumps(args)))]

    def set_progress(
        self,
        percent: float,
        *,
        done_bytes: int | None = None,
        total_bytes: int | None = None,
        held_back: str | None = None,
    ) -> None:
        with self._lock:  # called from the runner's reader thread during copies
            self.progress.append((percent, done_bytes, total_bytes))
            if held_back:
                self.held_back.append(held_back)
        if self._on_progress is not None:
            self._on_progress(self, percent)

    def check_aborted(self) -> None:
        if self.cancellation.cancelled:
            raise TaskAborted(self.task_id)

    def roll_back(self, repository: StorageRepository) -> None:
        """What the task manager does after a failure: every step, newest first."""
        for name, args in reversed(self.rollbacks):
            rollback_steps.table()[name](repository, args)


class BusyGuests:
    """A fake of libvirt's block statistics, which these storage tests do not run (the
    functional tests of the adaptive rate read a real guest's): guests doing 2000 operations
    of 0.1 ms a second, never hurt (their latency stays), so an adaptive copy starts held
    back and runs as a mirror job whose rate doubles from the floor at each look."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def __call__(self) -> GuestIo:
        ops = int((time.monotonic() - self._started) * 2000)
        return GuestIo(ops=ops, nbytes=ops * 4096, busy_ns=ops * 100_000)


# The two ways a sync copies a volume: qemu-img convert (the rate not adaptive, or the guests
# idle), and the mirror job of qemu-storage-daemon (adaptive, the guests busy).
COPY_RATES = {
    "convert": image_copy.UNLIMITED,
    "mirror": image_copy.CopyRate(guest_io=BusyGuests()),
}


def make_chain(
    domain: FileStorageDomain, img: str, allocation: str = "SPARSE", base_format: str = "RAW"
) -> list[Volume]:
    """base ← middle ← leaf, each layer holding its own data, as after two live snapshots.

    base: 0x11 at 0-1M and 0xa1 at 8M-9M; middle: 0x22 at 1M-2M and a zero cluster hiding
    base data at 8M-8.5M; leaf: 0x33 at 2M-3M.
    """
    chain: list[Volume] = []
    writes = [
        ["write -P 0x11 0 1M", "write -P 0xa1 8M 1M"],
        ["write -P 0x22 1M 1M", "write -z 8M 512k"],
        ["write -P 0x33 2M 1M"],
    ]
    for i, commands in enumerate(writes):
        fmt = base_format if i == 0 else "COW"
        vol = volumes.create(
            domain,
            img,
            new_uuid(),
            capacity=CAPACITY,
            volume_format=fmt,
            allocation=allocation,
            description=f"layer {i}",
            parent_uuid=chain[-1].vol_uuid if chain else BLANK_UUID,
        )
        for command in commands:
            run_qemu_io(vol.path, VolumeFormat(fmt).qemu_format, command)
        chain.append(vol)
    return chain


def stable_map(vol: Volume, allocation: str) -> bool:
    """Whether ``qemu-img map`` of the volume is stable. Not for a preallocated raw file:
    ext4 reports an fallocated, never written extent as data while its pages are in the page
    cache and as a hole once they are dropped (measured: `cat` then map, drop_caches then
    map), so the same file maps differently from one moment to the next. Its content is
    compared, and its allocation checked, instead."""
    return not (allocation == "PREALLOCATED" and qemu_fmt(vol) == "raw")


def qemu_fmt(vol: Volume) -> str:
    return vol.metadata().format.qemu_format


def own_extents(vol: Volume) -> list[tuple[Any, ...]]:
    """The extents a volume holds itself (depth 0), without host offsets."""
    return [
        (e["start"], e["length"], e["data"], e["zero"])
        for e in qemuimg.map(vol.path, fmt=qemu_fmt(vol))
        if e["depth"] == 0
    ]


def own_bytes(vol: Volume) -> int:
    return qemuimg.allocated_bytes(qemuimg.map(vol.path, fmt=qemu_fmt(vol)), depth=0)


def st_allocated(vol: Volume) -> int:
    return vol.path.stat().st_blocks * 512


def twin(dst: FileStorageDomain, vol: Volume) -> Volume:
    return Volume(dst, vol.img_uuid, vol.vol_uuid)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def clone(src: FileStorageDomain, dst: FileStorageDomain, img: str) -> None:
    image_copy.clone_structure(src, dst, img, RecordingTask())
