"""The API layer: thin verbs grouped by namespace, named by the schema's ``call`` fields.

Each method takes the snake_case arguments the RPC binding already checked against the schema,
calls the model (storage, tasks, VMs), and returns the payload in VDSM's wire shape, built
here (vm_payloads.py for the VMs'): nothing below the API builds response dicts, and nothing
here calls libvirt. It raises vdsm.errors types; only the RPC binding turns them into
envelopes. Legacy parameters the verbs accept but ignore are declared in the schema with
their defaults ("accepted for compatibility; unused") and named in the signatures.
"""

from __future__ import annotations

from vdsm.api.connections import ConnectionsAPI
from vdsm.api.host import HostAPI
from vdsm.api.images import ImagesAPI
from vdsm.api.pools import DomainsAPI, PoolsAPI
from vdsm.api.tasks import TasksAPI
from vdsm.api.vms import CapabilitiesAPI, VmsAPI
from vdsm.api.volumes import VolumesAPI
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.image_copy import UNLIMITED, CopyRate
from vdsm.storage.task.manager import TaskManager
from vdsm.virt.connection import Connection
from vdsm.virt.merge import Merges
from vdsm.virt.replication import Replications
from vdsm.virt.vm_manager import VmManager


def build(
    storage: HostStorage,
    tasks: TaskManager,
    connection: Connection,
    vms: VmManager,
    replications: Replications,
    merges: Merges,
    *,
    copy_rate: CopyRate = UNLIMITED,
) -> dict[str, object]:
    """The namespace objects the dispatcher resolves ``call: <namespace>.<method>`` in."""
    return {
        "host": HostAPI(),
        "capabilities": CapabilitiesAPI(connection, vms),
        "vms": VmsAPI(vms, storage, replications, merges),
        "tasks": TasksAPI(tasks),
        "pools": PoolsAPI(storage, tasks),
        "domains": DomainsAPI(storage),
        "connections": ConnectionsAPI(storage),
        "volumes": VolumesAPI(storage, tasks),
        "images": ImagesAPI(storage, tasks, copy_rate=copy_rate),
    }
