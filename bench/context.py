"""What every measurement gets: the environment, the sizes of this run, and target checks."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from bench.disks import GiB, MiB
from bench.env import Env

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Settings:
    """Sizes and durations of one run; ``smoke()`` shrinks everything to prove the harness."""

    data: int = 2 * GiB  # allocated bytes of the throughput chain
    repeat: int = 3  # timed repetitions where noise matters
    throughput_rounds: int = 5  # migration vs convert rounds of measure 1
    smoke: bool = False
    sparse_virtual: int = 64 * GiB
    sparse_data: int = 1 * GiB
    scale_sizes: tuple[int, ...] = (GiB // 2, GiB, 2 * GiB, 4 * GiB)
    scale_vms: int = 4
    scale_virtual: int = 8 * GiB
    pivot_runs: int = 7
    steady_seconds: float = 2.0  # writer windows: before a migration, before a pivot
    guest_data: int = 1 * GiB
    guest_rate_mib: float = 32.0  # the paced guest writer (MiB/s)
    guest_modes: tuple[str, ...] = ("auto", "background", "sync")
    converge_modes: tuple[str, ...] = ("background", "auto", "sync")
    convergence_window: float = 10.0  # vdsmd's default
    background_timeout: float = 30.0  # how long a background-mode mirror may try to converge
    converge_cap_mib: int = 2  # copy bandwidth cap (diskReplicateStart bandwidth, MiB/s)
    converge_writer_mib: float = 8.0  # the writer outrunning it (MiB/s)
    converge_region: int = 8 * MiB  # the disk area the writer keeps dirtying

    @classmethod
    def smoke_run(cls) -> Settings:
        return cls(
            data=16 * MiB,
            repeat=1,
            throughput_rounds=1,
            smoke=True,
            sparse_virtual=1 * GiB,
            sparse_data=16 * MiB,
            scale_sizes=(8 * MiB, 16 * MiB),
            scale_vms=2,
            scale_virtual=256 * MiB,
            pivot_runs=1,
            steady_seconds=0.5,
            guest_data=16 * MiB,
            guest_modes=("auto",),
            converge_modes=("auto",),
            convergence_window=1.0,
            background_timeout=2.0,
            converge_cap_mib=4,
            converge_writer_mib=16.0,
            converge_region=4 * MiB,
        )


@dataclass
class Context:
    env: Env
    settings: Settings
    notes: list[str] = field(default_factory=list)


def target(
    name: str, value: float, op: str, limit: float, unit: str = "", reason: str = ""
) -> dict[str, Any]:
    """One target: ``value op limit`` (op is "<=" or ">="), met or not."""
    if math.isnan(value):
        met = False
    else:
        met = value <= limit if op == "<=" else value >= limit
    return {
        "name": name,
        "value": value,
        "op": op,
        "limit": limit,
        "unit": unit,
        "met": met,
        "reason": reason,
    }


def mib_s(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / MiB if seconds > 0 else float("nan")


def r(value: float, digits: int = 4) -> float:
    return round(value, digits)
