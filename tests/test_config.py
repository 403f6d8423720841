"""vdsmd's settings: defaults, the INI file, flags over the file, and every bad value refused
with the key named (never a traceback)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from vdsm import config
from vdsm.vdsmd import parse_args


def load(tmp_path: Path, text: str | None, *flags: str) -> config.Config:
    args = list(flags)
    if text is not None:
        path = tmp_path / "vdsm.conf"
        path.write_text(text)
        args += ["--config", str(path)]
    return config.from_arguments(parse_args(args))


def test_defaults_without_a_file(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg == config.Config()
    assert cfg.port == 54321 and cfg.max_concurrent_copies == 2
    assert cfg.copy_rate_limit == 0 and cfg.copy_rate_limit_bytes is None


def test_file_then_flags(tmp_path: Path) -> None:
    text = "[vdsm]\nport = 1234\ncopy_rate_limit = 40\ntls = no\nstate_dir = /srv/vdsm\n"
    cfg = load(tmp_path, text)
    assert cfg.port == 1234
    assert cfg.copy_rate_limit_bytes == 40 * 1024**2
    assert cfg.state_dir == Path("/srv/vdsm")
    cfg = load(tmp_path, text, "--port", "4321", "--copy-rate-limit", "0")
    assert cfg.port == 4321 and cfg.copy_rate_limit_bytes is None
    assert cfg.state_dir == Path("/srv/vdsm")


@pytest.mark.parametrize(
    ("text", "flags", "named"),
    [
        ("[vdsm]\nport = many\n", [], "port"),
        ("[vdsm]\nport = 70000\n", [], "port"),
        ("[vdsm]\ncopy_rate_limit = -1\n", [], "copy_rate_limit"),
        ("[vdsm]\ncopy_rate_limit = 1.5\n", [], "copy_rate_limit"),
        ("", ["--copy-rate-limit", "-5"], "copy_rate_limit"),
        ("[vdsm]\nmax_concurrent_copies = 0\n", [], "max_concurrent_copies"),
        ("[vdsm]\ntls = maybe\n", [], "tls"),
        ("[vdsm]\ntls = no\ntls_ca = /etc/ca.pem\n", [], "tls_ca"),
        ("", ["--no-tls", "--tls-cert", "/etc/c.pem"], "tls_cert"),
        ("[vdsm]\ntls = no\nhost = 192.0.2.1\n", [], "host"),
        ("", ["--no-tls", "--host", "::"], "host"),
        ("[vdsm]\ntls_key = relative.pem\n", [], "tls_key"),
        ("[vdsm]\nstorage_roots = srv/vdsm\n", [], "storage_roots"),
        ("[vdsm]\nstorage_roots = ,\n", [], "storage_roots"),
        ("[vdsm]\nboot_dir = boot\n", [], "boot_dir"),
        ("[vdsm]\nmax_connections = 0\n", [], "max_connections"),
        ("[vdsm]\nrequest_timeout = 0\n", [], "request_timeout"),
        ("[vdsm]\nvm_domain_type = xen\n", [], "vm_domain_type"),
        ("[vdsm]\nlog_level = LOUD\n", [], "log_level"),
        ("[vdsm]\nno_such_key = 1\n", [], "no_such_key"),
        ("port = 1\n", [], "vdsm.conf"),
    ],
)
def test_bad_values_name_the_setting(
    tmp_path: Path, text: str, flags: list[str], named: str
) -> None:
    with pytest.raises(config.ConfigError, match=named):
        load(tmp_path, text, *flags)


def test_missing_named_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.from_arguments(parse_args(["--config", str(tmp_path / "absent.conf")]))


def test_vdsmd_refuses_a_bad_setting_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "vdsm.conf"
    path.write_text("[vdsm]\ncopy_rate_limit = fast\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vdsm.vdsmd", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "copy_rate_limit" in proc.stderr and "Traceback" not in proc.stderr


def test_every_setting_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(config.HELP) == {f.name for f in dataclasses.fields(config.Config)}
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--copy-rate-limit COPY_RATE_LIMIT MiB/s each syncImageData copy" in text
    assert "(default 0)" in text and "(default none)" in text and "(default on)" in text
