"""Image verbs: delete (task), prepare, teardown, the SPM half of live storage migration:
cloneImageStructure and syncImageData (tasks), and the offline moves: moveImage and
copyImage (tasks)."""

from __future__ import annotations

from typing import Any

from vdsm.errors import ImageDoesNotExistInSD
from vdsm.storage import image, image_copy, image_move
from vdsm.storage.constants import BLANK_UUID
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.image_copy import UNLIMITED, CopyRate
from vdsm.storage.resource_locks import exclusive_image
from vdsm.storage.rollback_steps import REMOVE_IMAGE
from vdsm.storage.task.context import TaskContext
from vdsm.storage.task.manager import TaskManager
from vdsm.storage.volume import Volume, image_volumes


class ImagesAPI:
    def __init__(
        self, storage: HostStorage, tasks: TaskManager, *, copy_rate: CopyRate = UNLIMITED
    ) -> None:
        self._storage = storage
        self._tasks = tasks
        # The cap of every copy (vdsmd's copy_rate_limit) and whether it adapts to the guests.
        self._copy_rate = copy_rate

    def delete(
        self, img_uuid: str, sp_uuid: str, sd_uuid: str, post_zero: bool, force: bool
    ) -> str:
        pool = self._storage.spm_pool(sp_uuid)
        domain = pool.domain(sd_uuid)
        if not image.exists(domain, img_uuid):
            raise ImageDoesNotExistInSD(f"image {img_uuid} in domain {sd_uuid}")

        def job(ctx: TaskContext) -> None:
            with self._storage.locks.hold([exclusive_image(sd_uuid, img_uuid)]):
                if not image.exists(domain, img_uuid):
                    raise ImageDoesNotExistInSD(f"image {img_uuid} in domain {sd_uuid}")
                # Every volume's lease first: one that a VM (here or on another host) or a
                # task writes refuses the whole delete before anything is removed.
                vols = [Volume(domain, img_uuid, v) for v in image_volumes(domain, img_uuid)]
                with self._storage.leases.held(vols, "delete") as held:
                    # Interrupted half-way, a delete is finished, not undone: its undo
                    # completes it.
                    ctx.add_rollback(REMOVE_IMAGE, {"sd_uuid": sd_uuid, "img_uuid": img_uuid})
                    image.delete(domain, img_uuid, release_lease=held.release)
                ctx.set_progress(100)

        return self._tasks.submit("deleteImage", job, tasks_dir=pool.master.tasks_dir)

    def prepare(self, sp_uuid: str, sd_uuid: str, img_uuid: str, vol_uuid: str) -> dict[str, Any]:
        domain = self._storage.pool_domain(sp_uuid, sd_uuid)
        prepared = image.prepare(domain, img_uuid, vol_uuid)
        return {
            "path": str(prepared.path),
            "volumeChain": [
                {
                    "domainID": sd_uuid,
                    "imageID": img_uuid,
                    "volumeID": vol.vol_uuid,
                    "path": str(vol.path),
                    "leasePath": str(vol.lease_path),
                    "leaseOffset": 0,
                }
                for vol in prepared.chain
            ],
        }

    def teardown(self, sp_uuid: str, sd_uuid: str, img_uuid: str, vol_uuid: str) -> None:
        domain = self._storage.pool_domain(sp_uuid, sd_uuid)
        if not image.exists(domain, img_uuid):
            raise ImageDoesNotExistInSD(f"image {img_uuid} in domain {sd_uuid}")

    def clone_structure(self, img_uuid: str, sp_uuid: str, sd_uuid: str, dst_sd_uuid: str) -> str:
        pool = self._storage.spm_pool(sp_uuid)
        src, dst = pool.domain(sd_uuid), pool.domain(dst_sd_uuid)
        image_copy.check_clone(src, dst, img_uuid)

        def job(ctx: TaskContext) -> None:
            with self._storage.locks.hold(image_copy.lock_requests(src, dst, img_uuid)):
                image_copy.clone_structure(src, dst, img_uuid, ctx)

        return self._tasks.submit("cloneImageStructure", job, tasks_dir=pool.master.tasks_dir)

    def sync_data(
        self, img_uuid: str, sp_uuid: str, sd_uuid: str, dst_sd_uuid: str, sync_type: str
    ) -> str:
        pool = self._storage.spm_pool(sp_uuid)
        src, dst = pool.domain(sd_uuid), pool.domain(dst_sd_uuid)
        image_copy.check_sync(src, dst, img_uuid, sync_type)

        def job(ctx: TaskContext) -> None:
            with self._storage.locks.hold(image_copy.lock_requests(src, dst, img_uuid)):
                image_copy.sync_data(
                    src,
                    dst,
                    img_uuid,
                    sync_type,
                    ctx,
                    rate=self._copy_rate,
                    leases=self._storage.leases,
                )

        return self._tasks.submit(
            "syncImageData", job, tasks_dir=pool.master.tasks_dir, is_copy=True
        )

    # --- offline moves (contract §4) ----------------------------------------------------------

    def move(
        self,
        img_uuid: str,
        sp_uuid: str,
        sd_uuid: str,
        dst_sd_uuid: str,
        operation: str,
        post_zero: bool,
        force: bool,
        discard: bool = False,
        vm_uuid: str = "",
    ) -> str:
        """moveImage: ``vm_uuid`` (legacy) and ``discard`` are accepted and unused, as in
        VDSM on file domains."""
        pool = self._storage.spm_pool(sp_uuid)
        src, dst = pool.domain(sd_uuid), pool.domain(dst_sd_uuid)
        op, _ = image_move.check_move(src, dst, img_uuid, operation, force)

        def job(ctx: TaskContext) -> None:
            with self._storage.locks.hold(image_move.move_lock_requests(src, dst, img_uuid, op)):
                image_move.move_image(
                    src,
                    dst,
                    img_uuid,
                    op,
                    ctx,
                    leases=self._storage.leases,
                    post_zero=post_zero,
                    force=force,
                    rate=self._copy_rate,
                )

        return self._tasks.submit("moveImage", job, tasks_dir=pool.master.tasks_dir, is_copy=True)

    def copy(
        self,
        vol_uuid: str,
        sp_uuid: str,
        sd_uuid: str,
        img_uuid: str,
        dst_sd_uuid: str,
        dst_img_uuid: str,
        dst_vol_uuid: str,
        description: str,
        vol_type: str,
        vol_format: str,
        preallocate: str,
        post_zero: bool,
        force: bool,
        discard: bool = False,
        vm_uuid: str = "",
    ) -> str:
        """copyImage: a blank ``dst_sd_uuid`` is the source domain; ``vm_uuid`` (legacy) and
        ``discard`` are accepted and unused, as in VDSM on file domains."""
        pool = self._storage.spm_pool(sp_uuid)
        src = pool.domain(sd_uuid)
        dst = src if dst_sd_uuid == BLANK_UUID else pool.domain(dst_sd_uuid)

        def plan() -> image_move.CollapsedCopy:
            return image_move.check_copy(
                src,
                dst,
                img_uuid,
                vol_uuid,
                dst_img_uuid,
                dst_vol_uuid,
                vol_type=vol_type,
                vol_format=vol_format,
                preallocate=preallocate,
                force=force,
            )

        plan()

        def job(ctx: TaskContext) -> None:
            locks = image_move.copy_lock_requests(src, dst, img_uuid, dst_img_uuid)
            with self._storage.locks.hold(locks):
                image_move.copy_image(
                    src,
                    dst,
                    plan(),
                    ctx,
                    description=description,
                    leases=self._storage.leases,
                    post_zero=post_zero,
                    rate=self._copy_rate,
                )

        return self._tasks.submit("copyImage", job, tasks_dir=pool.master.tasks_dir, is_copy=True)
