"""The main job, as far as vdsm goes today: build storage the way live storage migration needs it.

In a temporary directory this creates two file storage domains (as if two NFS exports were
mounted), groups them in a pool, creates a disk as a 3-volume chain (a raw base and two qcow2
snapshots, each holding data), shows the layout and the chain as qemu-img sees it, verifies the
data reads back through the chain, and cleans everything up. Later issues turn this into the
full live migration demo.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

from vdsm.errors import VdsmError
from vdsm.storage import image, qemuimg, runner
from vdsm.storage import volume as volumes
from vdsm.storage.pool import StoragePool
from vdsm.storage.repository import StorageRepository

MiB = 1024**2
GiB = 1024**3


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def write_pattern(path: Path, fmt: str, pattern: int, offset_mib: int) -> None:
    cmd = f"write -P {pattern:#x} {offset_mib}M 1M"
    runner.run(["qemu-io", "-f", fmt, "-c", cmd, str(path)], timeout=60)
    print(f"    wrote 1 MiB of {pattern:#04x} at {offset_mib} MiB into {path.name}")


def verify_pattern(path: Path, pattern: int, offset_mib: int) -> None:
    cmd = f"read -P {pattern:#x} {offset_mib}M 1M"
    out = runner.run(["qemu-io", "-f", "qcow2", "-r", "-U", "-c", cmd, str(path)], timeout=60)
    if b"verification failed" in out.stdout:
        raise SystemExit(f"data check failed at {offset_mib} MiB: {out.stdout.decode()}")
    print(f"    read back {pattern:#04x} at {offset_mib} MiB through the chain: ok")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vdsm-demo-") as tmp:
        root = Path(tmp)
        repository = StorageRepository(root / "repository")

        step("Creating two file storage domains (two 'mounts' under a temporary directory)")
        domains = []
        for name in ("nfs-a", "nfs-b"):
            mount = root / name
            mount.mkdir()
            domains.append(repository.create_domain(mount, str(uuid.uuid4()), name))
            print(f"    domain {domains[-1].sd_uuid} at {domains[-1].path}")
        src, dst = domains

        step("Creating a pool with the first domain as master, then attaching the second")
        sp_uuid = str(uuid.uuid4())
        pool = StoragePool.create(repository, sp_uuid, "demo-dc", src.sd_uuid, [])
        pool.attach(dst.sd_uuid)
        info = pool.info()
        print(f"    pool {info.sp_uuid} '{info.name}', master {info.master_uuid}")
        print(f"    members: {', '.join(sorted(info.domains))}")

        step("Creating a 1 GiB disk as a 3-volume chain: raw base + two qcow2 snapshots")
        img = str(uuid.uuid4())
        base = volumes.create(
            src,
            img,
            str(uuid.uuid4()),
            capacity=GiB,
            volume_format="RAW",
            allocation="SPARSE",
            description="base",
        )
        write_pattern(base.path, "raw", 0x11, 0)
        middle = volumes.create(
            src,
            img,
            str(uuid.uuid4()),
            capacity=GiB,
            volume_format="COW",
            allocation="SPARSE",
            parent_uuid=base.vol_uuid,
            description="snapshot 1",
        )
        write_pattern(middle.path, "qcow2", 0x22, 100)
        leaf = volumes.create(
            src,
            img,
            str(uuid.uuid4()),
            capacity=GiB,
            volume_format="COW",
            allocation="SPARSE",
            parent_uuid=middle.vol_uuid,
            description="active layer",
        )
        write_pattern(leaf.path, "qcow2", 0x33, 500)

        step("The chain, base to leaf, as vdsm's metadata records it")
        for vol in image.chain(src, img):
            vinfo = vol.info()
            md = vinfo.metadata
            print(
                f"    {vol.vol_uuid}  {md.format:<3} {md.role:<8} {md.legality} "
                f"capacity={md.capacity // MiB} MiB allocated={vinfo.true_size // 1024} KiB"
            )

        step("The same chain as qemu-img sees it (backing links are relative volUUIDs)")
        for entry in qemuimg.info(leaf.path, fmt="qcow2", backing_chain=True):
            backing = entry.get("backing-filename", "-")
            print(f"    {Path(entry['filename']).name} ({entry['format']}) -> {backing}")

        step("Verifying every layer's data through the leaf")
        verify_pattern(leaf.path, 0x11, 0)
        verify_pattern(leaf.path, 0x22, 100)
        verify_pattern(leaf.path, 0x33, 500)

        step("The domain's files (contract §7 layout)")
        for path in sorted(src.path.rglob("*")):
            print(f"    {path.relative_to(root)}")

        step("Deleting the image; the domains and their pool go with the temporary directory")
        image.delete(src, img)
        print(f"    images left on {src.sd_uuid}: {src.image_uuids()}")
    print("\nDemo finished: storage domains, pool and a 3-volume chain built, verified, removed.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except VdsmError as e:
        print(f"demo failed: error {e.code}: {e.message}", file=sys.stderr)
        sys.exit(1)
