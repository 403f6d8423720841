"""The bench's world: a work dir on the local disk, a vdsmd, a pool of two file domains, VMs.

Everything is registered for clean-up as it is made, and :meth:`Env.close` undoes it in
reverse order whatever happened: VMs destroyed (through vdsmd, then through virsh if vdsmd is
gone), vdsmd stopped, the work dir removed. Both domains are directories of the same file
system (the machine has one disk), so "source" and "destination" share its bandwidth.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.daemon import TASK_TIMEOUT, Vdsmd
from bench.disks import Chain, Layout, MiB, build_chain, make_pattern
from vdsm.virt import unaccounted_io
from vdsm_cli.api import Vdsm, disk_spec
from vdsm_cli.errors import CliError
from vdsm_guest.block_writer import BlockWriter
from vdsm_guest.local_vdsmd import leave_lockspaces

log = logging.getLogger("bench")

LIBVIRT_URI = "qemu:///system"
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


class Env:
    def __init__(
        self,
        workdir: Path | None,
        *,
        convergence_window: float | None = None,
        daemon_env: dict[str, str] | None = None,
    ) -> None:
        parent = workdir or Path(os.environ.get("VDSM_BENCH_WORKDIR", "/var/tmp"))
        parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="vdsm-bench-", dir=parent))
        self._cleanups = contextlib.ExitStack()
        self._cleanups.callback(shutil.rmtree, self.root, ignore_errors=True)
        # File systems mounted under the root (memory_domain): after the lockspaces are left.
        self._mounts = contextlib.ExitStack()
        self._cleanups.callback(self._mounts.close)
        self._cleanups.callback(leave_lockspaces, [self.root])  # after vdsmd stops
        self._domain_dirs: dict[str, Path] = {}
        # sanlock io_timeout 1, a test machine's: joining the pool takes 3 s rather than 21 s.
        self._daemon_args: list[str] = ["--sanlock-io-timeout", "1"]
        if convergence_window is not None:
            self._daemon_args += ["--replication-convergence-window", str(convergence_window)]
        # The guest-like writer's I/O counters, for the copy governors (see visible()).
        self.guest_io_file = self.root / "guest-io.json"
        self._daemon_env = {**(daemon_env or {}), unaccounted_io.ENV: str(self.guest_io_file)}
        self.daemon = Vdsmd(self.root / "vdsmd", self._daemon_args, self._daemon_env)
        self.vms: list[str] = []  # running
        self.created: list[str] = []  # every VM this run started
        self._destroying: list[threading.Thread] = []
        self.can_drop_caches = _try_drop_caches()
        try:
            self.daemon.start()
            # Whichever daemon runs at the end (see restart_daemon).
            self._cleanups.callback(lambda: self.daemon.stop())
            self._cleanups.callback(self._destroy_vms)
            self.client = self.new_client()
            self.sp, self.sd, self.sd2 = new_uuid(), new_uuid(), new_uuid()
            for sd, name in ((self.sd, "src"), (self.sd2, "dst")):
                mount = self.root / name
                mount.mkdir()
                self.client.create_domain(sd, name, str(mount))
                self._domain_dirs[sd] = mount / sd / "images"
            self.client.create_pool(self.sp, "bench", self.sd)
            self.client.connect_pool(self.sp, 1, self.sd)
            self.client.start_spm(self.sp)
            self.client.attach_domain(self.sd2, self.sp)
            self.pattern = make_pattern(self.root / "pattern.bin")
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def visible(self, writer: BlockWriter) -> Iterator[BlockWriter]:
        """Run ``writer`` with its I/O counters published to vdsmd: QEMU does not count an NBD
        export's writes for the VM's drive, and counts a real guest's, so without this the
        copy governors would take the guest-like writer for an idle guest."""
        with writer, writer.publishing(self.guest_io_file):
            yield writer

    def new_client(self) -> Vdsm:
        """A new client of the bench's vdsmd (one per thread)."""
        return self.daemon.client()

    def restart_daemon(self, extra_args: list[str]) -> None:
        """Stop vdsmd and start it again on the same state with ``extra_args`` added to its
        flags (e.g. a copy rate limit); running VMs keep running and are recovered."""
        self.daemon.stop()
        self.daemon = Vdsmd(
            self.root / "vdsmd", [*self._daemon_args, *extra_args], self._daemon_env
        )
        self.daemon.start()
        self.client = self.new_client()
        # The restarted daemon rejoined the pool but holds no lease: the SPM is started again.
        self.client.start_spm(self.sp)

    def close(self) -> None:
        self._cleanups.close()

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- disks and VMs ----------------------------------------------------------------------

    def other(self, sd: str) -> str:
        return self.sd2 if sd == self.sd else self.sd

    def domain_dir(self, sd: str) -> Path:
        return self._domain_dirs[sd]

    def memory_domain(self, size: int) -> str:
        """A third domain of the pool, on a device of its own: XFS on a loop device whose
        file lives in a tmpfs (memory), ``size`` bytes, written through once. tmpfs itself
        cannot hold a domain: sanlock and the domain checks read with O_DIRECT, which tmpfs
        refuses; XFS on a loop device takes it. Unmounted after vdsmd is gone and its
        lockspaces left (lazily: the sanlock daemon closes the lockspace's file a moment
        later)."""
        memory, mount = self.root / "memory", self.root / "memdev"
        memory.mkdir()
        mount.mkdir()
        _run(["mount", "-t", "tmpfs", "-o", f"size={size + 64 * MiB}", "tmpfs", str(memory)])
        self._mounts.callback(_run, ["umount", "-l", str(memory)])
        backing = memory / "device.img"
        # Every page of the device written once now, not left to the copies: this machine's
        # memory is slow the first time a page is touched (its hypervisor backs guest memory
        # lazily: ~350 MiB/s against 1-1.8 GiB/s once touched, measured with qemu-img
        # convert into the device), and a copy into untouched pages measures that, not the
        # copy. A real device has no such first time. (fallocate does not touch the pages.)
        chunk = bytes(16 * MiB)
        with open(backing, "wb") as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
            f.truncate(size)
        _run(["mkfs.xfs", "-q", str(backing)])
        # -o loop: the loop device is set up with autoclear, freed with the last unmount.
        _run(["mount", "-o", "loop", str(backing), str(mount)])
        self._mounts.callback(_run, ["umount", "-l", str(mount)])
        sd = new_uuid()
        self.client.create_domain(sd, "memory", str(mount))
        self.client.attach_domain(sd, self.sp)
        self._domain_dirs[sd] = mount / sd / "images"
        return sd

    def image_dir(self, sd: str, img: str) -> Path:
        return self.domain_dir(sd) / img

    def volume_files(self, sd: str, img: str) -> list[Path]:
        """The data files of an image (no .meta/.lease)."""
        directory = self.image_dir(sd, img)
        if not directory.exists():
            return []
        return [p for p in directory.iterdir() if "." not in p.name]

    def build(self, layout: Layout, sd: str | None = None) -> Chain:
        return build_chain(self.client, self.sp, sd or self.sd, layout, self.pattern)

    def start_vm(self, chain: Chain, *, share_rw: bool = True) -> str:
        vm_id = new_uuid()
        device: dict[str, Any] = {
            "type": "disk",
            "iface": "virtio",
            "index": 0,
            **disk_spec(chain.sd, chain.sp, chain.img, chain.leaf),
        }
        params = {
            "vmId": vm_id,
            "vmName": f"bench-{vm_id[:8]}",
            "memSize": 64,
            "smp": 1,
            "devices": [device],
            "testShareRW": share_rw,
        }
        self.vms.append(vm_id)
        self.created.append(vm_id)
        self.client.create_vm(params)
        return vm_id

    def destroy_vm(self, vm_id: str) -> None:
        """Destroy a VM in the background (QEMU takes ~1.5 s to go under TCG: nothing to
        measure there); :meth:`close` and :meth:`reset` wait for it."""

        def destroy() -> None:
            with contextlib.suppress(CliError):
                self.new_client().destroy_vm(vm_id)

        thread = threading.Thread(target=destroy, name=f"destroy-{vm_id[:8]}")
        thread.start()
        self._destroying.append(thread)
        if vm_id in self.vms:
            self.vms.remove(vm_id)

    def _wait_destroyed(self) -> None:
        for thread in self._destroying:
            thread.join()
        self._destroying.clear()

    def _destroy_vms(self) -> None:
        self._wait_destroyed()
        for vm_id in list(self.vms):
            try:
                self.client.destroy_vm(vm_id)
            except Exception:  # noqa: BLE001 - vdsmd may be the thing that failed
                subprocess.run(
                    ["virsh", "-c", LIBVIRT_URI, "destroy", vm_id],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        self.vms.clear()

    def remove_image(self, img: str) -> None:
        """Delete an image from both domains (whichever hold it), once the VMs being destroyed
        are gone: a VM's QEMU holds its top volume's lease until it exits, and deleteImage
        refuses a volume whose lease is held."""
        self._wait_destroyed()
        for sd in self._domain_dirs:
            if img in self.client.images(sd):
                self.delete_image(sd, img)

    def delete_image(self, sd: str, img: str) -> None:
        """deleteImage, waited for."""
        task = self.client.delete_image(sd, self.sp, img)
        self.client.wait_success(task, "deleteImage", timeout=TASK_TIMEOUT)

    def reset(self) -> None:
        """After a failed measurement: no VM left running, no image left in either domain."""
        self._destroy_vms()
        for sd in self._domain_dirs:
            try:
                images = self.client.images(sd)
            except CliError:
                images = []
            for img in images:
                try:
                    self.delete_image(sd, img)
                except CliError:
                    shutil.rmtree(self.image_dir(sd, img), ignore_errors=True)

    # --- caches -----------------------------------------------------------------------------

    def cold(self) -> None:
        """Write back dirty data and, when allowed, drop the page cache: every timed copy
        starts with its source on disk, not in memory."""
        os.sync()
        if self.can_drop_caches:
            DROP_CACHES.write_text("3")
        time.sleep(0.05)


def new_uuid() -> str:
    return str(uuid.uuid4())


def _try_drop_caches() -> bool:
    try:
        os.sync()
        DROP_CACHES.write_text("3")
        return True
    except OSError:
        return False


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
