"""vdsmd: the host agent daemon. Reads its config, recovers, serves the API until SIGTERM.

Start-up order matters for crash safety: the storage repository is opened, this host's own
tasks (spmStart) left unfinished by a previous daemon are rolled back, and the persisted pool
connections are rejoined (in the background) *before* the API answers. A pool's SPM tasks are
loaded and rolled back only by spmStart, on the host that holds the pool's lease: two hosts
never both recover the master's tasks. On SIGTERM or SIGINT the server stops accepting
requests, running tasks get ``shutdown_grace`` seconds to finish and are then stopped and
rolled back, and the daemon exits 0 (its sanlock leases die with it; its lockspaces stay
joined for the next start). VMs are libvirt's, never touched by a stop.

An SPM that loses its lease (fenced by another host, the lockspace lost) exits at once with
:data:`EXIT_LEASE_LOST`, its copies killed: nothing it still runs may write without the lease.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import ssl
import sys
import threading
from types import FrameType

from vdsm import __version__, api, config
from vdsm.observe import host_state
from vdsm.observe.metrics import METRICS_PATH, HostMetrics
from vdsm.observe.web_page import PAGE_PATH, STATUS_PATH, WebPage
from vdsm.rpc.dispatcher import Dispatcher
from vdsm.rpc.http_server import RPCServer, make_ssl_context
from vdsm.storage import fileutil, rollback_steps
from vdsm.storage.clusterlock import LeaseHolder
from vdsm.storage.domain_health import DomainHealth
from vdsm.storage.host_storage import HostStorage
from vdsm.storage.image_copy import CopyRate
from vdsm.storage.pool_connection import PoolConnections
from vdsm.storage.repository import StorageRepository
from vdsm.storage.spm import SpmRoles
from vdsm.storage.storage_roots import StorageRoots
from vdsm.storage.task.manager import TaskManager
from vdsm.storage.volume_lease import VolumeLeases
from vdsm.virt.connection import Connection
from vdsm.virt.merge import Merges
from vdsm.virt.replication import Replications
from vdsm.virt.vm_manager import VmManager, detect_domain_type
from vdsm.virt.vm_store import VmStore
from vdsm_api import schema

log = logging.getLogger("vdsm.vdsmd")

PID_FILE = "vdsmd.pid"
PORT_FILE = "vdsmd.port"
# The exit status of a vdsmd that lost an SPM lease (a service manager restarts it).
EXIT_LEASE_LOST = 3


class Daemon:
    """Everything vdsmd runs, built from a Config and torn down in reverse order."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg
        repository = StorageRepository(
            cfg.state_dir / "storage",
            DomainHealth(cfg.domain_probe_timeout, cfg.domain_probe_fresh),
        )
        self.tasks = TaskManager(
            rollback_steps=rollback_steps.table(),
            repository=repository,
            max_concurrent_copies=cfg.max_concurrent_copies,
        )
        self.connections = PoolConnections(
            repository,
            io_timeout=cfg.sanlock_io_timeout,
            monitor_interval=cfg.domain_monitor_interval,
        )
        # One sanlock registration for vdsmd: the SPM lease and the volume leases of tasks.
        lease_holder = LeaseHolder()
        self.spm = SpmRoles(
            repository,
            self.connections,
            self.tasks,
            holder=lease_holder,
            host_id_timeout=cfg.host_id_timeout,
            watchdog_interval=cfg.spm_watchdog_interval,
            on_lease_lost=lease_lost,
        )
        self.storage = HostStorage(
            repository,
            self.connections,
            self.spm,
            storage_roots=StorageRoots(cfg.storage_roots),
            io_timeout=cfg.sanlock_io_timeout,
            leases=VolumeLeases(lease_holder, self.connections, enabled=cfg.volume_leases),
        )
        recovered = self.tasks.recover([self.storage.hsm_tasks_dir])
        if recovered:
            log.info("rolled back %d host task(s) left unfinished: %s", len(recovered), recovered)
        log.info("pools rejoined: %s", self.connections.reconnect_all())
        self.connection = Connection(cfg.libvirt_uri)
        self.vms = VmManager(
            self.connection,
            self.storage,
            VmStore(cfg.state_dir / "vms"),
            domain_type=detect_domain_type(cfg.vm_domain_type),
            boot_dir=cfg.boot_dir,
        )
        # /metrics and the web page read the host through the dispatcher built below (the
        # API's own answers); the dispatcher and the replications report to the metrics.
        self.metrics = HostMetrics(lambda: host_state.snapshot(dispatcher.read))
        self.replications = Replications(
            self.storage,
            convergence_window=cfg.replication_convergence_window,
            guest_io=self.vms.guest_io if cfg.adaptive_copy_rate else None,
            on_ended=self.metrics.replication_ended,
        )
        self.merges = Merges(
            self.storage, guest_io=self.vms.guest_io if cfg.adaptive_copy_rate else None
        )
        log.info("recovered VMs: %s", self.vms.recover())
        for vm in self.vms.all():
            self.replications.recover(vm)
            self.merges.recover(vm)
        dispatcher = Dispatcher(
            schema.load(),
            api.build(
                self.storage,
                self.tasks,
                self.connection,
                self.vms,
                self.replications,
                self.merges,
                copy_rate=CopyRate(
                    cfg.copy_rate_limit_bytes,
                    self.vms.guest_io if cfg.adaptive_copy_rate else None,
                ),
            ),
            # A read of domain storage waits as long as a domain check may: past it, the
            # monitor calls the domain not answering too.
            storage_read_timeout=cfg.domain_probe_timeout,
            on_call=self.metrics.rpc_call,
        )
        page = WebPage(dispatcher.read)
        ssl_context = None
        if cfg.tls:
            files = cfg.tls_files
            ssl_context = make_ssl_context(files.cert, files.key, files.ca)
        self.server = RPCServer(
            (cfg.host, cfg.port),
            dispatcher,
            max_request_bytes=cfg.max_request_bytes,
            max_connections=cfg.max_connections,
            request_timeout=cfg.request_timeout,
            ssl_context=ssl_context,
            views={
                METRICS_PATH: self.metrics.exposition,
                PAGE_PATH: page.page,
                STATUS_PATH: page.status,
            },
        )

    def serve(self, stop: threading.Event) -> None:
        thread = threading.Thread(target=self.server.serve_forever, name="rpc-server")
        thread.start()
        self._write_run_files()
        scheme = "https" if self.cfg.tls else "http"
        if not self.cfg.tls:
            log.warning(
                "serving plain HTTP on %s:%d (tls = no): no caller is authenticated, so every "
                "local user and process can call every verb as root",
                self.cfg.host,
                self.server.port,
            )
        log.info(
            "vdsmd %s serving %s://%s:%d (XML-RPC /RPC2, JSON-RPC /jsonrpc; the host's page /, "
            "Prometheus /metrics)",
            __version__,
            scheme,
            self.cfg.host,
            self.server.port,
        )
        # Python runs signal handlers only in the main thread, between bytecodes; a main thread
        # parked in a bare Event.wait() can miss a SIGTERM that the kernel delivered to another
        # thread (seen after SIGSTOP/SIGCONT: vdsmd ignored SIGTERM until SIGKILL). Waking up
        # every second lets the handler run.
        while not stop.wait(1.0):
            pass
        log.info("stopping: no new requests; tasks get %.0fs to finish", self.cfg.shutdown_grace)
        self.server.shutdown()
        thread.join()
        self.server.server_close()
        self.tasks.shutdown(self.cfg.shutdown_grace)
        self.spm.shutdown()
        self.connections.shutdown()
        self._remove_run_files()
        self.connection.close()
        log.info("vdsmd stopped (VMs keep running)")

    def _write_run_files(self) -> None:
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        fileutil.atomic_write(self.cfg.run_dir / PID_FILE, f"{os.getpid()}\n".encode())
        fileutil.atomic_write(self.cfg.run_dir / PORT_FILE, f"{self.server.port}\n".encode())

    def _remove_run_files(self) -> None:
        for name in (PID_FILE, PORT_FILE):
            fileutil.remove_file(self.cfg.run_dir / name)


