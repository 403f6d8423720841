"""TEST-ONLY: guest I/O that QEMU counts for no drive, added to what the copy governors watch.

The bench's guest-like writer (``vdsm_guest.block_writer``) writes through a VM's block layer
over an NBD export, which QEMU serves through a block backend of its own that no device
owns. QEMU's block accounting (query-blockstats, so libvirt's blockStatsFlags) counts only
what device models submit, so that I/O is invisible to :mod:`vdsm.copy_governor`, while it
competes for the disk as a guest's would. A real guest's I/O is always counted (the
functional tests run the governor under the tiny guest's own writes); this hook exists so
that the bench can measure what the adaptive rate gives a guest with the writer whose every
write it times.

When the environment variable ``VDSM_TEST_GUEST_IO`` names a file, the writer keeps its
counters there (``{"ops": N, "bytes": N, "busy_ns": N}``, replaced atomically) and
:meth:`vdsm.virt.vm_manager.VmManager.guest_io` adds them. Unset, as in production, nothing
is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vdsm.copy_governor import GuestIo

ENV = "VDSM_TEST_GUEST_IO"


def read() -> GuestIo | None:
    """The counters in the file ``$VDSM_TEST_GUEST_IO`` names; None when unset or unreadable
    (no writer yet)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
        return GuestIo(int(data["ops"]), int(data["bytes"]), int(data["busy_ns"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(path: Path, io: GuestIo) -> None:
    """Publish ``io`` in ``path`` for a vdsmd started with ``VDSM_TEST_GUEST_IO=path``."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps({"ops": io.ops, "bytes": io.nbytes, "busy_ns": io.busy_ns}))
    staging.replace(path)
