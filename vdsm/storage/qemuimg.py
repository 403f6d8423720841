"""The qemu-img adapter: one function per qemu-img subcommand, nothing else.

Each function builds its argv step by step, runs it through :mod:`vdsm.storage.runner` and,
where qemu-img offers ``--output json``, returns the parsed JSON after checking the keys the
callers rely on. The binary is ``qemu-img`` from PATH unless the environment variable
``VDSM_QEMU_IMG`` names another one (read at every call, so nothing needs patching).

Pass the format (``fmt``/``src_format``...) whenever it is known: letting qemu-img probe a raw
image lets a guest that wrote a qcow2 header into it decide how the host opens it.

qemu-img's conventions are kept here both ways: a path becomes a name qemu-img cannot take for
an option or a protocol, ``-o`` options are joined in qemu's ``key=value,...`` syntax, a paired
option (a backing file and its format) is refused when half of it is missing, and each JSON
object qemu-img prints is checked for the keys the callers rely on, so a qemu-img that prints
something else fails here with :class:`~vdsm.errors.QemuImgError` rather than as a KeyError far
away.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, overload

from vdsm.errors import QemuImgError
from vdsm.storage import runner
from vdsm.storage.runner import Cancellation, ProgressCallback

StrPath = str | os.PathLike[str]

QEMU_IMG_ENV = "VDSM_QEMU_IMG"

# Seconds allowed to commands that touch metadata only (create, info, measure, map, unsafe
# rebase). Data-moving commands (convert, compare, check, safe rebase) default to no limit:
# their duration grows with the image, and they can be cancelled instead.
METADATA_TIMEOUT = 60.0

_INFO_KEYS = ("virtual-size", "format", "filename", "actual-size")
_MEASURE_KEYS = ("required", "fully-allocated")
_EXTENT_KEYS = ("start", "length", "data", "zero")


def qemu_img() -> str:
    """The qemu-img binary to run: ``$VDSM_QEMU_IMG`` or ``qemu-img`` from PATH."""
    return os.environ.get(QEMU_IMG_ENV, "qemu-img")


def version(*, timeout: float = METADATA_TIMEOUT) -> tuple[int, int, int]:
    """qemu-img's version, e.g. ``(7, 2, 22)``."""
    argv = [qemu_img(), "--version"]
    result = runner.run(argv, timeout=timeout)
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", result.stdout.decode(errors="replace"))
    if match is None:
        raise QemuImgError(argv, result.rc, result.stderr, reason="no version in output")
    return int(match[1]), int(match[2]), int(match[3])


def create(
    path: StrPath,
    fmt: str,
    size: int | None = None,
    *,
    backing: str | None = None,
    backing_format: str | None = None,
    preallocation: str | None = None,
    cluster_size: int | None = None,
    options: Mapping[str, str] | None = None,
    cancellation: runner.Cancellation | None = None,
    timeout: float = METADATA_TIMEOUT,
) -> None:
    """Create an image of ``fmt`` ("raw" or "qcow2"; qcow2 is always compat=1.1).

    ``backing`` is written into the header as given (vdsm uses names relative to the new
    image's directory) and requires ``backing_format``, so that qemu never probes the backing
    file's format. Without ``size`` the image takes the backing file's size. ``preallocation``
    is qemu's option ("off", "metadata", "falloc", "full"); qemu 7.2 refuses it together with
    a backing file for qcow2 unless ``options`` has ``extended_l2="on"``. ``options`` are
    further ``-o`` format options, passed as given.
    """
    argv = [qemu_img(), "create", "-f", fmt]
    if backing is not None:
        argv += ["-b", backing, "-F", _required(backing_format, "backing_format", "backing")]
    elif size is None:
        raise ValueError("size is required for an image without a backing file")
    opts = {"compat": "1.1"} if fmt == "qcow2" else {}
    if preallocation is not None:
        opts["preallocation"] = preallocation
    if cluster_size is not None:
        opts["cluster_size"] = str(cluster_size)
    opts.update(options or {})
    if opts:
        argv += ["-o", _options(opts)]
    argv.append(_filename(path))
    if size is not None:
        argv.append(str(size))
    runner.run(argv, timeout=timeout, cancellation=cancellation)


@overload
def info(
    path: StrPath,
    *,
    fmt: str | None = ...,
    backing_chain: Literal[False] = ...,
    force_share: bool = ...,
    timeout: float = ...,
) -> dict[str, Any]: ...


