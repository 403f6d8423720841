"""Where a host's certificates live: the layout of the PKI directory (``/etc/pki/vdsm``).

vdsmd serves TLS and requires a client certificate signed by the host's CA; vdsClient
presents the admin certificate and verifies the server with the same CA. `vdsm-tool
configure` creates every file below (vdsm/pki.py); the daemon, the tool and the client
(which must not import the daemon) all read the layout from here, so it is declared once.

    certs/cacert.pem      the CA's certificate (public, 0644)
    private/cakey.pem     the CA's key, to sign more certificates (root only, 0600)
    certs/vdsmcert.pem    vdsmd's server certificate (public)
    keys/vdsmkey.pem      vdsmd's key (root only)
    certs/admincert.pem   the admin client certificate vdsClient presents (public)
    keys/adminkey.pem     its key (root only): who can read it can call vdsmd
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_PKI_DIR = Path("/etc/pki/vdsm")


@dataclass(frozen=True)
class PkiLayout:
    root: Path = DEFAULT_PKI_DIR

    @property
    def ca_cert(self) -> Path:
        return self.root / "certs" / "cacert.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "private" / "cakey.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "certs" / "vdsmcert.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "keys" / "vdsmkey.pem"

    @property
    def admin_cert(self) -> Path:
        return self.root / "certs" / "admincert.pem"

    @property
    def admin_key(self) -> Path:
        return self.root / "keys" / "adminkey.pem"

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.admin_cert,
            self.admin_key,
        )
