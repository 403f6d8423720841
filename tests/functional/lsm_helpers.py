"""Shared by the VM and live storage migration functional tests (test_vms.py, test_lsm*.py,
test_merge.py, test_replication_monitor.py, ...).

``VmFixture`` (a pool, an image with a 2-volume chain, and the VMs a test starts), the
fixtures (the tiny guest image, a vdsmd with a short convergence window, and VMs on it),
``Migration`` (one disk's migration driven verb by verb, as an engine would), and the small
helpers around libvirt and the guest: virsh, a disk's vmParams device, a drive's chain, the
QEMU pid, the guest's boot parameters, waiting for its logged writes, and the files its QEMU
has open. Not a test module: tests/functional/conftest.py registers it for pytest's
assert rewriting, so a failed check here shows its values.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from tests.functional.daemon_helpers import REPO, VdsmdProcess, new_uuid, wait_task
from tests.functional.storage_helpers import Storage, ok
from vdsm_guest import checker
from vdsm_guest.build import GuestImage


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=60
    ).stdout


def restart_libvirtd() -> None:
    """The machine's libvirtd stopped (SIGTERM) and started again by scripts/setup-host.sh;
    running VMs keep running (QEMU outlives libvirtd)."""
    # By its pid file, not by name: test hosts of the multi-host harness run libvirtds of
    # their own (vdsm_guest/libvirt_daemon.py).
    libvirtd = int(Path("/run/libvirtd.pid").read_text())
    assert Path(f"/proc/{libvirtd}/comm").read_text().strip() == "libvirtd"
    os.kill(libvirtd, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{libvirtd}").exists():
        assert time.monotonic() < deadline, "libvirtd did not stop"
        time.sleep(0.1)
    subprocess.run(
        ["bash", str(REPO / "scripts" / "setup-host.sh")],
        check=True,
        capture_output=True,
        timeout=120,
    )


class PoolIds(Protocol):
    """A pool's ids, whoever built it (storage_helpers.Storage, cluster_helpers.make_pool)."""

    sp: str
    sd: str  # the source domain
    sd2: str  # the destination domain
    root: Path  # the domains' directories (or mount points) are under it


def disk(storage: PoolIds, img: str, vol: str) -> dict[str, Any]:
    return {
        "type": "disk",
        "device": "disk",
        "domainID": storage.sd,
        "poolID": storage.sp,
        "imageID": img,
        "volumeID": vol,
        "iface": "virtio",
        "index": 0,
    }


