"""A real browser for the web page's tests: Debian's headless Chromium driven through
chromedriver with Selenium, presenting vdsm's admin certificate as a person's browser would.

Chromium on Linux reads certificates only from the NSS database in ``$HOME/.pki/nssdb``, so
the browser runs with a home of its own (the real one is never touched): the host's CA is
trusted there and the admin certificate with its key imported (certutil, pk12util). A profile
preference selects that certificate for the page's address without asking: with none,
Chromium would wait on an invisible dialog. The background-networking flags keep it from
calling Google's services on a machine without internet.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.conftest import missing, require_command
from vdsm_api.pki import PkiLayout

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, f"{argv[0]} failed: {done.stderr.strip()}"


def nss_home(root: Path, pki: PkiLayout) -> Path:
    """A home whose NSS database trusts the host's CA and holds the admin certificate."""
    home = root / "home"
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    certutil, pk12util = require_command("certutil"), require_command("pk12util")
    _run([certutil, "-N", "-d", f"sql:{db}", "--empty-password"])
    _run([certutil, "-A", "-d", f"sql:{db}", "-n", "vdsm-ca", "-t", "C,,", "-i", str(pki.ca_cert)])
    p12 = root / "admin.p12"
    _run(
        [
            require_command("openssl"),
            "pkcs12",
            "-export",
            "-in",
            str(pki.admin_cert),
            "-inkey",
            str(pki.admin_key),
            "-name",
            "vdsm-admin",
            "-passout",
            "pass:",
            "-out",
            str(p12),
        ]
    )
    _run([pk12util, "-i", str(p12), "-d", f"sql:{db}", "-W", ""])
    return home


@contextmanager
def chromium(
    pki: PkiLayout, origin: str, width: int = 1200, height: int = 900
) -> Iterator[WebDriver]:
    """A Selenium driver of headless Chromium that presents the admin certificate to
    ``origin`` (``https://host:port``); quit on exit."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            missing(f"{path} not found (Debian's chromium and chromium-driver: run `make host`)")

    with tempfile.TemporaryDirectory(prefix="vdsm-browser-") as tmp:
        root = Path(tmp)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={root / 'p'}"):
            options.add_argument(flag)
        options.add_experimental_option(
            "prefs",
            {
                "profile.content_settings.exceptions.auto_select_certificate": {
                    f"{origin},*": {"setting": {"filters": [{}]}}
                }
            },
        )
        service = Service(
            executable_path=CHROMEDRIVER,
            env={**os.environ, "HOME": str(nss_home(root, pki))},
            log_output=str(root / "chromedriver.log"),
        )
        driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.set_page_load_timeout(30)
            yield driver
        finally:
            driver.quit()
