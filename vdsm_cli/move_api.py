"""The vdsmd verbs a disk move uses, as typed Python calls over XML-RPC (legacy positional order).

The move flow talks to vdsmd only through this class, exactly as a management engine would:
no shared files, no peeking at the daemon's state directories. Each method is one verb; the
answers are unwrapped from VDSM's envelope and sizes (strings on the wire: XML-RPC integers
are 32-bit) become ints. Errors are the client's: :class:`~vdsm_cli.errors.ApiError` with
vdsmd's code, :class:`~vdsm_cli.errors.ConnectionFailed` when there was no usable answer.

Task waiting lives here too, since every SPM verb of the flow returns a task id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vdsm_cli.client import Client
from vdsm_cli.errors import ApiError

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
FINISHED = "finished"
SUCCESS = "success"
# Seconds between two polls of a task or a block job: short at first (most tasks of the flow
# end within a few tens of ms, and each wait adds to the move's time), then every POLL_INTERVAL.
POLL_FIRST = 0.05
POLL_INTERVAL = 0.5

# VDSM's codes that the flow tells apart (lsm-contract §6).
NO_VM = 1
DRIVE_NOT_FOUND = 13
NOT_READY = 40
SWITCH_FAILED = 41
MERGE_FAILED = 52
REPLICATION_FAILED = 55
NO_REPLICATION = 88
VOLUME_NOT_FOUND = 201
IMAGE_NOT_FOUND = 268
DOMAIN_NOT_FOUND = 358
UNKNOWN_TASK = 401
TASK_STATE = 410


class TaskFailed(Exception):
    """A task ended without success; ``code`` and ``message`` are the task's own."""

    def __init__(self, task_id: str, verb: str, status: dict[str, Any]) -> None:
        self.task_id = task_id
        self.code = int(status.get("code") or 0)
        self.result = str(status.get("taskResult") or "?")
        self.message = str(status.get("message") or "")
        super().__init__(
            f"{verb} task {task_id} ended with {self.result}"
            + (f" (error {self.code}): {self.message}" if self.code else f": {self.message}")
        )


@dataclass(frozen=True)
class Drive:
    """A VM drive as getVmStats reports it."""

    target: str
    domain_id: str
    pool_id: str
    image_id: str
    volume_id: str
    chain: tuple[str, ...]  # volUUIDs, base → leaf

    def spec(self) -> dict[str, str]:
        """The drive as a DriveSpecVolume (lsm-contract §2)."""
        return disk_spec(self.domain_id, self.pool_id, self.image_id, self.volume_id)


def disk_spec(domain_id: str, pool_id: str, image_id: str, volume_id: str) -> dict[str, str]:
    return {
        "device": "disk",
        "domainID": domain_id,
        "poolID": pool_id,
        "imageID": image_id,
        "volumeID": volume_id,
    }


@dataclass(frozen=True)
class VmView:
    """What the flow needs of getVmStats: status, drives by target, block jobs by target."""

    vm_id: str
    status: str
    drives: dict[str, Drive]
    jobs: dict[str, dict[str, Any]]

    def drive_of_image(self, image_id: str) -> Drive | None:
        for drive in self.drives.values():
            if drive.image_id == image_id:
                return drive
        return None


def _drive(target: str, data: dict[str, Any]) -> Drive:
    return Drive(
        target=target,
        domain_id=str(data["domainID"]),
        pool_id=str(data["poolID"]),
        image_id=str(data["imageID"]),
        volume_id=str(data["volumeID"]),
        chain=tuple(str(v["volumeID"]) for v in data.get("volumeChain", ())),
    )


class Poller:
    """The pauses of one wait: POLL_FIRST, doubling up to POLL_INTERVAL."""

    def __init__(self, sleep: Callable[[float], None]) -> None:
        self._sleep = sleep
        self._next = POLL_FIRST

    def pause(self) -> None:
        self._sleep(self._next)
        self._next = min(POLL_INTERVAL, self._next * 2)