class VmFixture:
    """A pool, an image with a 2-volume chain, and the VMs a test starts (destroyed after)."""

    def __init__(
        self,
        daemon: VdsmdProcess,
        root: Path,
        dst_block_size: int = 512,
        *,
        storage: Storage | None = None,
    ) -> None:
        """``storage``: a pool ``daemon`` already serves (shared by several tests, each with
        an image of its own); by default a new one under ``root``."""
        self.daemon = daemon
        self.storage = storage or Storage(daemon, root, dst_block_size)
        self.img, self.base, self.leaf = new_uuid(), new_uuid(), new_uuid()
        self.storage.create_volume(self.img, self.base, fmt="RAW")
        self.storage.create_volume(self.img, self.leaf, parent=self.base)
        self.started: list[str] = []

    def params(self, vm_id: str | None = None, **extra: Any) -> dict[str, Any]:
        vm_id = vm_id or new_uuid()
        return {
            "vmId": vm_id,
            "vmName": f"test-{vm_id[:8]}",
            "memSize": 64,
            "smp": 1,
            "devices": [disk(self.storage, self.img, self.leaf)],
            **extra,
        }

    def start(self, **extra: Any) -> str:
        params = self.params(**extra)
        self.started.append(params["vmId"])
        reply = ok(self.daemon.xmlrpc().create(params))
        assert reply["vmList"]["status"] == "Up"
        return str(params["vmId"])

    def stats(self, vm_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = ok(self.daemon.xmlrpc().getVmStats(vm_id))["statsList"][0]
        return stats

    def cleanup(self) -> None:
        for vm_id in self.started:
            virsh("destroy", vm_id)


def chain_of(stats: dict[str, Any], target: str = "vda") -> list[str]:
    return [v["volumeID"] for v in stats["disks"][target]["volumeChain"]]


def qemu_pid(vm_id: str) -> int:
    """The QEMU process of a domain, from libvirt's pid file."""
    name = virsh("domname", vm_id).strip()
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


class Migration:
    """One disk's live migration, driven verb by verb as an engine would."""

    def __init__(self, vms: VmFixture, vm_id: str) -> None:
        self.vms, self.vm_id = vms, vm_id
        self.rpc = vms.daemon.xmlrpc()
        self.st = vms.storage
        self.img = vms.img

    def disk(self, sd: str, vol: str) -> dict[str, str]:
        return {
            "device": "disk",
            "domainID": sd,
            "poolID": self.st.sp,
            "imageID": self.img,
            "volumeID": vol,
        }

    def live_snapshot(self) -> str:
        leaf = chain_of(self.vms.stats(self.vm_id))[-1]
        snap = new_uuid()
        self.st.create_volume(self.img, snap, parent=leaf)
        ok(
            self.rpc.snapshot(
                self.vm_id,
                [
                    {
                        "domainID": self.st.sd,
                        "imageID": self.img,
                        "baseVolumeID": leaf,
                        "volumeID": snap,
                    }
                ],
            )
        )
        return snap

    def assert_runs_on(self, sd: str, console: Path) -> None:
        """The guest keeps writing (20 more writes), its drive is on domain ``sd``, and every
        write it acknowledged reads back from there."""
        wait_writes(console, wait_writes(console, 0) + 20)
        stats = self.vms.stats(self.vm_id)
        assert stats["disks"]["vda"]["domainID"] == sd, stats["disks"]["vda"]
        result = checker.check(Path(stats["disks"]["vda"]["path"]), "qcow2", console)
        assert result.ok, result.failures

    def clone(self) -> None:
        task = ok(self.rpc.cloneImageStructure(self.st.sp, self.st.sd, self.img, self.st.sd2))
        assert wait_task(self.vms.daemon, task["uuid"])["taskResult"] == "success"

    def sync(self, sync_type: str = "INTERNAL") -> None:
        task = ok(self.rpc.syncImageData(self.st.sp, self.st.sd, self.img, self.st.sd2, sync_type))
        assert wait_task(self.vms.daemon, task["uuid"])["taskResult"] == "success"

    def finish_when_ready(
        self, src: dict[str, Any], dst: dict[str, Any], timeout: float = 120
    ) -> int:
        """Call Finish until it stops answering 40; return how many 40s it answered."""
        deadline, not_ready = time.monotonic() + timeout, 0
        while True:
            reply = self.rpc.diskReplicateFinish(self.vm_id, src, dst)
            if reply["status"]["code"] != 40:
                ok(reply)
                return not_ready
            not_ready += 1
            assert time.monotonic() < deadline, f"mirror never READY: {reply}"
            time.sleep(0.2)


def guest_params(guest: GuestImage, **cmdline: Any) -> dict[str, Any]:
    """VM.create parameters booting the tiny guest; ``cmdline`` tunes its writer."""
    return {
        "kernel": str(guest.kernel),
        "initrd": str(guest.initrd),
        "kernelArgs": guest.kernel_cmdline(**cmdline),
        "memSize": 128,
    }


def wait_writes(console: Path, count: int, timeout: float = 60) -> int:
    """Wait until the guest's console log shows ``count`` writes; return how many it shows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        if "VDSMW ready" in text:
            try:
                logged = checker.parse_log(text).writes
            except checker.CheckError:
                # Read while the guest wrote its ready line ("VDSMW ready run="): a part of
                # a line is no record yet (a load run caught it so).
                logged = []
            if len(logged) >= count:
                return len(logged)
        time.sleep(0.1)
    raise AssertionError(f"the guest did not log {count} writes: {console.read_text()[-2000:]}")


def open_files(vm_id: str) -> list[str]:
    """The paths the VM's QEMU has open (to prove it let go of one domain's volumes)."""
    fd_dir = Path(f"/proc/{qemu_pid(vm_id)}/fd")
    found = []
    for fd in fd_dir.iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:
            continue
    return found
