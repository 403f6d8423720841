"""getVmStats: a VM's status, its drives with their volume chains, I/O counters, block jobs."""

from __future__ import annotations

from typing import Any

import libvirt

from vdsm.errors import VdsmError
from vdsm.virt.vm import DOWN, Vm

JOB_TYPES = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: "pull",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: "copy",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: "commit",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: "commit",
}


def vm_stats(vm: Vm) -> dict[str, Any]:
    status = vm.status()
    stats: dict[str, Any] = {
        "vmId": vm.vm_id,
        "vmName": vm.name,
        "status": status,
        "disks": {drive.target: drive.payload() for drive in vm.drives},
        "blockJobs": {},
    }
    if vm.record.console_log:
        stats["consoleLog"] = vm.record.console_log
    if status == DOWN:
        stats["exitMessage"] = vm.record.exit_message or "not running"
        return stats
    try:
        dom = vm.domain()
        live = vm.live_disks()
        for drive in vm.drives:
            disk = stats["disks"][drive.target]
            rd_ops, rd_bytes, wr_ops, wr_bytes, _ = dom.blockStats(drive.target)
            disk.update(
                readOps=str(rd_ops),
                readBytes=str(rd_bytes),
                writeOps=str(wr_ops),
                writtenBytes=str(wr_bytes),
            )
            job = dom.blockJobInfo(drive.target, 0)
            if job:
                mirror = live[drive.target].mirror if drive.target in live else None
                event = vm.last_job_event(drive.target)
                merge = vm.record.merges.get(drive.target)
                stats["blockJobs"][drive.target] = {
                    "drive": drive.target,
                    "jobID": merge["job_id"] if merge else "",
                    "imgUUID": drive.image_id,
                    "blockJobType": JOB_TYPES.get(job.get("type", 0), "unknown"),
                    "cur": str(job.get("cur", 0)),
                    "end": str(job.get("end", 0)),
                    "bandwidth": job.get("bandwidth", 0),
                    "ready": bool(mirror and mirror.ready)
                    or bool(event and event.status == libvirt.VIR_DOMAIN_BLOCK_JOB_READY),
                }
    except (libvirt.libvirtError, VdsmError):
        # The VM stopped while we looked: report what is known rather than fail the call.
        stats["status"] = vm.status()
    return stats
