"""TEST-ONLY: write verifiable blocks into a running VM's disk through the VM's own block layer.

Never use this on a production VM: it sends raw QMP commands to QEMU behind libvirt's back
(libvirt marks the domain tainted, "custom-monitor") and overwrites the start of the disk.

How it works (docs/design.md, "Host-side test writer"): the VM runs with ``testShareRW: true``, so
its disk device allows another writer. ``start()`` asks QEMU, through
``libvirt_qemu.qemuMonitorCommand``, to start an NBD server on a unix socket in a fresh temporary
directory and to export the disk's active format node (found with ``query-block`` by the qdev
of the device aliased ``ua-<imageID>``) writable. A writer thread then writes blocks over one
NBD connection. Every write goes through the same block graph as the guest's own I/O: a mirror
copies it, and after a snapshot or a pivot it lands in the new top node (QEMU moves the export
along with the device when it replaces the node).

This module is the writer itself: its life cycle (export, connect, drain, tear down) and its
sender and receiver threads. How it reaches QEMU (QMP through libvirt, the NBD export, a
minimal NBD client) is in ``vdsm_guest.qemu_channels``; the block format, the figures over the
acknowledged writes and the guest-style log for the checker are in ``vdsm_guest.write_records``.
Every name other code uses is importable from here.

A write is *acknowledged* when QEMU's NBD server replied success; with ``fua=True`` that also
means it is on stable storage. ``stop()`` drains the writes in flight and flushes, so every
acknowledged write is then readable from the image files by ``verify()``, which writes the
acknowledged writes as a guest-style log and runs ``vdsm_guest.checker`` on the image.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from vdsm.copy_governor import GuestIo
from vdsm.virt import unaccounted_io
from vdsm_guest import checker, write_records
from vdsm_guest.qemu_channels import (
    TFLAG_READ_ONLY,
    TFLAG_SEND_FLUSH,
    TFLAG_SEND_FUA,
    BlockWriterError,
    Monitor,
    NbdClient,
    NbdExport,
    find_node,
)
from vdsm_guest.write_records import Write, WriteFailure

log = logging.getLogger("vdsm_guest.block_writer")

DEFAULT_URI = "qemu:///system"

# Seconds allowed for the writes in flight to be acknowledged when stopping, and for a flush.
DRAIN_TIMEOUT = 30.0


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
        self._busy = 0.0  # seconds the acknowledged writes took, summed (io_counters)
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
        self._nbd_export: NbdExport | None = None  # owns the QMP monitor
        self._tmpdir: str | None = None
        self._nbd: NbdClient | None = None
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
            monitor = Monitor(self.libvirt_uri, self.vm_id)
            self._nbd_export = NbdExport(monitor, self.export)
            self.node_name = find_node(monitor, self.image_id)
            self._tmpdir = tempfile.mkdtemp(prefix="vdsm-bw-")
            sock = str(Path(self._tmpdir) / "nbd.sock")
            self._nbd_export.start(self.node_name, sock)
            self._nbd = NbdClient(sock, self.export)
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

    def _check_export(self, nbd: NbdClient) -> None:
        if nbd.flags & TFLAG_READ_ONLY:
            raise BlockWriterError(f"export {self.export} is read-only")
        if self.fua and not nbd.flags & TFLAG_SEND_FUA:
            raise BlockWriterError(f"export {self.export} does not support FUA")
        if nbd.size < self.slots * self.block_size:
            raise BlockWriterError(
                f"disk of {nbd.size} bytes too small for {self.slots} blocks of {self.block_size}"
            )

    def _warm_up(self, nbd: NbdClient) -> None:
        """One flush round trip before the first write: it changes nothing on the disk, and a
        connection that cannot flush fails here rather than in the writer thread."""
        if not nbd.flags & TFLAG_SEND_FLUSH:
            return
        started = time.monotonic()
        nbd.send_flush(0)
        _, error, _ = nbd.recv_reply()
        if error:
            raise BlockWriterError(f"warm-up flush failed: errno {error}")
        self.warm_up_latency = time.monotonic() - started

    def current_node(self) -> str:
        """The disk's active node now (it changes with a snapshot, a pivot, a merge)."""
        if self._nbd_export is None:
            raise BlockWriterError("not started")
        return find_node(self._nbd_export.monitor, self.image_id)

    def exported_node(self) -> str:
        """The node the export writes to now: QEMU moves it with the device's node."""
        if self._nbd_export is None:
            raise BlockWriterError("not started")
        return self._nbd_export.node()

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
        if self._error is not None or not self._nbd.flags & TFLAG_SEND_FLUSH:
            return
        self._nbd.send_flush(0)
        if not self._flush_done.wait(DRAIN_TIMEOUT):
            errors.append("no reply to the final flush")
        elif self._flush_error:
            errors.append(f"the final flush failed: errno {self._flush_error}")

    def _teardown_export(self, errors: list[str]) -> None:
        nbd_export, self._nbd_export = self._nbd_export, None
        if nbd_export is not None:
            nbd_export.teardown(errors)

    # --- the writer threads -----------------------------------------------------------------

    def _block(self, seq: int, slot: int) -> tuple[bytes, str]:
        return write_records.make_block(self._random, self.run, seq, slot, self.block_size)

    def _send(self, nbd: NbdClient) -> None:
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

    def _receive(self, nbd: NbdClient) -> None:
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
                        self._busy += now - sent
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

    def io_counters(self) -> tuple[int, int, int]:
        """Acknowledged writes, their bytes and the nanoseconds they took, summed so far: what
        QEMU's block accounting would count for a device doing these writes (it does not
        count an NBD export's)."""
        with self._lock:
            ops, busy = len(self._writes), self._busy
        return ops, ops * self.block_size, int(busy * 1e9)

    @contextlib.contextmanager
    def publishing(self, path: Path, every: float = 0.05) -> Iterator[None]:
        """Publish :meth:`io_counters` in ``path`` every ``every`` s for a vdsmd started with
        ``VDSM_TEST_GUEST_IO=path``, whose copy governors then see these writes as they see
        a guest's (the TEST-ONLY hook of vdsm/virt/unaccounted_io.py: QEMU counts no NBD
        export's I/O for the VM's drive)."""
        stop = threading.Event()

        def publish() -> None:
            while not stop.wait(every):
                unaccounted_io.write(path, GuestIo(*self.io_counters()))

        publisher = threading.Thread(target=publish, name="guest-io", daemon=True)
        publisher.start()
        try:
            yield
        finally:
            stop.set()
            publisher.join()

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
        return write_records.latency_summary(self.latencies())

    def throughput(self) -> float:
        """Acknowledged bytes per second, from the start of writing to the last ack."""
        return write_records.throughput(self.writes, self.block_size, self._started_at)

    def guest_log(self) -> str:
        """The acknowledged writes as the tiny guest's serial log, for vdsm_guest.checker.

        Writes numbered 1, 2, ... without a gap: a write still in flight ends the log, and
        acknowledged writes after it are left out (the checker then accepts them as "later"
        writes). After stop() nothing is in flight.
        """
        with self._lock:
            writes, failures = list(self._writes), list(self._failures)
        return write_records.guest_log(
            self.run, self.export, self.slots, self.block_size, writes, failures
        )

    def verify(self, image_path: Path, fmt: str) -> checker.CheckResult:
        """Check that ``image_path`` (format ``fmt``, read through its backing chain with -U)
        holds, in every slot, the last acknowledged write or a later one, each intact.

        ``result.ok`` is False on a lost, corrupt or misplaced write. Call it after stop() (or
        while writing at queue depth 1); raises checker.CheckError when it cannot check.
        """
        return write_records.verify(image_path, fmt, self.block_size, self.guest_log())