class Vdsm:
    """One vdsmd, spoken to through its legacy XML-RPC verbs."""

    def __init__(self, client: Client, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.sleep = sleep

    def poller(self) -> Poller:
        return Poller(self.sleep)

    @property
    def address(self) -> str:
        return f"{self.client.endpoint.host}:{self.client.endpoint.port}"

    def call(self, verb: str, *args: Any) -> dict[str, Any]:
        return self.client.call(verb, list(args))

    # --- VMs --------------------------------------------------------------------------------

    def vm(self, vm_id: str) -> VmView:
        stats = self.call("getVmStats", vm_id)["statsList"][0]
        return VmView(
            vm_id=vm_id,
            status=str(stats.get("status", "?")),
            drives={t: _drive(t, d) for t, d in (stats.get("disks") or {}).items()},
            jobs=dict(stats.get("blockJobs") or {}),
        )

    def snapshot(self, vm_id: str, domain_id: str, image_id: str, base: str, new: str) -> None:
        drives = [
            {"domainID": domain_id, "imageID": image_id, "baseVolumeID": base, "volumeID": new}
        ]
        self.call("snapshot", vm_id, drives)

    def replicate_start(
        self, vm_id: str, src: dict[str, str], dst: dict[str, str], copy_mode: str, bandwidth: int
    ) -> None:
        self.call("diskReplicateStart", vm_id, src, dst, True, copy_mode, bandwidth)

    def replicate_finish(self, vm_id: str, src: dict[str, str], dst: dict[str, str]) -> None:
        self.call("diskReplicateFinish", vm_id, src, dst)

    def merge(
        self, vm_id: str, drive: dict[str, str], base: str, top: str, bandwidth: int, job_id: str
    ) -> None:
        self.call("merge", vm_id, drive, base, top, bandwidth, job_id)

    # --- storage ----------------------------------------------------------------------------

    def pool_domains(self, pool_id: str) -> set[str]:
        return set(self.call("getStoragePoolInfo", pool_id).get("dominfo") or {})

    def domain_free(self, domain_id: str) -> int:
        return int(self.call("getStorageDomainStats", domain_id)["stats"]["diskfree"])

    def images(self, domain_id: str) -> list[str]:
        return list(self.call("getImagesList", domain_id)["imageslist"])

    def volumes(self, domain_id: str, pool_id: str, image_id: str) -> list[str]:
        """The image's volumes, base to leaf; [] when the image is not in the domain."""
        try:
            return list(self.call("getVolumesList", domain_id, pool_id, image_id)["uuidlist"])
        except ApiError as e:
            if e.code == IMAGE_NOT_FOUND:
                return []
            raise

    def volume_info(
        self, domain_id: str, pool_id: str, image_id: str, volume_id: str
    ) -> dict[str, Any]:
        info: dict[str, Any] = self.call("getVolumeInfo", domain_id, pool_id, image_id, volume_id)[
            "info"
        ]
        return info

    def create_volume(
        self,
        domain_id: str,
        pool_id: str,
        image_id: str,
        volume_id: str,
        capacity: int,
        parent: str,
        description: str,
    ) -> str:
        reply = self.call(
            "createVolume",
            domain_id,
            pool_id,
            image_id,
            str(capacity),
            "COW",
            "SPARSE",
            "DATA",
            volume_id,
            description,
            image_id,
            parent,
        )
        return str(reply["uuid"])

    def clone_structure(self, pool_id: str, src: str, image_id: str, dst: str) -> str:
        return str(self.call("cloneImageStructure", pool_id, src, image_id, dst)["uuid"])

    def sync_data(self, pool_id: str, src: str, image_id: str, dst: str, sync_type: str) -> str:
        return str(self.call("syncImageData", pool_id, src, image_id, dst, sync_type)["uuid"])

    def delete_image(self, domain_id: str, pool_id: str, image_id: str) -> str:
        return str(self.call("deleteImage", domain_id, pool_id, image_id, False, False)["uuid"])

    def delete_volumes(
        self, domain_id: str, pool_id: str, image_id: str, volume_ids: list[str]
    ) -> str:
        reply = self.call("deleteVolume", domain_id, pool_id, image_id, volume_ids, False, False)
        return str(reply["uuid"])

    # --- tasks ------------------------------------------------------------------------------

    def task_status(self, task_id: str) -> dict[str, Any] | None:
        """The task's status, or None when vdsmd does not know it (401: cleared)."""
        try:
            status: dict[str, Any] = self.call("getTaskStatus", task_id)["taskStatus"]
        except ApiError as e:
            if e.code == UNKNOWN_TASK:
                return None
            raise
        return status

    def running_tasks(self, verbs: set[str]) -> list[str]:
        """Ids of the unfinished tasks of these verbs (to wait for a task whose id we lost)."""
        infos = self.call("getAllTasksInfo")["allTasksInfo"]
        statuses = self.call("getAllTasksStatuses")["allTasksStatus"]
        return sorted(
            task_id
            for task_id, info in infos.items()
            if info.get("verb") in verbs
            and (statuses.get(task_id) or {}).get("taskState") != FINISHED
        )

    def wait_task(
        self,
        task_id: str,
        verb: str,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any] | None:
        """Poll until the task finishes; its last status (None if vdsmd does not know it).

        Raises TaskFailed when it did not succeed. No timeout: copies of big disks take as
        long as they take, and the progress shows whether they move.
        """
        poller = self.poller()
        while True:
            status = self.task_status(task_id)
            if status is None:
                return None
            if on_status is not None:
                on_status(status)
            if status.get("taskState") == FINISHED:
                if status.get("taskResult") != SUCCESS:
                    raise TaskFailed(task_id, verb, status)
                return status
            poller.pause()

    def stop_task(self, task_id: str) -> None:
        """Stop a running task; a finished or unknown one is left alone."""
        try:
            self.call("stopTask", task_id)
        except ApiError as e:
            if e.code not in (UNKNOWN_TASK, TASK_STATE):
                raise

    def clear_task(self, task_id: str) -> None:
        """Forget a finished task (as an engine does once it has its result); best effort."""
        try:
            self.call("clearTask", task_id)
        except ApiError:
            pass
