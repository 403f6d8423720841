"""Disks with real data: a volume chain made through vdsmd, then filled with random bytes.

A chain is a RAW base and qcow2 layers (``Layout``), created with createVolume as an engine
would. Its allocated data is written with ``qemu-io write -s`` from one 64 MiB file of random
bytes (made once per run from /dev/urandom), in chunks placed contiguously from offset 0 or
spread evenly over the virtual size (``spread``). Layers own disjoint chunks (by default the
base 50%, the middle 30%, the leaf 20%), so the chain's allocated data is exactly the sum of
its layers' and a flattening copy moves the same bytes as a layer-by-layer one.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.daemon import TASK_TIMEOUT
from vdsm_api.wire import BLANK_UUID
from vdsm_cli.api import Vdsm

MiB = 1024**2
GiB = 1024**3
PATTERN_SIZE = 64 * MiB


def make_pattern(path: Path, size: int = PATTERN_SIZE) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            f.write(chunk)
            left -= len(chunk)
    return path


@dataclass(frozen=True)
class Layout:
    """What a chain holds: ``data`` allocated bytes in a ``virtual``-byte disk."""

    virtual: int
    data: int
    # Of the data, base first, one per volume; a volume with share 0 holds nothing.
    shares: tuple[float, ...] = (0.5, 0.3, 0.2)
    spread: bool = False  # chunks spread over the whole disk rather than packed at its start
    preallocated_base: bool = False
    # Of each layer's chunks, the share written as zero bytes (allocated zeros, as a guest
    # that zeroes a file or a whole disk leaves them) instead of random data.
    zero_share: float = 0.0

    def chunk_size(self) -> int:
        # 64 MiB chunks; smaller for tiny disks, so that every layer still gets one.
        size = 64 * MiB
        while size > MiB and self.data // size < 4 * len([s for s in self.shares if s]):
            size //= 2
        return size


@dataclass
class Chain:
    sp: str
    sd: str
    img: str
    vols: list[str]  # base first
    layout: Layout
    written: dict[str, int] = field(default_factory=dict)  # bytes written per volume

    @property
    def leaf(self) -> str:
        return self.vols[-1]


def _placement(layout: Layout) -> list[list[int]]:
    """Chunk offsets, per layer."""
    chunk = layout.chunk_size()
    count = max(len(layout.shares), layout.data // chunk)
    slots = layout.virtual // chunk
    if count > slots:
        raise ValueError(f"{layout.data} bytes of data do not fit in {layout.virtual}")
    step = slots / count if layout.spread else 1.0
    offsets = [int(i * step) * chunk for i in range(count)]
    per_layer: list[list[int]] = []
    start = 0
    for n, share in enumerate(layout.shares):
        if n == len(layout.shares) - 1:
            end = count if share else start
        else:
            end = start + (max(1, round(share * count)) if share else 0)
        per_layer.append(offsets[start:end])
        start = end
    return per_layer


def build_chain(client: Vdsm, sp: str, sd: str, layout: Layout, pattern: Path) -> Chain:
    """Create the chain in domain ``sd`` and write its data; nothing is running on it yet."""
    img = str(uuid.uuid4())
    vols: list[str] = []
    parent = BLANK_UUID
    for n in range(len(layout.shares)):
        vol = str(uuid.uuid4())
        base = n == 0
        task = client.create_volume(
            sd,
            sp,
            img,
            vol,
            layout.virtual,
            volume_format="RAW" if base else "COW",
            preallocate="PREALLOCATED" if base and layout.preallocated_base else "SPARSE",
            parent=parent,
            description="bench",
        )
        client.wait_success(task, "createVolume", timeout=TASK_TIMEOUT)
        vols.append(vol)
        parent = vol
    paths = client.prepare_image(sp, sd, img, vols[-1])
    chain = Chain(sp, sd, img, vols, layout)
    chunk = layout.chunk_size()
    for n, (path, offsets) in enumerate(zip(paths, _placement(layout), strict=True)):
        chain.written[vols[n]] = len(offsets) * chunk
        if not offsets:
            continue
        commands: list[str] = []
        for i, offset in enumerate(offsets):
            # Zero chunks spread evenly among the data chunks, zero_share of them.
            zero = int((i + 1) * layout.zero_share) > int(i * layout.zero_share)
            source = "-P 0" if zero else f"-s {pattern}"
            commands += ["-c", f"write -q {source} {offset} {chunk}"]
        fmt = "raw" if n == 0 else "qcow2"
        subprocess.run(
            ["qemu-io", "-f", fmt, *commands, path],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )
    return chain
