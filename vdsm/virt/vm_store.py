"""Durable per-VM state: ``<state_dir>/vms/<vmId>.json``, written atomically.

VMs are libvirt domains and outlive vdsmd; what libvirt does not know — the vmParams as the
engine sent them, which image and volumes each disk is, a replication in progress, why a VM
went Down — is kept here, so a restarted daemon can recover every VM and every replication.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdsm import validation
from vdsm.errors import InvalidParameter
from vdsm.storage import fileutil
from vdsm.virt.drives import Drive

log = logging.getLogger("vdsm.virt.vm_store")

FORMAT = 1


@dataclass
class VmRecord:
    vm_id: str
    params: dict[str, Any]
    drives: list[Drive]
    console_log: str | None = None
    exit_message: str | None = None  # set when the VM went Down
    # Replications in progress, by drive target (the record the contract asks to persist
    # before a replication touches the destination; see replication.py).
    replications: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Live merges in progress, by drive target (see merge.py).
    merges: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "vm_id": self.vm_id,
            "params": self.params,
            "drives": [d.to_json() for d in self.drives],
            "console_log": self.console_log,
            "exit_message": self.exit_message,
            "replications": self.replications,
            "merges": self.merges,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VmRecord:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown record format {data.get('format')!r}")
        return cls(
            vm_id=data["vm_id"],
            params=data["params"],
            drives=[Drive.from_json(d) for d in data["drives"]],
            console_log=data.get("console_log"),
            exit_message=data.get("exit_message"),
            replications=data.get("replications", {}),
            merges=data.get("merges", {}),
            created=data.get("created", 0.0),
        )


class VmStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        fileutil.remove_stale_temps(directory)

    def _path(self, vm_id: str) -> Path:
        return self.directory / f"{validation.uuid(vm_id, 'vmId')}.json"

    def console_log(self, vm_id: str) -> Path:
        return self.directory / f"{validation.uuid(vm_id, 'vmId')}.console.log"

    def save(self, record: VmRecord) -> None:
        data = json.dumps(record.to_json(), indent=1, sort_keys=True).encode()
        fileutil.atomic_write(self._path(record.vm_id), data)

    def remove(self, vm_id: str) -> None:
        fileutil.remove_file(self._path(vm_id))
        fileutil.fsync_dir(self.directory)

    def load_all(self) -> list[VmRecord]:
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                validation.uuid(path.stem, "vmId")
                records.append(VmRecord.from_json(json.loads(path.read_text())))
            except (InvalidParameter, ValueError, KeyError, TypeError, OSError) as e:
                # Never let one bad file stop the daemon; leave it for a person to look at.
                log.error("ignoring unreadable VM record %s: %s", path, e)
        return records
