"""Storage server connections: how a host learns the domains of storage it shares with others.

A domain becomes known to the host that creates it (its link in the repository). Every other
host of the pool learns it with VDSM's ``connectStorageServer(domType, spUUID, conList)``:
each connection names storage, which is connected (mounted) if it needs to be, and every
domain found directly in it (``<dir>/<sdUUID>/dom_md/metadata``) is linked into this host's
repository. ``disconnectStorageServer`` removes those links and unmounts. Two types:

- LOCALFS: ``connection`` is a directory, which must lie inside the storage roots (judged on
  its real path, :class:`~vdsm.storage.storage_roots.StorageRoots`). Nothing is mounted.
- POSIXFS: ``connection`` is a block device under ``/dev``, ``vfs_type`` one of
  :data:`VFS_TYPES`, ``mnt_options`` optional tokens from an allowlist. It is mounted, always
  ``nosuid,nodev``, at ``<first storage root>/<connection, '_' doubled and '/' made '_'>``
  (VDSM's naming: ``/dev/loop0`` → ``/rhev/data-center/mnt/_dev_loop0``), created if missing.

Each connection is answered on its own (VDSM's ``statuslist``): a bad one fails alone, with
its code and the reason logged, and the others go on. Only an entry without a usable ``id``
fails the whole call, since nothing could say which answer is whose.

vdsmd runs as root, so nothing the client sends reaches a path or an argv without a check:
the directory is confined, the device path is a strict pattern and must be a block device
whose real path is under ``/dev`` and that is mounted nowhere else (mounting the root file
system again under the roots would expose it there), the file-system type and every mount
option come from allowlists, and the mount point is a real directory (a symlink planted in its
place is refused). Discovery takes only real directories named by a canonical UUID, with a
real ``dom_md/metadata`` file and ``images/`` directory (no symlink into the host), and skips
hidden names: a domain still being created (``.<sdUUID>.creating-…``) is not one yet.

Threads: one mutex serialises every connect and disconnect of this host (a mount and the
check before it must not interleave with another); the repository's links are changed under
the host's metadata lock, taken inside that mutex.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdsm import validation
from vdsm.errors import (
    CommandError,
    InvalidParameter,
    MountError,
    StorageDomainAlreadyExists,
    StorageDomainCreationError,
    StorageDomainLayoutError,
    StorageDomainMetadataNotFound,
    StorageServerConnectionError,
    StorageServerDisconnectionError,
    StorageServerValidationError,
    StorageTypeError,
    VdsmError,
)
from vdsm.storage import os_errors, runner
from vdsm.storage.constants import DomainType
from vdsm.storage.domain import DOM_MD, IMAGES, METADATA_FILE, FileStorageDomain
from vdsm.storage.repository import StorageRepository
from vdsm.storage.storage_roots import StorageRoots

log = logging.getLogger("vdsm.storage.storage_server")

SUPPORTED_TYPES = (DomainType.LOCALFS, DomainType.POSIXFS)

# File systems a POSIXFS connection may mount: local block-device file systems whose kernel
# drivers need no helper program. Anything else (nfs, cifs, fuse, ...) brings helpers, network
# credentials or options this module does not check.
VFS_TYPES = ("ext2", "ext3", "ext4", "xfs", "btrfs")

# Added to every mount, last, so that no option of the caller's can undo them: a device's
# set-uid programs and device nodes must never work on this host.
FORCED_OPTIONS = ("nosuid", "nodev")

# Mount options a caller may ask for: flags, and key=value options with their value's pattern.
# Refused, among others: suid, dev, remount, bind, loop and offset= (other files or ranges
# mounted), user/owner (unprivileged umount), x-* (x-mount.mkdir creates directories),
# context= (SELinux labels), errors=panic (a corrupt disk would panic the host).
FLAG_OPTIONS = frozenset(
    {
        "ro", "rw", "sync", "async", "dirsync", "noexec",
        "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
        "strictatime", "nostrictatime", "lazytime", "nolazytime",
        "discard", "nodiscard", "acl", "noacl", "user_xattr", "nouser_xattr",
        "barrier", "nobarrier", "inode64", "inode32", "noquota", "largeio", "nolargeio",
        "norecovery", "nodatacow", "nodatasum", "autodefrag", "noautodefrag",
    }
)  # fmt: skip
VALUE_OPTIONS: Mapping[str, re.Pattern[str]] = {
    "data": re.compile(r"ordered|writeback|journal"),
    "commit": re.compile(r"[0-9]{1,5}"),
    "errors": re.compile(r"remount-ro|continue"),
    "barrier": re.compile(r"[01]"),
    "logbufs": re.compile(r"[0-9]{1,2}"),
    "logbsize": re.compile(r"[0-9]{1,6}[kKmM]?"),
    "allocsize": re.compile(r"[0-9]{1,9}[kKmMgG]?"),
    "compress": re.compile(r"(zlib|lzo|zstd)(:[0-9]{1,2})?|no"),
    "space_cache": re.compile(r"v1|v2"),
}
MAX_MOUNT_OPTIONS = 1024  # characters

# A device path: /dev and components of letters, digits and ._+:@=- , none starting with a dot
# or a dash, so no '..', no hidden name, nothing an argv parser could take for an option.
_DEVICE_RE = re.compile(r"/dev(/[A-Za-z0-9_][A-Za-z0-9._+:@=-]*)+")
MAX_DEVICE_PATH = 255

# Seconds a mount or umount may take: a local block device mounts in well under a second; a
# failing disk must not hold this host's connection lock forever.
MOUNT_TIMEOUT = 60.0

MOUNTINFO = Path("/proc/self/mountinfo")

# Our own domain metadata is well under a KiB (a big pool's POOL_DOMAINS a few); a larger file
# is not ours and is not read.
MAX_METADATA_BYTES = 1024 * 1024


# --- the request -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionSpec:
    """One entry of connectionParams (VDSM's conList): its id, checked, and the rest as sent,
    checked when this connection is made, so that a bad entry fails alone. ``where`` names it
    in messages (``connectionParams[2]``)."""

    con_id: str
    where: str
    entry: Mapping[str, Any]

    def value(self, key: str) -> Any:
        return self.entry.get(key)

    def param(self, key: str) -> str:
        return f"{self.where}.{key}"


@dataclass(frozen=True)
class ConnectionResult:
    """How one connection went: ``error`` None on success; ``domains``: the sdUUIDs linked
    (connect) or unlinked (disconnect)."""

    con_id: str
    error: VdsmError | None = None
    domains: tuple[str, ...] = ()


def connection_specs(
    con_list: Sequence[object], param: str = "connectionParams"
) -> list[ConnectionSpec]:
    """The entries of connectionParams with their ids checked; 1000 naming the first entry without a
    usable one (a blank id is VDSM's for a connection the engine has not saved yet)."""
    specs = []
    for index, entry in enumerate(con_list):
        where = f"{param}[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidParameter(where, type(entry).__name__, "expected a mapping")
        if entry.get("id") is None:
            raise InvalidParameter(f"{where}.id", None, "missing")
        con_id = validation.uuid(entry["id"], f"{where}.id", allow_blank=True)
        specs.append(ConnectionSpec(con_id, where, entry))
    return specs


def check_type(dom_type: DomainType) -> DomainType:
    if dom_type not in SUPPORTED_TYPES:
        raise StorageTypeError(
            f"domType {dom_type}: not supported by vdsm (only LOCALFS (4) and POSIXFS (6))"
        )
    return dom_type


@dataclass(frozen=True)
class LocalFsConnection:
    con_id: str
    directory: Path  # the real path, inside the storage roots


@dataclass(frozen=True)
class PosixFsConnection:
    con_id: str
    device: str  # as the caller named it (checked): the mount point's name derives from it
    vfs_type: str
    options: tuple[str, ...]  # the caller's, checked; FORCED_OPTIONS are added at mount


def check_device(value: object, param: str) -> str:
    """The shape of a block device path (no file-system access): 1000 naming ``param``."""
    if not isinstance(value, str):
        raise InvalidParameter(param, value, "expected a block device path (/dev/...)")
    if len(value) > MAX_DEVICE_PATH or not _DEVICE_RE.fullmatch(value):
        raise InvalidParameter(
            param, value, "expected a block device path: /dev/ and letters, digits, ._+:@=-"
        )
    return value


def check_vfs_type(value: object, param: str) -> str:
    if value is None or value == "":
        raise InvalidParameter(param, value, f"missing: one of {', '.join(VFS_TYPES)}")
    if value not in VFS_TYPES:
        raise InvalidParameter(param, value, f"expected one of {', '.join(VFS_TYPES)}")
    assert isinstance(value, str)
    return value


def check_mount_options(value: object, param: str) -> tuple[str, ...]:
    """The caller's comma-separated mount options, each from the allowlist; empty or None is
    none. 1000 naming ``param`` and quoting the first option refused."""
    if value is None or value == "":
        return ()
    if not isinstance(value, str):
        raise InvalidParameter(param, value, "expected comma-separated mount options")
    if len(value) > MAX_MOUNT_OPTIONS:
        raise InvalidParameter(param, value, f"longer than {MAX_MOUNT_OPTIONS} characters")
    options = []
    for token in value.split(","):
        token = token.strip(" ")
        if not token:
            continue
        key, sep, setting = token.partition("=")
        if not sep and token in FLAG_OPTIONS:
            options.append(token)
            continue
        pattern = VALUE_OPTIONS.get(key) if sep else None
        if pattern is not None and pattern.fullmatch(setting):
            options.append(token)
            continue
        raise InvalidParameter(
            param, value, f"mount option {validation.shown(token, 40)!r} is not allowed"
        )
    return tuple(options)


def transform_path(remote_path: str) -> str:
    """The mount point's name for a connection, as VDSM names it: '_' doubled, then '/' as
    '_', so that two connections never share a name (``/dev/loop0`` → ``_dev_loop0``)."""
    return remote_path.replace("_", "__").replace("/", "_")


# --- discovery -------------------------------------------------------------------------------


def _layout_problem(path: Path) -> str | None:
    """Why ``path`` cannot be taken for a domain without opening anything, or None. Every part
    discovery relies on must be what it seems, not a symlink: a domain directory, its
    ``dom_md`` or ``images`` linked elsewhere would have this host, as root, read or write
    outside the storage."""
    checks = (
        (path, stat.S_ISDIR, "a directory"),
        (path / DOM_MD, stat.S_ISDIR, "a directory"),
        (path / DOM_MD / METADATA_FILE, stat.S_ISREG, "a regular file"),
        (path / IMAGES, stat.S_ISDIR, "a directory"),
    )
    for part, is_kind, kind in checks:
        try:
            st = os.lstat(part)
        except FileNotFoundError:
            return f"no {part.relative_to(path.parent)}"
        if not is_kind(st.st_mode):
            return f"{part.relative_to(path.parent)} is not {kind}"
        if stat.S_ISREG(st.st_mode) and st.st_size > MAX_METADATA_BYTES:
            return f"{part.relative_to(path.parent)} is larger than {MAX_METADATA_BYTES} bytes"
    return None


def discover_domains(directory: Path) -> list[FileStorageDomain]:
    """The domains directly in ``directory``: ``<directory>/<sdUUID>`` that open as file
    domains. Anything else there — hidden names (a domain being created, a temporary file),
    names that are not canonical UUIDs, broken or foreign layouts — is skipped, the last with
    a warning: one damaged domain must not hide the others."""
    found = []
    for name in sorted(os.listdir(directory)):
        if name.startswith("."):
            continue
        try:
            if validation.uuid(name, "sdUUID") != name:
                continue
        except InvalidParameter:
            continue
        path = directory / name
        problem = _layout_problem(path)
        if problem is not None:
            log.warning("%s is not taken for a domain: %s", path, validation.shown(problem, 200))
            continue
        try:
            found.append(FileStorageDomain.open(path))
        except (StorageDomainMetadataNotFound, StorageDomainLayoutError) as e:
            log.warning("%s is not taken for a domain: %s", path, validation.shown(e.message, 200))
    return found


# --- mounts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    major: int
    minor: int
    mount_point: str
    options: tuple[str, ...]  # the per-mount options (rw, nosuid, nodev, ...)
    fs_type: str
    source: str


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as \040, \011, \012, \134.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo text (proc(5)); a line not of that form is skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
            major, minor = (int(n) for n in fields[2].split(":"))
            entries.append(
                MountEntry(
                    major=major,
                    minor=minor,
                    mount_point=_unescape(fields[4]),
                    options=tuple(fields[5].split(",")),
                    fs_type=fields[dash + 1],
                    source=_unescape(fields[dash + 2]),
                )
            )
        except (ValueError, IndexError):
            continue
    return entries


def _is_device(entry: MountEntry, device: str, rdev: int | None) -> bool:
    """Whether ``entry`` mounts ``device``: by device number (any name of it: /dev/mapper/x is
    /dev/dm-0), else by the real path of its source (btrfs shows an anonymous number)."""
    if rdev is not None and (entry.major, entry.minor) == (os.major(rdev), os.minor(rdev)):
        return True
    if not entry.source.startswith("/"):
        return False
    return os.path.realpath(entry.source) == os.path.realpath(device)


# --- the connections -------------------------------------------------------------------------


class StorageServer:
    """Connects and disconnects this host's storage servers and links the domains in them."""

    def __init__(
        self,
        repository: StorageRepository,
        roots: StorageRoots,
        metadata_lock: Callable[[], AbstractContextManager[None]],
        *,
        pool_domains: Callable[[], Collection[str]] = frozenset,
        mountinfo: Path = MOUNTINFO,
    ) -> None:
        """``metadata_lock``: the host's lock around changes of domain metadata and links
        (HostStorage.metadata_lock). ``pool_domains``: the domains of the pools this host is
        connected to now, which a disconnect must not take away."""
        self.repository = repository
        self.roots = roots
        self._metadata_lock = metadata_lock
        self._pool_domains = pool_domains
        self._mountinfo = mountinfo
        self._lock = threading.Lock()

    def connect(
        self, dom_type: DomainType, specs: Sequence[ConnectionSpec]
    ) -> list[ConnectionResult]:
        """Connect each of ``specs`` and link the domains in it; one result each, in order."""
        check_type(dom_type)
        return [self._each("connect", dom_type, spec) for spec in specs]

    def disconnect(
        self, dom_type: DomainType, specs: Sequence[ConnectionSpec]
    ) -> list[ConnectionResult]:
        """Forget the domains of each of ``specs`` and unmount it; one result each, in order.
        Disconnecting what is not connected succeeds (nothing to do)."""
        check_type(dom_type)
        return [self._each("disconnect", dom_type, spec) for spec in specs]

    def mount_point(self, device: str) -> Path:
        """Where a POSIXFS connection of ``device`` is mounted: in the first storage root."""
        if not self.roots.roots:
            raise VdsmError("no storage roots configured: nowhere to mount")
        return self.roots.roots[0].resolve() / transform_path(device)

    def mounts(self) -> list[MountEntry]:
        return parse_mountinfo(self._mountinfo.read_text("utf-8", errors="replace"))

    # --- one connection ----------------------------------------------------------------------

    def _each(self, action: str, dom_type: DomainType, spec: ConnectionSpec) -> ConnectionResult:
        shown = validation.shown(spec.value("connection"))
        try:
            with self._lock:
                if action == "connect":
                    domains = self._connect(dom_type, spec)
                else:
                    domains = self._disconnect(dom_type, spec)
        except VdsmError as e:
            error = e
        except OSError as e:
            error = self._os_error(action, spec, e)
        else:
            log.info(
                "%s %s %s (id %s): done; domains: %s",
                action,
                dom_type,
                shown,
                spec.con_id,
                ", ".join(domains) or "none",
            )
            return ConnectionResult(spec.con_id, None, tuple(domains))
        log.warning(
            "%s %s %s (id %s) failed, code %d: %s",
            action,
            dom_type,
            shown,
            spec.con_id,
            error.code,
            validation.shown(error.message, 500),
        )
        return ConnectionResult(spec.con_id, error)

    @staticmethod
    def _os_error(action: str, spec: ConnectionSpec, e: OSError) -> VdsmError:
        if e.errno in os_errors.RESOURCE_ERRNOS:
            return os_errors.general(action, validation.shown(spec.value("connection")), e)
        where = str(e.filename) if e.filename else spec.value("connection")
        what = f"{validation.shown(where)}: {e.strerror}"
        if action == "connect":
            return StorageServerConnectionError(what)
        return StorageServerDisconnectionError(what)

    def _connect(self, dom_type: DomainType, spec: ConnectionSpec) -> list[str]:
        if dom_type is DomainType.LOCALFS:
            local = self._local(spec, must_exist=True)
            return self._link_domains(local.directory)
        posix = self._posix(spec)
        mount_point = self._mount(posix, spec.param("connection"))
        return self._link_domains(mount_point)

    def _disconnect(self, dom_type: DomainType, spec: ConnectionSpec) -> list[str]:
        if dom_type is DomainType.LOCALFS:
            local = self._local(spec, must_exist=False)
            return self._unlink_domains(local.directory)
        device = check_device(spec.value("connection"), spec.param("connection"))
        mount_point = self.mount_point(device)
        removed = self._unlink_domains(mount_point)
        try:
            self._umount(mount_point)
        except VdsmError:
            # Still mounted, so still connected: its domains stay known here.
            try:
                self._link_domains(mount_point)
            except VdsmError as e:
                log.warning("domains of %s not linked again: %s", mount_point, e.message)
            raise
        return removed

    # --- LOCALFS -----------------------------------------------------------------------------

    def _local(self, spec: ConnectionSpec, *, must_exist: bool) -> LocalFsConnection:
        value, param = spec.value("connection"), spec.param("connection")
        if value is None:
            raise InvalidParameter(param, None, "missing: the directory to connect")
        try:
            directory = self.roots.confine(value, param)
        except StorageDomainCreationError:
            # Inside the roots (confine checks that first), but no directory there.
            if must_exist:
                raise StorageServerValidationError(
                    f"path = {validation.shown(value)}: not an existing directory"
                ) from None
            assert isinstance(value, str)
            directory = Path(value).resolve()  # gone: the links into it are still forgotten
        return LocalFsConnection(spec.con_id, directory)

    # --- POSIXFS -----------------------------------------------------------------------------

    def _posix(self, spec: ConnectionSpec) -> PosixFsConnection:
        device = check_device(spec.value("connection"), spec.param("connection"))
        vfs_type = check_vfs_type(spec.value("vfs_type"), spec.param("vfs_type"))
        options = check_mount_options(spec.value("mnt_options"), spec.param("mnt_options"))
        return PosixFsConnection(spec.con_id, device, vfs_type, options)

    def _block_device(self, device: str, param: str) -> int:
        """The device number of ``device``, which must be a block device under /dev."""
        real = os.path.realpath(device)
        if not real.startswith("/dev/"):
            raise InvalidParameter(param, device, f"leads outside /dev (to {real})")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise StorageServerValidationError(f"path = {device}: no such device") from None
        if not stat.S_ISBLK(st.st_mode):
            raise InvalidParameter(param, device, "not a block device")
        return st.st_rdev

    def _mount(self, conn: PosixFsConnection, param: str) -> Path:
        """Mount ``conn`` at its mount point, unless it is mounted there already."""
        rdev = self._block_device(conn.device, param)
        mount_point = self.mount_point(conn.device)
        mounts = self.mounts()
        here = [m for m in mounts if m.mount_point == str(mount_point)]
        if here:
            top = here[-1]  # the last mount on a path is the one seen there
            if not _is_device(top, conn.device, rdev):
                raise StorageServerConnectionError(
                    f"{mount_point} has {validation.shown(top.source)} mounted, not {conn.device}"
                )
            missing = [o for o in FORCED_OPTIONS if o not in top.options]
            if missing:
                raise StorageServerConnectionError(
                    f"{conn.device} is mounted at {mount_point} without {','.join(missing)}"
                )
            log.info("%s is already mounted at %s", conn.device, mount_point)
            return mount_point
        elsewhere = [m.mount_point for m in mounts if _is_device(m, conn.device, rdev)]
        if elsewhere:
            raise StorageServerConnectionError(
                f"{conn.device} is already mounted at {validation.shown(elsewhere[0])}: "
                "it is not mounted again under the storage roots"
            )
        created = self._make_mount_point(mount_point)
        argv = [
            "mount",
            "-t",
            conn.vfs_type,
            "-o",
            ",".join((*conn.options, *FORCED_OPTIONS)),
            conn.device,
            str(mount_point),
        ]
        try:
            runner.run(argv, timeout=MOUNT_TIMEOUT)
        except CommandError as e:
            if created:
                _remove_mount_point(mount_point)
            raise MountError(e.detail) from None
        log.info("mounted %s (%s) at %s", conn.device, conn.vfs_type, mount_point)
        return mount_point

    def _make_mount_point(self, mount_point: Path) -> bool:
        """Create the mount point if missing; whether it was created. Whatever is there must
        be a real directory: a symlink planted in its place would have the device mounted
        wherever it leads."""
        mount_point.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(mount_point, 0o755)
            created = True
        except FileExistsError:
            created = False
        if not stat.S_ISDIR(os.lstat(mount_point).st_mode):
            raise StorageServerConnectionError(f"{mount_point} exists and is not a directory")
        return created

    def _umount(self, mount_point: Path) -> None:
        """Unmount whatever is mounted at ``mount_point`` and remove it; nothing mounted there
        is success."""
        if any(m.mount_point == str(mount_point) for m in self.mounts()):
            try:
                runner.run(["umount", str(mount_point)], timeout=MOUNT_TIMEOUT)
            except CommandError as e:
                raise MountError(e.detail) from None
            log.info("unmounted %s", mount_point)
        _remove_mount_point(mount_point)

    # --- the repository's links --------------------------------------------------------------

    def _link_domains(self, directory: Path) -> list[str]:
        """Link every domain found in ``directory``; the first conflict (365: the UUID known
        here at another path) is raised once the others are linked."""
        linked: list[str] = []
        conflict: StorageDomainAlreadyExists | None = None
        domains = discover_domains(directory)
        with self._metadata_lock():
            for domain in domains:
                try:
                    self.repository.adopt_domain(domain.path)
                except StorageDomainAlreadyExists as e:
                    log.warning("%s", e.message)
                    conflict = conflict or e
                    continue
                linked.append(domain.sd_uuid)
        if conflict is not None:
            raise conflict
        return linked

    def _unlink_domains(self, directory: Path) -> list[str]:
        """Forget every known domain whose directory is directly in ``directory``."""
        removed = []
        with self._metadata_lock():
            links = {
                sd_uuid: target
                for sd_uuid, target in sorted(self.repository.domain_links().items())
                if target.parent == directory
            }
            in_use = sorted(set(links) & set(self._pool_domains()))
            if in_use:
                raise StorageServerDisconnectionError(
                    f"{directory} holds {', '.join(in_use)}, of a pool this host is connected "
                    "to: disconnectStoragePool first"
                )
            for sd_uuid, target in links.items():
                if self.repository.forget_domain(sd_uuid, target):
                    removed.append(sd_uuid)
        return removed


def _remove_mount_point(mount_point: Path) -> None:
    try:
        os.rmdir(mount_point)
    except FileNotFoundError:
        pass
    except OSError as e:
        # Not empty (files written under it while unmounted) or busy: left for an operator.
        if e.errno not in (errno.ENOTEMPTY, errno.EBUSY):
            raise
        log.warning("mount point %s not removed: %s", mount_point, e.strerror)
