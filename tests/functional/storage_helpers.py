"""Shared by the functional tests that build storage through a real vdsmd's XML-RPC: a pool of
two domains (:class:`Storage`), and ``ok``/``code`` to read an envelope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, start_spm, wait_task
from vdsm_api.wire import BLANK_UUID

BLANK = BLANK_UUID
GiB = 1024**3


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["status"] == {"code": 0, "message": "Done"}, reply
    return reply


def code(reply: dict[str, Any]) -> int:
    return int(reply["status"]["code"])


HOST_ID = 1


class Storage:
    """A pool of two domains, built through XML-RPC as an engine would: domains, the pool,
    connectStoragePool with host id 1, spmStart (the lease), then the second domain attached."""

    def __init__(self, daemon: VdsmdProcess, root: Path, dst_block_size: int = 512) -> None:
        """``dst_block_size``: the destination's (4096 on a disk of 4 KiB sectors)."""
        self.rpc = daemon.xmlrpc()
        self.daemon = daemon
        self.root = root  # the domains are directories (or mount points) under it
        self.sp, self.sd, self.sd2 = new_uuid(), new_uuid(), new_uuid()
        for sd, name, block_size in ((self.sd, "src", 512), (self.sd2, "dst", dst_block_size)):
            mount = root / name
            mount.mkdir(exist_ok=True)  # or a mount point made by the test
            ok(self.rpc.createStorageDomain(4, sd, name, str(mount), 1, 5, block_size))
        ok(self.rpc.createStoragePool(0, self.sp, "dc", self.sd, [self.sd], 1))
        ok(self.rpc.connectStoragePool(self.sp, HOST_ID, "", self.sd, 1))
        self.become_spm()
        daemon.spm_pools.append(self.sp)
        ok(self.rpc.attachStorageDomain(self.sd2, self.sp))

    def become_spm(self) -> None:
        """spmStart and wait for it: after a restart of vdsmd, the engine starts the SPM again
        (the restarted daemon has rejoined the pool, but holds no lease)."""
        self.rpc = self.daemon.xmlrpc()
        start_spm(self.daemon, self.sp)

    def create_volume(
        self, img: str, vol: str, fmt: Any = "COW", parent: str = BLANK, sd: str | None = None
    ) -> dict[str, Any]:
        reply = ok(
            self.rpc.createVolume(
                sd or self.sd, self.sp, img, str(GiB), fmt, "SPARSE", "DATA", vol, "d", img, parent
            )
        )
        return wait_task(self.daemon, reply["uuid"])

    def chain(self, img: str, sd: str | None = None) -> list[str]:
        vols: list[str] = ok(self.rpc.getVolumesList(sd or self.sd, self.sp, img))["uuidlist"]
        return vols
