"""vdsmd's settings: typed, each with its default and why, from a config file and flags.

The file is INI (``/etc/vdsm/vdsm.conf`` by default), one ``[vdsm]`` section whose keys are
the field names below; flags override the file. A bad value is reported naming the key and
the file, never as a traceback.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from vdsm_api.pki import DEFAULT_PKI_DIR, PkiLayout

DEFAULT_CONFIG_FILE = Path("/etc/vdsm/vdsm.conf")
SECTION = "vdsm"


class ConfigError(Exception):
    """A setting is missing, malformed or contradicts another; the message says which."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach: 127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Config:
    # Loopback by default: the API can create and delete disks, so exposing it to the network
    # is a deliberate choice (with TLS and client certificates).
    host: str = "127.0.0.1"
    # VDSM's port, so existing engines and scripts find us.
    port: int = 54321
    # Durable state: the storage repository (links to domains), VM records.
    state_dir: Path = Path("/var/lib/vdsm")
    # Runtime files: the pid and the bound port, for scripts and tests.
    run_dir: Path = Path("/run/vdsm")
    libvirt_uri: str = "qemu:///system"
    # The libvirt domain type of VMs: "kvm", "qemu" (TCG: slow but runs anywhere), or "auto":
    # kvm only on real kvm_intel/kvm_amd, as a Linux guest does not boot on nested kvm_pvm.
    vm_domain_type: str = "auto"
    # TLS with client certificates, as VDSM: vdsmd runs as root and its API creates, deletes and
    # boots disks, so every caller must prove who it is. Plain HTTP is for loopback only, set
    # explicitly (tls = no), and logged as a warning at start.
    tls: bool = True
    # This host's certificates, as `vdsm-tool configure` creates them (vdsm_api.pki's layout:
    # certs/cacert.pem, certs/vdsmcert.pem, keys/vdsmkey.pem, ...).
    pki_dir: Path = DEFAULT_PKI_DIR
    # Each overrides one file of pki_dir's layout; setting one while tls is off is refused.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # The only directories where createStorageDomain may create a domain (a domain's directory
    # must be one of them or lie under one, symlinks resolved). VDSM mounts its storage
    # servers under /rhev/data-center/mnt.
    storage_roots: tuple[Path, ...] = (Path("/rhev/data-center/mnt"),)
    # The only directory VM.create takes a kernel or an initrd from: a client never names an
    # arbitrary host file for QEMU to read.
    boot_dir: Path = Path("/var/lib/vdsm/boot")
    # Seconds a mirror in auto copy mode may go without shrinking what is left to copy before
    # it is restarted with synchronous writes (which always converge, at some guest latency).
    replication_convergence_window: float = 10.0
    # Copies saturate storage: two at a time keep a 2-core host responsive.
    max_concurrent_copies: int = 2
    # MiB/s each syncImageData copy may go at most (qemu-img convert -r, or the speed of its
    # mirror job when the rate adapts); 0: as fast as storage allows. A copy at full speed
    # takes most of a disk it shares with busy guests (bench: a guest saturating the disk
    # kept 0.2-0.3x of its throughput); a cap trades a longer copy for the guests' share.
    copy_rate_limit: int = 0
    # Every copy's rate adapts to the guests' I/O (vdsm/copy_governor.py: syncImageData and
    # the offline moves through a qemu-storage-daemon mirror job, the mirror, the live
    # merge): full speed while they are idle, held back while it hurts them, never below a
    # floor; copy_rate_limit and diskReplicateStart's bandwidth are still the ceilings.
    adaptive_copy_rate: bool = True
    # sanlock's io_timeout (seconds) written into each new domain's lockspace; every host then
    # joins with the value stored there. VDSM's production value: a host that stops renewing
    # is declared dead (its leases free) after 8 x io_timeout + 60 s, 140 s at 10. Test
    # machines use 1 (72 s), never production hosts: storage that stalls longer than it
    # makes sanlock kill the lease holders.
    sanlock_io_timeout: int = 10
    # Seconds spmStart waits for this host to join the master domain's lockspace before it
    # fails with 661 (VDSM's ACQUIRE_HOST_ID_TIMEOUT).
    host_id_timeout: float = 180.0
    # Seconds between two checks that the SPM still holds its lease; one that lost it stops
    # being SPM at once (vdsmd exits, killing its copies, as VDSM's SPM watchdog panics).
    spm_watchdog_interval: float = 5.0
    # Seconds between two checks of each connected domain (metadata read, lockspace joined),
    # reported by repoStats (VDSM's domain monitor interval).
    domain_monitor_interval: float = 10.0
    # Seconds a domain's storage has to answer the monitor's probe (a direct read of its
    # metadata, from a child process) before every verb on the domain is refused with 379
    # instead of blocking on it (domain_health.DEFAULT_PROBE_TIMEOUT).
    domain_probe_timeout: float = 10.0
    # Seconds a domain's answer to a probe vouches for it: a verb that touches a domain whose
    # last answer is older probes it first, so it meets a bounded probe instead of a hung
    # storage (domain_health.DEFAULT_FRESH_FOR); 0 probes before every touch.
    domain_probe_fresh: float = 1.0
    # Volume leases in pools whose domains have sanlock lockspaces: a running VM's top volume
    # lease is held by its QEMU process (libvirt's sanlock lock manager must be configured:
    # lock_manager = "sanlock" in qemu.conf), and vdsmd holds the lease of every volume a task
    # writes. Off only for a host whose libvirt cannot hold leases; then nothing stops two hosts
    # from writing one disk.
    volume_leases: bool = True
    # An API request is a few KiB; anything much larger is an error or an attack.
    max_request_bytes: int = 4 * 1024 * 1024
    # Connections served at once; one more is answered 503 and closed. Each holds a thread and
    # up to max_request_bytes of memory, so this bounds both.
    max_connections: int = 64
    # Seconds a client has to send one whole request (line, headers and body), however it
    # dribbles it; then the connection is closed.
    request_timeout: float = 30.0
    # Seconds SIGTERM waits for running tasks before stopping (and rolling back) the rest.
    shutdown_grace: float = 10.0
    log_level: str = "INFO"
    log_file: Path | None = None  # None: standard error
    # The log file is rotated at this size, keeping log_backups old files (vdsmd.log.1, ...).
    log_max_bytes: int = 20 * 1024 * 1024
    log_backups: int = 5

    @property
    def tls_files(self) -> TlsFiles:
        """The server's certificate, key and client CA: pki_dir's layout unless overridden."""
        layout = PkiLayout(self.pki_dir)
        return TlsFiles(
            cert=self.tls_cert or layout.server_cert,
            key=self.tls_key or layout.server_key,
            ca=self.tls_ca or layout.ca_cert,
        )

    @property
    def copy_rate_limit_bytes(self) -> int | None:
        """copy_rate_limit in bytes per second, None for no limit."""
        return self.copy_rate_limit * 1024**2 if self.copy_rate_limit else None

    def validate(self) -> Config:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} is not a TCP port")
        if self.max_concurrent_copies < 1:
            raise ConfigError("max_concurrent_copies: must be at least 1")
        if self.copy_rate_limit < 0:
            raise ConfigError("copy_rate_limit: must be 0 (no limit) or a rate in MiB/s")
        if not 1 <= self.sanlock_io_timeout <= 60:
            raise ConfigError("sanlock_io_timeout: must be 1 to 60 seconds")
        for name in (
            "host_id_timeout",
            "spm_watchdog_interval",
            "domain_monitor_interval",
            "domain_probe_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be more than 0 seconds")
        if self.domain_probe_fresh < 0:
            raise ConfigError("domain_probe_fresh: must be 0 or more seconds")
        if self.max_request_bytes < 1024:
            raise ConfigError("max_request_bytes: must be at least 1024")
        if self.tls:
            for name in ("tls_cert", "tls_key", "tls_ca"):
                path = getattr(self, name)
                if path is not None and not path.is_absolute():
                    raise ConfigError(f"{name}: {path} is not an absolute path")
        else:
            explicit = [n for n in ("tls_cert", "tls_key", "tls_ca") if getattr(self, n)]
            if explicit:
                raise ConfigError(
                    f"{explicit[0]}: set while tls is off (plain HTTP would ignore it); "
                    "turn tls on or remove the setting"
                )
            if not is_loopback(self.host):
                raise ConfigError(
                    f"host: {self.host} is not a loopback address, and tls is off: plain HTTP "
                    "has no authentication, so it is served on loopback only"
                )
        if not self.storage_roots:
            raise ConfigError("storage_roots: needs at least one directory")
        for root in self.storage_roots:
            if not root.is_absolute():
                raise ConfigError(f"storage_roots: {root} is not an absolute path")
        if not self.boot_dir.is_absolute():
            raise ConfigError(f"boot_dir: {self.boot_dir} is not an absolute path")
        if self.max_connections < 1:
            raise ConfigError("max_connections: must be at least 1")
        if not self.request_timeout > 0:
            raise ConfigError("request_timeout: must be more than 0 seconds")
        if self.log_max_bytes < 1024:
            raise ConfigError("log_max_bytes: must be at least 1024")
        if self.log_backups < 1:
            raise ConfigError("log_backups: must be at least 1")
        if self.vm_domain_type not in ("auto", "kvm", "qemu"):
            raise ConfigError(f"vm_domain_type: {self.vm_domain_type!r} is not auto, kvm, qemu")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level: {self.log_level!r} is not DEBUG, INFO, WARNING, ERROR")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}

