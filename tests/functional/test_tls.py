"""vdsmd is secure by default: TLS with client certificates from the host's PKI.

A daemon started with no settings at all serves only callers whose certificate the host's CA
signed; a client without one, with a stranger's, or speaking plain HTTP is refused at the
handshake and the daemon keeps serving. A non-root local user can do nothing: the admin key is
root's. Plain HTTP must be asked for, is served on loopback only, and says so in the log;
inconsistent TLS settings stop the daemon at start with the setting named.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

import pytest

from tests.conftest import require_command
from tests.functional.daemon_helpers import REPO, VdsmdProcess, running
from tests.functional.vdsclient_helpers import ok, vdsclient
from vdsm import pki
from vdsm_api.pki import PkiLayout

NOBODY = "65534"


@pytest.fixture
def stranger(tmp_path: Path) -> PkiLayout:
    """Another host's PKI: its certificates are valid, but not signed by our CA."""
    require_command("openssl")
    layout = PkiLayout(tmp_path / "stranger-pki")
    pki.configure(layout)
    return layout


def proxy(daemon: VdsmdProcess, ca: Path, who: PkiLayout | None) -> xmlrpc.client.ServerProxy:
    context = ssl.create_default_context(cafile=str(ca))
    if who is not None:
        context.load_cert_chain(str(who.admin_cert), str(who.admin_key))
    return xmlrpc.client.ServerProxy(f"https://{daemon.address}/RPC2", context=context)


def test_default_daemon_serves_only_certificates_of_the_host_ca(
    vdsmd: VdsmdProcess, stranger: PkiLayout
) -> None:
    host = vdsmd.pki
    assert "--no-tls" not in vdsmd.argv() and "--tls" not in vdsmd.argv()
    assert proxy(vdsmd, host.ca_cert, host).ping()["status"]["code"] == 0
    for who in (None, stranger):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            proxy(vdsmd, host.ca_cert, who).ping()
    plain = xmlrpc.client.ServerProxy(f"http://{vdsmd.address}/RPC2")
    with pytest.raises((xmlrpc.client.ProtocolError, ConnectionError, OSError)):
        plain.ping()
    assert "TLS handshake" in vdsmd.log()
    assert proxy(vdsmd, host.ca_cert, host).ping()["status"]["code"] == 0


def test_vdsclient_uses_the_host_pki_by_default(vdsmd: VdsmdProcess, stranger: PkiLayout) -> None:
    ok(vdsmd.address, "ping")
    ok(f"localhost:{vdsmd.port}", "ping")  # the server certificate names localhost too
    ok("--pki-dir", str(vdsmd.pki.root), vdsmd.address, "ping")

    proc = vdsclient("--pki-dir", str(stranger.root), vdsmd.address, "ping")
    assert proc.returncode == 3 and "certificate verify failed" in proc.stderr, proc.stderr
    proc = vdsclient(
        "--cert", str(stranger.admin_cert), "--key", str(stranger.admin_key), vdsmd.address, "ping"
    )
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    proc = vdsclient("--no-tls", vdsmd.address, "ping")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr


# Run as nobody with the system's Python and the standard library only: the venv and the
# repository may sit in a directory nobody cannot enter (a CI clone under a 0700 mktemp dir).
_AS_NOBODY = r"""
import json, ssl, sys, urllib.request, xmlrpc.client
port, ca, keys = sys.argv[1], sys.argv[2], sys.argv[3:]
body = xmlrpc.client.dumps((), "ping").encode()
out = {}
def attempt(name, fn):
    try:
        out[name] = "served: " + repr(fn())[:200]
    except Exception as e:
        out[name] = "refused: " + type(e).__name__
attempt("plain", lambda: urllib.request.urlopen(
    urllib.request.Request(f"http://127.0.0.1:{port}/RPC2", body), timeout=10).read())
attempt("tls_without_certificate", lambda: urllib.request.urlopen(
    urllib.request.Request(f"https://127.0.0.1:{port}/RPC2", body), timeout=10,
    context=ssl.create_default_context(cafile=ca)).read())
for key in keys:
    attempt("read " + key, lambda: open(key, "rb").read(1))
print(json.dumps(out))
"""


def test_a_non_root_local_user_can_do_nothing(vdsmd: VdsmdProcess) -> None:
    setpriv = require_command("setpriv")
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin") or sys.executable
    layout = vdsmd.pki
    keys = [str(layout.admin_key), str(layout.server_key), str(layout.ca_key)]
    proc = subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python, "-c",
         _AS_NOBODY, str(vdsmd.port), str(layout.ca_cert), *keys],
        capture_output=True, text=True, timeout=60, cwd="/", check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert results, proc.stdout
    for name, result in results.items():
        assert result.startswith("refused"), (name, result)
    assert results["read " + str(layout.admin_key)] == "refused: PermissionError"
    assert vdsmd.xmlrpc().ping()["status"]["code"] == 0  # root, with the admin key, is served


def start_vdsmd(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """vdsmd with ``flags`` that must refuse to start: it exits at once."""
    argv = [sys.executable, "-m", "vdsm.vdsmd", "--config", "/dev/null", "--port", "0"]
    argv += ["--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run")]
    return subprocess.run(
        [*argv, *flags], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--no-tls", "--host", "0.0.0.0"], "host: 0.0.0.0 is not a loopback address"),
        (["--no-tls", "--host", "::"], "host: :: is not a loopback address"),
        (["--no-tls", "--tls-ca", "/etc/vdsm-ca.pem"], "tls_ca: set while tls is off"),
        (["--no-tls", "--tls-cert", "/etc/c.pem"], "tls_cert: set while tls is off"),
        (["--tls-ca", "/nonexistent/ca.pem"], "tls_ca: cannot read /nonexistent/ca.pem"),
        (["--pki-dir", "/nonexistent"], "vdsm-tool configure"),
    ],
)
def test_inconsistent_tls_settings_are_refused_at_start(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    proc = start_vdsmd(tmp_path, *flags)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "vdsmd.port").exists()


def test_a_certificate_that_does_not_match_its_key_is_refused(
    tmp_path: Path, stranger: PkiLayout
) -> None:
    host = PkiLayout()
    proc = start_vdsmd(
        tmp_path, "--tls-cert", str(host.server_cert), "--tls-key", str(stranger.server_key)
    )
    assert proc.returncode == 2 and "do not make a TLS context" in proc.stderr, proc.stderr


def test_plain_http_is_explicit_loopback_only_and_warned(tmp_path: Path) -> None:
    with running(VdsmdProcess(tmp_path / "vdsmd", tls=False)) as daemon:
        assert "--no-tls" in daemon.argv()
        assert daemon.xmlrpc().ping()["status"]["code"] == 0
        warnings = [line for line in daemon.log().splitlines() if "WARNING" in line]
        assert any("plain HTTP" in line and "every local user" in line for line in warnings)
