"""The HTTP server of vdsmd: POST /RPC2 (XML-RPC) and POST /jsonrpc (JSON-RPC), optional TLS;
and GET of the read-only views vdsmd serves beside the API (``views``: the web page, its data,
/metrics), behind the same TLS and client certificates.

One thread per connection (the API's long work runs in tasks, so requests are short), and
everything a client can make the daemon hold is bounded:

- connections: at most ``max_connections`` are served at once (a TLS handshake in progress
  counts); one more is answered ``503`` with ``Retry-After`` by a single rejecter thread, so
  a flood costs neither a thread nor memory per connection;
- time: a request must arrive whole (request line, headers, body) within ``request_timeout``
  of its first byte, however slowly it dribbles; between requests a connection may idle for
  CONNECTION_TIMEOUT;
- memory: a request line of MAX_REQUEST_LINE bytes, headers of MAX_HEADER_BYTES, a body of
  ``max_request_bytes``; so all connections together hold at most about
  ``max_connections * max_request_bytes`` of requests;
- descriptors: when accept() fails for want of file descriptors the accept loop backs off
  instead of spinning, and says so once.

HTTP is spoken strictly, since a lenient parser is where request smuggling and log forging
start: only POST, and GET of a view without a body (405 with ``Allow`` for any other method),
a request line of exactly
``METHOD TARGET HTTP/1.x`` (else a 400 with a status line), no folded headers, no control
characters in headers, one Content-Length of ASCII digits, no Transfer-Encoding, a FlowID of
printable ASCII. Every failure a client can cause gets an answer of the right protocol — a
fault, an envelope, a JSON-RPC error, or a 4xx for HTTP misuse — never a traceback and never
an HTTP 500, and the server keeps serving. With TLS, the handshake runs in the connection's
thread, so a slow or silent client cannot stall the accept loop, and clients must present a
certificate the CA signed.
"""

from __future__ import annotations

import errno
import http.client
import io
import logging
import queue
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vdsm.rpc import jsonrpc_binding, xmlrpc_binding
from vdsm.rpc.dispatcher import Dispatcher
from vdsm.validation import shown

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger("vdsm.rpc.http")

# A read-only view: the body of its answer and its Content-Type, built when asked.
View = Callable[[], tuple[bytes, str]]

XMLRPC_PATH = "/RPC2"
JSONRPC_PATH = "/jsonrpc"
_API_PATHS = (XMLRPC_PATH, JSONRPC_PATH)
FLOW_ID_HEADER = "FlowID"
# A flow id is a correlation token (VDSM's engine sends a UUID-like string); anything longer or
# not printable ASCII is not one, and would only bloat or forge log lines.
FLOW_ID_MAX_LENGTH = 128
# Seconds a connection may sit idle between requests, and a reply may take to be written.
CONNECTION_TIMEOUT = 60.0
# Oversized bodies up to this many times the limit are read and dropped before the 413.
DRAIN_FACTOR = 4
# Our requests have a short path and a handful of short headers: these bounds are generous for
# every real client and keep a connection's memory before the body at under 80 KiB.
MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
# A Content-Length longer than this is more than any max_request_bytes (and keeps int() cheap).
MAX_LENGTH_DIGITS = 18
# Seconds a connection closed after an error answer keeps reading (and dropping) what the client
# still sends, so that the answer is not lost to a reset (RFC 7230 §6.6).
LINGER_TIMEOUT = 1.0
# Refused connections wait here for the rejecter's 503; beyond that they are closed at once.
REJECT_QUEUE = 32
# Seconds the rejecter gives one refused connection (TLS handshake, 503, reading what it sent).
REJECT_TIMEOUT = 1.0
# accept() without descriptors: retry after this delay, doubling up to the maximum. The
# maximum also bounds how late shutdown() notices its request.
ACCEPT_BACKOFF_MIN = 0.01
ACCEPT_BACKOFF_MAX = 0.5
# The errors of accept() that mean "no resources now", not "this connection is bad".
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The ways a client hangs up or stalls mid-conversation: its doing, not a bug of ours.
CLIENT_GONE = (ConnectionError, TimeoutError, ssl.SSLEOFError, ssl.SSLZeroReturnError)

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# RFC 7230 §3.1.1: method SP request-target SP HTTP-version (the target: visible ASCII).
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([!-~]+) (HTTP/[0-9]\.[0-9])\r?\n", re.ASCII)
# RFC 7230 §3.2: field-name ":" OWS field-value OWS; no control characters but HTAB.
_HEADER_LINE = re.compile(
    rf"({_TOKEN}):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*\r?\n", re.ASCII | re.DOTALL
)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_PRINTABLE_ASCII = re.compile(r"[ -~]*", re.ASCII)

