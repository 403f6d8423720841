"""A bounded, seeded fuzzer (tests/functional/fuzzer.py) against one real vdsmd: hostile
requests for every verb of the schema.

Each seed drives REQUESTS_PER_SEED requests. What must hold, for every request: an answer of
the protocol (no HTTP 5xx, no traceback in it), no JSON-RPC -32603 and no VDSM 100 (bad input
gets 1000 or a protocol error; a good request may fail only with its verb's codes from the
schema); the daemon answers ping in between and at the end, its log holds no traceback, and no
file appeared or changed outside its storage roots — checked on a sentinel tree the fuzzer
names in its paths (also through a symlink planted inside the roots) and by a marker string in
every path it sends, searched for in the test's directory and in /tmp.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_command
from tests.functional.daemon_helpers import VdsmdProcess, running, start_spm
from tests.functional.fuzzer import MARKER, Target, fuzz

SEEDS = [20240601, 7, 1337]
REQUESTS_PER_SEED = 2000  # the load run of test_soak.py fuzzes too, while disks move


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    require_command("qemu-img")
    root = tmp_path_factory.mktemp("fuzz")
    roots, boot, outside = root / "roots", root / "boot", root / "outside"
    for directory in (roots / "good", roots / "spare", boot, outside / "tree" / "deep"):
        directory.mkdir(parents=True)
    (outside / "sentinel.txt").write_text("do not touch\n")
    (outside / "tree" / "deep" / "file").write_bytes(b"x" * 4096)
    (roots / "escape").symlink_to(outside)  # a path through it leads out of the roots
    args = ["--storage-roots", str(roots), "--boot-dir", str(boot)]
    with running(VdsmdProcess(root / "vdsmd", extra_args=args)) as vdsmd:
        rpc = vdsmd.xmlrpc()
        sd, sp = str(uuid.uuid4()), str(uuid.uuid4())
        assert rpc.createStorageDomain(4, sd, "fuzz", str(roots / "good"), 1)["status"]["code"] == 0
        assert rpc.createStoragePool(0, sp, "dc", sd, [sd], 1)["status"]["code"] == 0
        # The SPM, so the SPM verbs' own checks are fuzzed, not only the refusal 654.
        assert rpc.connectStoragePool(sp, 1, "", sd, 1)["status"]["code"] == 0
        start_spm(vdsmd, sp)
        yield Target(vdsmd, root, roots, outside, sd, sp, roots / "spare", [sd, sp])
        for vm in rpc.list().get("vmList", []):  # a request that happened to be good
            rpc.destroy(vm["vmId"] if isinstance(vm, dict) else vm)


# --- the filesystem outside the roots --------------------------------------------------------


def snapshot(t: Target) -> dict[str, tuple[int, int, int]]:
    """Every entry under the test's directory outside roots/ and the daemon's own directory."""
    entries: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(t.root):
        here = Path(dirpath)
        if here == t.root:
            dirnames[:] = [d for d in dirnames if d not in ("roots", "vdsmd")]
        for name in dirnames + filenames:
            st = (here / name).lstat()
            entries[str(here / name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return entries


def marked(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if MARKER in name]


def names_with_marker_outside_roots(t: Target) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(t.root):
        if Path(dirpath) == t.root:
            dirnames[:] = [d for d in dirnames if d != "roots"]
        found += [os.path.join(dirpath, n) for n in dirnames + filenames if MARKER in n]
    return found


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz(target: Target, seed: int) -> None:
    before = snapshot(target)
    started = time.monotonic()
    out = fuzz(target, seed, REQUESTS_PER_SEED)
    elapsed = time.monotonic() - started
    print(f"fuzz seed={seed}: {out.sent} requests in {elapsed:.1f}s; answers by code:")
    print("  " + ", ".join(f"{code}: {n}" for code, n in out.codes.most_common()))
    assert not out.failures, "\n".join(out.failures)
    assert target.vdsmd.running
    assert target.vdsmd.xmlrpc().ping()["status"]["code"] == 0
    assert "Traceback" not in target.vdsmd.log()
    assert snapshot(target) == before, "something changed outside the storage roots"
    assert names_with_marker_outside_roots(target) == []
    assert marked(Path("/tmp")) == []