# One line per setting for ``vdsmd --help`` (the comments on Config say why each default).
HELP = {
    "host": "address to listen on",
    "port": "TCP port (0: any free port, written to RUN_DIR/vdsmd.port)",
    "state_dir": "durable state: the storage repository and the VM records",
    "run_dir": "runtime files: vdsmd.pid and vdsmd.port",
    "libvirt_uri": "libvirt connection for VMs",
    "vm_domain_type": "libvirt domain type of VMs: auto, kvm or qemu (TCG)",
    "tls": "serve HTTPS and require a client certificate signed by the CA (--no-tls: plain "
    "HTTP, loopback only, no authentication)",
    "pki_dir": "this host's certificates (vdsm-tool configure creates them)",
    "tls_cert": "server certificate (PEM; none: PKI_DIR/certs/vdsmcert.pem)",
    "tls_key": "server private key (PEM; none: PKI_DIR/keys/vdsmkey.pem)",
    "tls_ca": "CA that client certificates must be signed by (none: PKI_DIR/certs/cacert.pem)",
    "storage_roots": "comma-separated directories storage domains may be created in "
    "(each domain's directory is one of them or under one)",
    "boot_dir": "directory VM.create may take kernel and initrd files from",
    "replication_convergence_window": "seconds a mirror in auto copy mode may stop shrinking "
    "before it switches to synchronous writes",
    "max_concurrent_copies": "qemu-img copy tasks run at once; more wait their turn",
    "copy_rate_limit": "MiB/s each syncImageData copy may go at most, leaving guests on the "
    "same storage their share; 0: no limit",
    "adaptive_copy_rate": "every copy (sync, mirror, merge) yields to the guests' I/O (full "
    "speed while they are idle)",
    "sanlock_io_timeout": "sanlock io_timeout (seconds) of new domains' lockspaces; a dead "
    "host's leases free after 8 x this + 60 s",
    "host_id_timeout": "seconds spmStart waits for this host to join the master's lockspace",
    "spm_watchdog_interval": "seconds between checks that the SPM still holds its lease",
    "domain_monitor_interval": "seconds between checks of each connected domain (repoStats)",
    "domain_probe_timeout": "seconds a domain's storage has to answer a check before verbs on "
    "it are refused (379) instead of blocking",
    "domain_probe_fresh": "seconds a domain's answer to a probe vouches for it before a verb "
    "touching it probes again (0: before every touch)",
    "volume_leases": "hold volume leases (VMs through libvirt's sanlock lock manager, tasks "
    "in vdsmd) in pools with sanlock",
    "max_request_bytes": "largest API request body accepted",
    "max_connections": "connections served at once (one more is answered 503)",
    "request_timeout": "seconds a client has to send a whole request",
    "shutdown_grace": "seconds SIGTERM lets running tasks finish before stopping them",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_file": "log file (none: standard error)",
    "log_max_bytes": "size at which the log file is rotated",
    "log_backups": "rotated log files kept",
}


