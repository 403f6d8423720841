"""What a clone or a sync of an image (:mod:`vdsm.storage.image_copy`) will do, checked first.

Reads only, never writes: the source chain (every volume LEGAL with its data file), the
destination chain of the twins, whether they pair up as docs/contract.md §4 says for the chosen sync
type, and for each volume to copy how it is copied and how many bytes it moves. Every
refusal carries the contract's code: 2000, 268, 262, 259 (source), 260 (destination).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

from vdsm import validation
from vdsm.errors import (
    CommandError,
    DestImageActionError,
    ImageDoesNotExistInSD,
    ImageIsNotLegalChain,
    NotImplementedVerb,
    SourceImageActionError,
    VdsmError,
)
from vdsm.storage import image, qemuimg
from vdsm.storage.constants import BLANK_UUID, Legality
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.volume import Volume
from vdsm.storage.volume_metadata import VolumeMetadata

# One volume of a chain with the metadata read when the chain was checked; a chain, base first.
ChainEntry = tuple[Volume, VolumeMetadata]
Chain = list[ChainEntry]


class SyncType(StrEnum):
    ALL = "ALL"  # every volume of the chain
    INTERNAL = "INTERNAL"  # all but the leaf (during LSM the VM's mirror copies the leaf)
    LEAF = "LEAF"  # the leaf only


@dataclass(frozen=True)
class VolumeCopy:
    """One volume to copy into its twin, and how."""

    src: Volume
    src_md: VolumeMetadata
    dst: Volume
    dst_md: VolumeMetadata
    backing: str | None  # the twin's parent volUUID (its backing name), None for a base
    backing_format: str | None
    size: int  # bytes the source layer allocates itself: what the copy moves

    def direct_io(self) -> bool:
        """Whether the copy opens both ends with O_DIRECT, past the page cache: when the
        twin is on another device than the source, and both file systems take O_DIRECT.

        Measured side by side (docs/benchmarks.md): into a second, fast device the page
        cache is what limits the copy (0.77x the source's read rate with O_DIRECT, 0.12-0.31x
        through the page cache); between two domains of one disk the page cache is 20-35%
        faster (its writeback goes out in large batches behind the next reads), so there the
        copy goes through it and image_copy starts each twin's writeback as its copy ends.
        Either way every twin is fsynced before the sync succeeds.
        """
        src, dst = self.src.domain, self.dst.domain
        return (
            not src.shares_device_with(dst)
            and src.supports_direct_io()
            and dst.supports_direct_io()
        )


def checked_sync(
    src: FileStorageDomain, dst: FileStorageDomain, img_uuid: str, sync_type: str
) -> tuple[SyncType, list[tuple[ChainEntry, ChainEntry]], Chain]:
    """The sync mode, the (source, twin) pairs to copy and the whole destination chain."""
    try:
        mode = SyncType(sync_type)
    except ValueError:
        raise NotImplementedVerb(
            f"syncType={sync_type!r}: expected one of {', '.join(SyncType)}"
        ) from None
    img_uuid = validation.uuid(img_uuid, "imgUUID")
    source = source_chain(src, img_uuid)
    target = _destination_chain(dst, img_uuid)
    return mode, _selected_pairs(mode, source, target, img_uuid), target


def _selected_pairs(
    mode: SyncType, source: Chain, target: Chain, img_uuid: str
) -> list[tuple[ChainEntry, ChainEntry]]:
    """Pair source volumes with their twins after checking the chains (docs/contract.md §4)."""
    src_uuids = [vol.vol_uuid for vol, _ in source]
    dst_uuids = [vol.vol_uuid for vol, _ in target]
    # Outside ALL the leaves may differ: the destination leaf may be a mirror's target.
    same = src_uuids == dst_uuids if mode is SyncType.ALL else src_uuids[:-1] == dst_uuids[:-1]
    if not same:
        raise ImageIsNotLegalChain(
            f"image {img_uuid}: source chain {src_uuids} and destination chain {dst_uuids} "
            f"differ{'' if mode is SyncType.ALL else ' (leaves excluded)'}"
        )
    if mode is SyncType.ALL:
        return list(zip(source, target, strict=True))
    if mode is SyncType.INTERNAL:
        return list(zip(source[:-1], target[:-1], strict=True))
    return [(source[-1], target[-1])]


def plan(source: ChainEntry, twin: ChainEntry, target: Chain) -> VolumeCopy:
    """How to copy ``source`` into ``twin`` (of the destination chain ``target``); 260 if the
    twin cannot hold it, 259 if qemu-img cannot map the source."""
    (src_vol, src_md), (dst_vol, dst_md) = source, twin
    if dst_md.format is not src_md.format or dst_md.capacity < src_md.capacity:
        raise DestImageActionError(
            f"{dst_vol.description_for_errors} is {dst_md.format}, {dst_md.capacity} bytes: "
            f"cannot hold {src_vol.description_for_errors} ({src_md.format}, "
            f"{src_md.capacity} bytes)"
        )
    if not dst_vol.path.exists():
        raise DestImageActionError(f"{dst_vol.description_for_errors}: data file missing")
    backing = backing_format = None
    if dst_md.parent != BLANK_UUID:
        backing = dst_md.parent
        backing_format = {vol.vol_uuid: md for vol, md in target}[backing].format.qemu_format
    try:
        # Depth 0: only what this layer holds itself, which is all a layer copy moves.
        # force_share: a leaf may be open in a running VM; this is a read of metadata only.
        extents = qemuimg.map(src_vol.path, fmt=src_md.format.qemu_format, force_share=True)
    except CommandError as e:
        raise SourceImageActionError(f"{src_vol.description_for_errors}: {e.detail}") from e
    size = qemuimg.allocated_bytes(extents, depth=0)
    return VolumeCopy(src_vol, src_md, dst_vol, dst_md, backing, backing_format, size)


# qemu-img map processes run at once by plan_all: each takes ~10 ms, mostly its own start.
PLAN_WORKERS = 8


def plan_all(pairs: list[tuple[ChainEntry, ChainEntry]], target: Chain) -> list[VolumeCopy]:
    """:func:`plan` for every (source, twin) pair, in order, the qemu-img maps at once: the
    copy waits for all of them (three volumes: 36 ms one after another, into another device a
    few percent of the whole sync). The first pair's error, in order, is raised."""
    if len(pairs) < 2:
        return [plan(source, twin, target) for source, twin in pairs]
    with ThreadPoolExecutor(max_workers=min(PLAN_WORKERS, len(pairs))) as pool:
        return list(pool.map(lambda pair: plan(pair[0], pair[1], target), pairs))


