"""Pre-flight of a disk move, and its plan: what will happen, to what, and about how long.

Every check goes through the API (as an engine would) and runs before anything is touched. The
VM checks ask the VM's host, the storage checks the pool's SPM (:mod:`vdsm_cli.move.hosts`
found both):

- the VM is on its host, Up (a live move) or Down (an offline move: one moveImage task on the
  SPM), and the image is attached to it;
- the destination domain is in the drive's pool (getStoragePoolInfo's dominfo);
- the VM's host and the SPM have both joined the destination domain's lockspace (repoStats:
  ``acquired``): the VM's QEMU holds the mirror's destination leaf lease, the SPM's tasks hold
  the leases of the volumes they make and fill (offline, only the SPM's join matters). A join
  under way (a few io_timeouts after connectStoragePool or attachStorageDomain) is waited for,
  up to JOIN_WAIT seconds;
- no block job runs on the drive (a replication or a merge shows in getVmStats blockJobs),
  and no journal records another move of it;
- the image is not already in the destination domain;
- every volume of the chain is LEGAL, and the destination has room for the chain's allocated
  data (sum of getVolumeInfo truesize) × 1.1 + 64 MiB (getStorageDomainStats diskfree).

A refusal is a :class:`Refused` error naming the problem; nothing has changed when it is
raised. A disk already on the destination is not an error: the plan says so (nothing to do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vdsm import errors
from vdsm_cli.api import Drive, Vdsm, VmView
from vdsm_cli.errors import ApiError, CliError
from vdsm_cli.move.hosts import SpmVdsm
from vdsm_cli.move.steps import MERGE, MOVE_IMAGE, SYNC, TITLES, WAIT_READY, forward_steps
from vdsm_cli.progress import human_bytes, human_duration

MIB = 1024 * 1024
SPACE_FACTOR = 1.1  # qcow2 metadata and the mirror's dirty rewrites, on top of the data
SPACE_OVERHEAD = 64 * MIB
ASSUMED_RATE = 100 * MIB  # bytes/s, for an estimate before any move was measured
STEP_OVERHEAD = 0.5  # seconds each step costs besides its data: calls, task polling
# Seconds to wait for a host's join of the destination's lockspace that is under way: about 3
# io_timeouts (30 s at vdsm's production io_timeout of 10), and repoStats sees it at the next
# check of the domain monitor (every 10 s by default).
JOIN_WAIT = 60.0
JOIN_POLL = 0.5


class Refused(CliError):
    """Pre-flight said no; nothing was touched."""


@dataclass(frozen=True)
class VolumeFacts:
    volume_id: str
    format: str
    capacity: int
    allocated: int  # truesize: bytes the volume's file really uses
    legality: str


@dataclass(frozen=True)
class DiskPlan:
    vm_id: str
    drive: Drive
    dst_domain: str
    chain: list[VolumeFacts] = field(default_factory=list)
    free: int = 0
    keep_source: bool = False
    merge: bool = True
    spm_address: str = ""  # the hosts that do the move: the pool's SPM...
    spm_id: int = -1
    spm_lver: int = -1
    vm_address: str = ""  # ...and the VM's host
    offline: bool = False  # the VM is Down: moveImage, not the live flow

    @property
    def already_there(self) -> bool:
        return self.drive.domain_id == self.dst_domain

    @property
    def allocated(self) -> int:
        return sum(v.allocated for v in self.chain)

    @property
    def needed(self) -> int:
        return int(self.allocated * SPACE_FACTOR) + SPACE_OVERHEAD

    @property
    def steps(self) -> list[str]:
        return forward_steps(keep_source=self.keep_source, merge=self.merge, offline=self.offline)

    def expected_bytes(self) -> dict[str, int]:
        """What each data step should move: the internal volumes by sync, the leaf by the
        mirror (the auto-snapshot starts empty: what the guest writes meanwhile); offline,
        the whole chain by moveImage."""
        internal = sum(v.allocated for v in self.chain)
        if self.offline:
            return {MOVE_IMAGE: internal}
        return {SYNC: internal, WAIT_READY: 0, MERGE: 0}


UP = "Up"  # a live move
DOWN = "Down"  # an offline move


def movable_vm(api: Vdsm, vm_id: str) -> VmView:
    """The VM, from its host ``api``; Refused unless it is there, Up or Down. Any other state
    (starting, paused, migrating) is refused: neither move is safe in it."""
    try:
        vm = api.vm(vm_id)
    except ApiError as e:
        if e.code == errors.NoSuchVM.code:
            raise Refused(
                f"VM {vm_id} is not known on {api.address} ({e.text}); the disk of a VM that "
                "no host knows moves with moveImage"
            ) from None
        raise
    if vm.status not in (UP, DOWN):
        raise Refused(
            f"VM {vm_id} is {vm.status}: a disk moves while its VM is Up (live) or Down "
            "(offline), not in between"
        )
    return vm


def attached_drive(vm: VmView, image_id: str) -> Drive:
    drive = vm.drive_of_image(image_id)
    if drive is None:
        disks = ", ".join(f"{d.target}={d.image_id}" for d in vm.drives.values()) or "none"
        raise Refused(f"image {image_id} is not attached to VM {vm.vm_id} (its disks: {disks})")
    return drive


def check_joined(
    api: Vdsm, role: str, domain: str, note: Callable[[str], None] | None = None
) -> None:
    """Refused unless the host ``api`` (playing ``role``) has joined ``domain``'s lockspace
    (repoStats: acquired). A join under way is waited for, up to JOIN_WAIT seconds; a domain
    the host does not monitor at all is refused at once: it is not connected to it."""
    deadline: float | None = None
    while True:
        entry = api.repo_stats().get(domain)
        if entry is None:
            raise Refused(
                f"the {role} {api.address} has not joined the lockspace of destination domain "
                f"{domain}: it does not monitor the domain (repoStats does not list it). "
                "Connect that host to the pool's storage (connectStorageServer, "
                "connectStoragePool) first"
            )
        if entry.get("acquired"):
            return
        now = api.clock()
        if deadline is None:
            deadline = now + JOIN_WAIT
            if note is not None:
                note(
                    f"the {role} {api.address} is joining the lockspace of domain {domain}: "
                    f"waiting up to {JOIN_WAIT:g}s"
                )
        elif now >= deadline:
            state = "valid" if entry.get("valid") else f"invalid: {entry.get('error') or '?'}"
            raise Refused(
                f"the {role} {api.address} has not joined the lockspace of destination domain "
                f"{domain} after {JOIN_WAIT:g}s (repoStats: acquired false, {state})"
            )
        api.sleep(JOIN_POLL)


def preflight(
    spm: SpmVdsm,
    vm_host: Vdsm,
    vm: VmView,
    drive: Drive,
    dst_domain: str,
    *,
    keep_source: bool,
    merge: bool,
    note: Callable[[str], None] | None = None,
) -> DiskPlan:
    """Check one disk (``vm`` from ``vm_host``, the storage from ``spm``); its plan, or
    Refused. A VM that is Down gets an offline plan. The journal check is the caller's (it
    holds the disk's lock)."""
    offline = vm.status == DOWN
    hosts: dict[str, Any] = {
        "vm_address": vm_host.address,
        "spm_address": spm.address,
        "spm_id": spm.view.spm_id,
        "spm_lver": spm.view.lver,
        "offline": offline,
    }
    merge = merge and not offline  # an offline move keeps the chain as it is: nothing to merge
    plan = DiskPlan(vm.vm_id, drive, dst_domain, keep_source=keep_source, merge=merge, **hosts)
    if plan.already_there:
        return plan
    api = spm  # the storage facts: the SPM writes them
    members = api.pool_domains(drive.pool_id)
    if dst_domain not in members:
        raise Refused(
            f"destination domain {dst_domain} is not in pool {drive.pool_id} of disk "
            f"{drive.target} (the pool's domains: {', '.join(sorted(members))})"
        )
    job = vm.jobs.get(drive.target)
    if job:
        kind = job.get("blockJobType", "block")
        what = {"copy": "a replication (another migration)", "commit": "a merge"}.get(kind, kind)
        raise Refused(f"disk {drive.target} of VM {vm.vm_id} is busy: {what} is running on it")
    if drive.image_id in api.images(dst_domain):
        raise Refused(
            f"image {drive.image_id} already exists in destination domain {dst_domain} "
            "(left by an earlier move? delete it first, or --resume that move)"
        )
    chain = []
    for volume_id in api.volumes(drive.domain_id, drive.pool_id, drive.image_id):
        info = api.volume_info(drive.domain_id, drive.pool_id, drive.image_id, volume_id)
        chain.append(_facts(volume_id, info))
    if [v.volume_id for v in chain] != list(drive.chain):
        raise Refused(
            f"image {drive.image_id}: the domain lists volumes {[v.volume_id for v in chain]} "
            f"but the VM runs on {list(drive.chain)}"
        )
    illegal = [v.volume_id for v in chain if v.legality != "LEGAL"]
    if illegal:
        raise Refused(f"image {drive.image_id}: volumes {illegal} are not LEGAL")
    plan = DiskPlan(
        vm.vm_id,
        drive,
        dst_domain,
        chain=chain,
        free=api.domain_free(dst_domain),
        keep_source=keep_source,
        merge=merge,
        **hosts,
    )
    check_room([plan])
    if offline:  # no QEMU takes a lease: only the SPM's task does
        check_joined(spm, "SPM", dst_domain, note)
    elif vm_host.address == spm.address:
        check_joined(vm_host, "host (the SPM and the VM's host)", dst_domain, note)
    else:
        check_joined(vm_host, "VM's host", dst_domain, note)
        check_joined(spm, "SPM", dst_domain, note)
    return plan


