"""vdsmd's verbs as typed Python calls over XML-RPC (legacy positional order), and task waits.

The one client API of vdsmd: ``vdsClient`` (waitTask, moveDisk), the benchmark, the demo and
the functional tests all talk to the daemon through :class:`Vdsm`, exactly as a management
engine would: no shared files, no peeking at the daemon's state directories. Each method is
one verb and takes its arguments in the verb's legacy XML-RPC order; the answers are unwrapped
from VDSM's envelope and sizes (strings on the wire: XML-RPC integers are 32-bit) become ints.
A task verb returns its task id; :meth:`Vdsm.wait_task` is the one loop that polls a task.

Errors are the client's: :class:`~vdsm_cli.errors.ApiError` with vdsmd's code (compare it with
the code of the daemon's error class, ``vdsm.errors.UnknownTask.code``),
:class:`~vdsm_cli.errors.ConnectionFailed` when there was no usable answer,
:class:`TaskFailed` for a task that ended without success and :class:`WaitTimeout` for one
that did not end in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vdsm import errors
from vdsm_api.wire import BLANK_UUID
from vdsm_cli.client import Client, format_address
from vdsm_cli.errors import ApiError, CliError

FINISHED = "finished"  # taskState of a task that ended, whatever its result
SUCCESS = "success"  # taskResult of a task that did its job
# Seconds between two polls of a task or a block job, by default: short at first (most tasks
# end within a few tens of ms, and each wait adds to the caller's time), then POLL_SHARE of
# the time waited so far, up to POLL_INTERVAL: a wait ends at most about a tenth of its
# length after what it waits for (doubling pauses, as before, could add 0.45 s to a 1.3 s
# copy: 0.05 + 0.1 + 0.2 + 0.4 + 0.5 s).
POLL_FIRST = 0.05
POLL_SHARE = 0.1
POLL_INTERVAL = 0.5


class TaskFailed(CliError):
    """A task ended without success; ``code`` and ``message`` are the task's own."""

    def __init__(self, task_id: str, verb: str, status: dict[str, Any]) -> None:
        self.task_id = task_id
        self.code = int(status.get("code") or 0)
        self.result = str(status.get("taskResult") or "?")
        self.text = str(status.get("message") or "")
        super().__init__(
            f"{verb} task {task_id} ended with {self.result}"
            + (f" (error {self.code}): {self.text}" if self.code else f": {self.text}")
        )


class WaitTimeout(CliError):
    """The task did not finish in time; it keeps running."""


def task_percent(status: dict[str, Any]) -> int:
    """The task's progress, 0 to 100 (0 when it reports none)."""
    try:
        return max(0, min(100, int(float(status.get("progress") or 0))))
    except (TypeError, ValueError):
        return 0


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
        """The drive as a DriveSpecVolume (docs/contract.md §2)."""
        return disk_spec(self.domain_id, self.pool_id, self.image_id, self.volume_id)


def disk_spec(domain_id: str, pool_id: str, image_id: str, volume_id: str) -> dict[str, str]:
    """A DriveSpecVolume (docs/contract.md §2)."""
    return {
        "device": "disk",
        "domainID": domain_id,
        "poolID": pool_id,
        "imageID": image_id,
        "volumeID": volume_id,
    }


@dataclass(frozen=True)
class VmView:
    """What a client needs of getVmStats: status, drives by target, block jobs by target, and
    the whole stats entry (``stats``) for anything else."""

    vm_id: str
    status: str
    drives: dict[str, Drive]
    jobs: dict[str, dict[str, Any]]
    stats: dict[str, Any]

    def drive_of_image(self, image_id: str) -> Drive | None:
        for drive in self.drives.values():
            if drive.image_id == image_id:
                return drive
        return None


def drive_of_stats(target: str, data: dict[str, Any]) -> Drive:
    """A drive of getVmStats' ``disks``."""
    return Drive(
        target=target,
        domain_id=str(data["domainID"]),
        pool_id=str(data["poolID"]),
        image_id=str(data["imageID"]),
        volume_id=str(data["volumeID"]),
        chain=tuple(str(v["volumeID"]) for v in data.get("volumeChain", ())),
    )


class Poller:
    """The pauses of one wait: ``interval`` each, or by default POLL_SHARE of the time
    paused so far, between POLL_FIRST and POLL_INTERVAL."""

    def __init__(self, sleep: Callable[[float], None], interval: float | None = None) -> None:
        self._sleep = sleep
        self._fixed = interval
        self._waited = 0.0

    def pause(self) -> None:
        if self._fixed is not None:
            pause = self._fixed
        else:
            pause = min(POLL_INTERVAL, max(POLL_FIRST, self._waited * POLL_SHARE))
        self._sleep(pause)
        self._waited += pause


