"""Throughput over time: a thread that samples, every ``interval`` seconds, what the disk did
(sectors read and written, /proc/diskstats) and how many bytes the destination files use
(st_blocks of the files ``files()`` returns: a destination image's volumes, or a baseline's
output file).

The disk counters are the physical truth (they include everything the disk did meanwhile,
e.g. journal writes and other processes); the allocation counts data as it lands in the page
cache. Rates are derivatives over ``window`` seconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

SECTOR = 512


def disk_of(path: Path) -> str | None:
    """The /proc/diskstats name of the block device holding ``path`` (None if unknown)."""
    try:
        dev = os.stat(path).st_dev
        name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
    except OSError:
        return None
    return name if _diskstats(name) is not None else None


def _diskstats(name: str) -> tuple[int, int] | None:
    """(bytes read, bytes written) so far by device ``name``."""
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 9 and fields[2] == name:
                    return int(fields[5]) * SECTOR, int(fields[9]) * SECTOR
    except OSError:
        pass
    return None


class AllocationSampler:
    def __init__(
        self, files: Callable[[], list[Path]], device: str | None = None, interval: float = 0.05
    ) -> None:
        self._files = files
        self._device = device
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        # (time.monotonic(), allocated bytes, disk bytes read, disk bytes written)
        self.samples: list[tuple[float, int, int, int]] = []
        self.started = 0.0

    def __enter__(self) -> AllocationSampler:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self._interval):
                self._sample()
                return

    def _sample(self) -> None:
        read = written = 0
        if self._device is not None:
            read, written = _diskstats(self._device) or (0, 0)
        self.samples.append((time.monotonic(), self._allocated(), read, written))

    def _allocated(self) -> int:
        total = 0
        try:
            files = self._files()
        except OSError:
            return 0
        for path in files:
            try:
                total += path.stat().st_blocks * 512
            except OSError:
                continue
        return total

    def rate_series(self, kind: str = "allocated", window: float = 0.25) -> list[list[float]]:
        """[seconds since start, MiB/s over the last ``window`` seconds] of ``kind``:
        "allocated", "read" or "written"."""
        column = {"allocated": 1, "read": 2, "written": 3}[kind]
        series: list[list[float]] = []
        samples = self.samples
        j = 0
        for sample in samples:
            t = sample[0]
            while samples[j][0] < t - window:
                j += 1
            t0 = samples[j][0]
            if t - t0 > 0:
                rate = max(0.0, (sample[column] - samples[j][column]) / (t - t0) / 2**20)
                series.append([round(t - self.started, 3), round(rate, 1)])
        return series