def check_room(plans: list[DiskPlan]) -> None:
    """All the disks moving to a domain must fit there together."""
    by_domain: dict[str, list[DiskPlan]] = {}
    for plan in plans:
        if not plan.already_there:
            by_domain.setdefault(plan.dst_domain, []).append(plan)
    for domain, group in by_domain.items():
        needed = sum(p.needed for p in group)
        allocated = sum(p.allocated for p in group)
        free = group[0].free
        if free < needed:
            raise Refused(
                f"not enough room in destination domain {domain}: the move needs "
                f"{human_bytes(needed)} ({needed} bytes: {human_bytes(allocated)} of allocated "
                f"data × {SPACE_FACTOR} + {human_bytes(SPACE_OVERHEAD)}), "
                f"{human_bytes(free)} ({free} bytes) are free"
            )


def _facts(volume_id: str, info: dict[str, Any]) -> VolumeFacts:
    return VolumeFacts(
        volume_id=volume_id,
        format=str(info.get("format", "?")),
        capacity=int(info.get("capacity") or 0),
        allocated=int(info.get("truesize") or 0),
        legality=str(info.get("legality", "?")),
    )


def estimate(plan: DiskPlan, rates: list[float]) -> tuple[float, float, str]:
    """(seconds, rate, where the rate comes from) for the whole move of one disk."""
    if rates:
        recent = sorted(rates[-5:])
        rate = recent[len(recent) // 2]
        source = f"the median of the last {len(recent)} measured moves"
    else:
        rate = float(ASSUMED_RATE)
        source = "assumed: no move measured yet on this client"
    seconds = plan.allocated / rate + STEP_OVERHEAD * len(plan.steps)
    return seconds, rate, source


def describe(plan: DiskPlan, rates: list[float]) -> dict[str, Any]:
    """The plan as data (``--dry-run --json`` prints it as is)."""
    seconds, rate, source = estimate(plan, rates)
    return {
        "vmId": plan.vm_id,
        "imageID": plan.drive.image_id,
        "drive": plan.drive.target,
        "poolID": plan.drive.pool_id,
        "srcDomainID": plan.drive.domain_id,
        "dstDomainID": plan.dst_domain,
        "spmAddress": plan.spm_address,
        "spmId": plan.spm_id,
        "spmLver": plan.spm_lver,
        "vmAddress": plan.vm_address,
        "mode": "offline" if plan.offline else "live",
        "alreadyThere": plan.already_there,
        "chain": [
            {
                "volumeID": v.volume_id,
                "format": v.format,
                "capacity": v.capacity,
                "allocated": v.allocated,
            }
            for v in plan.chain
        ],
        "allocatedBytes": plan.allocated,
        "neededBytes": plan.needed,
        "freeBytes": plan.free,
        "steps": [] if plan.already_there else plan.steps,
        "estimatedSeconds": 0 if plan.already_there else round(seconds, 1),
        "estimateRate": rate,
        "estimateBasis": source,
    }


def host_lines(
    spm_address: str, vm_address: str, spm_id: int, spm_lver: int, offline: bool = False
) -> list[str]:
    """Which host does what, for the plan and the start of a move."""
    lease = f"host id {spm_id}, lver {spm_lver}"
    if offline:
        return [
            f"  SPM: {spm_address} ({lease}): moveImage and its task (the VM is Down on "
            f"{vm_address})"
        ]
    if not spm_address or spm_address == vm_address:
        return [f"  host: {vm_address}, the SPM ({lease}) and the VM's host"] if vm_address else []
    return [
        f"  SPM: {spm_address} ({lease}): createVolume, cloneImageStructure, syncImageData, "
        "deleteImage, deleteVolume, the tasks",
        f"  VM host: {vm_address}: snapshot, diskReplicateStart/Finish, merge, the VM's stats",
    ]


def plan_text(plan: DiskPlan, rates: list[float]) -> str:
    d = plan.drive
    if plan.already_there:
        return f"disk {d.target} (image {d.image_id}) is already in domain {plan.dst_domain}"
    seconds, rate, source = estimate(plan, rates)
    how = "offline: the VM is Down" if plan.offline else "live: the VM runs"
    lines = [
        f"move disk {d.target} of VM {plan.vm_id} (image {d.image_id}), {how}",
        f"  from domain {d.domain_id} to {plan.dst_domain} (pool {d.pool_id})",
        *host_lines(plan.spm_address, plan.vm_address, plan.spm_id, plan.spm_lver, plan.offline),
        "  chain, base to leaf:",
    ]
    for v in plan.chain:
        lines.append(
            f"    {v.volume_id}  {v.format:4s} {human_bytes(v.capacity):>10s} virtual, "
            f"{human_bytes(v.allocated):>10s} allocated"
        )
    lines += [
        f"  data to copy: {human_bytes(plan.allocated)} (allocated, not virtual size)",
        f"  destination: {human_bytes(plan.free)} free, {human_bytes(plan.needed)} needed",
        "  steps:",
    ]
    lines += [f"    {n}. {s}: {TITLES[s]}" for n, s in enumerate(plan.steps, start=1)]
    lines.append(
        f"  estimate: about {human_duration(seconds)} at {rate / MIB:.1f} MiB/s ({source})"
    )
    return "\n".join(lines)
