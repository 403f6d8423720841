"""Who holds which lease, in sanlock's own words: ``sanlock client status`` parsed.

Shared by the volume-lease tests on one host (the machine's sanlock daemon) and on a cluster
(each host's daemon, vdsm_guest.sanlock_daemon.SanlockDaemon.status()). Not a test module.
"""

from __future__ import annotations

import subprocess

Lease = tuple[str, str]  # (lockspace = sdUUID, resource = volUUID or SDM)


def held_leases(status: str) -> dict[Lease, int]:
    """Every resource in a ``sanlock client status`` text, with the pid holding it."""
    held: dict[Lease, int] = {}
    for line in status.splitlines():
        fields = line.split()
        # r LOCKSPACE:RESOURCE:PATH:OFFSET[:LVER] p PID
        if len(fields) >= 4 and fields[0] == "r" and fields[2] == "p":
            lockspace, resource = fields[1].split(":")[:2]
            held[(lockspace, resource)] = int(fields[3])
    return held


def machine_sanlock_status() -> str:
    """The machine's own sanlock daemon (the single-host tests' vdsmd and libvirtd use it)."""
    return subprocess.run(
        ["sanlock", "client", "status"], capture_output=True, text=True, timeout=30, check=True
    ).stdout


def held_by(status: str, pid: int) -> set[Lease]:
    return {lease for lease, holder in held_leases(status).items() if holder == pid}
