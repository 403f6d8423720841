"""The randomized soak, short (tests/functional/soak.py; `make soak` runs 200 moves, then the
load run): one move for each interruption (none, the client killed then resumed, vdsmd
killed, Ctrl-C, libvirtd restarted, the destination failing), on disks of random small shapes
under the guest's writes; after each, the disk fully on one side with every acknowledged write and
nothing left on the other. Then a move under load: 50 concurrent callers and the fuzzer
(tests/functional/load.py), every answer checked, and the moves still verify.

The short soak runs on two hosts as well (host 1 the SPM, host 2 the VMs; the SPM's vdsmd
killed among the interruptions).

The seed is random and in the failure message: ``python -m tests.functional.soak --moves N
--seed SEED [--load 50 | --hosts 2]`` runs the same moves again."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.functional.soak import KINDS, SMALL_SHAPES, soak

CI_TWO_HOST_KINDS = ("vdsmd_kill", "spm_kill", "storage_fault")

pytestmark = pytest.mark.libvirt


def test_a_short_soak_loses_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    lines: list[str] = []
    figures = soak(tmp_path, len(KINDS), seed, out=lines.append, shapes=SMALL_SHAPES)
    story = "\n".join([f"seed {seed}", *lines])
    assert figures.failure == "", story
    assert sorted(m.kind for m in figures.moves) == sorted(KINDS), story
    assert figures.summary()["writes_checked"] > 0, story


def test_a_short_soak_on_two_hosts_loses_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    """Host 1 the SPM, host 2 the VMs: one move for each interruption that is about the two
    hosts (either vdsmd killed, the destination failing: the VM host's leases); the others
    run on one host above and in `make soak`'s two-host run."""
    seed = random.randrange(2**32)
    lines: list[str] = []
    figures = soak(
        tmp_path,
        len(CI_TWO_HOST_KINDS),
        seed,
        out=lines.append,
        shapes=SMALL_SHAPES,
        hosts=2,
        kinds=CI_TWO_HOST_KINDS,
    )
    story = "\n".join([f"seed {seed}, two hosts", *lines])
    assert figures.failure == "", story
    assert sorted(m.kind for m in figures.moves) == sorted(CI_TWO_HOST_KINDS), story
    assert figures.summary()["writes_checked"] > 0, story


def test_moves_under_50_callers_and_the_fuzzer_still_verify(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    lines: list[str] = []
    # One move: under this load a move takes about 5 times as long (docs/reliability.md),
    # and the suite's time budget has room for one; `make soak` runs 30.
    figures = soak(tmp_path, 1, seed, out=lines.append, load=50, shapes=SMALL_SHAPES)
    story = "\n".join([f"seed {seed}", *lines, str(figures.load)])
    assert figures.failure == "", story
    assert len(figures.moves) == 1, story
    load = figures.load
    assert load["callers"] == 50 and load["requests"] > 200, story
    assert load["fuzz_requests"] > 0 and load["failures"] == [], story
    assert "100" not in load["answers_by_code"], story
