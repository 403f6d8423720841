"""The machine a run measured: CPU, memory, the work dir's disk and file system, tool versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.daemon import REPO


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return 0.0


def _filesystem(path: Path) -> dict[str, Any]:
    device = fstype = ""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    best = ""
    for line in mounts:
        fields = line.split()
        mount = fields[1]
        if (str(path).startswith(mount.rstrip("/") + "/") or str(path) == mount) and len(
            mount
        ) >= len(best):
            best, device, fstype = mount, fields[0], fields[2]
    usage = shutil.disk_usage(path)
    return {
        "mount": best,
        "device": device,
        "fstype": fstype,
        "size_gib": round(usage.total / 1024**3, 1),
        "free_gib": round(usage.free / 1024**3, 1),
    }


def collect(workdir: Path, capabilities: dict[str, Any], can_drop_caches: bool) -> dict[str, Any]:
    qemu_img = _run(["qemu-img", "--version"]).splitlines()
    commit = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = bool(_run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]))
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu_img": qemu_img[0] if qemu_img else "",
        "qemu": capabilities.get("qemuVersion", ""),
        "libvirt": capabilities.get("libvirtVersion", ""),
        "vm_domain_type": capabilities.get("domainType", ""),
        "accelerator": capabilities.get("accelerator", ""),
        "workdir": str(workdir),
        "filesystem": _filesystem(workdir),
        "drop_caches": can_drop_caches,
        "commit": commit + ("+dirty" if dirty else ""),
    }
