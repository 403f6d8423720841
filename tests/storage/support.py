"""Helpers shared by the storage tests: UUIDs, whether a process is alive, qemu-io reads and
writes through a volume chain, and sample volume metadata. The fixtures are in conftest.py."""

from __future__ import annotations

import uuid
from pathlib import Path

from vdsm.storage import runner
from vdsm.storage.constants import (
    BLANK_UUID,
    DiskType,
    Legality,
    Preallocation,
    VolumeFormat,
    VolumeRole,
)
from vdsm.storage.volume_metadata import VolumeMetadata


def new_uuid() -> str:
    return str(uuid.uuid4())


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def run_qemu_io(path: Path, fmt: str, command: str) -> str:
    """Run one qemu-io command on an image (and so through its backing chain)."""
    result = runner.run(["qemu-io", "-f", fmt, "-c", command, str(path)], timeout=60)
    output = result.stdout.decode()
    # qemu-io reports a failed pattern check on stdout and still exits 0.
    assert "Pattern verification failed" not in output, output
    assert "failed" not in output.lower(), output
    return output


# A volume's metadata, for the tests that write and read .meta files.
SAMPLE_SD = "11111111-1111-1111-1111-111111111111"
SAMPLE_IMG = "22222222-2222-2222-2222-222222222222"


def sample_metadata(**changes: object) -> VolumeMetadata:
    """A LEAF, LEGAL, 1 GiB qcow2 volume's metadata of image SAMPLE_IMG, with ``changes``."""
    md = VolumeMetadata(
        domain=SAMPLE_SD,
        image=SAMPLE_IMG,
        parent=BLANK_UUID,
        capacity=1073741824,
        format=VolumeFormat.COW,
        allocation=Preallocation.SPARSE,
        role=VolumeRole.LEAF,
        disk_type=DiskType.DATA,
        description="boot disk",
        legality=Legality.LEGAL,
        ctime=1700000000,
        generation=0,
    )
    return md.replace(**changes)
