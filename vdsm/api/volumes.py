"""Volume verbs: create and delete (SPM tasks) and getInfo.

Cheap checks run before the task starts, so bad input is answered at once; the task repeats
them under the image lock, then records its undo step, and only then changes anything: an
undo step must never be able to remove something the task did not make.
"""

from __future__ import annotations

from typing import Any

from vdsm.errors import NotImplementedVerb
from vdsm.storage import volume as volumes
from vdsm.storage.constants import BLANK_UUID
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.resource_locks import exclusive_image
from vdsm.storage.rollback_steps import REMOVE_VOLUME, volume_args
from vdsm.storage.task.context import TaskContext
from vdsm.storage.task.manager import TaskManager
from vdsm.storage.volume import Volume, VolumeInfo


def info_payload(info: VolumeInfo, sp_uuid: str) -> dict[str, Any]:
    md = info.metadata
    return {
        "uuid": info.uuid,
        "pool": sp_uuid,
        "domain": md.domain,
        "image": md.image,
        "parent": md.parent,
        "capacity": str(md.capacity),
        "apparentsize": str(info.apparent_size),
        "truesize": str(info.true_size),
        "format": str(md.format),
        "type": str(md.allocation),
        "allocType": str(md.allocation),
        "voltype": str(md.role),
        "legality": str(md.legality),
        "status": str(info.status),
        "description": md.description,
        "ctime": str(md.ctime),
        "generation": md.generation,
        "disktype": str(md.disk_type),
        "children": info.children,
        "path": str(info.path),
    }


class VolumesAPI:
    def __init__(self, storage: HostStorage, tasks: TaskManager) -> None:
        self._storage = storage
        self._tasks = tasks

    def create(
        self,
        vol_uuid: str,
        sp_uuid: str,
        sd_uuid: str,
        img_uuid: str,
        capacity: int,
        volume_format: str,
        allocation: str,
        disk_type: str,
        description: str,
        parent_img_uuid: str,
        parent_uuid: str,
        initial_size: object = None,
    ) -> str:
        pool = self._storage.spm_pool(sp_uuid)
        domain = pool.domain(sd_uuid)
        if parent_img_uuid not in (BLANK_UUID, img_uuid):
            raise NotImplementedVerb(
                f"srcImgUUID {parent_img_uuid}: a parent in another image (a template) "
                "is not supported"
            )
        spec: dict[str, Any] = {
            "capacity": capacity,
            "volume_format": volume_format,
            "allocation": allocation,
            "disk_type": disk_type,
            "description": description,
            "parent_uuid": parent_uuid,
        }
        volumes.plan_create(domain, img_uuid, vol_uuid, **spec)

        def job(ctx: TaskContext) -> None:
            with self._storage.locks.hold([exclusive_image(sd_uuid, img_uuid)]):
                volumes.plan_create(domain, img_uuid, vol_uuid, **spec)
                ctx.add_rollback(
                    REMOVE_VOLUME,
                    {"sd_uuid": sd_uuid, "img_uuid": img_uuid, "vol_uuid": vol_uuid},
                )
                volumes.create(domain, img_uuid, vol_uuid, cancellation=ctx.cancellation, **spec)
                ctx.set_progress(100)

        return self._tasks.submit("createVolume", job, tasks_dir=pool.master.tasks_dir)

    def get_info(self, vol_uuid: str, sp_uuid: str, sd_uuid: str, img_uuid: str) -> dict[str, Any]:
        domain = self._storage.pool_domain(sp_uuid, sd_uuid)
        return info_payload(Volume(domain, img_uuid, vol_uuid).info(), sp_uuid)

    def delete(
        self,
        vol_uuid: str,
        sp_uuid: str,
        sd_uuid: str,
        img_uuid: str,
        post_zero: bool = False,
        force: bool = False,
    ) -> str:
        return self.delete_many(sd_uuid, sp_uuid, img_uuid, [vol_uuid], post_zero, force)

    def delete_many(
        self,
        sd_uuid: str,
        sp_uuid: str,
        img_uuid: str,
        vol_uuids: list[str],
        post_zero: bool = False,
        force: bool = False,
    ) -> str:
        pool = self._storage.spm_pool(sp_uuid)
        domain = pool.domain(sd_uuid)
        for vol_uuid in vol_uuids:
            Volume(domain, img_uuid, vol_uuid).metadata()  # 201 now for an unknown volume

        def job(ctx: TaskContext) -> None:
            with self._storage.locks.hold([exclusive_image(sd_uuid, img_uuid)]):
                # Every volume's lease first: one in use anywhere refuses the whole delete.
                leased = [Volume(domain, img_uuid, v) for v in vol_uuids]
                with self._storage.leases.held(leased, "delete") as held:
                    leaf_first = volumes.leaf_first(domain, img_uuid, vol_uuids)
                    for done, vol in enumerate(leaf_first, start=1):
                        volumes.check_delete(vol)
                        # Once the volume is being removed, finishing the removal is the only
                        # clean way out: the undo step of a delete completes it.
                        ctx.add_rollback(REMOVE_VOLUME, volume_args(vol))
                        volumes.delete(vol, release_lease=held.release)
                        ctx.set_progress(100 * done / len(vol_uuids))

        return self._tasks.submit("deleteVolume", job, tasks_dir=pool.master.tasks_dir)
