"""Storage pool and storage domain verbs."""

from __future__ import annotations

from typing import Any

from vdsm import validation
from vdsm.errors import StorageDomainDoesNotExist, VdsmError
from vdsm.storage import image
from vdsm.storage import volume as volumes
from vdsm.storage.constants import BLANK_UUID, DomainClass, DomainType
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.pool import StoragePool


class PoolsAPI:
    def __init__(self, storage: HostStorage) -> None:
        self._storage = storage

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
            StoragePool.create(
                self._storage.repository,
                sp_uuid,
                name,
                master_sd_uuid,
                domain_uuids,
                master_version,
            )
        self._storage.spm_start(sp_uuid)

    def get_info(self, sp_uuid: str) -> dict[str, Any]:
        pool = self._storage.pool(sp_uuid)
        info = pool.info()
        dominfo: dict[str, Any] = {}
        for sd_uuid, status in info.domains.items():
            entry: dict[str, Any] = {"status": status}
            try:
                stats = self._storage.repository.domain(sd_uuid).stats()
            except StorageDomainDoesNotExist:
                entry["status"] = "Inaccessible"
            else:
                entry["disktotal"] = str(stats.total_bytes)
                entry["diskfree"] = str(stats.free_bytes)
            dominfo[sd_uuid] = entry
        return {
            "info": {
                "name": info.name,
                "master_uuid": info.master_uuid,
                "master_ver": info.master_version,
                "domains": ",".join(f"{sd}:{st}" for sd, st in sorted(info.domains.items())),
                "pool_status": "connected",
                "spm_id": 1 if self._storage.is_spm(sp_uuid) else -1,
            },
            "dominfo": dominfo,
        }

    def spm_start(self, sp_uuid: str) -> None:
        self._storage.spm_start(sp_uuid)

    def spm_stop(self, sp_uuid: str) -> None:
        self._storage.spm_stop(sp_uuid)

    def spm_status(self, sp_uuid: str) -> dict[str, Any]:
        self._storage.pool(sp_uuid)  # 309 for an unknown pool
        spm = self._storage.is_spm(sp_uuid)
        return {"spmStatus": "SPM" if spm else "Free", "spmId": 1 if spm else -1, "spmLver": 0}


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
            )

    def attach(self, sd_uuid: str, sp_uuid: str) -> None:
        with self._storage.metadata_lock():
            self._storage.pool(sp_uuid).attach(sd_uuid)

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
