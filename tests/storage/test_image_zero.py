"""postZero on a file domain: :func:`vdsm.storage.image.zero_data` zeroes what a volume's data
file holds and leaves its holes holes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vdsm.storage import image

MiB = 1024**2


@dataclass
class _Vol:  # the two attributes zero_data reads
    path: Path
    description_for_errors: str = "volume under test"


def test_zero_data_zeroes_the_data_and_keeps_the_holes(tmp_path: Path) -> None:
    path = tmp_path / "vol"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(10 * MiB)
        f.write(os.urandom(3 * MiB + 5))
    allocated = path.stat().st_blocks * 512
    image.zero_data(_Vol(path))  # type: ignore[arg-type]
    assert path.read_bytes() == bytes(64 * MiB)
    assert path.stat().st_blocks * 512 <= allocated  # holes not filled
    image.zero_data(_Vol(tmp_path / "gone"))  # type: ignore[arg-type]  # a missing file: no-op