@overload
def info(
    path: StrPath,
    *,
    fmt: str | None = ...,
    backing_chain: Literal[True],
    force_share: bool = ...,
    timeout: float = ...,
) -> list[dict[str, Any]]: ...


def info(
    path: StrPath,
    *,
    fmt: str | None = None,
    backing_chain: bool = False,
    force_share: bool = False,
    timeout: float = METADATA_TIMEOUT,
) -> dict[str, Any] | list[dict[str, Any]]:
    """``qemu-img info`` as a dict, or with ``backing_chain`` a list of dicts, leaf first.

    Every dict has "virtual-size", "format", "filename" and "actual-size"; an image with a
    backing file also has "backing-filename" (as written in its header),
    "full-backing-filename" and, when recorded, "backing-filename-format". ``force_share``
    (-U) is needed to read an image a running QEMU has open for writing.
    """
    argv = [qemu_img(), "info", "--output", "json"]
    if fmt is not None:
        argv += ["-f", fmt]
    if backing_chain:
        argv.append("--backing-chain")
    if force_share:
        argv.append("-U")
    argv.append(_filename(path))
    result = runner.run(argv, timeout=timeout)
    parsed = _parse_json(argv, result)
    if not backing_chain:
        return _checked(argv, result, parsed, _INFO_KEYS)
    if not isinstance(parsed, list):
        raise QemuImgError(argv, result.rc, result.stderr, reason="expected a list of images")
    return [_checked(argv, result, image, _INFO_KEYS) for image in parsed]


def convert(
    src: StrPath,
    dst: StrPath,
    *,
    src_format: str,
    dst_format: str,
    backing: str | None = None,
    backing_format: str | None = None,
    target_exists: bool = False,
    target_is_zero: bool = False,
    src_direct: bool = False,
    dst_direct: bool = False,
    dst_alone: bool = False,
    rate_limit: int | None = None,
    on_progress: ProgressCallback | None = None,
    cancellation: Cancellation | None = None,
    timeout: float | None = None,
) -> None:
    """Copy ``src`` (as seen through its whole backing chain) into ``dst``.

    Zeros stay holes: qemu-img skips unallocated and zero areas (no ``-S 0``).

    ``target_exists`` (-n) writes into an existing ``dst`` instead of creating it.

    ``backing`` + ``backing_format`` (-B/-F): the target has that backing file, so only the
    data of ``src``'s top layer is copied; areas ``src`` does not allocate itself are left
    unallocated in ``dst`` and read from its backing file. A new target is created with that
    backing link.

    Per-volume copy of one volume of a chain into its existing, freshly created (empty)
    destination twin, measured on qemu-img 7.2 (``tests/storage/test_qemuimg.py``):

    - a volume with a parent: ``target_exists=True, backing=<the twin's backing name>,
      backing_format=<its format>``, i.e. ``qemu-img convert -f qcow2 -O qcow2 -n -B parent
      -F fmt src dst``. With -n the -B value is neither opened nor written; it only tells
      qemu-img that the target has a backing file. The twin keeps its own backing link and
      receives exactly the source layer's allocated clusters (zero clusters stay zero
      clusters); the destination chain compares identical to the source chain.
    - a volume without a parent: ``target_exists=True, target_is_zero=True``.

    What does not work: without -B qemu-img copies what the source reads through its whole
    chain (the parents' data lands in the layer); opening the source layer alone
    (``json:{..., "backing": null}``) makes its unallocated areas read as zeros, written as
    zero clusters that hide the twin's backing data; a plain -n copy without
    ``target_is_zero`` writes zeros for every hole (zero clusters in a qcow2 twin, punched
    holes in a raw one).

    ``target_is_zero`` (--target-is-zero; needs ``target_exists`` and no ``backing``): the
    existing target already reads as zeros, so zero areas are not written at all. This also
    keeps a preallocated twin preallocated: a plain -n copy into a preallocated raw twin
    punches holes wherever the source is sparse.

    ``src_direct`` (-T none) and ``dst_direct`` (-t none) open that end with O_DIRECT, past the
    page cache; qemu-img then flushes the target as it closes it. Without them qemu-img's
    defaults hold: writeback for the source, unsafe for the target (no flush at all).

    ``dst_alone``: open an existing qcow2 ``dst`` without its backing chain (a ``json:``
    target with ``"backing": null``). qemu-img opens a target with its chain and takes the
    write lock of each file in it, so two copies into twins of one chain, a parent and its
    child, cannot run at once ('Failed to get shared "write" lock'); opened alone they can.
    With ``backing`` (-B) the copy is the same either way: only the source layer's clusters
    are written (measured on 7.2: the twin chains compare identical).

    ``rate_limit`` (-r): at most that many bytes per second are read from ``src``.

    ``on_progress(percent)`` adds -p and is called as qemu-img reports progress.
    """
    argv = [qemu_img(), "convert"]
    if on_progress is not None:
        argv.append("-p")
    argv += ["-f", src_format, "-O", dst_format]
    if target_exists:
        argv.append("-n")
    if target_is_zero:
        if not target_exists or backing is not None:
            raise ValueError("target_is_zero needs target_exists and no backing")
        argv.append("--target-is-zero")
    if backing is not None:
        argv += ["-B", backing, "-F", _required(backing_format, "backing_format", "backing")]
    if src_direct:
        argv += ["-T", "none"]
    if dst_direct:
        argv += ["-t", "none"]
    if dst_format == "qcow2" and not target_exists:
        # qemu-img refuses -o options with -n: only a new target gets them.
        argv += ["-o", _options({"compat": "1.1"})]
    if rate_limit is not None:
        if rate_limit <= 0:
            raise ValueError(f"rate_limit must be positive: {rate_limit}")
        argv += ["-r", str(rate_limit)]
    if dst_alone:
        if not target_exists or dst_format != "qcow2":
            raise ValueError("dst_alone needs target_exists and a qcow2 target")
        node = {"driver": "qcow2", "file": {"driver": "file", "filename": os.path.abspath(dst)}}
        target = "json:" + json.dumps({**node, "backing": None})
    else:
        target = _filename(dst)
    argv += [_filename(src), target]
    runner.run(argv, timeout=timeout, on_progress=on_progress, cancellation=cancellation)


