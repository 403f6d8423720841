"""What a storage operation sees of the task that runs it.

SPM operations (create a volume, clone an image's structure, sync its data) are written
against this small interface, not against the task manager: they report progress, honour a
stop request, and record how to undo each step *before* taking it. A rollback step is data —
a stable name from a table of idempotent functions plus JSON arguments — never a reference to
code, so a task persisted on disk can be rolled back by a later daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from vdsm.storage.repository import StorageRepository
from vdsm.storage.runner import Cancellation

JSONArgs = Mapping[str, Any]

# An idempotent undo function: it must succeed when run twice, and when the thing it undoes was
# never (or only partly) done. It finds domains through the repository, by UUID.
RollbackStep = Callable[[StorageRepository, JSONArgs], None]


class TaskContext(Protocol):
    @property
    def task_id(self) -> str: ...

    @property
    def cancellation(self) -> Cancellation:
        """Pass to every qemu-img call, so that stopping the task kills the copy at once."""
        ...

    def add_rollback(self, name: str, args: JSONArgs) -> None:
        """Record an undo step; it is persisted before this returns. Steps run newest first."""
        ...

    def replace_rollback(self, name: str, args: JSONArgs) -> None:
        """Replace every undo step recorded so far with this one, atomically: past a point of
        no return, an interruption runs this step (which finishes the job) and nothing else."""
        ...

    def set_progress(
        self,
        percent: float,
        *,
        done_bytes: int | None = None,
        total_bytes: int | None = None,
        held_back: str | None = None,
    ) -> None:
        """Report progress 0–100 and, for copies, bytes copied of bytes to copy and why the
        copy is held back now ("" when it is not; None: unchanged)."""
        ...

    def check_aborted(self) -> None:
        """Raise TaskAborted if the task was asked to stop (call between steps)."""
        ...
