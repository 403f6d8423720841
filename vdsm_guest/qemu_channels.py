"""TEST-ONLY: the block writer's two channels to a running VM's QEMU.

``Monitor`` sends raw QMP commands through ``libvirt_qemu.qemuMonitorCommand`` (libvirt marks
the domain tainted, "custom-monitor": never on a production VM), and ``find_node`` names the
disk's active format node from ``query-block``. ``NbdExport`` has QEMU serve that node
writable over NBD on a unix socket, and tears the server down again; ``NbdClient`` connects to
it and writes.

The NBD client is a minimal one written here (fixed newstyle handshake, NBD_OPT_GO, simple
replies, no structured replies): about a hundred lines, no extra process and no package to
install, exact per-write latency, and several writes in flight for ``queue_depth`` > 1.
(``qemu-io`` reading commands from stdin works too, but it can only fill a write from a file
or a byte pattern, keeps one write in flight, and its latency includes its own parsing.)
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

ALIAS_PREFIX = "ua-"

# Seconds for the NBD handshake and for one reply at most (a pivot stalls writes for ms).
IO_TIMEOUT = 60.0

# --- NBD protocol constants (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md)
_NBDMAGIC = 0x4E42444D41474943
_IHAVEOPT = 0x49484156454F5054
_REPLY_MAGIC_OPT = 0x3E889045565A9
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_FLAG_FIXED_NEWSTYLE = 1 << 0
_FLAG_NO_ZEROES = 1 << 1
_OPT_GO = 7
_REP_ACK = 1
_REP_INFO = 3
_REP_ERROR_BIT = 1 << 31
_INFO_EXPORT = 0
# Transmission flags of the export (NbdClient.flags): public, the writer checks them.
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
_CMD_READ = 0
_CMD_WRITE = 1
_CMD_DISC = 2
_CMD_FLUSH = 3
_CMD_FLAG_FUA = 1 << 0
_REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
_REPLY = struct.Struct(">IIQ")  # magic, error, cookie


# Defined here rather than in block_writer (which re-exports it) because both channels raise
# it, and callers of the writer catch this one class for QMP and NBD failures alike.
class BlockWriterError(Exception):
    """The writer cannot start, or failed while running (QMP refused, NBD connection lost)."""


class NbdClient:
    """A minimal NBD client on a unix socket: one export, simple replies, requests pipelined.

    ``send_*`` may be called from one thread while ``recv_reply`` blocks in another.
    """

    def __init__(self, path: str, export: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._send_lock = threading.Lock()
        try:
            self._sock.settimeout(IO_TIMEOUT)
            self._sock.connect(path)
            self.size, self.flags = self._handshake(export)
        except BaseException:
            self._sock.close()
            raise

    def _handshake(self, export: str) -> tuple[int, int]:
        magic, opt_magic, server_flags = struct.unpack(">QQH", self._recv(18))
        if magic != _NBDMAGIC or opt_magic != _IHAVEOPT:
            raise BlockWriterError("not a newstyle NBD server")
        if not server_flags & _FLAG_FIXED_NEWSTYLE:
            raise BlockWriterError("the NBD server does not speak fixed newstyle")
        client_flags = _FLAG_FIXED_NEWSTYLE | (server_flags & _FLAG_NO_ZEROES)
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self._sock.sendall(struct.pack(">IQII", client_flags, _IHAVEOPT, _OPT_GO, len(data)) + data)
        size = flags = None
        while True:
            magic, option, reply, length = struct.unpack(">QIII", self._recv(20))
            payload = self._recv(length)
            if magic != _REPLY_MAGIC_OPT or option != _OPT_GO:
                raise BlockWriterError(f"bad NBD option reply {magic:#x} {option}")
            if reply & _REP_ERROR_BIT:
                raise BlockWriterError(
                    f"NBD server refused export {export!r}: {reply:#x} {payload!r}"
                )
            if reply == _REP_INFO and struct.unpack(">H", payload[:2])[0] == _INFO_EXPORT:
                size, flags = struct.unpack(">QH", payload[2:12])
            elif reply == _REP_ACK:
                break
        if size is None or flags is None:
            raise BlockWriterError("the NBD server sent no export size")
        return size, flags

    def _recv(self, length: int) -> bytes:
        chunks = []
        while length:
            chunk = self._sock.recv(min(length, 1 << 20))
            if not chunk:
                raise EOFError("the NBD server closed the connection")
            chunks.append(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def _send(self, command: int, cookie: int, offset: int, length: int, flags: int = 0) -> bytes:
        return _REQUEST.pack(_REQUEST_MAGIC, flags, command, cookie, offset, length)

    def send_write(self, cookie: int, offset: int, data: bytes, fua: bool) -> None:
        header = self._send(_CMD_WRITE, cookie, offset, len(data), _CMD_FLAG_FUA if fua else 0)
        with self._send_lock:
            self._sock.sendall(header + data)

    def send_read(self, cookie: int, offset: int, length: int) -> None:
        with self._send_lock:
            self._sock.sendall(self._send(_CMD_READ, cookie, offset, length))

    def send_flush(self, cookie: int) -> None:
        with self._send_lock:
            self._sock.sendall(self._send(_CMD_FLUSH, cookie, 0, 0))

    def send_disconnect(self) -> None:
        with self._send_lock:
            self._sock.sendall(self._send(_CMD_DISC, 0, 0, 0))

    def recv_reply(self, read_length: int | None = None) -> tuple[int, int, bytes]:
        """(cookie, error, data): ``read_length`` when the reply answers a read of that size."""
        magic, error, cookie = _REPLY.unpack(self._recv(_REPLY.size))
        if magic != _SIMPLE_REPLY_MAGIC:
            raise BlockWriterError(f"bad NBD reply magic {magic:#x}")
        data = self._recv(read_length) if read_length and not error else b""
        return cookie, error, data

    def set_timeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class Monitor:
    """QMP commands to one libvirt domain's QEMU, through libvirt (test-only)."""

    def __init__(self, uri: str, vm_id: str) -> None:
        import libvirt  # imported here: only the libvirt tests need the binding

        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise BlockWriterError(f"cannot connect to {uri}: {e}") from e
        self._vm_id = vm_id.lower()
        if not self.alive():
            self._conn.close()
            raise BlockWriterError(f"no VM {vm_id} running on {uri}")
        self._dom = self._conn.lookupByUUIDString(self._vm_id)

    def alive(self) -> bool:
        """The VM still runs. (Listed, not looked up: libvirt prints failed lookups.)"""
        import libvirt

        active = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return any(d.UUIDString() == self._vm_id for d in active)

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        import libvirt
        import libvirt_qemu

        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            reply = json.loads(libvirt_qemu.qemuMonitorCommand(self._dom, json.dumps(request), 0))
        except libvirt.libvirtError as e:
            raise BlockWriterError(f"{command}: {e}") from e
        if "error" in reply:
            raise BlockWriterError(f"{command} refused: {reply['error'].get('desc', reply)}")
        return reply.get("return")

    def close(self) -> None:
        self._conn.close()


