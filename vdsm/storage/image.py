"""Images of a file domain: the volume chain (base → leaf), deletion, and prepare for a VM.

An image is the directory ``images/<imgUUID>``; its volumes form one chain linked by their
``PUUID`` keys. A chain is legal when it has exactly one leaf, every parent exists, no volume
is reached twice, and every volume of the image is on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vdsm import validation
from vdsm.errors import (
    IllegalVolumePrepare,
    ImageDeleteError,
    ImageDoesNotExistInSD,
    ImageIsNotLegalChain,
    VdsmError,
    VolumeDoesNotExist,
)
from vdsm.storage import fileutil
from vdsm.storage import volume as volumes
from vdsm.storage.constants import BLANK_UUID, Legality
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.volume import Volume

log = logging.getLogger("vdsm.storage.image")

# Bytes written at a time when zeroing a volume (postZero).
_ZERO_CHUNK = 1024 * 1024


def exists(domain: FileStorageDomain, img_uuid: str) -> bool:
    return domain.image_dir(img_uuid).is_dir()


def chain(domain: FileStorageDomain, img_uuid: str) -> list[Volume]:
    """The image's volumes from base to leaf; raises 268 or 262."""
    img_uuid = validation.uuid(img_uuid, "imgUUID")
    where = f"image {img_uuid} in domain {domain.sd_uuid}"
    if not exists(domain, img_uuid):
        raise ImageDoesNotExistInSD(where)
    metadata = volumes.image_volumes(domain, img_uuid)
    if not metadata:
        raise ImageDoesNotExistInSD(f"{where} has no volumes")
    parents = {md.parent for md in metadata.values()}
    leaves = sorted(vol_uuid for vol_uuid in metadata if vol_uuid not in parents)
    if len(leaves) != 1:
        raise ImageIsNotLegalChain(f"{where} has {len(leaves)} leaves {leaves}, expected one")

    ordered: list[str] = []
    current = leaves[0]
    while current != BLANK_UUID:
        if current in ordered:
            raise ImageIsNotLegalChain(f"{where}: volume {current} is its own ancestor")
        if current not in metadata:
            raise ImageIsNotLegalChain(f"{where}: parent volume {current} is missing")
        ordered.append(current)
        current = metadata[current].parent
    stray = sorted(set(metadata) - set(ordered))
    if stray:
        raise ImageIsNotLegalChain(f"{where}: volumes {stray} are not on the chain")
    return [Volume(domain, img_uuid, vol_uuid) for vol_uuid in reversed(ordered)]


@dataclass(frozen=True)
class PreparedImage:
    path: Path  # the requested volume's data file
    chain: list[Volume]  # base → the requested volume


def prepare(domain: FileStorageDomain, img_uuid: str, vol_uuid: str) -> PreparedImage:
    """Check a volume and its ancestors can be used by a VM: present and LEGAL (else 227).

    On a file domain nothing needs activating: the files are there to open.
    """
    full_chain = chain(domain, img_uuid)
    vol_uuid = validation.uuid(vol_uuid, "volUUID")
    uuids = [vol.vol_uuid for vol in full_chain]
    if vol_uuid not in uuids:
        raise VolumeDoesNotExist(f"volume {vol_uuid} of image {img_uuid} in {domain.sd_uuid}")
    used = full_chain[: uuids.index(vol_uuid) + 1]
    for vol in used:
        if vol.metadata().legality is Legality.ILLEGAL:
            raise IllegalVolumePrepare(vol.description_for_errors)
        if not vol.path.exists():
            raise VolumeDoesNotExist(f"{vol.description_for_errors}: data file missing")
    return PreparedImage(path=used[-1].path, chain=used)


def delete(
    domain: FileStorageDomain,
    img_uuid: str,
    *,
    post_zero: bool = False,
    release_lease: Callable[[volumes.Volume], None] | None = None,
) -> None:
    """Delete every volume of an image, leaf first, then its directory; with ``post_zero``,
    each volume's data is first overwritten with zeros (:func:`zero_data`).

    Works on broken chains too (a half-created or half-copied image must be deletable): it
    deletes volumes that have no children, until none is left (a cycle: ImageDeleteError).
    """
    img_uuid = validation.uuid(img_uuid, "imgUUID")
    where = f"image {img_uuid} in domain {domain.sd_uuid}"
    if not exists(domain, img_uuid):
        raise ImageDoesNotExistInSD(where)
    try:
        all_volumes = sorted(volumes.image_volumes(domain, img_uuid))
        if post_zero:
            for vol_uuid in all_volumes:
                zero_data(Volume(domain, img_uuid, vol_uuid))
        for vol in volumes.leaf_first(domain, img_uuid, all_volumes):
            volumes.delete(vol, release_lease=release_lease)
        image_dir = domain.image_dir(img_uuid)
        if image_dir.exists():
            fileutil.remove_stale_temps(image_dir)
            if not fileutil.remove_dir_if_empty(image_dir):
                left = sorted(entry.name for entry in image_dir.iterdir())
                raise ImageDeleteError(f"{where}: files left that are not volumes: {left}")
    except ImageDeleteError:
        raise
    except (VdsmError, OSError) as e:
        raise ImageDeleteError(f"{where}: {e}") from e
    log.info("deleted %s", where)


def zero_data(vol: Volume) -> None:
    """Overwrite every allocated byte of a volume's data file with zeros, durably.

    postZero on a file domain: VDSM only logs that file volumes are not zeroed
    (fileSD.zeroImage) and deletes them. vdsm does what the caller asked, as far as a file
    system allows: the ranges the file holds data in (SEEK_DATA/SEEK_HOLE; holes hold nothing)
    are written with zeros and fsynced before the file is unlinked. A file system that writes
    out of place (btrfs, ZFS, some NFS servers) may still keep the old blocks.
    """
    try:
        fd = os.open(vol.path, os.O_RDWR)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ImageDeleteError(f"{vol.description_for_errors}: cannot zero: {e}") from e
    try:
        size = os.fstat(fd).st_size
        zeros = bytes(_ZERO_CHUNK)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            while start < end:
                start += os.pwrite(fd, zeros[: min(_ZERO_CHUNK, end - start)], start)
            offset = end
        os.fsync(fd)
    except OSError as e:
        raise ImageDeleteError(f"{vol.description_for_errors}: cannot zero: {e}") from e
    finally:
        os.close(fd)
    log.info("zeroed %s", vol.description_for_errors)
