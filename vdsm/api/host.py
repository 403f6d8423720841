"""Host verbs: ping (the capabilities and the VM list are vms.py's)."""

from __future__ import annotations


class HostAPI:
    def ping(self) -> None:
        return None
