"""connectStorageServer and disconnectStorageServer through real vdsmds, as the hosts of a pool
sharing storage use them: a domain one host creates is found by another once it connects the
storage, a real ext4 on a loop device is mounted and unmounted by the daemon, and bad input is
answered with its code and a message naming the parameter, never a traceback.

Two daemons with different storage roots share one directory: A has ``storage/``, B has
``b-mnt/`` first (where its POSIXFS mounts go) and ``storage/``. The mount test needs root,
losetup and mkfs.ext4 (skipped without them, failed under CI); its loop device is detached at
teardown, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing, require_command
from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, running
from tests.functional.storage_helpers import BLANK, code, ok

LOCALFS, POSIXFS, NFS = 4, 6, 1


@dataclass
class Hosts:
    a: VdsmdProcess
    b: VdsmdProcess
    storage: Path  # in both hosts' roots
    b_mnt: Path  # B's first root: its mount points
    a_only: Path  # in A's roots only

    def connect(self, dom_type: Any, *entries: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = self.b.xmlrpc().connectStorageServer(dom_type, BLANK, list(entries))
        return reply

    def disconnect(self, dom_type: Any, *entries: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = self.b.xmlrpc().disconnectStorageServer(
            dom_type, BLANK, list(entries)
        )
        return reply


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    require_command("qemu-img")
    storage, b_mnt, a_only = tmp_path / "storage", tmp_path / "b-mnt", tmp_path / "a-only"
    for directory in (storage / "shared", b_mnt, a_only):
        directory.mkdir(parents=True)
    a = VdsmdProcess(tmp_path / "host-a", storage_roots=[storage, a_only])
    b = VdsmdProcess(tmp_path / "host-b", storage_roots=[b_mnt, storage])
    with running(a), running(b):
        yield Hosts(a, b, storage, b_mnt, a_only)
        for daemon in (a, b):
            assert "Traceback" not in daemon.log()


def statuses(reply: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = ok(reply)["statuslist"]
    return result


def failure(reply: dict[str, Any], status: int) -> str:
    """The message of the one connection of ``reply``, which must have failed with
    ``status`` while the call itself succeeded."""
    [entry] = statuses(reply)
    assert entry["status"] == status, entry
    message: str = entry["message"]
    return message


def test_a_domain_one_host_created_is_found_by_another(hosts: Hosts) -> None:
    shared = hosts.storage / "shared"
    a, b = hosts.a.xmlrpc(), hosts.b.xmlrpc()
    sd = new_uuid()
    ok(a.createStorageDomain(LOCALFS, sd, "shared", str(shared), 1))
    assert code(b.getStorageDomainInfo(sd)) == 358

    con_id = new_uuid()
    entry = {"id": con_id, "connection": str(shared)}
    assert statuses(hosts.connect(LOCALFS, entry)) == [
        {"id": con_id, "status": 0, "message": "Done"}
    ]
    info = ok(b.getStorageDomainInfo(sd))["info"]
    assert info["uuid"] == sd and info["name"] == "shared" and info["type"] == "LOCALFS"
    assert info["remotePath"] == str(shared)
    assert int(ok(b.getStorageDomainStats(sd))["stats"]["disktotal"]) > 0
    assert ok(b.getImagesList(sd))["imageslist"] == []

    # Again, by name and over JSON-RPC: nothing changes.
    answer = hosts.b.jsonrpc(
        "StoragePool.connectStorageServer",
        {"storagepoolID": BLANK, "domainType": "LOCALFS", "connectionParams": [entry]},
    )
    assert answer["result"] == [{"id": con_id, "status": 0, "message": "Done"}]
    assert ok(b.getStorageDomainInfo(sd))["info"]["uuid"] == sd

    assert statuses(hosts.disconnect("LOCALFS", entry)) == [
        {"id": con_id, "status": 0, "message": "Done"}
    ]
    assert code(b.getStorageDomainInfo(sd)) == 358
    assert ok(a.getStorageDomainInfo(sd))["info"]["name"] == "shared"  # A's own link stays
    assert (shared / sd / "dom_md" / "metadata").is_file()  # the domain itself stays
    assert statuses(hosts.disconnect(LOCALFS, entry))[0]["status"] == 0  # nothing to do
    answer = hosts.b.jsonrpc(
        "StoragePool.disconnectStorageServer",
        {"storagepoolID": BLANK, "domainType": LOCALFS, "connectionParams": []},
    )
    assert answer["result"] == []


def test_storage_outside_the_hosts_roots_is_refused(hosts: Hosts) -> None:
    sd = new_uuid()
    ok(hosts.a.xmlrpc().createStorageDomain(LOCALFS, sd, "mine", str(hosts.a_only), 1))
    (hosts.storage / "escape").symlink_to(hosts.a_only)
    for where in (hosts.a_only, hosts.storage / "escape", hosts.storage / ".." / "a-only"):
        reply = hosts.connect(LOCALFS, {"id": new_uuid(), "connection": str(where)})
        message = failure(reply, 1000)
        assert "connectionParams[0].connection" in message
        assert "not inside a storage root" in message
    assert code(hosts.b.xmlrpc().getStorageDomainInfo(sd)) == 358
    missing_dir = {"id": new_uuid(), "connection": str(hosts.storage / "nope")}
    assert "nope" in failure(hosts.connect(LOCALFS, missing_dir), 453)


def test_bad_requests_fail_whole_with_the_parameter_named(hosts: Hosts) -> None:
    rpc = hosts.b.xmlrpc()
    good = {"id": new_uuid(), "connection": str(hosts.storage / "shared")}
    cases: list[tuple[tuple[Any, ...], int, str]] = [
        ((NFS, BLANK, [good]), 468, "not supported"),
        (("SHAREDFS", BLANK, [good]), 468, "not supported"),
        (("ZFS", BLANK, [good]), 1000, "domainType"),
        ((LOCALFS, "nope", [good]), 1000, "storagepoolID"),
        ((LOCALFS, BLANK, []), 1000, "connectionParams"),
        ((LOCALFS, BLANK, ["/x"]), 1000, "connectionParams[0]"),
        ((LOCALFS, BLANK, [{"connection": "/x"}]), 1000, "connectionParams[0].id"),
        ((LOCALFS, BLANK, [{"id": "../x", "connection": "/x"}]), 1000, "connectionParams[0].id"),
        ((LOCALFS, BLANK, [good, {"id": new_uuid()}]), 1000, "connectionParams[1].connection"),
        ((LOCALFS, BLANK, [{"id": new_uuid(), "connection": 5}]), 1000, "connection"),
        ((LOCALFS, BLANK, [good], None, "extra"), 1000, "arguments"),
        ((LOCALFS, BLANK), 1000, "connectionParams"),
    ]
    for args, expected, named in cases:
        for verb in ("connectStorageServer", "disconnectStorageServer"):
            reply = getattr(rpc, verb)(*args)
            if args[2:3] == ([],) and verb == "disconnectStorageServer":
                assert statuses(reply) == []  # nothing to disconnect
                continue
            assert code(reply) == expected, (args, reply)
            assert named in reply["status"]["message"], (args, reply)
            assert "statuslist" not in reply
    error = hosts.b.jsonrpc(
        "StoragePool.connectStorageServer",
        {"storagepoolID": BLANK, "domainType": 4, "connectionParams": [{"id": new_uuid()}]},
    )["error"]
    assert error["code"] == 1000 and "connectionParams[0].connection" in error["message"]


def test_bad_connections_fail_alone_with_the_parameter_named(hosts: Hosts) -> None:
    def posix(**entry: Any) -> dict[str, Any]:
        return {"id": new_uuid(), "connection": "/dev/loop0", "vfs_type": "ext4", **entry}

    cases = [
        (posix(connection="/etc/passwd"), 1000, "connectionParams[0].connection"),
        (posix(connection="/dev/../etc/passwd"), 1000, "connectionParams[0].connection"),
        (posix(connection="/dev/null"), 1000, "not a block device"),
        (posix(connection="/dev/vdsm-no-such-device"), 453, "no such device"),
        (posix(vfs_type="nfs"), 1000, "connectionParams[0].vfs_type"),
        (posix(vfs_type=None), 1000, "connectionParams[0].vfs_type"),
        (posix(mnt_options="noatime,suid"), 1000, "'suid' is not allowed"),
        (posix(mnt_options="x-mount.mkdir=0755"), 1000, "connectionParams[0].mnt_options"),
        (posix(mnt_options="remount,exec"), 1000, "connectionParams[0].mnt_options"),
    ]
    for entry, status, named in cases:
        assert named in failure(hosts.connect(POSIXFS, entry), status), entry
    assert os.listdir(hosts.b_mnt) == []  # no mount point was made

    # In one call, each connection gets its own answer, in order.
    shared = {"id": new_uuid(), "connection": str(hosts.storage / "shared")}
    outside = {"id": new_uuid(), "connection": str(hosts.a_only)}
    answer = statuses(hosts.connect(LOCALFS, outside, shared, outside))
    assert [(s["id"], s["status"]) for s in answer] == [
        (outside["id"], 1000),
        (shared["id"], 0),
        (outside["id"], 1000),
    ]


# --- POSIXFS on a real loop device -------------------------------------------------------------


@contextlib.contextmanager
def ext4_loop_device(image: Path) -> Iterator[str]:
    """A loop device holding an ext4, on a 64 MiB file; at the end anything still mounted
    from it is unmounted and the device detached."""
    if os.geteuid() != 0:
        missing("loop devices and mounts need root")
    for command in ("losetup", "mkfs.ext4", "mount", "umount"):
        require_command(command)
    with open(image, "wb") as f:
        f.truncate(64 * 1024**2)
    proc = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        missing(f"no loop device: {proc.stderr.strip()}")
    device = proc.stdout.strip()
    try:
        subprocess.run(["mkfs.ext4", "-q", device], check=True, timeout=60)
        yield device
    finally:
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            fields = line.split(" ")
            if device in fields[fields.index("-") :]:
                subprocess.run(["umount", "-l", fields[4]], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def mounted(mount_point: Path) -> list[str]:
    """The options of each mount at ``mount_point``."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] == str(mount_point):
            found.append(fields[5])
    return found