def find_node(monitor: Monitor, image_id: str) -> str:
    """The active (top) format node of the disk aliased ``ua-<image_id>``."""
    qdev = f"/machine/peripheral/{ALIAS_PREFIX}{image_id}/virtio-backend"
    for block in monitor.execute("query-block"):
        if block.get("qdev") == qdev and "inserted" in block:
            return str(block["inserted"]["node-name"])
    raise BlockWriterError(f"no disk with qdev {qdev} in query-block")


class NbdExport:
    """QEMU's NBD server on a unix socket, exporting one node writable under ``name``.

    It owns ``monitor`` and closes it in ``teardown()``; ``server_started`` and
    ``export_added`` record what teardown must undo, as far as ``start()`` got.
    """

    def __init__(self, monitor: Monitor, name: str) -> None:
        self.monitor = monitor
        self.name = name
        self.server_started = False
        self.export_added = False

    def start(self, node_name: str, sock: str) -> None:
        self.monitor.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}})
        self.server_started = True
        self.monitor.execute(
            "block-export-add",
            {
                "type": "nbd",
                "id": self.name,
                "node-name": node_name,
                "name": self.name,
                "writable": True,
            },
        )
        self.export_added = True

    def node(self) -> str:
        """The node the export writes to now: QEMU moves it with the device's node."""
        for export in self.monitor.execute("query-block-exports"):
            if export.get("id") == self.name:
                return str(export["node-name"])
        raise BlockWriterError(f"export {self.name} not found")

    def teardown(self, errors: list[str]) -> None:
        """Delete the export, stop the server and close the monitor; failures go to ``errors``."""
        try:
            if not self.monitor.alive():  # its QEMU took the NBD server along
                return
            if self.export_added:
                # "hard": do not wait for a connection that did not close cleanly.
                try:
                    self.monitor.execute("block-export-del", {"id": self.name, "mode": "hard"})
                except BlockWriterError as e:
                    if "not found" not in str(e):  # gone with the VM, or already
                        errors.append(str(e))
                self.export_added = False
            if self.server_started:
                # Also closes any export left behind, and waits for it.
                try:
                    self.monitor.execute("nbd-server-stop")
                except BlockWriterError as e:
                    if "not running" not in str(e):
                        errors.append(str(e))
                self.server_started = False
        finally:
            self.monitor.close()
