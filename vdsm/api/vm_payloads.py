"""The VM payloads in VDSM's wire shape: getVmStats (status, drives with their volume chains,
I/O counters, block jobs), a drive, and the short list entry. Built from virt/'s typed views
(``Vm``, ``Drive``, ``VmSample``); nothing here asks libvirt anything."""

from __future__ import annotations

from typing import Any

from vdsm.virt.drives import Drive
from vdsm.virt.vm import Vm


def drive_payload(drive: Drive) -> dict[str, Any]:
    """A drive as getVmStats reports it (VDSM's names)."""
    return {
        "name": drive.target,
        "domainID": drive.domain_id,
        "poolID": drive.pool_id,
        "imageID": drive.image_id,
        "volumeID": drive.volume_id,
        "path": drive.path,
        "format": "cow" if drive.chain[-1].format == "qcow2" else "raw",
        "volumeChain": [
            {
                "domainID": drive.domain_id,
                "imageID": drive.image_id,
                "volumeID": link.volume_id,
                "path": link.path,
            }
            for link in drive.chain
        ],
    }


def vm_stats(vm: Vm) -> dict[str, Any]:
    """getVmStats' entry for one VM."""
    sample = vm.sample()
    stats: dict[str, Any] = {
        "vmId": vm.vm_id,
        "vmName": vm.name,
        "status": sample.status,
        "disks": {drive.target: drive_payload(drive) for drive in vm.drives},
        "blockJobs": {},
    }
    if vm.record.console_log:
        stats["consoleLog"] = vm.record.console_log
    if not sample.sampled:
        stats["exitMessage"] = vm.record.exit_message or "not running"
        return stats
    for drive in vm.drives:
        io = sample.io.get(drive.target)
        if io is not None:
            stats["disks"][drive.target].update(
                readOps=str(io.read_ops),
                readBytes=str(io.read_bytes),
                writeOps=str(io.write_ops),
                writtenBytes=str(io.write_bytes),
            )
        job = sample.jobs.get(drive.target)
        if job is not None:
            merge = vm.record.merges.get(drive.target)
            stats["blockJobs"][drive.target] = {
                "drive": drive.target,
                "jobID": merge.job_id if merge else "",
                "imgUUID": drive.image_id,
                "blockJobType": job.kind,
                "cur": str(job.cur),
                "end": str(job.end),
                "bandwidth": job.bandwidth,
                "ready": job.ready,
            }
            decision = vm.copy_decisions.get(drive.target)
            if decision is not None:
                # The adaptive rate (copy_governor): bytes/s now (0: none) and why it is held
                # back ("" when it is not).
                stats["blockJobs"][drive.target].update(
                    rateLimit=str(decision.rate), heldBack=decision.held_back
                )
    return stats


def vm_summary(vm: Vm) -> dict[str, Any]:
    """A VM in the short list (list without fullStatus)."""
    return {"vmId": vm.vm_id, "vmName": vm.name, "status": vm.status()}
