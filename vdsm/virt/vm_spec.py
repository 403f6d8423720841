"""VDSM's vmParams, checked and turned into a typed VmSpec.

Engines send many device types; vdsm runs disks (and nothing else yet), so other devices are
logged and ignored rather than refused, as long as they are well-formed mappings. Every value
that reaches a path, the domain XML or the command line is checked here, and each refusal is
InvalidParameter naming the key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdsm import validation
from vdsm.errors import InvalidParameter

log = logging.getLogger("vdsm.virt.vm_spec")

CACHE_MODES = ("none", "writeback", "writethrough", "directsync", "unsafe")
MAX_MEMORY_MIB = 1024 * 1024
MAX_VCPUS = 64
MAX_DISKS = 16


@dataclass(frozen=True)
class DiskSpec:
    domain_id: str
    pool_id: str
    image_id: str
    volume_id: str
    index: int
    readonly: bool
    cache: str

    @property
    def target(self) -> str:
        """virtio disk names: vda, vdb, ... by index."""
        return "vd" + "abcdefghijklmnop"[self.index]


@dataclass(frozen=True)
class VmSpec:
    vm_id: str
    name: str
    mem_mib: int
    smp: int
    disks: tuple[DiskSpec, ...]
    kernel: Path | None
    initrd: Path | None
    kernel_args: str
    console_log: Path | None  # the serial console, written to a file when set
    # Test-only: let another writer share the disks (an NBD export in the test suite drives
    # I/O through the VM's own block layer; see qemu-notes "Host-side test writer").
    share_rw: bool
    params: dict[str, Any]  # the vmParams as given, returned by create and kept for recovery


def parse(params: object, *, default_console_log: Path | None = None) -> VmSpec:
    if not isinstance(params, dict):
        raise InvalidParameter("vmParams", params, "expected a mapping")
    vm_id = validation.uuid(params.get("vmId"), "vmId")
    name = params.get("vmName", f"vm-{vm_id[:8]}")
    validation.text(name, "vmName", max_length=64)
    if not name or "/" in name:
        raise InvalidParameter("vmName", name, "must be non-empty, without '/'")
    mem = _integer(params.get("memSize", 256), "memSize", 16, MAX_MEMORY_MIB)
    smp = _integer(params.get("smp", 1), "smp", 1, MAX_VCPUS)
    devices = params.get("devices", [])
    if not isinstance(devices, list):
        raise InvalidParameter("devices", devices, "expected a list")
    disks: list[DiskSpec] = []
    for n, device in enumerate(devices):
        if not isinstance(device, dict):
            raise InvalidParameter(f"devices[{n}]", device, "expected a mapping")
        if device.get("type") == "disk" and device.get("device", "disk") == "disk":
            disks.append(_disk(device, n, len(disks)))
        else:
            log.info("vm %s: ignoring unsupported device %r", vm_id, device.get("type"))
    if len(disks) > MAX_DISKS:
        raise InvalidParameter("devices", len(disks), f"at most {MAX_DISKS} disks")
    _check_unique_targets(disks)
    kernel = _existing_file(params.get("kernel"), "kernel")
    initrd = _existing_file(params.get("initrd"), "initrd")
    if initrd is not None and kernel is None:
        raise InvalidParameter("initrd", str(initrd), "needs a kernel")
    kernel_args = validation.text(params.get("kernelArgs", ""), "kernelArgs", max_length=1024)
    console = params.get("consoleLog")
    if console is not None and (not isinstance(console, str) or not console.startswith("/")):
        raise InvalidParameter("consoleLog", console, "expected an absolute file path")
    share_rw = params.get("testShareRW", False)
    if not isinstance(share_rw, bool):
        raise InvalidParameter("testShareRW", share_rw, "expected true or false")
    return VmSpec(
        vm_id=vm_id,
        name=name,
        mem_mib=mem,
        smp=smp,
        disks=tuple(disks),
        kernel=kernel,
        initrd=initrd,
        kernel_args=kernel_args,
        console_log=Path(console) if console else default_console_log,
        share_rw=share_rw,
        params=dict(params),
    )


def _disk(device: dict[str, Any], n: int, position: int) -> DiskSpec:
    where = f"devices[{n}]"
    iface = device.get("iface", "virtio")
    if iface != "virtio":
        raise InvalidParameter(f"{where}.iface", iface, "only virtio disks are supported")
    index = _integer(device.get("index", position), f"{where}.index", 0, MAX_DISKS - 1)
    readonly = device.get("readonly", False)
    if isinstance(readonly, str) and readonly.lower() in ("true", "false"):
        readonly = readonly.lower() == "true"
    if not isinstance(readonly, bool):
        raise InvalidParameter(f"{where}.readonly", readonly, "expected true or false")
    cache = device.get("cache", "none")
    if cache not in CACHE_MODES:
        raise InvalidParameter(f"{where}.cache", cache, f"one of {', '.join(CACHE_MODES)}")
    return DiskSpec(
        domain_id=validation.uuid(device.get("domainID"), f"{where}.domainID"),
        pool_id=validation.uuid(device.get("poolID"), f"{where}.poolID"),
        image_id=validation.uuid(device.get("imageID"), f"{where}.imageID"),
        volume_id=validation.uuid(device.get("volumeID"), f"{where}.volumeID"),
        index=index,
        readonly=readonly,
        cache=cache,
    )


def _check_unique_targets(disks: list[DiskSpec]) -> None:
    seen: dict[str, DiskSpec] = {}
    for disk in disks:
        if disk.target in seen:
            raise InvalidParameter("devices", disk.index, f"two disks with index {disk.index}")
        seen[disk.target] = disk
    images = [(d.domain_id, d.image_id) for d in disks]
    if len(set(images)) != len(images):
        raise InvalidParameter("devices", "imageID", "the same image attached twice")


def _integer(value: object, key: str, low: int, high: int) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(key, value, "expected an integer")
    if not low <= value <= high:
        raise InvalidParameter(key, value, f"must be between {low} and {high}")
    return value


def _existing_file(value: object, key: str) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidParameter(key, value, "expected an absolute file path")
    path = Path(value)
    if not path.is_file():
        raise InvalidParameter(key, value, "no such file")
    return path
