"""The verbs the bench drives, over XML-RPC with VDSM's legacy positional arguments.

Exactly what an engine (or ``vdsClient``) sends; each call unwraps the status envelope and
raises :class:`VdsmCallError` with vdsmd's code and message. Task waits poll
``getTaskStatus`` every ``poll`` seconds (20 ms by default, so that the polling itself adds
little to the step times the bench reports).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
NOT_READY = 40
DEFAULT_POLL = 0.02


class VdsmCallError(Exception):
    def __init__(self, verb: str, code: int, message: str) -> None:
        super().__init__(f"{verb}: error {code}: {message}")
        self.verb, self.code, self.message = verb, code, message


def new_uuid() -> str:
    return str(uuid.uuid4())


def disk_spec(sp: str, sd: str, img: str, vol: str) -> dict[str, str]:
    """A DriveSpecVolume (lsm-contract §2)."""
    return {"device": "disk", "domainID": sd, "poolID": sp, "imageID": img, "volumeID": vol}


class Client:
    """One XML-RPC connection to vdsmd. Not thread-safe: one per thread."""

    def __init__(self, proxy: Any, *, poll: float = DEFAULT_POLL) -> None:
        self._rpc = proxy
        self.poll = poll

    def call(self, verb: str, *args: Any) -> dict[str, Any]:
        reply: dict[str, Any] = getattr(self._rpc, verb)(*args)
        status = reply.get("status", {})
        if status.get("code") != 0:
            raise VdsmCallError(verb, int(status.get("code", -1)), str(status.get("message")))
        return reply

    def code(self, verb: str, *args: Any) -> int:
        """The status code of a call that may legitimately fail (Finish answering 40)."""
        reply = getattr(self._rpc, verb)(*args)
        code = int(reply["status"]["code"])
        if code not in (0, NOT_READY):
            raise VdsmCallError(verb, code, str(reply["status"]["message"]))
        return code

    def wait_task(self, task_id: str, timeout: float = 600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = self.call("getTaskStatus", task_id)["taskStatus"]
            if status["taskState"] == "finished":
                if status["taskResult"] != "success":
                    raise VdsmCallError(
                        f"task {task_id}", int(status.get("code") or -1), str(status["message"])
                    )
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} not finished after {timeout}s: {status}")
            time.sleep(self.poll)

    def task(self, verb: str, *args: Any, timeout: float = 600.0) -> dict[str, Any]:
        """Start a task verb and wait for its success."""
        return self.wait_task(self.call(verb, *args)["uuid"], timeout)

    # --- storage ----------------------------------------------------------------------------

    def create_domain(self, sd: str, name: str, path: str) -> None:
        self.call("createStorageDomain", 4, sd, name, path, 1)  # 4: LOCALFS, 1: Data

    def create_pool(self, sp: str, master: str) -> None:
        self.call("createStoragePool", 0, sp, "bench", master, [master], 1)

    def attach_domain(self, sd: str, sp: str) -> None:
        self.call("attachStorageDomain", sd, sp)

    def create_volume(
        self,
        sp: str,
        sd: str,
        img: str,
        vol: str,
        size: int,
        *,
        fmt: str = "COW",
        prealloc: str = "SPARSE",
        parent: str = BLANK_UUID,
    ) -> None:
        self.task(
            "createVolume", sd, sp, img, str(size), fmt, prealloc, "DATA", vol, "bench", img, parent
        )

    def volume_paths(self, sp: str, sd: str, img: str, leaf: str) -> list[str]:
        """The chain's file paths, base first (prepareImage)."""
        prepared = self.call("prepareImage", sp, sd, img, leaf)
        return [v["path"] for v in prepared["volumeChain"]]

    def volumes(self, sp: str, sd: str, img: str) -> list[str]:
        return list(self.call("getVolumesList", sd, sp, img)["uuidlist"])

    def images(self, sd: str) -> list[str]:
        return list(self.call("getImagesList", sd)["imageslist"])

    def delete_image(self, sp: str, sd: str, img: str) -> None:
        self.task("deleteImage", sd, sp, img)

    def delete_volume(self, sp: str, sd: str, img: str, vol: str) -> None:
        self.task("deleteVolume", sd, sp, img, [vol], False, False)

    def clone_structure(self, sp: str, sd: str, img: str, dst: str) -> None:
        self.task("cloneImageStructure", sp, sd, img, dst)

    def sync_data(self, sp: str, sd: str, img: str, dst: str, sync_type: str = "INTERNAL") -> str:
        return str(self.call("syncImageData", sp, sd, img, dst, sync_type)["uuid"])

    # --- VMs --------------------------------------------------------------------------------

    def create_vm(self, params: dict[str, Any]) -> None:
        self.call("create", params)

    def destroy_vm(self, vm_id: str) -> None:
        self.call("destroy", vm_id)

    def vm_stats(self, vm_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("getVmStats", vm_id)["statsList"][0]
        return stats

    def chain(self, vm_id: str, target: str = "vda") -> list[str]:
        disk = self.vm_stats(vm_id)["disks"][target]
        return [v["volumeID"] for v in disk["volumeChain"]]

    def snapshot(self, vm_id: str, sd: str, img: str, base: str, new: str) -> None:
        drive = {"domainID": sd, "imageID": img, "baseVolumeID": base, "volumeID": new}
        self.call("snapshot", vm_id, [drive])

    def replicate_start(
        self,
        vm_id: str,
        src: dict[str, str],
        dst: dict[str, str],
        copy_mode: str = "auto",
        bandwidth: int = 0,
    ) -> None:
        self.call("diskReplicateStart", vm_id, src, dst, True, copy_mode, bandwidth)

    def replicate_finish(self, vm_id: str, src: dict[str, str], dst: dict[str, str]) -> int:
        """0 when done, 40 when the mirror is not READY yet; other codes raise."""
        return self.code("diskReplicateFinish", vm_id, src, dst)

    def merge(self, vm_id: str, drive: dict[str, str], base: str, top: str) -> None:
        self.call("merge", vm_id, drive, base, top, 0, new_uuid())
