"""The HTTP server of vdsmd: POST /RPC2 (XML-RPC) and POST /jsonrpc (JSON-RPC), optional TLS.

One thread per connection (the API's long work runs in tasks, so requests are short). Every
failure a client can cause gets an answer of the right protocol — a fault, an envelope, a
JSON-RPC error, or a 4xx for HTTP misuse — never a traceback and never an HTTP 500, and the
server keeps serving. With TLS, the handshake runs in the connection's thread, so a slow or
silent client cannot stall the accept loop; with a CA, clients must present a certificate it
signed.
"""

from __future__ import annotations

import logging
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from vdsm.rpc import jsonrpc_binding, xmlrpc_binding
from vdsm.rpc.dispatcher import Dispatcher

log = logging.getLogger("vdsm.rpc.http")

XMLRPC_PATH = "/RPC2"
JSONRPC_PATH = "/jsonrpc"
FLOW_ID_HEADER = "FlowID"
# Seconds a connection may sit idle or dribble its request before it is dropped.
CONNECTION_TIMEOUT = 60.0
# Oversized bodies up to this many times the limit are read and dropped before the 413.
DRAIN_FACTOR = 4


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
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        dispatcher: Dispatcher,
        *,
        max_request_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.max_request_bytes = max_request_bytes
        self.ssl_context = ssl_context
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(CONNECTION_TIMEOUT)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as e:
            log.warning("TLS handshake with %s failed: %s", client_address, e)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: RPCServer
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: a reply goes out as two writes (headers, then body); with Nagle the body
    # waited for the client's delayed ACK of the headers, 40 ms on every call after the first
    # of a keep-alive connection (bench/: 43 ms per ping instead of 0.6 ms; a disk move makes
    # dozens of calls).
    disable_nagle_algorithm = True
    timeout = CONNECTION_TIMEOUT
    server_version = "vdsm"
    sys_version = ""

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in (XMLRPC_PATH, JSONRPC_PATH):
            self._reply(404, b"no such endpoint: POST /RPC2 or /jsonrpc\n", "text/plain")
            return
        body = self._read_body()
        if body is None:
            return
        flow_id = self.headers.get(FLOW_ID_HEADER)
        if path == XMLRPC_PATH:
            self._answer_xmlrpc(body, flow_id)
        else:
            self._answer_jsonrpc(body, flow_id)

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
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._reply(411, b"Content-Length required\n", "text/plain", close=True)
            return None
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError(length_text)
        except ValueError:
            self._reply(400, b"bad Content-Length\n", "text/plain", close=True)
            return None
        if length > self.server.max_request_bytes:
            message = f"request body of {length} bytes exceeds {self.server.max_request_bytes}\n"
            # Read (and drop) a moderately oversized body so the client, still sending, sees
            # the 413 instead of a broken pipe; a huge one is cut off at once.
            if length <= DRAIN_FACTOR * self.server.max_request_bytes:
                self._discard(length)
            self._reply(413, message.encode(), "text/plain", close=True)
            return None
        try:
            body = self.rfile.read(length)
        except (TimeoutError, OSError):
            self.close_connection = True
            return None
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    def _discard(self, length: int) -> None:
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 64 * 1024))
                if not chunk:
                    return
                length -= len(chunk)
        except OSError:
            return

    def _reply(
        self, status: int, body: bytes, content_type: str | None, close: bool = False
    ) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "POST")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_allowed

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
