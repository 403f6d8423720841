"""Volume metadata: the exact text form, every key round-tripped, torn files refused, and
atomic writes that leave the old or the new file when the writer is killed at any step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.storage.support import SAMPLE_IMG, SAMPLE_SD, sample_metadata
from vdsm.errors import VolumeDoesNotExist, VolumeMetadataReadError, VolumeMetadataWriteError
from vdsm.storage import volume_metadata
from vdsm.storage.constants import (
    BLANK_UUID,
    DiskType,
    Legality,
    Preallocation,
    VolumeFormat,
    VolumeRole,
)

PARENT = "33333333-3333-3333-3333-333333333333"


def test_text_form_is_sorted_key_value_lines_ended_by_eof() -> None:
    assert sample_metadata().to_text() == textwrap.dedent(
        f"""\
        CAP=1073741824
        CTIME=1700000000
        DESCRIPTION=boot disk
        DISKTYPE=DATA
        DOMAIN={SAMPLE_SD}
        FORMAT=COW
        GEN=0
        IMAGE={SAMPLE_IMG}
        LEGALITY=LEGAL
        PUUID={BLANK_UUID}
        TYPE=SPARSE
        VOLTYPE=LEAF
        EOF
        """
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"capacity": 512},
        {"ctime": 0},
        {"description": ""},
        {"description": "x" * 210},
        {"disk_type": DiskType.OVFS},
        {"format": VolumeFormat.RAW},
        {"generation": 999},
        {"legality": Legality.ILLEGAL},
        {"legality": Legality.FAKE},
        {"parent": PARENT},
        {"allocation": Preallocation.PREALLOCATED},
        {"role": VolumeRole.INTERNAL},
        {"role": VolumeRole.SHARED},
    ],
)
def test_every_key_round_trips(tmp_path: Path, changes: dict[str, object]) -> None:
    md = sample_metadata(**changes)
    path = tmp_path / "vol.meta"
    volume_metadata.write(path, md, "test volume")
    assert volume_metadata.read(path, "test volume") == md
    assert len(path.read_bytes()) <= 512


def test_oversized_metadata_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "vol.meta"
    with pytest.raises(VolumeMetadataWriteError, match="more than 512"):
        volume_metadata.write(path, sample_metadata(description="é" * 210), "test volume")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "mangle, reason",
    [
        (lambda t: t.replace("EOF\n", ""), "no EOF"),
        (lambda t: t[: len(t) // 2], "no EOF"),
        (lambda t: t.replace("CAP=1073741824\n", ""), "missing keys"),
        (lambda t: "EXTRA=1\n" + t, "unknown"),
        (lambda t: t.replace("FORMAT=COW", "FORMAT=VMDK"), "FORMAT"),
        (lambda t: t.replace("CAP=1073741824", "CAP=-5"), "CAP"),
        (lambda t: t.replace("GEN=0", "GEN=1000"), "GEN"),
        (lambda t: t.replace(f"PUUID={BLANK_UUID}", "PUUID=../../etc"), "PUUID"),
        (lambda t: t.replace("CAP=1073741824", "CAP=1073741824\nCAP=1"), "twice"),
    ],
)
def test_torn_or_foreign_files_are_refused(tmp_path: Path, mangle, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "vol.meta"
    path.write_text(mangle(sample_metadata().to_text()))
    with pytest.raises(VolumeMetadataReadError, match=reason) as err:
        volume_metadata.read(path, "volume X")
    assert "volume X" in err.value.message


def test_missing_file_is_volume_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(VolumeDoesNotExist, match="volume X"):
        volume_metadata.read(tmp_path / "absent.meta", "volume X")


# A writer process that replaces OLD with NEW and kills itself with SIGKILL right before the
# named step, so the file system is left exactly as a crash at that point would leave it.
_WRITER = """
import os, signal, sys
from pathlib import Path
from vdsm.storage import volume_metadata
from vdsm.storage.volume_metadata import VolumeMetadata

path, new_text, step = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
calls = {"write": 0, "fsync": 0}
real_write, real_fsync, real_replace = os.write, os.fsync, os.replace

def die_if(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)

def write(fd, data):
    # Write half of the data first, then die: a torn temporary file.
    if step == "mid-write":
        real_write(fd, bytes(data)[: len(data) // 2])
        die_if("mid-write")
    return real_write(fd, data)

def fsync(fd):
    calls["fsync"] += 1
    die_if("fsync-file" if calls["fsync"] == 1 else "fsync-dir")
    return real_fsync(fd)

def replace(a, b):
    die_if("rename")
    real_replace(a, b)
    die_if("after-rename")

os.write, os.fsync, os.replace = write, fsync, replace
volume_metadata.write(path, VolumeMetadata.from_text(new_text, "new"), "test volume")
die_if("done")
"""


@pytest.mark.parametrize(
    "step", ["mid-write", "fsync-file", "rename", "after-rename", "fsync-dir", "done"]
)
def test_write_killed_at_any_step_leaves_old_or_new(tmp_path: Path, step: str) -> None:
    old, new = (
        sample_metadata(),
        sample_metadata(legality=Legality.ILLEGAL, generation=7, description="new"),
    )
    path = tmp_path / "vol.meta"
    volume_metadata.write(path, old, "test volume")
    repo_root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", _WRITER, str(path), new.to_text(), step],
        env={**os.environ, "PYTHONPATH": str(repo_root)},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    found = volume_metadata.read(path, "test volume")
    expected_new = step in ("after-rename", "fsync-dir", "done")
    assert found == (new if expected_new else old)
    # Only a hidden temporary may be left, and nothing that looks like a volume's metadata.
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "vol.meta")
    assert all(name.startswith(".vol.meta.tmp-") for name in leftovers), leftovers
