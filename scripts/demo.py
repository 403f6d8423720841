"""The main job: a live storage migration of a running VM's disk, under continuous writes.

In a temporary directory this starts vdsmd, creates two file storage domains (as if two NFS
exports were mounted) in a pool, and a disk as a 3-volume chain holding data (a raw base and
two qcow2 snapshots). It boots the tiny test guest on that disk — it writes numbered,
checksummed blocks all the time and logs each on its serial console — and moves the disk to
the other domain with one command, ``vdsClient moveDisk``, showing its live progress. Then it
verifies: every write the guest saw acknowledged is on the destination (the guest checker), and
the read-only part of the chain is bit-identical on both domains (``qemu-img compare``). It
prints a summary and removes everything it made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from vdsm.storage import qemuimg, runner
from vdsm_api.wire import BLANK_UUID
from vdsm_cli.api import Vdsm
from vdsm_cli.errors import CliError
from vdsm_guest import checker
from vdsm_guest.build import ensure_guest
from vdsm_guest.local_vdsmd import DaemonError, LocalVdsmd, leave_lockspaces

MiB = 1024**2
GiB = 1024**3
REPO = Path(__file__).resolve().parents[1]


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def new() -> str:
    return str(uuid.uuid4())


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.daemon: LocalVdsmd | None = None
        self.api: Vdsm | None = None
        self.vm_id: str | None = None

    # --- helpers ------------------------------------------------------------------------

    @property
    def vdsm(self) -> Vdsm:
        """The SPM's vdsmd: storage verbs."""
        assert self.api is not None, "vdsmd is not started"
        return self.api

    @property
    def vm_host(self) -> Vdsm:
        """The vdsmd the VM runs on: VM verbs (the same host here; scripts/cluster_demo.py
        runs the VM on another host than the SPM)."""
        return self.vdsm

    def vdsclient(self, *args: str) -> int:
        argv = [sys.executable, "-m", "vdsm_cli.vdsclient", f"localhost:{self.port}", *args]
        return subprocess.call(argv, cwd=REPO)

    # --- the demo -----------------------------------------------------------------------

    def start_vdsmd(self) -> None:
        step(f"Starting vdsmd (state in {self.root}), with the default security")
        # LocalVdsmd runs it with no config file: TLS with the host's certificates, domains
        # confined to the storage roots (here the demo's directory), kernels to the boot dir.
        # sanlock io_timeout 1, a test machine's: joining a pool takes 3 s rather than 21 s.
        self.daemon = LocalVdsmd(
            self.root / "vdsmd", ["--sanlock-io-timeout", "1"], storage_roots=[self.root]
        )
        try:
            self.daemon.start()
        except DaemonError as e:
            raise SystemExit(f"vdsmd did not start: {e}") from None
        self.port = self.daemon.port
        self.api = self.daemon.api()
        print(
            f"    vdsmd answers on 127.0.0.1:{self.port}: TLS, client certificate required "
            "(XML-RPC on /RPC2, JSON-RPC on /jsonrpc)"
        )

    def build_storage(self) -> None:
        step("Creating two file storage domains and a pool")
        self.sp, self.src, self.dst = new(), new(), new()
        for sd, name in ((self.src, "nfs-a"), (self.dst, "nfs-b")):
            mount = self.root / name
            mount.mkdir()
            self.vdsm.create_domain(sd, name, str(mount))
            print(f"    domain {sd} ({name}) at {mount}")
        self.vdsm.create_pool(self.sp, "demo-dc", self.src, [self.src, self.dst])
        print(f"    pool {self.sp}: master {self.src}")
        self.vdsm.connect_pool(self.sp, 1, self.src)
        spm = self.vdsm.start_spm(self.sp)
        print(f"    connected as host id 1; SPM: holds the pool's lease (lver {spm['spmLver']})")

        step("Creating a 1 GiB disk as a 3-volume chain holding data")
        self.img = new()
        self.chain = [new(), new(), new()]
        parent = BLANK_UUID
        for n, (vol, fmt, data_mib) in enumerate(
            zip(self.chain, ("RAW", "COW", "COW"), (192, 64, 0), strict=True)
        ):
            task = self.vdsm.create_volume(
                self.src,
                self.sp,
                self.img,
                vol,
                GiB,
                volume_format=fmt,
                parent=parent,
                description=f"layer {n}",
            )
            self.vdsm.wait_success(task, "createVolume")
            path = self.volume_path(self.src, vol)
            if data_mib:
                qemu_fmt = "raw" if fmt == "RAW" else "qcow2"
                runner.run(
                    [
                        "qemu-io",
                        "-f",
                        qemu_fmt,
                        "-c",
                        f"write -P {0x11 * (n + 1):#x} {n * 256}M {data_mib}M",
                        str(path),
                    ],
                    timeout=120,
                )
            print(f"    {vol}  {fmt:<3}  {data_mib:>3} MiB of data")
            parent = vol

    def volume_path(self, sd: str, vol: str) -> Path:
        return Path(self.vdsm.volume_info(sd, self.sp, self.img, vol)["path"])

    def boot_guest(self) -> None:
        step("Booting the tiny guest on the disk; it writes verifiable blocks all the time")
        guest = ensure_guest()
        self.vm_id = new()
        params = {
            "vmId": self.vm_id,
            "vmName": "demo",
            "memSize": 128,
            "kernel": str(guest.kernel),
            "initrd": str(guest.initrd),
            "kernelArgs": guest.kernel_cmdline(slots=256, pause=0.01),
            "devices": [
                {
                    "type": "disk",
                    "device": "disk",
                    "domainID": self.src,
                    "poolID": self.sp,
                    "imageID": self.img,
                    "volumeID": self.chain[-1],
                }
            ],
        }
        self.vm_host.create_vm(params)
        self.console = Path(self.vm_host.vm(self.vm_id).stats["consoleLog"])
        writes = self.wait_writes(20)
        print(f"    VM {self.vm_id} is up; the guest has logged {writes} writes so far")

    def wait_writes(self, at_least: int) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.console.read_text(errors="replace") if self.console.exists() else ""
            if "VDSMW ready" in text:
                count = len(checker.parse_log(text).writes)
                if count >= at_least:
                    return count
            time.sleep(0.1)
        raise SystemExit(f"the guest did not write; console: {self.console}")

    def move(self) -> None:
        assert self.vm_id is not None
        step(f"vdsClient moveDisk {self.vm_id} {self.img} {self.dst} --keep-source")
        before = self.wait_writes(0)
        rc = self.vdsclient("moveDisk", self.vm_id, self.img, self.dst, "--keep-source")
        if rc != 0:
            raise SystemExit(f"moveDisk failed with exit code {rc}")
        after = self.wait_writes(before + 1)
        print(f"    the guest kept writing during the move: {after - before} writes meanwhile")

    def verify(self) -> None:
        step("Verifying the destination")
        assert self.vm_id is not None
        drive = self.vm_host.vm(self.vm_id).stats["disks"]["vda"]
        chain = [v["volumeID"] for v in drive["volumeChain"]]
        print(
            f"    the VM runs on domain {drive['domainID']}: chain {len(chain)} volumes "
            f"({'the same shape as before' if chain == self.chain else chain})"
        )
        if drive["domainID"] != self.dst:
            raise SystemExit("the VM does not run on the destination")
        self.wait_writes(self.wait_writes(0) + 10)
        result = checker.check(Path(drive["path"]), "qcow2", self.console)
        if not result.ok:
            raise SystemExit(f"lost or corrupt writes: {result.failures}")
        print(
            f"    guest checker: all {result.writes_logged} acknowledged writes present "
            f"({result.slots_verified} slots verified)"
        )
        for vol in self.chain[:2]:
            same = qemuimg.compare(
                self.volume_path(self.src, vol), self.volume_path(self.dst, vol), force_share=True
            )
            print(
                f"    qemu-img compare {vol[:8]}… source vs destination: "
                f"{'identical' if same else 'DIFFERENT'}"
            )
            if not same:
                raise SystemExit("the copied volumes differ")

    def cleanup(self) -> None:
        if self.vm_id and self.api is not None:
            try:
                self.vm_host.destroy_vm(self.vm_id)
            except CliError:
                pass
        if self.daemon is not None and self.daemon.running:
            self.daemon.stop()
        leave_lockspaces([self.root])  # sanlock would renew them after the directory is gone

    def steps(self) -> list[Callable[[], None]]:
        return [self.start_vdsmd, self.build_storage, self.boot_guest, self.move, self.verify]

    cleanup_text = "destroying the VM, stopping vdsmd, removing the temporary directory"
    summary = "the running VM's disk moved between storage domains with no lost write."


def run(make: Callable[[Path], Demo], prefix: str) -> int:
    """Run a demo's steps in a fresh temporary directory, clean up whatever happened, and
    print how long it took."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["VDSM_MOVE_STATE_DIR"] = str(root / "moves")
    demo = make(root)
    try:
        for action in demo.steps():
            action()
    except CliError as e:  # vdsmd refused a verb, or a task failed: its own message
        raise SystemExit(e.message) from None
    finally:
        step(f"Cleaning up: {demo.cleanup_text}")
        demo.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s: {demo.summary}")
    return 0


def main() -> int:
    return run(Demo, "vdsm-demo-")


if __name__ == "__main__":
    sys.exit(main())