_BUSY_TEXT = b"vdsmd is busy: too many connections\n"
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n"
    b"%s" % (len(_BUSY_TEXT), _BUSY_TEXT)
)


def make_ssl_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The server's TLS context: its certificate, and clients must present one ``ca`` signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class RPCServer(ThreadingHTTPServer):
    daemon_threads = True
    # server_close() must not wait for idle keep-alive clients (up to CONNECTION_TIMEOUT):
    # stopping has tasks to roll back within the unit's stop timeout.
    block_on_close = False
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        dispatcher: Dispatcher,
        *,
        max_request_bytes: int,
        max_connections: int = 64,
        request_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        views: Mapping[str, View] | None = None,
    ) -> None:
        """``views``: the read-only answers to GET, by path."""
        self.dispatcher = dispatcher
        self.views = dict(views or {})
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.ssl_context = ssl_context
        self._lock = threading.Lock()
        self._active = 0  # connections counted against max_connections
        self._full = False  # whether the last connection was refused: log once per episode
        self._accept_failures = _AcceptBackoff()
        super().__init__(address, _Handler)
        # Its thread starts only once the address is bound: a failed bind leaks nothing.
        self._rejecter = _Rejecter(ssl_context)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def get_request(self) -> tuple[Any, Any]:
        try:
            pair = super().get_request()
        except OSError as e:
            # The listening socket stays readable while the backlog holds connections we
            # cannot take, so an immediate retry would spin at 100% CPU.
            if e.errno in _OUT_OF_RESOURCES:
                self._accept_failures.failed(e)
            raise
        self._accept_failures.succeeded()
        return pair

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            admitted = self._active < self.max_connections
            if admitted:
                self._active += 1
            was_full, self._full = self._full, not admitted
        if admitted and was_full:
            log.info("fewer than %d connections again: serving", self.max_connections)
        elif not admitted and not was_full:
            log.warning(
                "%d connections: refusing more with 503 until some close", self.max_connections
            )
        if not admitted:
            self._rejecter.reject(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()  # no thread started: the caller closes the socket
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._active -= 1

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        # The handshake is part of getting a request in: the same deadline, as a whole (the
        # ssl module applies a socket timeout to the whole handshake, not to each read).
        request.settimeout(self.request_timeout)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except CLIENT_GONE as e:
            log.info("TLS handshake with %s: client gone: %s", client_address, e)
            return
        except (OSError, ssl.SSLError) as e:
            log.warning("TLS handshake with %s failed: %s", client_address, e)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        # A TLS error on an established connection is the peer's (or the network's) doing too.
        if isinstance(error, (*CLIENT_GONE, ssl.SSLError)):
            log.info("connection from %s: client gone: %s", client_address, _describe(error))
        else:
            log.exception("connection from %s failed", client_address)

    def server_close(self) -> None:
        super().server_close()
        rejecter: _Rejecter | None = getattr(self, "_rejecter", None)  # None: the bind failed
        if rejecter is not None:
            rejecter.close()


class _AcceptBackoff:
    """Sleeps after each accept() that failed for want of descriptors, longer each time, and
    logs the start and the end of such an episode once each (a log line per failure would be
    hundreds a second)."""

    def __init__(self) -> None:
        self._failures = 0
        self._since = 0.0

    def failed(self, error: OSError) -> None:
        if self._failures == 0:
            self._since = time.monotonic()
            log.warning("cannot accept connections: %s; retrying with a backoff", error)
        self._failures += 1
        time.sleep(min(ACCEPT_BACKOFF_MIN * 2 ** (self._failures - 1), ACCEPT_BACKOFF_MAX))

    def succeeded(self) -> None:
        if self._failures:
            log.info(
                "accepting connections again after %d failed accepts in %.1fs",
                self._failures,
                time.monotonic() - self._since,
            )
            self._failures = 0


class _Rejecter:
    """One thread that answers refused connections ``503 Service Unavailable``.

    The answer is not written from the accept loop: with TLS it needs a handshake, and even a
    plain reply must wait for what the client already sent, since closing a socket with unread
    data resets the connection and the client may lose the 503. Each refused connection gets
    at most REJECT_TIMEOUT, and at most REJECT_QUEUE wait; the rest are closed at once.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        self._ssl_context = ssl_context
        self._queue: queue.Queue[socket.socket | None] = queue.Queue(REJECT_QUEUE)
        self._thread = threading.Thread(target=self._run, name="rpc-rejecter", daemon=True)
        self._thread.start()

    def reject(self, sock: socket.socket, client_address: Any) -> None:
        log.debug("refusing connection from %s: too many connections", client_address)
        try:
            self._queue.put_nowait(sock)
        except queue.Full:
            sock.close()

    def close(self) -> None:
        # Not joined: a daemon thread, whose queued sockets die with the process anyway.
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def _run(self) -> None:
        while (sock := self._queue.get()) is not None:
            try:
                self._answer(sock)
            except Exception:  # never let one connection stop the rejecter
                log.exception("cannot answer a refused connection")
            finally:
                sock.close()

    def _answer(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + REJECT_TIMEOUT
        sock.settimeout(REJECT_TIMEOUT)
        try:
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(sock, server_side=True)
            sock.sendall(BUSY_RESPONSE)
            # Our FIN tells the client the answer is complete; then read (and drop) what it
            # sent until it closes too, or our time is up.
            sock.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                if not sock.recv(4096):
                    break
        except OSError:
            pass  # the client left or stalled: nothing more to tell it
        finally:
            sock.close()


class _RequestReader(io.RawIOBase):
    """The raw reads under a connection's rfile, each with a socket timeout that ends at the
    request's deadline: one request has ``request_timeout`` from its first byte to its last,
    however it dribbles. A per-read timeout alone would let a byte every few seconds hold a
    thread for ever, as one readline() makes as many reads as the client makes writes.

    Between requests (``deadline`` None) a read waits up to ``idle_timeout`` for the first
    byte of the next one.
    """

    def __init__(self, sock: socket.socket, idle_timeout: float, request_timeout: float):
        super().__init__()
        self._sock = sock
        self._idle_timeout = idle_timeout
        self._request_timeout = request_timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self.deadline is None:
            self._sock.settimeout(self._idle_timeout)
        else:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request deadline passed")
            self._sock.settimeout(remaining)
        count = self._sock.recv_into(buffer)
        if count and self.deadline is None:
            self.deadline = time.monotonic() + self._request_timeout
        return count

    def end_request(self) -> None:
        """The request is in (or refused): no deadline until the next one; writing the reply
        may take up to ``idle_timeout``."""
        self.deadline = None
        self._sock.settimeout(self._idle_timeout)


class _BadRequest(Exception):
    """A request we answer with ``status`` and ``text`` and then close the connection."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _Handler(BaseHTTPRequestHandler):
    server: RPCServer
    protocol_version = "HTTP/1.1"
    # Even an answer to a request line we could not parse gets a status line: never the
    # HTTP/0.9 style bare body.
    default_request_version = "HTTP/1.1"
    # TCP_NODELAY: a reply goes out as two writes (headers, then body); with Nagle the body
    # waited for the client's delayed ACK of the headers, 40 ms on every call after the first
    # of a keep-alive connection (bench/: 43 ms per ping instead of 0.6 ms; a disk move makes
    # dozens of calls).
    disable_nagle_algorithm = True
    timeout = CONNECTION_TIMEOUT
    server_version = "vdsm"
    sys_version = ""
    error_content_type = "text/plain"
    error_message_format = "%(code)d %(message)s\n"

    def setup(self) -> None:
        self._linger = False
        super().setup()
        self.rfile.close()  # makefile()'s reader: ours below keeps the request's deadline
        self._reader = _RequestReader(
            self.connection, CONNECTION_TIMEOUT, self.server.request_timeout
        )
        self.rfile = io.BufferedReader(self._reader)

    def finish(self) -> None:
        super().finish()
        if self._linger:
            self._lingering_close()

    def _lingering_close(self) -> None:
        """After an error answer, half-close and drop what the client still sends until it
        closes too or LINGER_TIMEOUT passes: closing with unread data would reset the
        connection, and the client could lose the answer before reading it."""
        sock = self.connection
        deadline = time.monotonic() + LINGER_TIMEOUT
        try:
            sock.shutdown(socket.SHUT_WR)  # under TLS, also drops the TLS layer: raw reads
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                if not sock.recv(64 * 1024):
                    return
        except OSError:
            return

    # --- one request ------------------------------------------------------------------------

    def handle_one_request(self) -> None:
        # Replaces BaseHTTPRequestHandler's: any method but POST is a 405 (not a 501), and the
        # request line and headers are parsed strictly (parse_request below).
        self.command = ""
        self.requestline = ""
        self.request_version = self.default_request_version
        self._reader.end_request()
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                raise _BadRequest(414, f"request line longer than {MAX_REQUEST_LINE} bytes")
            if not self.parse_request():
                return
            path = self.path.split("?", 1)[0]
            if path in self.server.views and self.command == "GET":
                self.do_GET()
            elif path in self.server.views:
                self._not_allowed("GET")
            elif self.command == "POST":
                self.do_POST()
            elif self.command == "GET" and self.server.views and path not in _API_PATHS:
                self._no_page()
            else:
                self._not_allowed("POST")
            self.wfile.flush()
        except _BadRequest as e:
            self._error(e.status, e.text)
        except TimeoutError:
            self.close_connection = True
            if self._reader.deadline is None:
                return  # idle between requests: just close
            log.info(
                "%s: request not received within %gs: disconnected",
                self.address_string(),
                self.server.request_timeout,
            )
            try:
                self._error(408, f"request not received within {self.server.request_timeout}s")
            except OSError:
                pass

    def parse_request(self) -> bool:
        """Parse the request line and the headers into command, path, request_version,
        headers and close_connection. _BadRequest if they are not well-formed; False if the
        client closed half-way."""
        self.close_connection = True
        line = self.raw_requestline.decode("iso-8859-1")
        self.requestline = line.rstrip("\r\n")
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            raise _BadRequest(400, "bad request line: expected METHOD TARGET HTTP/1.1")
        self.command, self.path, version = match.groups()
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise _BadRequest(505, f"{version} is not supported: HTTP/1.1 or HTTP/1.0")
        self.request_version = version
        headers = self._read_headers()
        if headers is None:
            return False
        self.headers = headers
        tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        if version == "HTTP/1.1":
            self.close_connection = "close" in tokens
        else:
            self.close_connection = "keep-alive" not in tokens
        if version == "HTTP/1.1" and headers.get("Expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def _read_headers(self) -> http.client.HTTPMessage | None:
        headers = http.client.HTTPMessage()
        total = 0
        name = ""
        while True:
            line = self.rfile.readline(MAX_HEADER_BYTES - total + 1)
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise _BadRequest(431, f"headers longer than {MAX_HEADER_BYTES} bytes")
            if not line.endswith(b"\n"):  # the client closed in the middle of the headers
                self.close_connection = True
                return None
            if line in (b"\r\n", b"\n"):
                return headers
            if line[:1] in (b" ", b"\t"):
                # obs-fold (RFC 7230 §3.2.4): a continuation line would smuggle text, a FlowID
                # with a newline for one, past the checks of the header it continues.
                where = f" (in {name})" if name else ""
                raise _BadRequest(400, f"folded header lines are not accepted{where}")
            match = _HEADER_LINE.fullmatch(line.decode("iso-8859-1"))
            if match is None:
                name = shown(line.decode("iso-8859-1").partition(":")[0], 40)
                raise _BadRequest(400, f"malformed header line {name!r}")
            name = match.group(1)
            headers[name] = match.group(2)  # appends: duplicates stay visible
            if len(headers) > MAX_HEADERS:
                raise _BadRequest(431, f"more than {MAX_HEADERS} headers")

    def do_POST(self) -> None:
        flow_id = self._flow_id()
        body = self._read_body()
        if body is None:
            return
        self._reader.end_request()
        path = self.path.split("?", 1)[0]
        if path == XMLRPC_PATH:
            self._answer_xmlrpc(body, flow_id)
        elif path == JSONRPC_PATH:
            self._answer_jsonrpc(body, flow_id)
        else:
            self._reply(404, b"no such endpoint: POST /RPC2 or /jsonrpc\n", "text/plain")

    def _refuse_body(self) -> None:
        # A GET has no body here: one we would not read would frame the next request.
        if self.headers.get_all("Transfer-Encoding") or (
            self.headers.get("Content-Length", "0") not in ("", "0")
        ):
            raise _BadRequest(400, "a GET request has no body")

    def do_GET(self) -> None:
        self._refuse_body()
        self._reader.end_request()
        path = self.path.split("?", 1)[0]
        view = self.server.views[path]
        try:
            body, content_type = view()
        except Exception as e:  # a bug or a failing read: say so in plain words, keep serving
            log.exception("GET %s failed", path)
            text = f"vdsmd could not build {path}: {_describe(e)}\n"
            self._reply(503, text.encode(), "text/plain")
            return
        self._reply(200, body, content_type, cache=False)

    def _no_page(self) -> None:
        self._refuse_body()
        self._reader.end_request()
        paths = ", ".join(sorted(self.server.views))
        self._reply(404, f"no such page; vdsmd serves GET {paths}\n".encode(), "text/plain")

    def _flow_id(self) -> str | None:
        """The FlowID header (None if absent); _BadRequest if it is not a plain token."""
        values = self.headers.get_all(FLOW_ID_HEADER) or []
        if not values:
            return None
        value = values[0]
        if len(values) > 1:
            reason = "more than one"
        elif len(value) > FLOW_ID_MAX_LENGTH:
            reason = f"longer than {FLOW_ID_MAX_LENGTH} characters"
        elif not _PRINTABLE_ASCII.fullmatch(value):
            reason = "not printable ASCII"
        else:
            return value
        raise _BadRequest(400, f"bad {FLOW_ID_HEADER} header: {reason}")

    def _answer_xmlrpc(self, body: bytes, flow_id: str | None) -> None:
        try:
            answer = xmlrpc_binding.handle(self.server.dispatcher, body, flow_id)
        except Exception as e:  # a bug in the binding itself: still answer in protocol
            log.exception("XML-RPC request failed")
            answer = xmlrpc_binding.fault(xmlrpc_binding.INTERNAL_ERROR, f"internal error: {e}")
        self._reply(200, answer, "text/xml")

    def _answer_jsonrpc(self, body: bytes, flow_id: str | None) -> None:
        try:
            answer = jsonrpc_binding.handle(self.server.dispatcher, body, flow_id)
        except Exception as e:
            log.exception("JSON-RPC request failed")
            error = {"code": -32603, "message": f"Internal error: {e}"}
            answer = jsonrpc_binding.dump({"jsonrpc": "2.0", "id": None, "error": error})
        if answer is None:
            self._reply(204, b"", None)  # only notifications: nothing to say
        else:
            self._reply(200, answer, "application/json")

    def _read_body(self) -> bytes | None:
        # Any Transfer-Encoding is refused, even chunked: we do not decode it, so the body's
        # length could not be known, and RFC 7230 §3.3.3 asks for a 400 and a close then (not
        # a 501, which would suggest the request was understood). Checked before the length:
        # both at once is how requests are smuggled.
        if self.headers.get_all("Transfer-Encoding"):
            raise _BadRequest(400, "Transfer-Encoding is not supported: send a Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise _BadRequest(411, "Content-Length required")
        # Exactly one, of ASCII digits only: int() would also take "+5", " 5", "٥" or "1_0",
        # and a proxy in front may read a duplicate or such a value differently than we do.
        if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0]):
            raise _BadRequest(400, "bad Content-Length: one header of decimal digits")
        digits = lengths[0].lstrip("0") or "0"
        length = int(digits) if len(digits) <= MAX_LENGTH_DIGITS else sys.maxsize
        if length > self.server.max_request_bytes:
            message = f"request body of {length} bytes exceeds {self.server.max_request_bytes}"
            # Read (and drop) a moderately oversized body so the client, still sending, sees
            # the 413 instead of a broken pipe; a huge one is cut off at once.
            if length <= DRAIN_FACTOR * self.server.max_request_bytes:
                self._discard(length)
            raise _BadRequest(413, message)
        body = self.rfile.read(length)  # a TimeoutError is the deadline: handle_one_request
        if len(body) != length:
            self.close_connection = True  # the client closed before the whole body
            return None
        return body

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 64 * 1024))
            if not chunk:
                return
            length -= len(chunk)

    # --- answers ----------------------------------------------------------------------------

    def send_response(self, code: int, message: str | None = None) -> None:
        self._reader.end_request()  # whatever is left unread now, the deadline is over
        super().send_response(code, message)

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        close: bool = False,
        cache: bool = True,
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if not cache:
            # A view is the host's state now: never served from a browser's or proxy's cache.
            self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, text: str) -> None:
        """A client error: a one-line text body, and the connection closed (what is left of
        the request cannot be trusted to frame the next one)."""
        self._linger = True
        self._reply(status, f"{status} {text}\n".encode(), "text/plain", close=True)

    def _not_allowed(self, allow: str) -> None:
        # Closed: the request's body, if any, is not read, so it cannot frame the next one.
        self._linger = True
        self.send_response(405)
        self.send_header("Allow", allow)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        # The request line is the client's text (bad ones are logged too): escaped.
        log.debug("%s %s", self.address_string(), shown(format % args, 300))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