class Vdsm:
    """One vdsmd, spoken to through its legacy XML-RPC verbs. ``interval``: the pause between
    two polls of a wait (None: POLL_FIRST doubling up to POLL_INTERVAL). Not thread-safe: the
    client keeps one HTTP connection; one per thread."""

    def __init__(
        self,
        client: Client,
        *,
        interval: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.interval = interval
        self.sleep = sleep
        self.clock = clock

    def poller(self, interval: float | None = None) -> Poller:
        return Poller(self.sleep, self.interval if interval is None else interval)

    @property
    def address(self) -> str:
        """``HOST:PORT`` (``[V6]:PORT``) of this vdsmd."""
        return format_address(self.client.endpoint.host, self.client.endpoint.port)

    def call(self, verb: str, *args: Any) -> dict[str, Any]:
        """Any verb: its envelope (for verbs this class has no method for)."""
        return self.client.call(verb, list(args))

    # --- host -------------------------------------------------------------------------------

    def ping(self) -> None:
        self.call("ping")

    def capabilities(self) -> dict[str, Any]:
        info: dict[str, Any] = self.call("getVdsCapabilities")["info"]
        return info

    # --- VMs --------------------------------------------------------------------------------

    def create_vm(self, params: dict[str, Any]) -> None:
        self.call("create", params)

    def destroy_vm(self, vm_id: str) -> None:
        self.call("destroy", vm_id)

    def vm_statuses(self, vm_ids: list[str] | None = None) -> dict[str, str]:
        """``list``: vmId → status of this host's VMs (only ``vm_ids``, if given)."""
        listed = self.call("list", False, list(vm_ids or []), False)["vmList"]
        return {str(v["vmId"]): str(v.get("status", "?")) for v in listed}

    def vm(self, vm_id: str) -> VmView:
        """getVmStats of one VM."""
        stats: dict[str, Any] = self.call("getVmStats", vm_id)["statsList"][0]
        return VmView(
            vm_id=vm_id,
            status=str(stats.get("status", "?")),
            drives={t: drive_of_stats(t, d) for t, d in (stats.get("disks") or {}).items()},
            jobs=dict(stats.get("blockJobs") or {}),
            stats=stats,
        )

    def snapshot(self, vm_id: str, domain_id: str, image_id: str, base: str, new: str) -> None:
        drives = [
            {"domainID": domain_id, "imageID": image_id, "baseVolumeID": base, "volumeID": new}
        ]
        self.call("snapshot", vm_id, drives)

    def replicate_start(
        self,
        vm_id: str,
        src: dict[str, str],
        dst: dict[str, str],
        copy_mode: str = "auto",
        bandwidth: int = 0,
    ) -> None:
        self.call("diskReplicateStart", vm_id, src, dst, True, copy_mode, bandwidth)

    def replicate_finish(self, vm_id: str, src: dict[str, str], dst: dict[str, str]) -> None:
        """The pivot (src != dst) or the abort (src == dst); ApiError with
        ``errors.ReplicationNotReady.code`` while the mirror is not READY."""
        self.call("diskReplicateFinish", vm_id, src, dst)

    def merge(
        self, vm_id: str, drive: dict[str, str], base: str, top: str, bandwidth: int, job_id: str
    ) -> None:
        self.call("merge", vm_id, drive, base, top, bandwidth, job_id)

    # --- storage ----------------------------------------------------------------------------

    def create_domain(self, domain_id: str, name: str, path: str) -> None:
        """A LOCALFS (4) data (1) domain at ``path``."""
        self.call("createStorageDomain", 4, domain_id, name, path, 1)

    def create_pool(
        self, pool_id: str, name: str, master: str, domains: list[str] | None = None
    ) -> None:
        self.call("createStoragePool", 0, pool_id, name, master, domains or [master], 1)

    def attach_domain(self, domain_id: str, pool_id: str) -> None:
        self.call("attachStorageDomain", domain_id, pool_id)

    def connect_pool(
        self, pool_id: str, host_id: int, master: str, master_version: int = 1
    ) -> None:
        """connectStoragePool: join every domain's lockspace as ``host_id`` (in the background)."""
        self.call("connectStoragePool", pool_id, host_id, "", master, master_version)

    def start_spm(self, pool_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """spmStart, waited for: this host holds the pool's lease when it returns (TaskFailed,
        with sanlock's reason, when another host holds it)."""
        task_id = self.call("spmStart", pool_id, -1, -1, -1, "false", 250, 5)["uuid"]
        self.wait_success(task_id, "spmStart", timeout=timeout)
        return self.spm_status(pool_id)

    def spm_status(self, pool_id: str) -> dict[str, Any]:
        """{spmStatus, spmId, spmLver}: this host's role; the SPM's id and lver from sanlock."""
        return dict(self.call("getSpmStatus", pool_id)["spm_st"])

    def repo_stats(self) -> dict[str, dict[str, Any]]:
        """repoStats: sdUUID → {acquired, valid, error, ...} for every domain of the pools this
        host is connected to (``acquired``: it has joined the domain's lockspace)."""
        reply = self.call("repoStats")
        return {k: dict(v) for k, v in reply.items() if k != "status" and isinstance(v, dict)}

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
            if e.code == errors.ImageDoesNotExistInSD.code:
                return []
            raise

    def volume_info(
        self, domain_id: str, pool_id: str, image_id: str, volume_id: str
    ) -> dict[str, Any]:
        reply = self.call("getVolumeInfo", domain_id, pool_id, image_id, volume_id)
        info: dict[str, Any] = reply["info"]
        return info

    def prepare_image(
        self, pool_id: str, domain_id: str, image_id: str, volume_id: str
    ) -> list[str]:
        """The chain's file paths, base first."""
        prepared = self.call("prepareImage", pool_id, domain_id, image_id, volume_id)
        return [str(v["path"]) for v in prepared["volumeChain"]]

    def create_volume(
        self,
        domain_id: str,
        pool_id: str,
        image_id: str,
        volume_id: str,
        capacity: int,
        *,
        volume_format: str = "COW",
        preallocate: str = "SPARSE",
        parent: str = BLANK_UUID,
        description: str = "",
    ) -> str:
        """A task: a DATA volume of ``capacity`` bytes on ``parent`` (BLANK_UUID: a base)."""
        reply = self.call(
            "createVolume",
            domain_id,
            pool_id,
            image_id,
            str(capacity),
            volume_format,
            preallocate,
            "DATA",
            volume_id,
            description,
            image_id,
            parent,
        )
        return str(reply["uuid"])

    def clone_structure(self, pool_id: str, src: str, image_id: str, dst: str) -> str:
        """A task: the image's chain, empty, in domain ``dst``."""
        return str(self.call("cloneImageStructure", pool_id, src, image_id, dst)["uuid"])

    def sync_data(
        self, pool_id: str, src: str, image_id: str, dst: str, sync_type: str = "INTERNAL"
    ) -> str:
        """A task: copy the image's volumes (INTERNAL: all but the leaf) to domain ``dst``."""
        return str(self.call("syncImageData", pool_id, src, image_id, dst, sync_type)["uuid"])

    def move_image(
        self, pool_id: str, src: str, dst: str, image_id: str, vm_id: str, operation: str
    ) -> str:
        """A task: the image, its chain's shape kept, copied to ``dst``; ``operation`` MOVE
        then deletes it from ``src`` (COPY keeps it). Refused while a VM uses the image."""
        reply = self.call("moveImage", pool_id, src, dst, image_id, vm_id, operation, False, False)
        return str(reply["uuid"])

    def delete_image(self, domain_id: str, pool_id: str, image_id: str) -> str:
        """A task."""
        return str(self.call("deleteImage", domain_id, pool_id, image_id, False, False)["uuid"])

    def delete_volumes(
        self, domain_id: str, pool_id: str, image_id: str, volume_ids: list[str]
    ) -> str:
        """A task."""
        reply = self.call("deleteVolume", domain_id, pool_id, image_id, volume_ids, False, False)
        return str(reply["uuid"])

    # --- tasks ------------------------------------------------------------------------------

    def task_status(self, task_id: str) -> dict[str, Any]:
        """getTaskStatus; ApiError (``errors.UnknownTask.code``) when vdsmd does not know it."""
        status: dict[str, Any] = self.call("getTaskStatus", task_id)["taskStatus"]
        return status

    def wait_task(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        interval: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll getTaskStatus until the task is finished; its last status, whatever its result.

        ``on_progress`` sees every status polled (the last one included). ``interval``: the
        pause between polls (None: this client's). No timeout by default: copies of big disks
        take as long as they take, and the progress shows whether they move; with one,
        WaitTimeout once it has passed. Waiting never changes the task: on a timeout or
        Ctrl-C it keeps running.
        """
        deadline = None if timeout is None else self.clock() + timeout
        poller = self.poller(interval)
        while True:
            status = self.task_status(task_id)
            if on_progress is not None:
                on_progress(status)
            if status.get("taskState") == FINISHED:
                return status
            if deadline is not None and self.clock() >= deadline:
                raise WaitTimeout(
                    f"task {task_id} not finished after {timeout:g}s "
                    f"({status.get('taskState')}, {task_percent(status)}%); it keeps running"
                )
            poller.pause()

    def wait_success(
        self,
        task_id: str,
        verb: str = "",
        *,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """:meth:`wait_task`, then TaskFailed unless the task succeeded (``verb`` names it in
        the message)."""
        status = self.wait_task(task_id, timeout=timeout, on_progress=on_progress)
        if status.get("taskResult") != SUCCESS:
            raise TaskFailed(task_id, verb or "the", status)
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

    def stop_task(self, task_id: str) -> None:
        """Stop a running task; a finished or unknown one is left alone."""
        try:
            self.call("stopTask", task_id)
        except ApiError as e:
            if e.code not in (errors.UnknownTask.code, errors.TaskStateError.code):
                raise

    def clear_task(self, task_id: str) -> None:
        """Forget a finished task (as an engine does once it has its result); best effort."""
        try:
            self.call("clearTask", task_id)
        except ApiError:
            pass
