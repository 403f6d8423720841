"""VM verbs: create, destroy, list, getStats, snapshot, the replication (diskReplicateStart,
diskReplicateFinish) and merge; and the host's capabilities. Payloads: vm_payloads.py."""

from __future__ import annotations

import os
import socket
from typing import Any

from vdsm import __version__
from vdsm.api.vm_payloads import vm_stats, vm_summary
from vdsm.errors import InvalidParameter
from vdsm.storage.host_storage import HostStorage
from vdsm.virt import snapshot
from vdsm.virt.connection import Connection
from vdsm.virt.merge import Merges
from vdsm.virt.replication import Replications
from vdsm.virt.vm_manager import VmManager


class VmsAPI:
    def __init__(
        self, vms: VmManager, storage: HostStorage, replications: Replications, merges: Merges
    ) -> None:
        self._vms = vms
        self._storage = storage
        self._replications = replications
        self._merges = merges

    def create(self, vm_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
        if vm_id is not None:
            if params.get("vmId") not in (None, vm_id):
                raise InvalidParameter("vmParams.vmId", params.get("vmId"), f"differs from {vm_id}")
            params = {**params, "vmId": vm_id}
        vm = self._vms.create(params)
        return {**vm.record.params, "vmId": vm.vm_id, "status": vm.status()}

    def destroy(self, vm_id: str) -> None:
        self._vms.destroy(vm_id)

    def list_vms(self, full_status: bool, vm_list: list[str], only_uuid: bool) -> list[Any]:
        wanted = set(vm_list)
        vms = [vm for vm in self._vms.all() if not wanted or vm.vm_id in wanted]
        if only_uuid:
            return [vm.vm_id for vm in vms]
        if full_status:
            return [vm_stats(vm) for vm in vms]
        return [vm_summary(vm) for vm in vms]

    def get_stats(self, vm_id: str) -> list[dict[str, Any]]:
        return [vm_stats(self._vms.get(vm_id))]

    def snapshot(
        self,
        vm_id: str,
        snap_drives: list[dict[str, Any]],
        snap_memory: object = None,  # accepted for compatibility; unused
        frozen: bool = False,  # accepted for compatibility; unused
    ) -> None:
        snapshot.snapshot(self._vms.get(vm_id), self._storage, snap_drives)

    def disk_replicate_start(
        self,
        vm_id: str,
        src_disk: dict[str, Any],
        dst_disk: dict[str, Any],
        need_extend: bool = True,  # accepted for compatibility; unused
        copy_mode: str = "auto",
        bandwidth: int = 0,
    ) -> None:
        self._replications.start(
            self._vms.get(vm_id), src_disk, dst_disk, copy_mode=copy_mode, bandwidth_mib=bandwidth
        )

    def disk_replicate_finish(
        self, vm_id: str, src_disk: dict[str, Any], dst_disk: dict[str, Any]
    ) -> None:
        self._replications.finish(self._vms.get(vm_id), src_disk, dst_disk)

    def merge(
        self,
        vm_id: str,
        drive: dict[str, Any],
        base_vol_uuid: str,
        top_vol_uuid: str,
        bandwidth: int = 0,
        job_uuid: str | None = None,
    ) -> None:
        self._merges.start(
            self._vms.get(vm_id),
            drive,
            base_vol_uuid,
            top_vol_uuid,
            bandwidth_mib=bandwidth,
            job_id=job_uuid,
        )


class CapabilitiesAPI:
    def __init__(self, connection: Connection, vms: VmManager) -> None:
        self._connection = connection
        self._vms = vms

    def get(self) -> dict[str, Any]:
        qemu, library = self._connection.versions()
        return {
            "version": __version__,
            "hostname": socket.gethostname(),
            "cpuCores": str(os.cpu_count() or 1),
            "memSize": str(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20),
            "domainType": self._vms.domain_type,
            "accelerator": "kvm" if self._vms.domain_type == "kvm" else "tcg",
            "kvmEnabled": str(self._vms.domain_type == "kvm").lower(),
            "qemuVersion": _dotted(qemu),
            "libvirtVersion": _dotted(library),
        }


def _dotted(version: int) -> str:
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
