"""Resource locks: shared and exclusive semantics, sorted acquisition that cannot deadlock,
timeouts that release what was taken, and no starvation of exclusive requests."""

from __future__ import annotations

import threading
import time

import pytest

from vdsm.errors import ResourceTimeout
from vdsm.storage.resource_locks import LockMode, ResourceLocks, image_resource

SH, EX = LockMode.SHARED, LockMode.EXCLUSIVE


def test_shared_holders_coexist_and_exclusive_waits() -> None:
    locks = ResourceLocks()
    with locks.hold([("a", SH)]), locks.hold([("a", SH)]):
        assert locks.held() == {"a": "SHARED"}
        with pytest.raises(ResourceTimeout, match="a \\(EXCLUSIVE\\)"):
            with locks.hold([("a", EX)], timeout=0.05):
                pass
    with locks.hold([("a", EX)]):
        with pytest.raises(ResourceTimeout):
            with locks.hold([("a", SH)], timeout=0.05):
                pass
    assert locks.held() == {}


def test_timeout_releases_what_was_already_taken() -> None:
    locks = ResourceLocks()
    with locks.hold([("b", EX)]):
        with pytest.raises(ResourceTimeout, match="b"):
            with locks.hold([("a", EX), ("b", EX)], timeout=0.05):
                pass
        assert locks.held() == {"b": "EXCLUSIVE"}  # "a" was given back
    assert locks.held() == {}


def test_same_resource_twice_is_taken_once_exclusive() -> None:
    locks = ResourceLocks()
    with locks.hold([("a", SH), ("a", EX), ("a", SH)], timeout=1):
        assert locks.held() == {"a": "EXCLUSIVE"}


def test_opposite_orders_never_deadlock() -> None:
    """Many threads lock the same two images in opposite roles and orders, as a clone from
    domain A to B and one from B to A would; all of them must finish."""
    locks = ResourceLocks()
    src, dst = image_resource("sd-a", "img"), image_resource("sd-b", "img")
    inside = 0
    max_exclusive_overlap = 0
    guard = threading.Lock()
    errors: list[BaseException] = []

    def worker(requests: list[tuple[str, LockMode]]) -> None:
        nonlocal inside, max_exclusive_overlap
        try:
            for _ in range(200):
                with locks.hold(requests, timeout=20):
                    with guard:
                        inside += 1
                        max_exclusive_overlap = max(max_exclusive_overlap, inside)
                    time.sleep(0)
                    with guard:
                        inside -= 1
        except BaseException as e:  # reported below; a deadlock shows up as a timeout
            errors.append(e)

    threads = [
        threading.Thread(target=worker, args=([(src, EX), (dst, EX)],)),
        threading.Thread(target=worker, args=([(dst, EX), (src, EX)],)),
        threading.Thread(target=worker, args=([(src, SH), (dst, EX)],)),
        threading.Thread(target=worker, args=([(dst, SH), (src, EX)],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "deadlock: workers still waiting"
    assert errors == []
    # Every request holds at least one lock exclusively on a shared pair: never two inside.
    assert max_exclusive_overlap == 1
    assert locks.held() == {}


def test_waiting_writer_is_not_starved_by_readers() -> None:
    locks = ResourceLocks()
    stop = threading.Event()
    got_exclusive = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with locks.hold([("a", SH)]):
                time.sleep(0.001)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        with locks.hold([("a", EX)], timeout=10):
            got_exclusive.set()
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=10)
    assert got_exclusive.is_set()
