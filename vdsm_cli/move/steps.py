"""The steps of a disk move: their names, their order and their titles, in one place.

A step name is data: the journal records it (before the step runs) and the test-only fault
hook names it. Forward steps go towards the destination, rollback steps back to the source;
the names of both lists are distinct, so one name means one step. PIVOT is the point of no
return: before it a failure rolls back to the source, after it a failure (or a resume)
finishes towards the destination. A VM that is Down moves offline, in one step
(``OFFLINE_STEPS``: moveImage, whose task has its own point of no return), undone, when it
failed, by ``OFFLINE_ROLLBACK_STEPS``. Each step is the SPM's or the VM host's (``SPM_STEPS``). What
each step does is in :mod:`vdsm_cli.move.forward` and :mod:`vdsm_cli.move.rollback`.
"""

from __future__ import annotations

# The forward steps (docs/contract.md §1), in order.
CREATE_SNAPSHOT = "create_snapshot"
SNAPSHOT = "snapshot"
CLONE = "clone"
REPLICATE = "replicate"
SYNC = "sync"
WAIT_READY = "wait_ready"
PIVOT = "pivot"
DELETE_SOURCE = "delete_source"
MERGE = "merge"
DELETE_SNAPSHOT = "delete_snapshot"
FORWARD_STEPS = [
    CREATE_SNAPSHOT,
    SNAPSHOT,
    CLONE,
    REPLICATE,
    SYNC,
    WAIT_READY,
    PIVOT,
    DELETE_SOURCE,
    MERGE,
    DELETE_SNAPSHOT,
]

# The offline move of a Down VM's disk (docs/contract.md §1): one SPM task.
MOVE_IMAGE = "move_image"
OFFLINE_STEPS = [MOVE_IMAGE]

# The rollback steps, in order.
ABORT_REPLICATION = "abort_replication"
DELETE_DESTINATION = "delete_destination"
UNSNAPSHOT_MERGE = "unsnapshot_merge"
UNSNAPSHOT_DELETE = "unsnapshot_delete"
ROLLBACK_STEPS = [ABORT_REPLICATION, DELETE_DESTINATION, UNSNAPSHOT_MERGE, UNSNAPSHOT_DELETE]
# What an offline move that failed may have to undo: a destination its task left behind.
OFFLINE_ROLLBACK_STEPS = [DELETE_DESTINATION]

TITLES = {
    CREATE_SNAPSHOT: "create the auto-snapshot volume on the source (createVolume)",
    SNAPSHOT: "live snapshot: the new volume becomes the active layer (snapshot)",
    CLONE: "create the empty chain on the destination (cloneImageStructure)",
    REPLICATE: "mirror the active layer to the destination (diskReplicateStart)",
    SYNC: "copy the read-only volumes (syncImageData INTERNAL)",
    WAIT_READY: "wait until the mirror is READY",
    PIVOT: "switch the VM to the destination (diskReplicateFinish)",
    DELETE_SOURCE: "delete the source image (deleteImage)",
    MERGE: "merge the auto-snapshot into its parent on the destination (merge)",
    DELETE_SNAPSHOT: "delete the merged auto-snapshot volume (deleteVolume)",
    MOVE_IMAGE: "copy the chain volume by volume, then delete the source unless --keep-source "
    "(moveImage)",
    ABORT_REPLICATION: "stop the mirror; the VM stays on the source (diskReplicateFinish src, src)",
    DELETE_DESTINATION: "delete the destination image (deleteImage)",
    UNSNAPSHOT_MERGE: "merge the auto-snapshot back into its parent on the source (merge)",
    UNSNAPSHOT_DELETE: "delete the auto-snapshot volume on the source (deleteVolume)",
}

# The steps the SPM does (its verbs: createVolume, cloneImageStructure, syncImageData,
# deleteImage, deleteVolume); the VM's host does the others (snapshot, diskReplicateStart and
# Finish, the READY wait, merge). What the user is told runs where.
SPM_STEPS = frozenset(
    {
        CREATE_SNAPSHOT,
        CLONE,
        SYNC,
        MOVE_IMAGE,
        DELETE_SOURCE,
        DELETE_SNAPSHOT,
        DELETE_DESTINATION,
        UNSNAPSHOT_DELETE,
    }
)

# The journal's byte counter (``copied``) each data step reports when it ends.
BYTES_OF = {SYNC: "sync", WAIT_READY: "mirror", MERGE: "merge", MOVE_IMAGE: "sync"}
# The steps that copy data: the move's copy time, for its average rate.
COPY_STEPS = (REPLICATE, SYNC, WAIT_READY, MOVE_IMAGE)


def forward_steps(*, keep_source: bool, merge: bool, offline: bool = False) -> list[str]:
    """The forward steps a move runs: all of them but those its options skip (an offline
    move has one step, whatever the options)."""
    if offline:
        return list(OFFLINE_STEPS)
    skip = set()
    if keep_source:
        skip.add(DELETE_SOURCE)
    if not merge:
        skip |= {MERGE, DELETE_SNAPSHOT}
    return [s for s in FORWARD_STEPS if s not in skip]
