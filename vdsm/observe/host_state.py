"""The host's state now, read through the API's verbs: the pools and their SPM, the storage
domains (monitoring, space), the VMs with their disk chains and block jobs, the tasks.

Both the web page (as JSON) and /metrics are built from one such snapshot, and every value in
it is what the verb that reports it answers a client (the same payload keys), so the page,
the metrics and the API cannot disagree. A verb that fails (a domain that does not answer, a
VM that went away meanwhile) leaves its part out and adds a sentence to ``errors``: the rest
is still shown, and the reason is said in plain words.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from vdsm import __version__
from vdsm.errors import VdsmError

# dispatcher.read: a verb by its schema title, with the API's keyword arguments.
Read = Callable[..., Any]

# getVmStats' blockJobType → what the job is for vdsm.
JOB_KINDS = {"copy": "replication", "commit": "merge", "active-commit": "merge"}


def snapshot(read: Read) -> dict[str, Any]:
    """The host's state, as the page's JSON (docs/observe.md lists its keys)."""
    errors: list[str] = []
    state: dict[str, Any] = {
        "host": {"name": socket.gethostname(), "version": __version__, "time": time.time()},
        "domains": _domains(read, errors),
        "vms": _vms(read, errors),
        "tasks": _tasks(read, errors),
    }
    state["pools"] = _pools(read, state["domains"], errors)
    state["errors"] = errors
    return state


def _attempt(errors: list[str], what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except VdsmError as e:
        errors.append(f"{what}: {e.message} (code {e.code})")
        return None


def _domains(read: Read, errors: list[str]) -> list[dict[str, Any]]:
    stats = _attempt(errors, "storage domains", lambda: read("Host.getStorageRepoStats")) or {}
    domains = []
    for sd_uuid, check in stats.items():
        domain: dict[str, Any] = {
            "uuid": sd_uuid,
            "valid": check["valid"],
            "acquired": check["acquired"],
            "delay": float(check["delay"]),
            "lastCheck": float(check["lastCheck"]) if check["lastCheck"] else None,
            "code": check["code"],
            "error": check["error"],
        }
        # A domain that does not answer is not read further: its check says why.
        if check["valid"]:
            info = _attempt(
                errors,
                f"domain {sd_uuid}",
                partial(read, "StorageDomain.getInfo", sd_uuid=sd_uuid),
            )
            space = _attempt(
                errors,
                f"space of domain {sd_uuid}",
                partial(read, "StorageDomain.getStats", sd_uuid=sd_uuid),
            )
            if info is not None:
                domain.update(name=info["name"], role=info["role"], pools=info["pool"])
            if space is not None:
                domain.update(
                    total=int(space["disktotal"]),
                    used=int(space["diskused"]),
                    free=int(space["diskfree"]),
                )
        domains.append(domain)
    return domains


def _pools(read: Read, domains: list[dict[str, Any]], errors: list[str]) -> list[dict[str, Any]]:
    uuids = sorted({sp for domain in domains for sp in domain.get("pools", [])})
    pools = []
    for sp_uuid in uuids:
        spm = _attempt(
            errors,
            f"SPM of pool {sp_uuid}",
            partial(read, "StoragePool.getSpmStatus", sp_uuid=sp_uuid),
        )
        if spm is not None:
            pools.append({"uuid": sp_uuid, **spm})
    return pools


def _vms(read: Read, errors: list[str]) -> list[dict[str, Any]]:
    ids = (
        _attempt(
            errors,
            "VMs",
            lambda: read("Host.getVMList", full_status=False, vm_list=[], only_uuid=True),
        )
        or []
    )
    vms = []
    for vm_id in ids:
        try:
            stats = read("VM.getStats", vm_id=vm_id)[0]
        except VdsmError:
            continue  # gone since the list: not an error, just no longer there
        vms.append(_vm(stats))
    return vms


def _vm(stats: dict[str, Any]) -> dict[str, Any]:
    disks = []
    for name, disk in sorted(stats["disks"].items()):
        disks.append(
            {
                "name": name,
                "domainID": disk["domainID"],
                "imageID": disk["imageID"],
                "format": disk["format"],
                "chain": [link["volumeID"] for link in disk["volumeChain"]],
            }
        )
    jobs = []
    for drive, job in sorted(stats["blockJobs"].items()):
        jobs.append(
            {
                "drive": drive,
                "kind": JOB_KINDS.get(job["blockJobType"], job["blockJobType"]),
                "done": int(job["cur"]),
                "total": int(job["end"]),
                "ready": bool(job["ready"]),
                "rateLimit": int(job.get("rateLimit", "0") or 0),
                "heldBack": job.get("heldBack", ""),
            }
        )
    return {
        "vmId": stats["vmId"],
        "vmName": stats["vmName"],
        "status": stats["status"],
        "disks": disks,
        "jobs": jobs,
    }


def _tasks(read: Read, errors: list[str]) -> list[dict[str, Any]]:
    statuses = _attempt(errors, "tasks", lambda: read("Host.getAllTasksStatuses")) or {}
    infos = _attempt(errors, "tasks", lambda: read("Host.getAllTasksInfo")) or {}
    tasks = []
    for task_id, status in sorted(statuses.items()):
        tasks.append(
            {
                "id": task_id,
                "verb": infos.get(task_id, {}).get("verb", ""),
                "state": status["taskState"],
                "result": status["taskResult"],
                "message": status["message"],
                "progress": status["progress"],
                "done": int(status["bytesDone"]) if status["bytesDone"] else None,
                "total": int(status["bytesTotal"]) if status["bytesTotal"] else None,
                "heldBack": status["heldBack"],
            }
        )
    return tasks
