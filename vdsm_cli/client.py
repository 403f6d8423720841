"""Talk to vdsmd over XML-RPC (POST /RPC2): one call, its envelope, or a typed error.

Every request carries the invocation's flow id in the ``FlowID`` header, so the daemon's log
ties all the calls of one vdsClient run together. With TLS (the default) the client verifies
the server's certificate (chain and host name) with the CA, and presents a client
certificate: vdsmd serves no one else.

:meth:`Client.call` returns the envelope of a successful call and raises :class:`ApiError` for
a non-zero status and :class:`ConnectionFailed` for anything that is not an answer.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdsm_cli.errors import ApiError, ConnectionFailed, ConnectionRefused

DEFAULT_PORT = 54321
FLOW_ID_HEADER = "FlowID"
# Seconds to wait for the connection and for each answer. Verbs are short (long work runs in
# tasks), so a daemon silent for this long is stuck or unreachable.
REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/RPC2"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` → (host, port); ValueError if bad."""
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in {text!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, or ``[V6]:PORT``: what :func:`parse_address` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    """The client TLS context; ConnectionFailed naming the file that cannot be used."""
    try:
        context = ssl.create_default_context(
            cafile=str(endpoint.ca) if endpoint.ca is not None else None
        )
    except (OSError, ssl.SSLError) as e:
        raise ConnectionFailed(
            f"cannot use the CA certificate {endpoint.ca}: {_reason(e)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if endpoint.cert is not None:
        for path in (endpoint.cert, endpoint.key):
            if path is None:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise ConnectionFailed(
                    f"cannot read the client certificate file {path}: {_reason(e)} (vdsmd "
                    "serves only callers with a certificate its CA signed: root on this host, "
                    "or whoever was given one with --cert and --key)"
                ) from None
        try:
            context.load_cert_chain(
                str(endpoint.cert), str(endpoint.key) if endpoint.key is not None else None
            )
        except (OSError, ssl.SSLError) as e:
            raise ConnectionFailed(
                f"cannot use the client certificate {endpoint.cert}: {_reason(e)}"
            ) from None
    return context


_CLIENT_CERT_HINT = " (the server wants a client certificate it trusts: --cert and --key)"
_TLS_HINTS = {
    "WRONG_VERSION_NUMBER": " (does the server talk TLS? --no-tls for a plain-HTTP vdsmd)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": _CLIENT_CERT_HINT,
    "SSLV3_ALERT_HANDSHAKE_FAILURE": _CLIENT_CERT_HINT,
    "CERTIFICATE_VERIFY_FAILED": " (is --ca the CA that signed the server's certificate?)",
    "TLSV1_ALERT_UNKNOWN_CA": " (the server does not trust --cert's CA)",
}


class Transport(xmlrpc.client.Transport):
    """xmlrpc.client's transport plus the FlowID header, a timeout and a TLS context (None:
    plain HTTP); for every XML-RPC client of vdsmd (vdsClient, the bench, the tests)."""

    def __init__(self, flow_id: str | None = None, context: ssl.SSLContext | None = None) -> None:
        super().__init__(use_builtin_types=True)
        self._flow_id = flow_id
        self._tls_context = context
        self._reused = False

    def request(self, host: Any, handler: str, request_body: Any, verbose: bool = False) -> Any:
        try:
            return super().request(host, handler, request_body, verbose)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            # A kept-alive TLS connection the server had closed (it restarted, or dropped an
            # idle client): the stdlib retries once on EPIPE/ECONNRESET for plain HTTP, but a
            # TLS socket reports the same as an SSL EOF. Retry once, on a new connection.
            if not self._reused:
                raise
            self.close()
            return self.single_request(host, handler, request_body, verbose)

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        cached_host, cached = self._connection
        self._reused = cached is not None and cached_host == host
        if cached is not None and cached_host == host:
            return cached
        name, self._extra_headers, _ = self.get_host_info(host)
        conn: http.client.HTTPConnection
        if self._tls_context is not None:
            conn = http.client.HTTPSConnection(
                name, timeout=REQUEST_TIMEOUT, context=self._tls_context
            )
        else:
            conn = http.client.HTTPConnection(name, timeout=REQUEST_TIMEOUT)
        self._connection = host, conn
        return conn

    def send_headers(self, connection: http.client.HTTPConnection, headers: Any) -> None:
        super().send_headers(connection, headers)
        if self._flow_id is not None:
            connection.putheader(FLOW_ID_HEADER, self._flow_id)


class Client:
    def __init__(self, endpoint: Endpoint, flow_id: str) -> None:
        self.endpoint = endpoint
        self.flow_id = flow_id
        context = ssl_context(endpoint) if endpoint.tls else None
        self._proxy = xmlrpc.client.ServerProxy(
            endpoint.url, transport=Transport(flow_id, context), allow_none=True
        )

    def call(self, method: str, args: list[Any]) -> dict[str, Any]:
        """The envelope of a successful call of ``method``; ApiError or ConnectionFailed."""
        where = format_address(self.endpoint.host, self.endpoint.port)
        try:
            reply = getattr(self._proxy, method)(*args)
        except xmlrpc.client.Fault as e:
            raise ConnectionFailed(
                f"{where} refused {method}: XML-RPC fault {e.faultCode}: {e.faultString}"
            ) from None
        except xmlrpc.client.ProtocolError as e:
            raise ConnectionFailed(f"{where}: HTTP {e.errcode} {e.errmsg} (is it vdsmd?)") from None
        except ssl.SSLError as e:
            hint = _TLS_HINTS.get(str(e.reason), "")
            if not hint and self.endpoint.cert is None:
                # With TLS 1.3 a server that wants a client certificate may just close the
                # connection, which the client sees as an EOF, not as the server's alert.
                hint = _CLIENT_CERT_HINT
            raise ConnectionFailed(f"TLS with {where} failed: {_reason(e)}{hint}") from None
        except ConnectionRefusedError:
            raise ConnectionRefused(
                f"cannot connect to {where}: connection refused (is vdsmd running?)"
            ) from None
        except TimeoutError:
            raise ConnectionFailed(
                f"{where} did not answer within {REQUEST_TIMEOUT:.0f}s"
            ) from None
        except socket.gaierror as e:
            raise ConnectionFailed(f"cannot resolve {self.endpoint.host}: {e.strerror}") from None
        except (http.client.HTTPException, ConnectionError) as e:
            raise ConnectionFailed(
                f"{where} closed the connection during {method} ({_reason(e)}); a TLS server "
                f"closes a plain-HTTP client (--no-tls). If {method} changes something, check "
                "whether it was done"
            ) from None
        except OSError as e:
            raise ConnectionFailed(f"cannot talk to {where}: {_reason(e)}") from None
        except (xmlrpc.client.ResponseError, ValueError) as e:  # not XML-RPC (expat: ValueError)
            raise ConnectionFailed(f"{where} sent a reply that is not XML-RPC: {e}") from None
        return check(reply, method)


def check(reply: Any, method: str) -> dict[str, Any]:
    """The envelope if its status is 0; ApiError for another code; ConnectionFailed if it is
    not an envelope at all."""
    status = reply.get("status") if isinstance(reply, dict) else None
    if not isinstance(reply, dict) or not isinstance(status, dict):
        raise ConnectionFailed(f"{method}: the reply is not a VDSM envelope: {reply!r:.200}")
    code = status.get("code")
    if not isinstance(code, int):
        raise ConnectionFailed(f"{method}: the reply's status has no code: {status!r:.200}")
    if code != 0:
        raise ApiError(code, str(status.get("message", "")))
    return reply


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error.strerror or error)
    if isinstance(error, OSError) and error.strerror:
        return str(error.strerror)
    return str(error) or type(error).__name__
