"""vdsmd's settings: typed, each with its default and why, from a config file and flags.

The file is INI (``/etc/vdsm/vdsm.conf`` by default), one ``[vdsm]`` section whose keys are
the field names below; flags override the file. A bad value is reported naming the key and
the file, never as a traceback.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG_FILE = Path("/etc/vdsm/vdsm.conf")
SECTION = "vdsm"


class ConfigError(Exception):
    """A setting is missing, malformed or contradicts another; the message says which."""


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
    # TLS with client-certificate verification, as VDSM does. Without tls_ca, clients are not
    # asked for a certificate.
    tls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # Seconds a mirror in auto copy mode may go without shrinking what is left to copy before
    # it is restarted with synchronous writes (which always converge, at some guest latency).
    replication_convergence_window: float = 10.0
    # Copies saturate storage: two at a time keep a 2-core host responsive.
    max_concurrent_copies: int = 2
    # MiB/s each syncImageData copy may read (qemu-img convert -r); 0: as fast as storage
    # allows. A copy sharing a disk with busy guests takes most of its bandwidth while it
    # runs (bench: a guest saturating the disk kept 0.2-0.3x of its throughput); a cap
    # trades a longer copy for the guests' share.
    copy_rate_limit: int = 0
    # An API request is a few KiB; anything much larger is an error or an attack.
    max_request_bytes: int = 4 * 1024 * 1024
    # Seconds SIGTERM waits for running tasks before stopping (and rolling back) the rest.
    shutdown_grace: float = 10.0
    log_level: str = "INFO"
    log_file: Path | None = None  # None: standard error

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
        if self.max_request_bytes < 1024:
            raise ConfigError("max_request_bytes: must be at least 1024")
        if self.tls and (self.tls_cert is None or self.tls_key is None):
            raise ConfigError("tls: needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, name)
            if self.tls and path is not None and not path.is_file():
                raise ConfigError(f"{name}: {path} is not a readable file")
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
    "tls": "serve HTTPS (needs --tls-cert and --tls-key)",
    "tls_cert": "server certificate (PEM)",
    "tls_key": "server private key (PEM)",
    "tls_ca": "CA that client certificates must be signed by (none: no client certificates)",
    "replication_convergence_window": "seconds a mirror in auto copy mode may stop shrinking "
    "before it switches to synchronous writes",
    "max_concurrent_copies": "qemu-img copy tasks run at once; more wait their turn",
    "copy_rate_limit": "MiB/s each syncImageData copy may read (qemu-img convert -r), "
    "leaving guests on the same storage their share; 0: no limit",
    "max_request_bytes": "largest API request body accepted",
    "shutdown_grace": "seconds SIGTERM lets running tasks finish before stopping them",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_file": "log file (none: standard error)",
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