def rebase(
    path: StrPath,
    backing: str | None,
    backing_format: str | None,
    *,
    unsafe: bool = False,
    fmt: str = "qcow2",
    cancellation: Cancellation | None = None,
    timeout: float | None = None,
) -> None:
    """Make ``backing`` (written as given; None: no backing file) the backing file of ``path``.

    A safe rebase copies into ``path`` whatever differs between the old and the new backing
    chain; ``unsafe`` (-u) only rewrites the header, for when both read the same (a rename).
    ``timeout`` defaults to :data:`METADATA_TIMEOUT` for an unsafe rebase.
    """
    argv = [qemu_img(), "rebase", "-f", fmt]
    if unsafe:
        argv.append("-u")
        if timeout is None:
            timeout = METADATA_TIMEOUT
    if backing is None:
        argv += ["-b", ""]
    else:
        argv += ["-b", backing, "-F", _required(backing_format, "backing_format", "backing")]
    argv.append(_filename(path))
    runner.run(argv, timeout=timeout, cancellation=cancellation)


def compare(
    a: StrPath,
    b: StrPath,
    *,
    fmt_a: str | None = None,
    fmt_b: str | None = None,
    strict: bool = False,
    force_share: bool = False,
    cancellation: Cancellation | None = None,
    timeout: float | None = None,
) -> bool:
    """True when ``a`` and ``b`` read the same, each through its backing chain.

    Without ``strict`` an image that is shorter than the other compares as if padded with
    zeros; with it (-s) a size or allocation difference is a difference.
    """
    argv = [qemu_img(), "compare"]
    if fmt_a is not None:
        argv += ["-f", fmt_a]
    if fmt_b is not None:
        argv += ["-F", fmt_b]
    if strict:
        argv.append("-s")
    if force_share:
        argv.append("-U")
    argv += [_filename(a), _filename(b)]
    # Exit code 1 means "different"; 2 and above are errors, raised by the runner.
    result = runner.run(argv, timeout=timeout, cancellation=cancellation, ok_codes=(0, 1))
    return result.rc == 0


