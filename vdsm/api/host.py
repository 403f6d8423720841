"""Host verbs: ping (later: capabilities, the VM list)."""

from __future__ import annotations


class HostAPI:
    def ping(self) -> None:
        return None
