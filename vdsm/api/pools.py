"""Storage pool and storage domain verbs."""

from __future__ import annotations

import time
from typing import Any

from vdsm import validation
from vdsm.errors import IsSpm, StorageDomainAccessError, StorageDomainDoesNotExist, VdsmError
from vdsm.storage import image, os_errors
from vdsm.storage import volume as volumes
from vdsm.storage.clusterlock import JoinState
from vdsm.storage.constants import BLANK_UUID, DomainClass, DomainType
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.pool import StoragePool
from vdsm.storage.task.context import TaskContext
from vdsm.storage.task.manager import TaskManager


class PoolsAPI:
    def __init__(self, storage: HostStorage, tasks: TaskManager) -> None:
        self._storage = storage
        self._tasks = tasks

    def create(
        self,
        sp_uuid: str,
        name: str,
        master_sd_uuid: str,
        master_version: int,
        domain_uuids: list[str],
        # Accepted for compatibility; unused (the schema says so):
        lock_renewal_interval: int = 5,
        lease_time: int = 60,
        io_op_timeout: int = 10,
        lease_retries: int = 3,
        pool_type: int = 0,
    ) -> None:
        with self._storage.metadata_lock():
            pool = StoragePool.create(
                self._storage.repository,
                sp_uuid,
                name,
                master_sd_uuid,
                domain_uuids,
                master_version,
            )
            for sd_uuid in pool.member_uuids():
                self._storage.repository.domain(sd_uuid).ensure_leases(self._storage.io_timeout)

    def connect(
        self,
        sp_uuid: str,
        host_id: int,
        scsi_key: str,
        master_sd_uuid: str,
        master_version: int,
    ) -> None:
        self._storage.connections.connect(sp_uuid, host_id, master_sd_uuid, master_version)

    def disconnect(self, sp_uuid: str, host_id: int, scsi_key: str, remove: bool = False) -> None:
        if self._storage.is_spm(sp_uuid):
            raise IsSpm(f"this host is the SPM of pool {sp_uuid}: spmStop first")
        self._storage.connections.disconnect(sp_uuid, host_id)

    def get_info(self, sp_uuid: str) -> dict[str, Any]:
        pool = self._storage.pool(sp_uuid)
        info = pool.info()
        dominfo: dict[str, Any] = {}
        for sd_uuid, status in info.domains.items():
            entry: dict[str, Any] = {"status": status}
            try:
                stats = self._storage.repository.domain(sd_uuid).stats()
            except (StorageDomainDoesNotExist, StorageDomainAccessError) as e:
                # One member that is gone or does not answer is that member's status, not a
                # failure of the whole pool (only the master's metadata is needed to answer).
                entry.update(status="Inaccessible", code=e.code, error=e.message)
            except OSError as e:  # statvfs of a domain whose storage fails (EIO)
                failure = os_errors.general("statvfs", sd_uuid, e)
                entry.update(status="Inaccessible", code=failure.code, error=failure.message)
            else:
                entry["disktotal"] = str(stats.total_bytes)
                entry["diskfree"] = str(stats.free_bytes)
            dominfo[sd_uuid] = entry
        spm = self._storage.spm.status(sp_uuid)
        return {
            "info": {
                "name": info.name,
                "master_uuid": info.master_uuid,
                "master_ver": info.master_version,
                "domains": ",".join(f"{sd}:{st}" for sd, st in sorted(info.domains.items())),
                "pool_status": (
                    "connected"
                    if self._storage.connections.is_connected(sp_uuid)
                    else "disconnected"
                ),
                "spm_id": spm.spm_id,
                "lver": spm.lver,
            },
            "dominfo": dominfo,
        }

    def spm_start(
        self,
        sp_uuid: str,
        prev_id: int = -1,
        prev_lver: int = -1,
        # Accepted for compatibility; unused (the schema says so):
        recovery_mode: object = None,
        scsi_fencing: object = False,
        max_host_id: int = 250,
        dom_version: object = None,
    ) -> str:
        self._storage.pool(sp_uuid)  # 309 now for an unknown pool
        self._storage.connections.connection(sp_uuid)  # 313 now when not connected
        spm = self._storage.spm

        def job(ctx: TaskContext) -> None:
            spm.start(sp_uuid, prev_id, prev_lver)
            ctx.set_progress(100)

        return self._tasks.submit("spmStart", job, tasks_dir=self._storage.hsm_tasks_dir)

    def spm_stop(self, sp_uuid: str) -> None:
        self._storage.pool(sp_uuid)
        self._storage.spm.stop(sp_uuid)

    def spm_status(self, sp_uuid: str) -> dict[str, Any]:
        self._storage.pool(sp_uuid)  # 309 for an unknown pool
        status = self._storage.spm.status(sp_uuid)
        return {"spmStatus": status.state.value, "spmId": status.spm_id, "spmLver": status.lver}

    def fence_spm_storage(self, sp_uuid: str, last_owner: int, last_lver: int) -> dict[str, Any]:
        self._storage.spm.fence(sp_uuid)
        return self.spm_status(sp_uuid)

    def repo_stats(self) -> dict[str, Any]:
        now = time.monotonic()
        stats: dict[str, Any] = {}
        for sd_uuid, st in sorted(self._storage.connections.statuses().items()):
            stats[sd_uuid] = {
                "code": st.code,
                "lastCheck": f"{now - st.checked_at:.1f}" if st.checked else "",
                "delay": f"{st.delay:.6f}",
                "valid": st.valid,
                "version": st.version,
                "acquired": st.join is JoinState.JOINED,
                "actual": st.checked,
                "error": st.error,
            }
        return stats


