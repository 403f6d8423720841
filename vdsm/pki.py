"""Create this host's certificates: a local CA, vdsmd's server certificate and an admin client's.

vdsmd serves TLS and accepts only clients whose certificate the host's CA signed, so a fresh
host needs all three before the daemon can start; `vdsm-tool configure` (vdsm/tool.py) calls
:func:`configure`, as VDSM's ``vdsm-tool configure`` did. The files follow
:class:`vdsm_api.pki.PkiLayout`. Keys are readable by root only: whoever reads the admin key can
call every verb, and that is exactly root.

It is idempotent: files that exist are kept, missing ones are made (a missing CA makes every
certificate anew, since the old ones would no longer verify). Each file is written in a
temporary name inside its directory and renamed into place, so an interrupted run leaves
complete files or none. Keys are EC P-256: small, and generated in milliseconds.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vdsm.storage import fileutil
from vdsm.storage.runner import run
from vdsm_api.pki import PkiLayout

OPENSSL = "openssl"
CA_DAYS = 3650
CERT_DAYS = 1095
# Seconds for one openssl command: key generation and signing take milliseconds.
OPENSSL_TIMEOUT = 60.0
_KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Created:
    """What :func:`configure` made (paths), and what it found already there."""

    made: tuple[Path, ...]
    kept: tuple[Path, ...]


def configure(
    layout: PkiLayout, *, force: bool = False, extra_names: Sequence[str] = ()
) -> Created:
    """Make the files of ``layout`` that are missing (all of them with ``force``)."""
    made: list[Path] = []
    for directory, mode in (("certs", 0o755), ("keys", 0o700), ("private", 0o700)):
        path = layout.root / directory
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
    new_ca = force or not (layout.ca_cert.is_file() and layout.ca_key.is_file())
    with _workdir(layout.root) as work:
        if new_ca:
            _make_ca(layout, work)
            made += [layout.ca_cert, layout.ca_key]
        names = server_names(extra_names)
        if new_ca or not (layout.server_cert.is_file() and layout.server_key.is_file()):
            _make_leaf(layout, work, layout.server_cert, layout.server_key, "vdsm", names)
            made += [layout.server_cert, layout.server_key]
        if new_ca or not (layout.admin_cert.is_file() and layout.admin_key.is_file()):
            _make_leaf(layout, work, layout.admin_cert, layout.admin_key, "vdsm-admin", None)
            made += [layout.admin_cert, layout.admin_key]
    kept = tuple(p for p in layout.files() if p not in made)
    return Created(made=tuple(made), kept=kept)


def server_names(extra: Sequence[str] = ()) -> list[str]:
    """subjectAltName entries of the server certificate: loopback, this host's name, extras."""
    names = ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(f"DNS:{hostname}")
    for name in extra:
        names.append(name if ":" in name else f"DNS:{name}")
    return names


@contextmanager
def _workdir(root: Path) -> Iterator[Path]:
    # Inside the PKI directory, so the final rename never crosses a file system; 0700.
    with tempfile.TemporaryDirectory(prefix=".configure-", dir=root) as work:
        yield Path(work)


def _openssl(*args: str) -> None:
    run([OPENSSL, *args], timeout=OPENSSL_TIMEOUT)


def _make_ca(layout: PkiLayout, work: Path) -> None:
    key, cert = work / "cakey.pem", work / "cacert.pem"
    subject = f"/O=vdsm/CN=vdsm CA {socket.gethostname() or 'localhost'}"
    _openssl(
        "req",
        "-x509",
        *_KEY_ARGS,
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        str(CA_DAYS),
        "-subj",
        subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    _install(key, layout.ca_key, 0o600)
    _install(cert, layout.ca_cert, 0o644)


def _make_leaf(
    layout: PkiLayout,
    work: Path,
    cert_path: Path,
    key_path: Path,
    common_name: str,
    server_names_: list[str] | None,
) -> None:
    key, csr, cert, ext = (work / f"{common_name}.{s}" for s in ("key", "csr", "pem", "ext"))
    subject = f"/O=vdsm/CN={common_name}"
    _openssl("req", "-new", *_KEY_ARGS, "-keyout", str(key), "-out", str(csr), "-subj", subject)
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyAgreement",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if server_names_ is not None:
        lines += ["extendedKeyUsage=serverAuth", "subjectAltName=" + ",".join(server_names_)]
    else:
        lines.append("extendedKeyUsage=clientAuth")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(layout.ca_cert),
        "-CAkey",
        str(layout.ca_key),
        "-set_serial",
        str(secrets.randbits(63)),
        "-days",
        str(CERT_DAYS),
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    _install(key, key_path, 0o600)
    _install(cert, cert_path, 0o644)


def _install(source: Path, target: Path, mode: int) -> None:
    os.chmod(source, mode)
    with open(source, "rb") as f:
        os.fsync(f.fileno())
    os.replace(source, target)
    fileutil.fsync_dir(target.parent)
