"""vdsm-tool: set up a host for vdsmd. ``configure`` creates this host's certificates.

    vdsm-tool configure [--config FILE] [--pki-dir DIR] [--force] [--san NAME]...

Run once as root after installing (the RPM and `make host` do); running it again keeps what
exists. Exit codes: 0 done, 1 it failed (the message says why), 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vdsm import config, pki
from vdsm.errors import VdsmError
from vdsm_api.pki import DEFAULT_PKI_DIR, PkiLayout


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vdsm-tool", description="Set up a host for vdsmd.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configure = commands.add_parser(
        "configure",
        help="create this host's CA, vdsmd's certificate and the admin client certificate",
        description="Create the missing files of the host's PKI: a local CA, vdsmd's server "
        "certificate (for localhost, 127.0.0.1, ::1 and this host's name) and the admin "
        "client certificate vdsClient presents. Existing files are kept.",
    )
    configure.add_argument(
        "--config",
        type=Path,
        default=config.DEFAULT_CONFIG_FILE,
        help="vdsmd's config file, whose pki_dir is used unless --pki-dir is given "
        f"(default {config.DEFAULT_CONFIG_FILE})",
    )
    configure.add_argument(
        "--pki-dir",
        type=Path,
        default=None,
        help=f"where the certificates live (default: the config's pki_dir, {DEFAULT_PKI_DIR})",
    )
    configure.add_argument(
        "--force", action="store_true", help="make a new CA and new certificates"
    )
    configure.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="another name of this host for the server certificate (DNS:name or IP:addr; "
        "repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pki_dir = args.pki_dir
    if pki_dir is None:
        # Where vdsmd will look: the unit and the RPM run this with no flags.
        try:
            pki_dir = config.load(args.config, {}).pki_dir
        except config.ConfigError as e:
            print(f"vdsm-tool configure: {e}", file=sys.stderr)
            return 1
    layout = PkiLayout(pki_dir)
    try:
        created = pki.configure(layout, force=args.force, extra_names=args.san)
    except (OSError, VdsmError) as e:
        print(f"vdsm-tool configure: {e}", file=sys.stderr)
        return 1
    for path in created.made:
        print(f"created {path}")
    if not created.made:
        print(f"{layout.root}: every certificate is in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
