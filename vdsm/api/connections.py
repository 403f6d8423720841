"""Storage server connection verbs: connectStorageServer and disconnectStorageServer.

VDSM's shape: one status per connection, in the order given, ``[{id, status}]`` with status 0
or that connection's error code; a bad connection fails alone. **vdsm adds** ``message`` to
each (``Done``, or the error's message naming the parameter or the cause), so a caller learns
why without reading the host's log.
"""

from __future__ import annotations

from typing import Any

from vdsm.errors import InvalidParameter
from vdsm.storage.constants import DomainType
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.storage_roots import StorageRoots
from vdsm.storage.storage_server import ConnectionResult, StorageServer, connection_specs


def status_payload(result: ConnectionResult) -> dict[str, Any]:
    if result.error is None:
        return {"id": result.con_id, "status": 0, "message": "Done"}
    return {"id": result.con_id, "status": result.error.code, "message": result.error.message}


class ConnectionsAPI:
    def __init__(self, storage: HostStorage) -> None:
        self._server = StorageServer(
            storage.repository,
            storage.roots or StorageRoots(()),  # none: every directory is outside them
            storage.metadata_lock,
            pool_domains=storage.connections.connected_domains,
        )

    def connect(
        self,
        dom_type: str,
        sp_uuid: str,  # accepted for compatibility; unused (VDSM's too)
        con_list: list[dict[str, Any]],
        options: object = None,  # accepted for compatibility; unused
    ) -> list[dict[str, Any]]:
        if not con_list:
            raise InvalidParameter("connectionParams", con_list, "no connection given")
        domain_type = DomainType(dom_type)
        specs = connection_specs(con_list)
        return [status_payload(r) for r in self._server.connect(domain_type, specs)]

    def disconnect(
        self,
        dom_type: str,
        sp_uuid: str,  # accepted for compatibility; unused (VDSM's too)
        con_list: list[dict[str, Any]],
        options: object = None,  # accepted for compatibility; unused
    ) -> list[dict[str, Any]]:
        if not con_list:
            return []  # nothing to do, as in VDSM (the engine sends an empty list at times)
        domain_type = DomainType(dom_type)
        specs = connection_specs(con_list)
        return [status_payload(r) for r in self._server.disconnect(domain_type, specs)]