def _convert(name: str, text: str) -> object:
    kind = str(_FIELDS[name].type)
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                raise ValueError(text)
            return lowered in ("true", "yes", "1", "on")
        if kind.startswith("tuple[Path"):
            return tuple(Path(part.strip()) for part in text.split(",") if part.strip())
        if kind.startswith("Path"):
            return Path(text) if text else None
        return text
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a valid {kind}") from None


def load(path: Path | None, overrides: dict[str, str]) -> Config:
    """Read ``path`` (a missing default file is fine; a missing named one is not), then apply
    ``overrides`` (field name → text, from flags)."""
    values: dict[str, object] = {}
    if path is not None:
        parser = configparser.ConfigParser()
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except FileNotFoundError:
            if path != DEFAULT_CONFIG_FILE:
                raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, configparser.Error) as e:
            raise ConfigError(f"config file {path}: {e}") from None
        if parser.has_section(SECTION):
            for key, text in parser.items(SECTION):
                if key not in _FIELDS:
                    raise ConfigError(f"{path}: unknown setting {key!r} in [{SECTION}]")
                values[key] = _convert(key, text)
    for key, text in overrides.items():
        values[key] = _convert(key, text)
    return Config(**values).validate()  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for every setting: --port 54321, --state-dir DIR, --tls/--no-tls, ..."""
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_FILE,
        help=f"the INI config file with a [{SECTION}] section (default {DEFAULT_CONFIG_FILE})",
    )
    for name, f in _FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = "none" if f.default is None else f.default
        if str(f.type) == "bool":
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                help=f"{HELP[name]} (default {'on' if f.default else 'off'})",
            )
        else:
            parser.add_argument(
                flag, dest=name, metavar=name.upper(), help=f"{HELP[name]} (default {default})"
            )


def from_arguments(args: argparse.Namespace) -> Config:
    overrides = {
        name: str(getattr(args, name)) for name in _FIELDS if getattr(args, name, None) is not None
    }
    return load(args.config, overrides)
