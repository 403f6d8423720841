"""TEST-ONLY: write verifiable blocks into a running VM's disk through the VM's own block layer.

Never use this on a production VM: it sends raw QMP commands to QEMU behind libvirt's back
(libvirt marks the domain tainted, "custom-monitor") and overwrites the start of the disk.

How it works (qemu-notes "Host-side test writer"): the VM runs with ``testShareRW: true``, so
its disk device allows another writer. ``start()`` asks QEMU, through
``libvirt_qemu.qemuMonitorCommand``, to start an NBD server on a unix socket in a fresh temporary
directory and to export the disk's active format node (found with ``query-block`` by the qdev
of the device aliased ``ua-<imageID>``) writable. A writer thread then writes blocks over one
NBD connection. Every write goes through the same block graph as the guest's own I/O: a mirror
copies it, and after a snapshot or a pivot it lands in the new top node (QEMU moves the export
along with the device when it replaces the node).

The NBD client is a minimal one written here (fixed newstyle handshake, NBD_OPT_GO, simple
replies, no structured replies): about a hundred lines, no extra process and no package to
install, exact per-write latency, and several writes in flight for ``queue_depth`` > 1.
(``qemu-io`` reading commands from stdin works too, but it can only fill a write from a file
or a byte pattern, keeps one write in flight, and its latency includes its own parsing.)

Block format: exactly the tiny guest's (``vdsm_guest/init.sh``), so that
``vdsm_guest.checker`` verifies both. Write number ``seq`` (1, 2, ...) goes to slot
``(seq - 1) % slots`` at offset ``slot * block_size``; the first 512 bytes are the header
``VDSMW1 run=<run> seq=<n> slot=<s> md5=<hex>`` space-padded to 511 bytes plus ``"\\n"``; the
rest is a random payload whose md5 is in the header. A write is *acknowledged* when QEMU's
NBD server replied success; with ``fua=True`` that also means it is on stable storage.
``stop()`` drains the writes in flight and flushes, so every acknowledged write is then
readable from the image files by ``verify()``, which writes the acknowledged writes as a
guest-style log and runs ``vdsm_guest.checker`` on the image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import socket
import statistics
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from vdsm_guest import checker

log = logging.getLogger("vdsm_guest.block_writer")

DEFAULT_URI = "qemu:///system"
ALIAS_PREFIX = "ua-"

# Seconds allowed for the writes in flight to be acknowledged when stopping, and for a flush.
DRAIN_TIMEOUT = 30.0
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
_TFLAG_READ_ONLY = 1 << 1
_TFLAG_SEND_FLUSH = 1 << 2
_TFLAG_SEND_FUA = 1 << 3
_CMD_READ = 0
_CMD_WRITE = 1
_CMD_DISC = 2
_CMD_FLUSH = 3
_CMD_FLAG_FUA = 1 << 0
_REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
_REPLY = struct.Struct(">IIQ")  # magic, error, cookie


class BlockWriterError(Exception):
    """The writer cannot start, or failed while running (QMP refused, NBD connection lost)."""


@dataclass(frozen=True)
class Write:
    """One acknowledged write."""

    seq: int
    slot: int
    md5: str  # of the payload (the block after its 512-byte header)
    latency: float  # seconds from sending the request to receiving the server's reply
    timestamp: float  # wall clock (time.time()) at acknowledgment
    acked: float  # time.monotonic() at acknowledgment, to compare with a test's own marks


@dataclass(frozen=True)
class WriteFailure:
    """A write the server answered with an error (errno as NBD reports it)."""

    seq: int
    slot: int
    error: int


class _NbdClient:
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


class _Monitor:
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


def find_node(monitor: _Monitor, image_id: str) -> str:
    """The active (top) format node of the disk aliased ``ua-<image_id>``."""
    qdev = f"/machine/peripheral/{ALIAS_PREFIX}{image_id}/virtio-backend"
    for block in monitor.execute("query-block"):
        if block.get("qdev") == qdev and "inserted" in block:
            return str(block["inserted"]["node-name"])
    raise BlockWriterError(f"no disk with qdev {qdev} in query-block")


class BlockWriter:
    """Writes numbered, checksummed blocks into a VM's disk over an NBD export of its top node.

    ``rate_limit`` (bytes/s) paces the writes; None writes as fast as acknowledgments come.
    ``queue_depth`` writes may be in flight at once (each in its own slot). ``fua`` asks for
    every write to be stable before it is acknowledged (QEMU flushes after each write on
    formats without native FUA, such as qcow2).

    One writer per VM at a time: each starts (and stops) the VM's one NBD server.
    """

    def __init__(
        self,
        vm_id: str,
        image_id: str,
        *,
        libvirt_uri: str = DEFAULT_URI,
        block_size: int = 64 * 1024,
        slots: int = 256,
        rate_limit: float | None = None,
        queue_depth: int = 1,
        fua: bool = False,
    ) -> None:
        if block_size <= checker.HEADER_SIZE or block_size % 512:
            raise ValueError(f"block_size must be a multiple of 512 above 512: {block_size}")
        if slots < 1 or not 1 <= queue_depth <= slots:
            raise ValueError(f"need 1 <= queue_depth ({queue_depth}) <= slots ({slots})")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError(f"rate_limit must be positive: {rate_limit}")
        self.vm_id = vm_id
        self.image_id = image_id
        self.libvirt_uri = libvirt_uri
        self.block_size = block_size
        self.slots = slots
        self.rate_limit = rate_limit
        self.queue_depth = queue_depth
        self.fua = fua
        self.run = f"hostwriter-{uuid.uuid4().hex[:12]}"
        self.export = f"vdsm-bw-{image_id[:8]}"
        self.node_name = ""  # the node exported, as query-block named it at start()
        self.warm_up_latency: float | None = None  # seconds for the first round trip (a flush)

        self._lock = threading.Lock()
        self._writes: list[Write] = []
        self._failures: list[WriteFailure] = []
        self._inflight: dict[int, tuple[int, str, float]] = {}  # seq: slot, md5, sent
        self._slots_free = threading.Semaphore(queue_depth)
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._started_at = 0.0
        self._random = random.Random()
        self._flush_done = threading.Event()
        self._flush_error = 0

        self._used = False
        self._monitor: _Monitor | None = None
        self._tmpdir: str | None = None
        self._server_started = False
        self._export_added = False
        self._nbd: _NbdClient | None = None
        self._sender: threading.Thread | None = None
        self._receiver: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> BlockWriter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A failing test's own exception is the one to see: then stop() only cleans up.
        self._stop(raise_errors=exc_type is None)

    def start(self) -> None:
        """Export the disk, connect, warm the connection up, and start writing."""
        if self._used:
            raise BlockWriterError("a BlockWriter runs once: make a new one")
        self._used = True
        try:
            self._monitor = _Monitor(self.libvirt_uri, self.vm_id)
            self.node_name = find_node(self._monitor, self.image_id)
            self._tmpdir = tempfile.mkdtemp(prefix="vdsm-bw-")
            sock = str(Path(self._tmpdir) / "nbd.sock")
            self._monitor.execute(
                "nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}}
            )
            self._server_started = True
            self._monitor.execute(
                "block-export-add",
                {
                    "type": "nbd",
                    "id": self.export,
                    "node-name": self.node_name,
                    "name": self.export,
                    "writable": True,
                },
            )
            self._export_added = True
            self._nbd = _NbdClient(sock, self.export)
            self._check_export(self._nbd)
            self._warm_up(self._nbd)
            log.info(
                "writing to VM %s image %s: node %s exported as %s",
                self.vm_id,
                self.image_id,
                self.node_name,
                self.export,
            )
            self._started_at = time.monotonic()
            self._receiver = threading.Thread(
                target=self._receive, args=(self._nbd,), name="block-writer-recv", daemon=True
            )
            self._sender = threading.Thread(
                target=self._send, args=(self._nbd,), name="block-writer-send", daemon=True
            )
            self._receiver.start()
            self._sender.start()
        except BaseException:
            self._stop(raise_errors=False)
            raise

    def _check_export(self, nbd: _NbdClient) -> None:
        if nbd.flags & _TFLAG_READ_ONLY:
            raise BlockWriterError(f"export {self.export} is read-only")
        if self.fua and not nbd.flags & _TFLAG_SEND_FUA:
            raise BlockWriterError(f"export {self.export} does not support FUA")
        if nbd.size < self.slots * self.block_size:
            raise BlockWriterError(
                f"disk of {nbd.size} bytes too small for {self.slots} blocks of {self.block_size}"
            )

    def _warm_up(self, nbd: _NbdClient) -> None:
        """One flush round trip before the first write: it changes nothing on the disk, and a
        connection that cannot flush fails here rather than in the writer thread."""
        if not nbd.flags & _TFLAG_SEND_FLUSH:
            return
        started = time.monotonic()
        nbd.send_flush(0)
        _, error, _ = nbd.recv_reply()
        if error:
            raise BlockWriterError(f"warm-up flush failed: errno {error}")
        self.warm_up_latency = time.monotonic() - started

    def current_node(self) -> str:
        """The disk's active node now (it changes with a snapshot, a pivot, a merge)."""
        if self._monitor is None:
            raise BlockWriterError("not started")
        return find_node(self._monitor, self.image_id)

    def exported_node(self) -> str:
        """The node the export writes to now: QEMU moves it with the device's node."""
        if self._monitor is None:
            raise BlockWriterError("not started")
        for export in self._monitor.execute("query-block-exports"):
            if export.get("id") == self.export:
                return str(export["node-name"])
        raise BlockWriterError(f"export {self.export} not found")

    def stop(self) -> None:
        """Stop writing, wait for the writes in flight, flush, and tear the export down.

        Raises BlockWriterError (after cleaning up) when the writer failed while running.
        """
        self._stop(raise_errors=True)

    def _stop(self, raise_errors: bool) -> None:
        errors: list[str] = []
        self._stopping.set()
        try:
            if self._sender is not None:
                self._sender.join(DRAIN_TIMEOUT)
            if self._nbd is not None and self._receiver is not None and self._error is None:
                try:
                    self._drain_and_flush(errors)
                except OSError as e:
                    errors.append(f"cannot flush: {e}")
        finally:
            nbd, self._nbd = self._nbd, None
            if nbd is not None:
                try:
                    nbd.send_disconnect()
                except OSError:
                    pass
                nbd.close()  # wakes the receiver up if it still waits
            for thread in (self._sender, self._receiver):
                if thread is not None:
                    thread.join(DRAIN_TIMEOUT)
                    if thread.is_alive():
                        errors.append(f"thread {thread.name} did not end")
            self._teardown_export(errors)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
        if self._error is not None:
            errors.insert(0, f"writer failed: {self._error!r}")
            self._error = None
        if errors and raise_errors:
            raise BlockWriterError("; ".join(errors))
        for message in errors:
            log.warning("block writer %s: %s", self.export, message)

    def _drain_and_flush(self, errors: list[str]) -> None:
        assert self._nbd is not None
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            with self._lock:
                pending = len(self._inflight)
            if not pending or self._error is not None:
                break
            if time.monotonic() > deadline:
                errors.append(f"{pending} writes still in flight after {DRAIN_TIMEOUT}s")
                return
            time.sleep(0.001)
        if self._error is not None or not self._nbd.flags & _TFLAG_SEND_FLUSH:
            return
        self._nbd.send_flush(0)
        if not self._flush_done.wait(DRAIN_TIMEOUT):
            errors.append("no reply to the final flush")
        elif self._flush_error:
            errors.append(f"the final flush failed: errno {self._flush_error}")

    def _teardown_export(self, errors: list[str]) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            if not monitor.alive():  # its QEMU took the NBD server along
                return
            if self._export_added:
                # "hard": do not wait for a connection that did not close cleanly.
                try:
                    monitor.execute("block-export-del", {"id": self.export, "mode": "hard"})
                except BlockWriterError as e:
                    if "not found" not in str(e):  # gone with the VM, or already
                        errors.append(str(e))
                self._export_added = False
            if self._server_started:
                # Also closes any export left behind, and waits for it.
                try:
                    monitor.execute("nbd-server-stop")
                except BlockWriterError as e:
                    if "not running" not in str(e):
                        errors.append(str(e))
                self._server_started = False
        finally:
            monitor.close()

    # --- the writer threads -----------------------------------------------------------------

    def _block(self, seq: int, slot: int) -> tuple[bytes, str]:
        payload = self._random.randbytes(self.block_size - checker.HEADER_SIZE)
        md5 = hashlib.md5(payload).hexdigest()
        header = f"VDSMW1 run={self.run} seq={seq} slot={slot} md5={md5}".encode()
        header = header.ljust(checker.HEADER_SIZE - 1) + b"\n"
        assert header.startswith(checker.HEADER_MAGIC) and len(header) == checker.HEADER_SIZE
        return header + payload, md5

    def _send(self, nbd: _NbdClient) -> None:
        seq = 0
        try:
            while not self._stopping.is_set() and self._error is None:
                if self.rate_limit is not None:
                    due = self._started_at + seq * self.block_size / self.rate_limit
                    delay = due - time.monotonic()
                    if delay > 0 and self._stopping.wait(delay):
                        break
                if not self._slots_free.acquire(timeout=0.1):
                    continue
                seq += 1
                slot = (seq - 1) % self.slots
                data, md5 = self._block(seq, slot)
                with self._lock:
                    self._inflight[seq] = (slot, md5, time.monotonic())
                nbd.send_write(seq, slot * self.block_size, data, self.fua)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            if not self._stopping.is_set():
                self._fail(e)

    def _receive(self, nbd: _NbdClient) -> None:
        nbd.set_timeout(None)  # a pause (a stopped VM, a slow pivot) is not an error here
        try:
            while True:
                cookie, error, _ = nbd.recv_reply()
                now = time.monotonic()
                if cookie == 0:  # the final flush
                    self._flush_error = error
                    self._flush_done.set()
                    continue
                with self._lock:
                    slot, md5, sent = self._inflight.pop(cookie)
                    if error:
                        self._failures.append(WriteFailure(cookie, slot, error))
                    else:
                        self._writes.append(Write(cookie, slot, md5, now - sent, time.time(), now))
                self._slots_free.release()
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            with self._lock:
                clean = self._stopping.is_set() and not self._inflight
            if not clean:
                self._fail(e)

    def _fail(self, error: BaseException) -> None:
        """Record the first fatal error of a writer thread; both threads then end."""
        with self._lock:
            if self._error is None:
                self._error = error
        self._stopping.set()

    # --- results ----------------------------------------------------------------------------

    @property
    def writes(self) -> list[Write]:
        """The acknowledged writes, in order of acknowledgment."""
        with self._lock:
            return list(self._writes)

    @property
    def error(self) -> BaseException | None:
        """What ended the writer early (the NBD connection lost, ...), while it runs."""
        with self._lock:
            return self._error

    @property
    def failures(self) -> list[WriteFailure]:
        with self._lock:
            return list(self._failures)

    def latencies(self) -> list[float]:
        """Seconds per acknowledged write, in order (the warm-up write excluded)."""
        return [w.latency for w in self.writes]

    def latency_summary(self) -> dict[str, float]:
        """p50, p99 and max latency in seconds (empty without writes)."""
        values = sorted(self.latencies())
        if not values:
            return {}
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        return {"p50": statistics.median(values), "p99": p99, "max": values[-1]}

    def throughput(self) -> float:
        """Acknowledged bytes per second, from the start of writing to the last ack."""
        writes = self.writes
        if not writes:
            return 0.0
        elapsed = max(w.acked for w in writes) - self._started_at
        return len(writes) * self.block_size / elapsed if elapsed > 0 else 0.0

    def guest_log(self) -> str:
        """The acknowledged writes as the tiny guest's serial log, for vdsm_guest.checker.

        Writes numbered 1, 2, ... without a gap: a write still in flight ends the log, and
        acknowledged writes after it are left out (the checker then accepts them as "later"
        writes). After stop() nothing is in flight.
        """
        with self._lock:
            done = {w.seq: w for w in self._writes}
            failed = {f.seq: f for f in self._failures}
        lines = [
            f"VDSMW ready run={self.run} disk=nbd:{self.export} slots={self.slots} "
            f"block={self.block_size}"
        ]
        seq = 1
        while True:
            if seq in done:
                w = done[seq]
                lines.append(f"VDSMW seq={w.seq} slot={w.slot} md5={w.md5}")
            elif seq in failed:
                f = failed[seq]
                lines.append(f"VDSMW fail seq={f.seq} slot={f.slot} errno={f.error}")
            else:
                break
            seq += 1
        return "\n".join(lines) + "\n"

    def verify(self, image_path: Path, fmt: str) -> checker.CheckResult:
        """Check that ``image_path`` (format ``fmt``, read through its backing chain with -U)
        holds, in every slot, the last acknowledged write or a later one, each intact.

        ``result.ok`` is False on a lost, corrupt or misplaced write. Call it after stop() (or
        while writing at queue depth 1); raises checker.CheckError when it cannot check.
        """
        if self.block_size != checker.BLOCK_SIZE:
            raise checker.CheckError(
                f"the checker reads {checker.BLOCK_SIZE}-byte blocks, not {self.block_size}"
            )
        with tempfile.TemporaryDirectory(prefix="vdsm-bw-check-") as scratch:
            log_path = Path(scratch) / "writes.log"
            log_path.write_text(self.guest_log())
            return checker.check(Path(image_path), fmt, log_path)