def test_posixfs_mounts_a_block_device_and_finds_its_domains(hosts: Hosts, tmp_path: Path) -> None:
    rpc = hosts.b.xmlrpc()
    with ext4_loop_device(tmp_path / "disk.img") as device:
        mount_point = hosts.b_mnt / device.replace("_", "__").replace("/", "_")
        entry = {"id": new_uuid(), "connection": device, "vfs_type": "ext4"}
        entry["mnt_options"] = "noatime"
        assert statuses(hosts.connect(POSIXFS, entry))[0]["status"] == 0
        [options] = mounted(mount_point)
        assert {"nosuid", "nodev", "noatime"} <= set(options.split(","))

        sd = new_uuid()
        ok(rpc.createStorageDomain(POSIXFS, sd, "on-ext4", str(mount_point), 1))
        assert ok(rpc.getStorageDomainInfo(sd))["info"]["type"] == "POSIXFS"
        assert statuses(hosts.connect(POSIXFS, entry))[0]["status"] == 0  # mounted already
        assert len(mounted(mount_point)) == 1

        # A restarted daemon still knows the domain: the links and the mount outlive it.
        hosts.b.kill()
        hosts.b.start()
        rpc = hosts.b.xmlrpc()
        assert ok(rpc.getStorageDomainInfo(sd))["info"]["name"] == "on-ext4"

        gone = {"id": entry["id"], "connection": device}
        assert statuses(hosts.disconnect(POSIXFS, gone)) == [
            {"id": entry["id"], "status": 0, "message": "Done"}
        ]
        assert mounted(mount_point) == [] and not mount_point.exists()
        assert code(rpc.getStorageDomainInfo(sd)) == 358

        # The domain lives on the device: connecting it again finds it.
        answer = hosts.b.jsonrpc(
            "StoragePool.connectStorageServer",
            {"storagepoolID": BLANK, "domainType": "POSIXFS", "connectionParams": [entry]},
        )
        assert answer["result"] == [{"id": entry["id"], "status": 0, "message": "Done"}]
        assert ok(rpc.getStorageDomainInfo(sd))["info"]["name"] == "on-ext4"
        assert statuses(hosts.disconnect(POSIXFS, gone))[0]["status"] == 0
        assert mounted(mount_point) == []