def domain_payload(domain: FileStorageDomain) -> dict[str, Any]:
    md = domain.metadata
    return {
        "uuid": md.sd_uuid,
        "name": md.name,
        "type": str(md.domain_type),
        "class": str(md.domain_class),
        "version": str(md.version),
        "role": str(md.role),
        "remotePath": md.remote_path,
        "pool": [md.pool_uuid] if md.pool_uuid else [],
        "master_ver": md.master_version,
        "block_size": md.block_size,
    }


class DomainsAPI:
    def __init__(self, storage: HostStorage) -> None:
        self._storage = storage

    def create(
        self,
        sd_uuid: str,
        domain_type: str,
        directory: str,
        name: str,
        domain_class: str,
        version: int,
        block_size: int,
        max_hosts: int = 250,  # accepted for compatibility; unused
    ) -> None:
        roots = self._storage.roots
        if roots is None:
            raise VdsmError("no storage roots configured")
        with self._storage.metadata_lock():
            self._storage.repository.create_domain(
                roots.confine(directory, "typeArgs"),
                sd_uuid,
                name,
                domain_type=DomainType(domain_type),
                domain_class=DomainClass(domain_class),
                block_size=block_size,
                version=version,
                io_timeout=self._storage.io_timeout,
            )

    def attach(self, sd_uuid: str, sp_uuid: str) -> None:
        with self._storage.metadata_lock():
            self._storage.spm_pool(sp_uuid).attach(sd_uuid)
        self._storage.connections.add_member(sp_uuid, sd_uuid)

    def get_info(self, sd_uuid: str) -> dict[str, Any]:
        return domain_payload(self._storage.repository.domain(sd_uuid))

    def get_stats(self, sd_uuid: str) -> dict[str, Any]:
        stats = self._storage.repository.domain(sd_uuid).stats()
        return {
            "disktotal": str(stats.total_bytes),
            "diskused": str(stats.used_bytes),
            "diskfree": str(stats.free_bytes),
        }

    def get_images(self, sd_uuid: str) -> list[str]:
        return self._storage.repository.domain(sd_uuid).image_uuids()

    def get_volumes(self, sd_uuid: str, sp_uuid: str, img_uuid: str) -> list[str]:
        domain = self._storage.pool_domain(sp_uuid, sd_uuid)
        if img_uuid != BLANK_UUID:
            return [vol.vol_uuid for vol in image.chain(domain, img_uuid)]
        found: list[str] = []
        for img in domain.image_uuids():
            found.extend(sorted(volumes.image_volumes(domain, validation.uuid(img, "imageID"))))
        return found
