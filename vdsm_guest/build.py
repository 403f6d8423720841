"""Build (once, then cached) the tiny real guest used by tests, the demo and the benchmark.

The guest is Debian's own kernel plus a one-file userland: an initramfs holding a static
busybox, the virtio modules and ``init.sh`` as ``/init``. Both come from the packages that
apt currently offers (``linux-image-amd64``'s kernel and ``busybox-static``), downloaded with
``apt-get download`` and unpacked with ``dpkg -x``; nothing is installed on the host.

The result is cached under a key made of the two package versions and the init script, so a
new kernel or a changed init gives a new build and an unchanged one costs a few apt-cache
lookups. Usage::

    python -m vdsm_guest.build [--cache DIR]     # prints kernel=, initrd=, cmdline=
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from vdsm.errors import CommandError
from vdsm.storage.runner import run
from vdsm_guest import kernel
from vdsm_guest.cpio import CpioWriter

log = logging.getLogger("vdsm_guest.build")

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"

# The modules /init loads; their dependencies are found from the modules themselves.
GUEST_MODULES = ["virtio_pci", "virtio_blk"]

# Serial console for the write log; panic=-1 reboots at once if /init dies, which QEMU run
# with -no-reboot turns into an exit; quiet keeps kernel messages from cutting log lines.
DEFAULT_CMDLINE = "console=ttyS0 panic=-1 quiet"

INIT_SCRIPT = Path(__file__).with_name("init.sh")

# Bump when the build itself changes what it produces, to invalidate every cached guest.
_BUILD_FORMAT = "1"

_APT_TIMEOUT = 600.0
_UNPACK_TIMEOUT = 300.0


class GuestBuildError(Exception):
    """The guest cannot be built: apt cannot find a package, a package has an odd shape, ..."""


@dataclass(frozen=True)
class GuestImage:
    """A built guest: boot ``kernel`` with ``initrd`` and a command line based on ``cmdline``.

    ``kernel`` is the uncompressed vmlinux (booted via PVH, much faster under TCG) when the
    package's kernel allows it, else the bzImage.
    """

    kernel: Path
    initrd: Path
    cmdline: str

    def kernel_cmdline(
        self,
        *,
        slots: int | None = None,
        pause: float | None = None,
        count: int | None = None,
        disk: str | None = None,
    ) -> str:
        """``cmdline`` plus the ``vdsm_guest.*`` parameters that /init reads (see init.sh)."""
        params = {"slots": slots, "pause": pause, "count": count, "disk": disk}
        extra = [
            f"vdsm_guest.{key}={_param(value)}"
            for key, value in params.items()
            if value is not None
        ]
        return " ".join([self.cmdline, *extra])


def _param(value: object) -> str:
    # busybox sleep takes "0.05" but not "5e-02": never let a float turn into exponent form.
    if isinstance(value, float):
        return format(value, "f").rstrip("0").rstrip(".") or "0"
    return str(value)


@dataclass(frozen=True)
class _Package:
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vdsm-guest"


def ensure_guest(cache_dir: Path | None = None) -> GuestImage:
    """The guest built from the current packages: from the cache, or built now (seconds, plus
    downloading two packages, ~70 MiB)."""
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    kernel_pkg, busybox_pkg = _current_packages()
    init = INIT_SCRIPT.read_bytes()
    key = hashlib.sha256(
        "\n".join([_BUILD_FORMAT, kernel_pkg.spec, busybox_pkg.spec, DEFAULT_CMDLINE]).encode()
        + init
    ).hexdigest()[:12]
    target = cache_dir / f"{kernel_pkg.name}_{kernel_pkg.version}-{key}"
    manifest = target / "guest.json"
    if not manifest.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        _build(target, kernel_pkg, busybox_pkg, init)
    fields = json.loads(manifest.read_text())
    return GuestImage(
        kernel=target / fields["kernel"],
        initrd=target / fields["initrd"],
        cmdline=fields["cmdline"],
    )


def _current_packages() -> tuple[_Package, _Package]:
    """The kernel package linux-image-amd64 depends on now, and busybox-static."""
    stanzas = _apt_show([KERNEL_METAPACKAGE, BUSYBOX_PACKAGE])
    meta, busybox = stanzas[KERNEL_METAPACKAGE], stanzas[BUSYBOX_PACKAGE]
    # Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2) -- the metapackage pins the version.
    match = re.search(r"(linux-image-[^\s,|(]+)(?:\s*\(=\s*([^)\s]+)\))?", meta.get("Depends", ""))
    if match is None:
        raise GuestBuildError(f"{KERNEL_METAPACKAGE} depends on no linux-image package")
    name, version = match[1], match[2]
    if version is None:
        version = _apt_show([name])[name]["Version"]
    return _Package(name, version), _Package(BUSYBOX_PACKAGE, busybox["Version"])


def _apt_show(names: list[str]) -> dict[str, dict[str, str]]:
    """The candidate stanza of each package; runs ``apt-get update`` once if apt lacks one."""
    stanzas = _apt_cache_show(names)
    if not all(name in stanzas for name in names):
        # Package lists never fetched (a fresh container) or too old to know the package.
        log.info("apt-cache does not know all of %s: running apt-get update", ", ".join(names))
        run(["apt-get", "update"], timeout=_APT_TIMEOUT)
        stanzas = _apt_cache_show(names)
    missing = [name for name in names if name not in stanzas]
    if missing:
        raise GuestBuildError(f"apt has no candidate for {', '.join(missing)}")
    return stanzas


def _apt_cache_show(names: list[str]) -> dict[str, dict[str, str]]:
    # apt-cache exits 100 when it knows none of the packages, 0 when it knows some of them.
    result = run(
        ["apt-cache", "show", "--no-all-versions", *names], timeout=_APT_TIMEOUT, ok_codes=(0, 100)
    )
    return _parse_stanzas(result.stdout.decode())


def _parse_stanzas(text: str) -> dict[str, dict[str, str]]:
    stanzas: dict[str, dict[str, str]] = {}
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields:
            stanzas.setdefault(fields["Package"], fields)
    return stanzas


def _build(target: Path, kernel_pkg: _Package, busybox_pkg: _Package, init: bytes) -> None:
    """Build into a scratch directory next to ``target`` and rename it into place at the end.

    The rename is atomic, so a reader never sees half a guest; of two concurrent builds, the
    second rename fails and that build is simply dropped.
    """
    log.info("building the guest from %s and %s", kernel_pkg.spec, busybox_pkg.spec)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        work = Path(scratch)
        debs, root, out = work / "debs", work / "root", work / "out"
        for path in (debs, root, out):
            path.mkdir()
        # Sandbox user root: the scratch directory is private, apt's _apt user cannot write it.
        run(
            [
                "apt-get",
                "download",
                "-o",
                "APT::Sandbox::User=root",
                kernel_pkg.spec,
                busybox_pkg.spec,
            ],
            cwd=debs,
            timeout=_APT_TIMEOUT,
        )
        for deb in sorted(debs.glob("*.deb")):
            run(["dpkg", "-x", str(deb), str(root)], timeout=_UNPACK_TIMEOUT)

        kernel_name = _write_kernel(root, out)
        _write_initrd(root, init, out / "initrd.img")
        manifest = {
            "kernel": kernel_name,
            "initrd": "initrd.img",
            "cmdline": DEFAULT_CMDLINE,
            "packages": [asdict(kernel_pkg), asdict(busybox_pkg)],
        }
        (out / "guest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            out.rename(target)
        except OSError:
            if not (target / "guest.json").exists():
                raise
            log.info("another build of %s finished first: using it", target.name)


def _write_kernel(root: Path, out: Path) -> str:
    bzimages = sorted((root / "boot").glob("vmlinuz-*"))
    if len(bzimages) != 1:
        raise GuestBuildError(f"expected one boot/vmlinuz-* in the kernel package: {bzimages}")
    try:
        vmlinux = kernel.extract_vmlinux(bzimages[0].read_bytes())
    except kernel.KernelError as e:
        raise GuestBuildError(f"{bzimages[0].name}: {e}") from e
    if vmlinux is None:
        log.info("%s cannot boot via PVH: using the bzImage", bzimages[0].name)
        shutil.copyfile(bzimages[0], out / "vmlinuz")
        return "vmlinuz"
    (out / "vmlinux").write_bytes(vmlinux)
    return "vmlinux"


def _write_initrd(root: Path, init: bytes, path: Path) -> None:
    module_dirs = sorted((root / "lib" / "modules").iterdir())
    if len(module_dirs) != 1:
        raise GuestBuildError(f"expected one lib/modules/<version> directory: {module_dirs}")
    try:
        modules = kernel.resolve_modules(module_dirs[0], GUEST_MODULES)
    except kernel.KernelError as e:
        raise GuestBuildError(str(e)) from e
    busybox = root / "bin" / "busybox"
    if not busybox.is_file():
        raise GuestBuildError(f"{BUSYBOX_PACKAGE} has no bin/busybox")

    archive = io.BytesIO()
    cpio = CpioWriter(archive)
    for directory in ("bin", "dev", "lib", "lib/modules", "proc", "sys", "tmp"):
        cpio.directory(directory)
    # The kernel opens /dev/console for /init before /init can mount devtmpfs.
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    cpio.symlink("bin/sh", "busybox")  # the other applets are linked by /init itself
    for index, (name, data) in enumerate(modules, start=1):
        # /init loads lib/modules/*.ko in glob order: the prefix carries the load order.
        cpio.file(f"lib/modules/{index:02d}-{name}.ko", data)
    cpio.file("init", init, mode=0o755)
    cpio.close()
    path.write_bytes(gzip.compress(archive.getvalue(), compresslevel=6, mtime=0))
    log.info(
        "initramfs: %d modules (%s), %d bytes",
        len(modules),
        ", ".join(name for name, _ in modules),
        path.stat().st_size,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vdsm_guest.build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help=f"cache directory (default: {default_cache_dir()})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        guest = ensure_guest(args.cache)
    except (GuestBuildError, CommandError) as e:
        print(f"cannot build the guest: {e}", file=sys.stderr)
        return 1
    # Shell-quoted, so that `eval "$(python -m vdsm_guest.build)"` sets the three variables.
    print(f"kernel={shlex.quote(str(guest.kernel))}")
    print(f"initrd={shlex.quote(str(guest.initrd))}")
    print(f"cmdline={shlex.quote(guest.cmdline)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
