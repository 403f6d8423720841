"""Storage server connections on real directories and a real ext4 on a loop device: discovery
of the domains another host made, their links, idempotency, and every refusal of a path, a
device, a file-system type or a mount option a client must not choose.

Host A is a repository that creates domains; host B another repository, with its own links,
that learns them through its StorageServer. The mount tests need root, losetup and mkfs.ext4
(skipped without them, failed under CI); every loop device is detached at teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing, require_command
from vdsm.errors import InvalidParameter, StorageDomainDoesNotExist, StorageTypeError
from vdsm.storage.constants import DomainType
from vdsm.storage.repository import StorageRepository
from vdsm.storage.storage_roots import StorageRoots
from vdsm.storage.storage_server import (
    ConnectionResult,
    StorageServer,
    check_mount_options,
    connection_specs,
    parse_mountinfo,
    transform_path,
)
from vdsm_api.wire import BLANK_UUID

LOCALFS, POSIXFS = DomainType.LOCALFS, DomainType.POSIXFS


def new_uuid() -> str:
    return str(uuid.uuid4())


@dataclass
class Hosts:
    roots: Path
    shared: Path  # the storage both hosts see, inside the roots
    outside: Path  # beside the roots
    a: StorageRepository
    b: StorageRepository
    in_pool: set[str] = field(default_factory=set)  # B's connected pools' domains

    def server(self, repository: StorageRepository | None = None) -> StorageServer:
        """Host B's (or ``repository``'s) storage server."""
        return StorageServer(
            repository or self.b,
            StorageRoots([self.roots]),
            contextlib.nullcontext,
            pool_domains=lambda: self.in_pool,
        )

    def connect(self, dom_type: DomainType, *entries: dict[str, Any]) -> list[ConnectionResult]:
        return self.server().connect(dom_type, connection_specs(list(entries)))

    def disconnect(self, dom_type: DomainType, *entries: dict[str, Any]) -> list[ConnectionResult]:
        return self.server().disconnect(dom_type, connection_specs(list(entries)))


@pytest.fixture
def hosts(tmp_path: Path) -> Hosts:
    roots, outside = tmp_path / "roots", tmp_path / "outside"
    shared = roots / "shared"
    shared.mkdir(parents=True)
    outside.mkdir()
    return Hosts(
        roots,
        shared,
        outside,
        StorageRepository(tmp_path / "host-a"),
        StorageRepository(tmp_path / "host-b"),
    )


def con(connection: object, con_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": con_id or new_uuid(), "connection": connection, **extra}


def ok(results: list[ConnectionResult]) -> tuple[str, ...]:
    """The domains of the one successful result."""
    [result] = results
    assert result.error is None, result.error.message
    return result.domains


def failed(results: list[ConnectionResult], code: int) -> str:
    """The message of the one failed result, which must have ``code``."""
    [result] = results
    assert result.error is not None, f"succeeded: {result}"
    assert result.error.code == code, result.error.message
    return result.error.message


# --- LOCALFS: discovery and links ------------------------------------------------------------


def test_domains_another_host_created_are_found_and_linked(hosts: Hosts) -> None:
    sd1, sd2 = new_uuid(), new_uuid()
    hosts.a.create_domain(hosts.shared, sd1, "one")
    hosts.a.create_domain(hosts.shared, sd2, "two")
    with pytest.raises(StorageDomainDoesNotExist):
        hosts.b.domain(sd1)

    assert set(ok(hosts.connect(LOCALFS, con(str(hosts.shared))))) == {sd1, sd2}
    assert hosts.b.domain_uuids() == sorted([sd1, sd2])
    assert hosts.b.domain(sd1).metadata.name == "one"
    assert hosts.b.domain(sd2).path == hosts.shared / sd2
    # A domain made after the first connect is found by the next one; the rest is untouched.
    sd3 = new_uuid()
    hosts.a.create_domain(hosts.shared, sd3, "three")
    assert set(ok(hosts.connect(LOCALFS, con(str(hosts.shared))))) == {sd1, sd2, sd3}
    assert hosts.b.domain_uuids() == sorted([sd1, sd2, sd3])


def test_connect_is_idempotent_and_same_path_links_are_kept(hosts: Hosts) -> None:
    sd = new_uuid()
    hosts.a.create_domain(hosts.shared, sd, "one")
    con_id = new_uuid()
    first = hosts.connect(LOCALFS, con(str(hosts.shared), con_id))
    link = hosts.b.links_dir / sd
    before = os.lstat(link)
    second = hosts.connect(LOCALFS, con(str(hosts.shared) + "/", con_id))
    assert first == second == [ConnectionResult(con_id, None, (sd,))]
    assert os.lstat(link).st_ino == before.st_ino  # not replaced
    # The host that created it connects it too: its own link is the same path.
    mine = hosts.server(hosts.a).connect(LOCALFS, connection_specs([con(str(hosts.shared))]))
    assert ok(mine) == (sd,)


def test_only_real_uuid_directories_with_a_domain_layout_are_taken(hosts: Hosts) -> None:
    sd = new_uuid()
    hosts.a.create_domain(hosts.shared, sd, "real")
    elsewhere = hosts.outside / "dom"
    elsewhere.mkdir()
    planted = new_uuid()
    hosts.a.create_domain(elsewhere, planted, "planted")
    (hosts.shared / planted).symlink_to(elsewhere / planted)  # a link into the host
    (hosts.shared / f".{new_uuid()}.creating-1234").mkdir()  # being created
    (hosts.shared / "not-a-uuid").mkdir()
    (hosts.shared / new_uuid()).mkdir()  # no metadata
    (hosts.shared / new_uuid().upper()).mkdir()
    linked_md = hosts.shared / new_uuid()
    shutil.copytree(hosts.shared / sd, linked_md)
    (linked_md / "dom_md" / "metadata").unlink()
    (linked_md / "dom_md" / "metadata").symlink_to("/etc/passwd")
    linked_images = hosts.shared / new_uuid()
    shutil.copytree(hosts.shared / sd, linked_images)
    shutil.rmtree(linked_images / "images")
    (linked_images / "images").symlink_to(hosts.outside)
    foreign = hosts.shared / new_uuid()
    shutil.copytree(hosts.shared / sd, foreign)  # its metadata names another domain

    assert ok(hosts.connect(LOCALFS, con(str(hosts.shared)))) == (sd,)
    assert hosts.b.domain_uuids() == [sd]


def test_a_uuid_known_here_at_another_path_is_a_conflict(hosts: Hosts) -> None:
    sd, other = new_uuid(), new_uuid()
    hosts.a.create_domain(hosts.shared, sd, "one")
    copy = hosts.roots / "copy"
    copy.mkdir()
    shutil.copytree(hosts.shared / sd, copy / sd)  # one UUID in two places
    hosts.a.create_domain(copy, other, "other")
    ok(hosts.connect(LOCALFS, con(str(hosts.shared))))

    message = failed(hosts.connect(LOCALFS, con(str(copy))), 365)
    assert f"{sd} is already known at {hosts.shared / sd}" in message
    assert hosts.b.domain(sd).path == hosts.shared / sd  # never replaced
    assert hosts.b.domain(other).path == copy / other  # the others are linked all the same


@pytest.mark.parametrize(
    "where",
    ["{outside}", "{roots}/../outside", "{roots}/escape", "{roots}/escape/dom", "relative/dir",
     "", "/", 7, None, ["/x"]],
)  # fmt: skip
def test_directories_outside_the_roots_are_refused(hosts: Hosts, where: object) -> None:
    (hosts.roots / "escape").symlink_to(hosts.outside)
    (hosts.outside / "dom").mkdir()
    hosts.a.create_domain(hosts.outside, new_uuid(), "outside")
    if isinstance(where, str):
        where = where.format(roots=hosts.roots, outside=hosts.outside)
    for call in (hosts.connect, hosts.disconnect):
        message = failed(call(LOCALFS, con(where)), 1000)
        assert "connectionParams[0].connection" in message
    assert hosts.b.domain_uuids() == []


def test_a_missing_directory_inside_the_roots_is_453(hosts: Hosts) -> None:
    message = failed(hosts.connect(LOCALFS, con(str(hosts.roots / "nope"))), 453)
    assert "nope" in message
    assert not (hosts.roots / "nope").exists()


def test_each_connection_is_answered_on_its_own(hosts: Hosts) -> None:
    sd = new_uuid()
    hosts.a.create_domain(hosts.shared, sd, "one")
    ids = [new_uuid(), new_uuid(), BLANK_UUID]
    results = hosts.connect(
        LOCALFS,
        con(str(hosts.outside), ids[0]),
        con(str(hosts.shared), ids[1]),
        con(str(hosts.roots / "nope"), ids[2]),
    )
    assert [r.con_id for r in results] == ids
    assert [r.error.code if r.error else 0 for r in results] == [1000, 0, 453]
    assert results[1].domains == (sd,)


def test_disconnect_forgets_the_links_and_keeps_the_domains(hosts: Hosts) -> None:
    sd = new_uuid()
    hosts.a.create_domain(hosts.shared, sd, "one")
    mine = hosts.roots / "mine"
    mine.mkdir()
    kept = hosts.b.create_domain(mine, new_uuid(), "kept")  # B's own, elsewhere
    ok(hosts.connect(LOCALFS, con(str(hosts.shared))))

    assert ok(hosts.disconnect(LOCALFS, con(str(hosts.shared)))) == (sd,)
    assert hosts.b.domain_uuids() == [kept.sd_uuid]
    assert hosts.a.domain(sd).metadata.name == "one"  # the domain itself is untouched
    assert ok(hosts.disconnect(LOCALFS, con(str(hosts.shared)))) == ()  # nothing to do


def test_disconnect_of_a_vanished_directory_still_forgets_its_links(hosts: Hosts) -> None:
    sd = new_uuid()
    hosts.a.create_domain(hosts.shared, sd, "one")
    ok(hosts.connect(LOCALFS, con(str(hosts.shared))))
    shutil.rmtree(hosts.shared)
    assert ok(hosts.disconnect(LOCALFS, con(str(hosts.shared)))) == (sd,)
    assert hosts.b.domain_uuids() == []


def test_disconnect_refuses_while_a_pool_of_its_domains_is_connected(hosts: Hosts) -> None:
    sd = new_uuid()
    hosts.a.create_domain(hosts.shared, sd, "one")
    ok(hosts.connect(LOCALFS, con(str(hosts.shared))))
    hosts.in_pool.add(sd)
    message = failed(hosts.disconnect(LOCALFS, con(str(hosts.shared))), 452)
    assert sd in message and "disconnectStoragePool" in message
    assert hosts.b.domain_uuids() == [sd]
    hosts.in_pool.clear()
    assert ok(hosts.disconnect(LOCALFS, con(str(hosts.shared)))) == (sd,)


# --- the request ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "param"),
    [
        ("/x", "connectionParams[0]"),
        ({"connection": "/x"}, "connectionParams[0].id"),
        ({"id": None, "connection": "/x"}, "connectionParams[0].id"),
        ({"id": "../../etc", "connection": "/x"}, "connectionParams[0].id"),
    ],
)
def test_an_entry_without_a_usable_id_fails_the_whole_request(entry: object, param: str) -> None:
    with pytest.raises(InvalidParameter) as error:
        connection_specs([entry])
    assert error.value.param == param


def test_blank_and_upper_case_ids_are_accepted() -> None:
    up = new_uuid().upper()
    specs = connection_specs([con("/x", BLANK_UUID), con("/y", up), con("/z", BLANK_UUID)])
    assert [s.con_id for s in specs] == [BLANK_UUID, up.lower(), BLANK_UUID]
    assert [s.where for s in specs] == [f"connectionParams[{n}]" for n in range(3)]


@pytest.mark.parametrize("dom_type", [DomainType.NFS, DomainType.SHAREDFS])
def test_other_types_are_not_supported(hosts: Hosts, dom_type: DomainType) -> None:
    for call in (hosts.connect, hosts.disconnect):
        with pytest.raises(StorageTypeError, match="not supported"):
            call(dom_type, con(str(hosts.shared)))


def test_mount_point_names_are_vdsms() -> None:
    assert transform_path("/dev/loop0") == "_dev_loop0"
    assert transform_path("/dev/my_vg/lv_1") == "_dev_my__vg_lv__1"
    assert transform_path("/dev/a/b") != transform_path("/dev/a_b")


def test_mount_options_from_the_allowlist() -> None:
    assert check_mount_options(None, "p") == ()
    assert check_mount_options("", "p") == ()
    assert check_mount_options("noatime, discard,,data=ordered,commit=30,ro", "p") == (
        "noatime",
        "discard",
        "data=ordered",
        "commit=30",
        "ro",
    )


@pytest.mark.parametrize(
    "options",
    ["suid", "dev", "exec", "remount", "bind", "loop", "loop=/dev/loop9", "offset=512",
     "user", "owner", "x-mount.mkdir", "x-mount.mkdir=0755", "context=system_u:object_r:x",
     "errors=panic", "data=ordered;reboot", "commit=", "commit=1e3", "noatime,suid",
     "uhelper=x", "helper=x", "defaults", "rw\n", "a" * 2000, 5, ["noatime"]],
)  # fmt: skip
def test_mount_options_off_the_allowlist_are_refused(options: object) -> None:
    with pytest.raises(InvalidParameter) as error:
        check_mount_options(options, "connectionParams[0].mnt_options")
    assert error.value.param == "connectionParams[0].mnt_options"


def test_mountinfo_lines_are_parsed_with_their_escapes() -> None:
    text = (
        "42 27 7:0 / /tmp/with\\040space rw,nosuid,nodev,relatime shared:1 - ext4 /dev/loop0 rw\n"
        "garbage line\n"
        "43 27 0:55 / /mnt/b rw,relatime - btrfs /dev/loop1 rw,space_cache=v2\n"
    )
    first, second = parse_mountinfo(text)
    assert (first.major, first.minor, first.mount_point) == (7, 0, "/tmp/with space")
    assert first.options == ("rw", "nosuid", "nodev", "relatime")
    assert (first.fs_type, first.source) == ("ext4", "/dev/loop0")
    assert (second.fs_type, second.source, second.mount_point) == ("btrfs", "/dev/loop1", "/mnt/b")


# --- POSIXFS: refusals before any mount --------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "code", "reason"),
    [
        ("/etc/passwd", 1000, "block device path"),
        ("/dev/../etc/passwd", 1000, "block device path"),
        ("/dev/./loop0", 1000, "block device path"),
        ("dev/loop0", 1000, "block device path"),
        ("/dev/", 1000, "block device path"),
        ("/dev/-o", 1000, "block device path"),
        ("/dev/loop0 /etc", 1000, "block device path"),
        ("/dev/loop0\n", 1000, "block device path"),
        ("/dev/" + "a" * 300, 1000, "block device path"),
        (None, 1000, "block device path"),
        ("/dev/null", 1000, "not a block device"),
        ("/dev/shm", 1000, "not a block device"),
        ("/dev/fd", 1000, "leads outside /dev"),
        ("/dev/vdsm-no-such-device", 453, "no such device"),
    ],
)
def test_bad_devices_are_refused(hosts: Hosts, device: object, code: int, reason: str) -> None:
    message = failed(hosts.connect(POSIXFS, con(device, vfs_type="ext4")), code)
    assert reason in message
    if code == 1000:
        assert "connectionParams[0].connection" in message
    assert os.listdir(hosts.roots) == ["shared"]  # no mount point was made


@pytest.mark.parametrize("vfs_type", [None, "", "nfs", "cifs", "fuse.sshfs", "ext4 ", "EXT4", 4])
def test_bad_vfs_types_are_refused(hosts: Hosts, vfs_type: object) -> None:
    message = failed(hosts.connect(POSIXFS, con("/dev/loop0", vfs_type=vfs_type)), 1000)
    assert "connectionParams[0].vfs_type" in message and "ext4" in message
    assert os.listdir(hosts.roots) == ["shared"]


def test_bad_mount_options_are_refused_by_name(hosts: Hosts) -> None:
    entry = con("/dev/loop0", vfs_type="ext4", mnt_options="noatime,suid")
    message = failed(hosts.connect(POSIXFS, entry), 1000)
    assert "connectionParams[0].mnt_options" in message and "'suid' is not allowed" in message
    assert os.listdir(hosts.roots) == ["shared"]


def test_disconnect_checks_the_device_path_too(hosts: Hosts) -> None:
    message = failed(hosts.disconnect(POSIXFS, con("/dev/../etc")), 1000)
    assert "connectionParams[0].connection" in message


# --- POSIXFS: a real ext4 on a loop device -----------------------------------------------------


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stderr}"
    return proc.stdout.strip()


def _mounts_of(device: str) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [m.mount_point for m in parse_mountinfo(text) if m.source == device]


@contextlib.contextmanager
def loop_device(image: Path, mkfs: bool = True) -> Iterator[str]:
    """A loop device on a 64 MiB file (with an ext4 on it); whatever is still mounted from it
    is unmounted and the device detached at the end, whatever happened."""
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
        if mkfs:
            _run("mkfs.ext4", "-q", device)
        yield device
    finally:
        for mount_point in reversed(_mounts_of(device)):
            subprocess.run(["umount", "-l", mount_point], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[str]:
    with loop_device(tmp_path / "disk.img") as device:
        yield device


def test_an_ext4_on_a_loop_device_is_mounted_and_its_domains_found(hosts: Hosts, ext4: str) -> None:
    entry = con(ext4, vfs_type="ext4", mnt_options="noatime")
    server = hosts.server()
    mount_point = server.mount_point(ext4)
    assert mount_point == hosts.roots / transform_path(ext4)

    assert ok(hosts.connect(POSIXFS, entry)) == ()
    [mounted] = [m for m in server.mounts() if m.mount_point == str(mount_point)]
    assert mounted.source == ext4 and mounted.fs_type == "ext4"
    assert {"nosuid", "nodev", "noatime"} <= set(mounted.options)
    assert ok(hosts.connect(POSIXFS, entry)) == ()  # mounted already: nothing to do
    assert _mounts_of(ext4) == [str(mount_point)]

    # Another host makes a domain on it; this one finds it at its next connect.
    sd = new_uuid()
    hosts.a.create_domain(mount_point, sd, "on-ext4")
    assert ok(hosts.connect(POSIXFS, entry)) == (sd,)
    assert hosts.b.domain(sd).path == mount_point / sd

    assert ok(hosts.disconnect(POSIXFS, con(ext4))) == (sd,)
    assert _mounts_of(ext4) == [] and not mount_point.exists()
    assert hosts.b.domain_uuids() == []
    assert ok(hosts.disconnect(POSIXFS, con(ext4))) == ()  # not connected: nothing to do

    # The domain is on the file system, not on the host: a new mount finds it again.
    assert ok(hosts.connect(POSIXFS, con(ext4, vfs_type="ext4"))) == (sd,)
    assert hosts.b.domain(sd).metadata.name == "on-ext4"
    ok(hosts.disconnect(POSIXFS, con(ext4)))


def test_a_busy_file_system_stays_mounted_and_its_domains_known(hosts: Hosts, ext4: str) -> None:
    mount_point = hosts.server().mount_point(ext4)
    ok(hosts.connect(POSIXFS, con(ext4, vfs_type="ext4")))
    sd = new_uuid()
    hosts.b.create_domain(mount_point, sd, "busy")
    with open(mount_point / sd / "dom_md" / "metadata", "rb"):
        message = failed(hosts.disconnect(POSIXFS, con(ext4)), 477)
        assert "busy" in message and "umount" in message
        assert _mounts_of(ext4) == [str(mount_point)]
        assert hosts.b.domain_uuids() == [sd]
    assert ok(hosts.disconnect(POSIXFS, con(ext4))) == (sd,)


def test_a_device_without_a_file_system_fails_with_mounts_stderr(
    hosts: Hosts, tmp_path: Path
) -> None:
    with loop_device(tmp_path / "blank.img", mkfs=False) as device:
        message = failed(hosts.connect(POSIXFS, con(device, vfs_type="ext4")), 477)
        assert f"mount -t ext4 -o nosuid,nodev {device}" in message
        assert "wrong fs type" in message or "bad superblock" in message or "mount" in message
        assert _mounts_of(device) == []
        assert not hosts.server().mount_point(device).exists()  # the mount point it made


def test_a_device_mounted_elsewhere_is_not_mounted_again(
    hosts: Hosts, ext4: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run("mount", "-t", "ext4", ext4, str(elsewhere))
    message = failed(hosts.connect(POSIXFS, con(ext4, vfs_type="ext4")), 451)
    assert f"already mounted at {elsewhere}" in message
    assert _mounts_of(ext4) == [str(elsewhere)]


def test_a_symlink_planted_as_the_mount_point_is_refused(hosts: Hosts, ext4: str) -> None:
    mount_point = hosts.server().mount_point(ext4)
    mount_point.symlink_to(hosts.outside)
    message = failed(hosts.connect(POSIXFS, con(ext4, vfs_type="ext4")), 451)
    assert "is not a directory" in message
    assert _mounts_of(ext4) == []


def test_a_mount_point_holding_another_device_is_refused(
    hosts: Hosts, ext4: str, tmp_path: Path
) -> None:
    with loop_device(tmp_path / "other.img") as other:
        mount_point = hosts.server().mount_point(ext4)
        mount_point.mkdir()
        _run("mount", "-t", "ext4", "-o", "nosuid,nodev", other, str(mount_point))
        message = failed(hosts.connect(POSIXFS, con(ext4, vfs_type="ext4")), 451)
        assert f"has {other} mounted, not {ext4}" in message
        assert _mounts_of(ext4) == []
