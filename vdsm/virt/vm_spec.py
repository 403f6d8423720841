"""VDSM's vmParams, checked and turned into a typed VmSpec.

Engines send many device types; vdsm runs disks (and nothing else yet), so other devices are
logged and ignored rather than refused, as long as they are well-formed mappings. Every value
that reaches a path, the domain XML or the command line is checked here, and each refusal is
InvalidParameter naming the key.

vdsmd runs as root and libvirt opens every file of a VM as root, so no path is the client's to
choose: the serial console goes where vdsmd puts it (derived from the vmId), and a kernel or
an initrd must be a regular file inside the configured boot directory, symlinks resolved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
    console_log: Path  # the serial console's file, derived from the vmId by vdsmd
    # Test-only: let another writer share the disks (an NBD export in the test suite drives
    # I/O through the VM's own block layer; see docs/design.md, "Testing under QEMU",
    # "Host-side test writer").
    share_rw: bool
    params: dict[str, Any]  # the vmParams as given, returned by create and kept for recovery


def parse(params: object, *, boot_dir: Path, console_log: Callable[[str], Path]) -> VmSpec:
    """Check ``params``; kernel and initrd must lie in ``boot_dir``; ``console_log(vm_id)`` is
    where the serial console goes."""
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
    kernel = _boot_file(params.get("kernel"), "kernel", boot_dir)
    initrd = _boot_file(params.get("initrd"), "initrd", boot_dir)
    if initrd is not None and kernel is None:
        raise InvalidParameter("initrd", str(initrd), "needs a kernel")
    kernel_args = validation.text(params.get("kernelArgs", ""), "kernelArgs", max_length=1024)
    console = console_log(vm_id)
    asked = params.get("consoleLog")
    if asked is not None and asked != str(console):
        # Accepted back as vdsmd reported it (getVmStats), never another path.
        raise InvalidParameter(
            "consoleLog", asked, f"vdsmd writes this VM's console to {console}; it is not settable"
        )
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
        console_log=console,
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
    return validation.integer(value, key, low=low, high=high)


def _boot_file(value: object, key: str, boot_dir: Path) -> Path | None:
    """A regular file inside ``boot_dir`` (a name in it, or an absolute path under it), as its
    real path: ``..`` and symlinks are resolved before the containment check."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or "\0" in value:
        raise InvalidParameter(key, value, f"expected a file name in {boot_dir}")
    try:
        # Containment first, on the path resolved as far as it exists: the answer for a path
        # outside the boot directory never tells whether it exists.
        real_dir = boot_dir.resolve()
        real = (boot_dir / value).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise InvalidParameter(key, value, f"not a file in the boot directory {boot_dir}") from None
    if not real.is_relative_to(real_dir) or real == real_dir:
        raise InvalidParameter(key, value, f"not a file in the boot directory {boot_dir}")
    if not real.exists():
        raise InvalidParameter(key, value, f"no such file in {boot_dir}")
    if not real.is_file():
        raise InvalidParameter(key, value, f"not a regular file in {boot_dir}")
    return real
