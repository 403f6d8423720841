"""vdsm-tool configure: the host's CA, server and admin certificates, made with real openssl.

The chain verifies, the server certificate names loopback and this host, keys are root's
alone, a second run changes nothing, a lost pair is made again, and a lost CA renews all.
"""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_command
from vdsm import tool
from vdsm_api.pki import PkiLayout


@pytest.fixture
def layout(tmp_path: Path) -> PkiLayout:
    require_command("openssl")
    layout = PkiLayout(tmp_path / "pki")
    assert tool.main(["configure", "--pki-dir", str(layout.root)]) == 0
    return layout


def contents(layout: PkiLayout) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in layout.files()}


def openssl_text(cert: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-text"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip


def test_every_file_with_its_mode(layout: PkiLayout) -> None:
    for path in layout.files():
        assert path.is_file(), path
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.parent.name in ("keys", "private") else 0o644), path
    for directory in ("keys", "private"):
        assert stat.S_IMODE((layout.root / directory).stat().st_mode) == 0o700
    assert not [p for p in layout.root.rglob("*") if p.name.startswith(".")], "no leftovers"


def test_the_chain_verifies_and_names_this_host(layout: PkiLayout) -> None:
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(layout.ca_cert), "-purpose", "sslserver",
         str(layout.server_cert)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(layout.ca_cert), "-purpose", "sslclient",
         str(layout.admin_cert)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    server = openssl_text(layout.server_cert)
    for name in ("DNS:localhost", "IP Address:127.0.0.1", f"DNS:{socket.gethostname()}"):
        assert name in server
    assert "TLS Web Client Authentication" in openssl_text(layout.admin_cert)
    # What Python's ssl accepts is what vdsmd and vdsClient will use.
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(layout.server_cert, layout.server_key)
    client_side = ssl.create_default_context(cafile=str(layout.ca_cert))
    client_side.load_cert_chain(layout.admin_cert, layout.admin_key)


def test_a_second_run_changes_nothing(
    layout: PkiLayout, capsys: pytest.CaptureFixture[str]
) -> None:
    before = contents(layout)
    capsys.readouterr()
    assert tool.main(["configure", "--pki-dir", str(layout.root)]) == 0
    assert "every certificate is in place" in capsys.readouterr().out
    assert contents(layout) == before


def test_a_lost_pair_is_made_again_a_lost_ca_renews_all(layout: PkiLayout) -> None:
    before = contents(layout)
    layout.admin_key.unlink()
    assert tool.main(["configure", "--pki-dir", str(layout.root)]) == 0
    after = contents(layout)
    changed = {p for p in layout.files() if after[p] != before[p]}
    assert changed == {layout.admin_cert, layout.admin_key}

    layout.ca_key.unlink()
    assert tool.main(["configure", "--pki-dir", str(layout.root)]) == 0
    renewed = contents(layout)
    assert all(renewed[p] != after[p] for p in layout.files())


def test_an_unwritable_directory_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_command("openssl")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert tool.main(["configure", "--pki-dir", str(blocker / "pki")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vdsm-tool configure: ") and "Traceback" not in err


def test_the_config_files_pki_dir_is_used_without_pki_dir(tmp_path: Path) -> None:
    """The unit and the RPM run `vdsm-tool configure` bare: it must make the files vdsmd reads."""
    require_command("openssl")
    conf = tmp_path / "vdsm.conf"
    conf.write_text(f"[vdsm]\npki_dir = {tmp_path / 'elsewhere'}\n")
    assert tool.main(["configure", "--config", str(conf)]) == 0
    assert PkiLayout(tmp_path / "elsewhere").admin_key.is_file()
    conf.write_text("[vdsm]\nno_such_setting = 1\n")
    assert tool.main(["configure", "--config", str(conf)]) == 1