def lease_lost(sp_uuid: str, why: str) -> None:
    """An SPM lease is gone: stop every SPM action now. The process ends without rolling
    anything back (that would write metadata without the lease); its copies die with it
    (each child is started with PR_SET_PDEATHSIG), and are killed first all the same."""
    log.critical("exiting: the SPM lease of pool %s is lost (%s)", sp_uuid, why)
    _kill_children()
    logging.shutdown()
    os._exit(EXIT_LEASE_LOST)


def _kill_children() -> None:
    own = str(os.getpid())
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[1].decode() == own:  # field 4, the parent pid
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def setup_logging(cfg: config.Config) -> None:
    handler: logging.Handler
    if cfg.log_file is not None:
        cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
        # Rotated by the daemon itself: a log nobody rotates fills the disk, and every client
        # can add lines to it. RotatingFileHandler writes under a lock, from any thread.
        handler = logging.handlers.RotatingFileHandler(
            cfg.log_file, maxBytes=cfg.log_max_bytes, backupCount=cfg.log_backups
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s (%(threadName)s) [%(name)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())


def check_tls_files(cfg: config.Config) -> None:
    """With TLS on, the certificate, key and CA must be readable: say which is not, and how to
    make it, before anything starts."""
    if not cfg.tls:
        return
    files = cfg.tls_files
    for setting, path in (("tls_cert", files.cert), ("tls_key", files.key), ("tls_ca", files.ca)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise config.ConfigError(
                f"{setting}: cannot read {path}: {e.strerror} (create this host's certificates "
                "with `vdsm-tool configure`, or give the file's path)"
            ) from None
    try:
        make_ssl_context(files.cert, files.key, files.ca)
    except (OSError, ssl.SSLError) as e:
        raise config.ConfigError(
            f"tls: {files.cert}, {files.key} and {files.ca} do not make a TLS context: {e}"
        ) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vdsmd",
        description="vdsm host agent: storage domains, volumes, tasks and live storage "
        "migration over XML-RPC (/RPC2) and JSON-RPC (/jsonrpc).",
    )
    parser.add_argument("--version", action="version", version=f"vdsmd {__version__}")
    config.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.from_arguments(args)
        check_tls_files(cfg)
    except config.ConfigError as e:
        print(f"vdsmd: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon = Daemon(cfg)
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    daemon.serve(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
