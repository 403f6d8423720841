"""vdsmd over TLS with client-certificate verification, as VDSM runs: a client with a
certificate signed by the CA is served; one without, or with a stranger's, is refused at the
handshake, and the daemon keeps serving."""

from __future__ import annotations

import ssl
import subprocess
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_command
from tests.functional.conftest import VdsmdProcess, running


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}-ca.key", directory / f"{name}-ca.pem"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name} CA",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return key, cert


def make_cert(directory: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext = directory / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[1]),
        "-CAkey",
        str(ca[0]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return key, cert


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    require_command("openssl")
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "engine")
    stranger_ca = make_ca(d, "stranger")
    return {
        "ca": ca,
        "server": make_cert(d, "vdsm-host", ca),
        "client": make_cert(d, "engine", ca),
        "stranger": make_cert(d, "stranger", stranger_ca),
    }


@pytest.fixture
def tls_vdsmd(tmp_path: Path, pki: dict[str, tuple[Path, Path]]) -> Iterator[VdsmdProcess]:
    key, cert = pki["server"]
    daemon = VdsmdProcess(
        tmp_path / "vdsmd",
        ["--tls", "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(pki["ca"][1])],
    )
    daemon.scheme = "https"
    # The fixture's readiness probe speaks plain HTTP; give it a client certificate instead.
    daemon.xmlrpc = lambda: proxy(daemon, pki, "client")  # type: ignore[method-assign]
    with running(daemon):
        yield daemon


def proxy(daemon: VdsmdProcess, pki: dict[str, tuple[Path, Path]], who: str | None) -> object:
    context = ssl.create_default_context(cafile=str(pki["ca"][1]))
    if who is not None:
        key, cert = pki[who]
        context.load_cert_chain(str(cert), str(key))
    return xmlrpc.client.ServerProxy(f"https://{daemon.address}/RPC2", context=context)


def test_client_with_a_certificate_from_the_ca_is_served(
    tls_vdsmd: VdsmdProcess, pki: dict[str, tuple[Path, Path]]
) -> None:
    reply = proxy(tls_vdsmd, pki, "client").ping()  # type: ignore[attr-defined]
    assert reply["status"]["code"] == 0


@pytest.mark.parametrize("who", [None, "stranger"])
def test_client_without_a_trusted_certificate_is_refused(
    tls_vdsmd: VdsmdProcess, pki: dict[str, tuple[Path, Path]], who: str | None
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        proxy(tls_vdsmd, pki, who).ping()  # type: ignore[attr-defined]
    # Plain HTTP to the TLS port is refused too.
    plain = xmlrpc.client.ServerProxy(f"http://{tls_vdsmd.address}/RPC2")
    with pytest.raises((xmlrpc.client.ProtocolError, ConnectionError, OSError)):
        plain.ping()
    assert "TLS handshake" in tls_vdsmd.log()
    # The daemon still serves trusted clients.
    assert proxy(tls_vdsmd, pki, "client").ping()["status"]["code"] == 0  # type: ignore[attr-defined]
