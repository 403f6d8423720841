"""Named resource locks, SHARED or EXCLUSIVE, always taken in sorted order.

Every operation names all the resources it needs up front (for example the source image
SHARED and the destination image EXCLUSIVE) and :meth:`ResourceLocks.hold` takes them sorted
by name. Because every holder climbs the same total order, two operations that need the same
two images in opposite roles can never deadlock. Waiting writers block new readers, so a
stream of readers cannot starve an exclusive request. Locks are not reentrant.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum

from vdsm import validation
from vdsm.errors import ResourceTimeout


class LockMode(StrEnum):
    SHARED = "SHARED"
    EXCLUSIVE = "EXCLUSIVE"


def image_resource(sd_uuid: str, img_uuid: str) -> str:
    """The resource name of an image: one lock per image per domain."""
    return f"{sd_uuid}/images/{img_uuid}"


LockRequest = tuple[str, LockMode]


def exclusive_image(sd_uuid: str, img_uuid: str) -> LockRequest:
    """The request for an image EXCLUSIVE, as every create, delete or copy into it takes it.

    The UUIDs are canonicalised first, so that "ABC..." and "abc..." name the same lock.
    """
    return _image_request(sd_uuid, img_uuid, LockMode.EXCLUSIVE)


def shared_image(sd_uuid: str, img_uuid: str) -> LockRequest:
    """The request for an image SHARED (a copy reads it), UUIDs canonical like
    :func:`exclusive_image`'s."""
    return _image_request(sd_uuid, img_uuid, LockMode.SHARED)


def _image_request(sd_uuid: str, img_uuid: str, mode: LockMode) -> LockRequest:
    sd_uuid = validation.uuid(sd_uuid, "sdUUID")
    return image_resource(sd_uuid, validation.uuid(img_uuid, "imgUUID")), mode


class _ReadWriteLock:
    """One resource's lock state; guarded by the owning ResourceLocks' condition."""

    def __init__(self) -> None:
        self.readers = 0
        self.writer = False
        self.waiting_writers = 0
        # Waiters of either kind keep the entry alive: a waiter holds a reference to this
        # object, so it must not be dropped from the table and replaced by a fresh one.
        self.waiters = 0

    def can_take(self, mode: LockMode) -> bool:
        if mode is LockMode.SHARED:
            return not self.writer and self.waiting_writers == 0
        return not self.writer and self.readers == 0

    @property
    def idle(self) -> bool:
        return not self.writer and self.readers == 0 and self.waiters == 0


class ResourceLocks:
    """The lock table of one daemon. Pass it explicitly to whatever needs it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._locks: dict[str, _ReadWriteLock] = {}

    @contextmanager
    def hold(self, requests: Iterable[LockRequest], timeout: float | None = None) -> Iterator[None]:
        """Hold every requested resource for the ``with`` block.

        A resource named twice is taken once, EXCLUSIVE if either request is. ``timeout`` bounds
        the whole acquisition; on expiry everything taken so far is released and
        ResourceTimeout names the resource that could not be had.
        """
        wanted: dict[str, LockMode] = {}
        for name, mode in requests:
            if wanted.get(name) is not LockMode.EXCLUSIVE:
                wanted[name] = mode
        deadline = None if timeout is None else time.monotonic() + timeout
        taken: list[tuple[str, LockMode]] = []
        try:
            for name in sorted(wanted):
                self._acquire(name, wanted[name], deadline)
                taken.append((name, wanted[name]))
            yield
        finally:
            for name, mode in reversed(taken):
                self._release(name, mode)

    def _acquire(self, name: str, mode: LockMode, deadline: float | None) -> None:
        with self._cond:
            lock = self._locks.setdefault(name, _ReadWriteLock())
            lock.waiters += 1
            if mode is LockMode.EXCLUSIVE:
                lock.waiting_writers += 1
            got = False
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                got = self._cond.wait_for(lambda: lock.can_take(mode), timeout=remaining)
                if got:
                    if mode is LockMode.EXCLUSIVE:
                        lock.writer = True
                    else:
                        lock.readers += 1
            finally:
                lock.waiters -= 1
                if mode is LockMode.EXCLUSIVE:
                    lock.waiting_writers -= 1
                    self._cond.notify_all()  # readers held back by this writer may go on
                if lock.idle:
                    del self._locks[name]
            if not got:
                raise ResourceTimeout(f"{name} ({mode}) not available in time")

    def _release(self, name: str, mode: LockMode) -> None:
        with self._cond:
            lock = self._locks[name]
            if mode is LockMode.EXCLUSIVE:
                lock.writer = False
            else:
                lock.readers -= 1
            if lock.idle:
                del self._locks[name]
            self._cond.notify_all()

    def held(self) -> dict[str, str]:
        """A snapshot of what is held, for diagnostics: name → SHARED/EXCLUSIVE."""
        with self._cond:
            return {
                name: "EXCLUSIVE" if lock.writer else "SHARED"
                for name, lock in self._locks.items()
                if lock.writer or lock.readers
            }