def check(
    path: StrPath,
    *,
    fmt: str,
    force_share: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """``qemu-img check`` as a dict ("check-errors", and "corruptions", "leaks"... if any).

    Exit codes 2 (corruptions) and 3 (leaked clusters) still come with a full report, so
    they are returned, not raised; the caller judges the counts. Exit code 1 (the check
    could not run, e.g. not a qcow2 image) and 63 (the format has no checks, e.g. raw)
    raise CommandError.
    """
    argv = [qemu_img(), "check", "--output", "json", "-f", fmt]
    if force_share:
        argv.append("-U")
    argv.append(_filename(path))
    result = runner.run(argv, timeout=timeout, ok_codes=(0, 2, 3))
    return _checked(argv, result, _parse_json(argv, result), ("check-errors",))


def measure(
    *,
    out_format: str,
    size: int | None = None,
    src: StrPath | None = None,
    src_format: str | None = None,
    timeout: float = METADATA_TIMEOUT,
) -> dict[str, Any]:
    """Bytes an ``out_format`` image needs: {"required": ..., "fully-allocated": ...}.

    Give either ``size`` (a new empty image) or ``src`` (a copy of that image, as seen
    through its backing chain).
    """
    if (size is None) == (src is None):
        raise ValueError("give exactly one of size and src")
    argv = [qemu_img(), "measure", "--output", "json", "-O", out_format]
    if out_format == "qcow2":
        argv += ["-o", "compat=1.1"]
    if size is not None:
        argv += ["--size", str(size)]
    else:
        assert src is not None
        if src_format is not None:
            argv += ["-f", src_format]
        argv.append(_filename(src))
    result = runner.run(argv, timeout=timeout)
    return _checked(argv, result, _parse_json(argv, result), _MEASURE_KEYS)


def map(  # shadows the builtin: named after the subcommand, like every function here
    path: StrPath,
    *,
    fmt: str | None = None,
    force_share: bool = False,
    timeout: float = METADATA_TIMEOUT,
) -> list[dict[str, Any]]:
    """The extents of ``path`` through its chain, in order.

    Each has "start", "length", "data" (bytes stored somewhere in the chain) and "zero"
    (reads as zeros), plus "depth" (0: the image itself, 1: its backing file...), "present"
    and, for data in a file, "offset".
    """
    argv = [qemu_img(), "map", "--output", "json"]
    if fmt is not None:
        argv += ["-f", fmt]
    if force_share:
        argv.append("-U")
    argv.append(_filename(path))
    result = runner.run(argv, timeout=timeout)
    extents = _parse_json(argv, result)
    if not isinstance(extents, list):
        raise QemuImgError(argv, result.rc, result.stderr, reason="expected a list of extents")
    return [_checked(argv, result, extent, _EXTENT_KEYS) for extent in extents]


def allocated_bytes(extents: Iterable[Mapping[str, Any]], *, depth: int | None = None) -> int:
    """Bytes of data in ``extents`` (from :func:`map`); with ``depth``, only that layer's."""
    return sum(
        extent["length"]
        for extent in extents
        if extent["data"] and (depth is None or extent.get("depth", 0) == depth)
    )


# --- qemu-img's conventions: arguments in, JSON out ------------------------------------


def _filename(path: StrPath) -> str:
    """``path`` as a qemu-img argument that can only mean that local file."""
    # qemu-img would take a name starting with "-" for an option, and a name with a colon
    # before its first "/" for a protocol ("json:", "nbd:"): make both plain file paths.
    name = os.fspath(path)
    if name.startswith("-") or ":" in name.split("/", 1)[0]:
        name = "./" + name
    return name


def _options(opts: Mapping[str, str]) -> str:
    """``opts`` as the value of one ``-o``."""
    # qemu's option syntax: "key=value,key=value", a comma inside a value doubled.
    return ",".join(f"{key}={value.replace(',', ',,')}" for key, value in opts.items())


def _required(value: str | None, name: str, because: str) -> str:
    """``value``, which must be given (not None) together with ``because``."""
    if value is None:
        raise ValueError(f"{name} is required with {because}")
    return value


def _parse_json(argv: list[str], result: runner.CommandResult) -> Any:
    """The JSON that ``argv`` printed on stdout."""
    try:
        return json.loads(result.stdout)
    except ValueError as e:
        raise QemuImgError(argv, result.rc, result.stderr, reason=f"invalid JSON: {e}") from e


def _checked(
    argv: list[str], result: runner.CommandResult, found: object, keys: Iterable[str]
) -> dict[str, Any]:
    """``found`` as a JSON object that has every one of ``keys``."""
    if not isinstance(found, dict):
        raise QemuImgError(argv, result.rc, result.stderr, reason="expected a JSON object")
    for key in keys:
        if key not in found:
            raise QemuImgError(argv, result.rc, result.stderr, reason=f"no {key!r} in output")
    return found
