"""The one libvirt connection of vdsmd, its event loop thread, and reconnection.

libvirt delivers domain events (lifecycle, block jobs, I/O errors) only to a process that
registered an event implementation before connecting and keeps running its loop; this module
does both, once per process (libvirt's event implementation is process-global by design).
When libvirtd restarts, the connection closes; the next call reconnects and re-registers the
event callbacks, so VMs (which outlive libvirtd) stay manageable.

Events are passed to a single listener object (the VM registry), which routes them per VM.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import libvirt

from vdsm.errors import LibvirtError, VdsmError

log = logging.getLogger("vdsm.virt.connection")

_event_loop_lock = threading.Lock()
_event_loop_started = False

# How long a call waits for libvirtd to come back before giving up.
RECONNECT_TIMEOUT = 30.0


class EventListener(Protocol):
    def on_lifecycle(self, vm_id: str, event: int, detail: int) -> None: ...

    def on_block_job(self, vm_id: str, disk: str, job_type: int, status: int) -> None: ...

    def on_io_error(self, vm_id: str, disk: str, action: int, reason: str) -> None: ...


def _start_event_loop() -> None:
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        # libvirt prints every error to stderr by default; ours are raised and logged instead.
        libvirt.registerErrorHandler(lambda _ctx, _error: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:
                    log.exception("libvirt event loop iteration failed")
                    time.sleep(0.1)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class Connection:
    """Owns the connection to ``uri``; ``get()`` returns a live one, reconnecting if needed."""

    def __init__(self, uri: str, listener: EventListener | None = None) -> None:
        self.uri = uri
        self._listener = listener
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []
        _start_event_loop()

    def set_listener(self, listener: EventListener) -> None:
        self._listener = listener

    def get(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None and self._alive(self._conn):
                return self._conn
            self._conn = self._connect()
            return self._conn

    def versions(self) -> tuple[int, int]:
        """(QEMU's version, libvirt's version), as libvirt encodes them (major * 1e6 + ...)."""
        conn = self.get()
        return conn.getVersion(), conn.getLibVersion()

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            for callback_id in self._callback_ids:
                try:
                    conn.domainEventDeregisterAny(callback_id)
                except libvirt.libvirtError:
                    pass
            self._callback_ids = []
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _connect(self) -> libvirt.virConnect:
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while True:
            try:
                conn = libvirt.open(self.uri)
                break
            except libvirt.libvirtError as e:
                if time.monotonic() > deadline:
                    raise LibvirtError(f"{self.uri}: {e.get_error_message()}") from None
                log.warning("cannot connect to %s, retrying: %s", self.uri, e.get_error_message())
                time.sleep(1.0)
        # A keepalive makes a dead libvirtd visible even when no call is in flight.
        try:
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError:
            pass
        conn.registerCloseCallback(self._on_close, None)
        self._register_events(conn)
        log.info("connected to %s", self.uri)
        return conn

    def _on_close(self, conn: libvirt.virConnect, reason: int, opaque: Any) -> None:
        log.warning("connection to %s closed (reason %d); will reconnect", self.uri, reason)
        with self._lock:
            if self._conn is conn:
                self._conn = None
                self._callback_ids = []

    def _register_events(self, conn: libvirt.virConnect) -> None:
        self._callback_ids = [
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            ),
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._block_job, None
            ),
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, self._io_error, None
            ),
        ]

    # Callbacks run on the event loop thread: keep them short and never call libvirt back.

    def _lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        if self._listener is not None:
            self._listener.on_lifecycle(dom.UUIDString(), event, detail)

    def _block_job(
        self, conn: Any, dom: Any, disk: str, job_type: int, status: int, opaque: Any
    ) -> None:
        if self._listener is not None:
            self._listener.on_block_job(dom.UUIDString(), disk, job_type, status)

    def _io_error(
        self,
        conn: Any,
        dom: Any,
        src_path: str,
        dev_alias: str,
        action: int,
        reason: str,
        opaque: Any,
    ) -> None:
        if self._listener is not None:
            self._listener.on_io_error(dom.UUIDString(), dev_alias, action, reason)


def error_message(error: libvirt.libvirtError) -> str:
    """libvirt's own words for a failure, for error messages that name the real cause."""
    return error.get_error_message() or str(error)


def is_no_domain(error: libvirt.libvirtError) -> bool:
    return bool(error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN)


def is_connection_lost(error: libvirt.libvirtError) -> bool:
    """The connection to libvirtd broke under the call (libvirtd restarted or died): libvirt's
    RPC layer says so (``Cannot write data: Broken pipe``, ``client socket is closed``), not
    the domain or the hypervisor. The next :meth:`Connection.get` reconnects."""
    return error.get_error_domain() in (
        libvirt.VIR_FROM_RPC,
        libvirt.VIR_FROM_REMOTE,
    ) or error.get_error_code() in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN)


def failure(error: libvirt.libvirtError, what: str) -> VdsmError:
    """The error for a libvirt call about ``what`` that failed: 4001 (LibvirtUnavailable) when
    the connection to libvirtd was lost, otherwise the general error in libvirt's words."""
    if is_connection_lost(error):
        return LibvirtError(f"{what}: the connection to libvirtd was lost: {error_message(error)}")
    return VdsmError(f"{what}: {error_message(error)}")