def source_chain(domain: FileStorageDomain, img_uuid: str) -> Chain:
    """The source chain, base to leaf, every volume LEGAL with its data file; else 268/262/259."""
    try:
        chain = [(vol, vol.metadata()) for vol in image.chain(domain, img_uuid)]
    except (ImageDoesNotExistInSD, ImageIsNotLegalChain):
        raise
    except (VdsmError, OSError) as e:
        raise SourceImageActionError(f"image {img_uuid} in domain {domain.sd_uuid}: {e}") from e
    for vol, md in chain:
        if md.legality is not Legality.LEGAL:
            raise SourceImageActionError(f"{vol.description_for_errors} is {md.legality}")
        if not vol.path.exists():
            raise SourceImageActionError(f"{vol.description_for_errors}: data file missing")
    return chain


def _destination_chain(domain: FileStorageDomain, img_uuid: str) -> Chain:
    """The twins' chain on the destination; 260 when missing or unreadable, 262 when broken."""
    where = f"image {img_uuid} in destination domain {domain.sd_uuid}"
    if not image.exists(domain, img_uuid):
        raise DestImageActionError(f"{where} does not exist (clone its structure first)")
    try:
        return [(vol, vol.metadata()) for vol in image.chain(domain, img_uuid)]
    except ImageIsNotLegalChain:
        raise
    except (VdsmError, OSError) as e:
        raise DestImageActionError(f"{where}: {e}") from e
