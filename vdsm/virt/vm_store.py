"""Durable per-VM state: ``<state_dir>/vms/<vmId>.json``, written atomically.

VMs are libvirt domains and outlive vdsmd; what libvirt does not know — the vmParams as the
engine sent them, which image and volumes each disk is, a replication in progress, why a VM
went Down, the block jobs in progress (job_records.py) — is kept here, so a restarted daemon
can recover every VM and every replication. A record is read back checked (record_json.py): a
malformed file is logged with the path and key at fault and left alone, never half-trusted.
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
from vdsm.virt.job_records import MergeRecord, ReplicationRecord
from vdsm.virt.record_json import RecordError, field_of, mapping_of, number_of, optional_of

log = logging.getLogger("vdsm.virt.vm_store")

FORMAT = 1


@dataclass
class VmRecord:
    vm_id: str
    params: dict[str, Any]
    drives: list[Drive]
    console_log: str | None = None
    exit_message: str | None = None  # set when the VM went Down
    # Replications in progress, by drive target (the record docs/contract.md §3 asks to persist
    # before a replication touches the destination; see replication.py).
    replications: dict[str, ReplicationRecord] = field(default_factory=dict)
    # Live merges in progress, by drive target (see merge.py).
    merges: dict[str, MergeRecord] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    # Started with volume leases (vm_leases.py): its QEMU holds them, and every operation
    # moves them. False for a VM started with volume_leases off or before leases existed.
    leases: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "vm_id": self.vm_id,
            "params": self.params,
            "drives": [d.to_json() for d in self.drives],
            "console_log": self.console_log,
            "exit_message": self.exit_message,
            "replications": {t: r.to_json() for t, r in self.replications.items()},
            "merges": {t: r.to_json() for t, r in self.merges.items()},
            "created": self.created,
            "leases": self.leases,
        }

    @classmethod
    def from_json(cls, value: object) -> VmRecord:
        data = mapping_of(value, "record")
        if data.get("format") != FORMAT:
            raise RecordError(f"record.format={data.get('format')!r}: expected {FORMAT}")
        drives = field_of(data, "drives", list, "record")
        # The job maps were added after the first daemons: absent means none.
        replications = mapping_of(data.get("replications", {}), "record.replications")
        merges = mapping_of(data.get("merges", {}), "record.merges")
        return cls(
            vm_id=field_of(data, "vm_id", str, "record"),
            params=dict(field_of(data, "params", dict, "record")),
            drives=[Drive.from_json(d, f"record.drives[{n}]") for n, d in enumerate(drives)],
            console_log=optional_of(data, "console_log", str, "record"),
            exit_message=optional_of(data, "exit_message", str, "record"),
            replications={
                target: ReplicationRecord.from_json(r, f"record.replications.{target}")
                for target, r in replications.items()
            },
            merges={
                target: MergeRecord.from_json(r, f"record.merges.{target}")
                for target, r in merges.items()
            },
            created=number_of(data, "created", "record") if "created" in data else 0.0,
            leases=field_of(data, "leases", bool, "record") if "leases" in data else False,
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
        fileutil.write_state(self._path(record.vm_id), data, "the VM record")

    def remove(self, vm_id: str) -> None:
        fileutil.remove_file(self._path(vm_id))
        fileutil.fsync_dir(self.directory)

    def load_all(self) -> list[VmRecord]:
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                validation.uuid(path.stem, "vmId")
                record = VmRecord.from_json(json.loads(path.read_text()))
                if record.vm_id != path.stem:
                    raise RecordError(f"record.vm_id={record.vm_id!r}: the file names {path.stem}")
                records.append(record)
            except (InvalidParameter, ValueError, OSError) as e:  # RecordError is a ValueError
                # Never let one bad file stop the daemon; leave it for a person to look at.
                log.error("ignoring unreadable VM record %s: %s", path, e)
        return records
