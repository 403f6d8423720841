"""Fixtures shared by the whole test suite.

Tests run real tools (qemu-img, virsh, libvirtd). When one is missing, a test skips with the
reason on a developer's machine, but FAILS when the environment variable CI is set: CI must never
turn green by skipping what it was meant to test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from tests.functional.daemon_helpers import VdsmdProcess

LIBVIRT_URI = "qemu:///system"

# Support modules full of asserts: pytest rewrites only test files and conftests by itself, and
# a failed check must show its values there too. Registered here, before any conftest or test
# module imports them.
pytest.register_assert_rewrite(
    "tests.functional.daemon_helpers",
    "tests.functional.mover",
    "tests.functional.lsm_helpers",
    "tests.functional.vdsclient_helpers",
    "tests.functional.storage_helpers",
    "tests.functional.fuzzer",
    "tests.functional.soak",
    "tests.functional.load",
)


def in_ci() -> bool:
    """True when running under CI (CI=true, or any value but empty/0/false/no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """Skip the current test for ``reason``, or fail it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing requirement fails instead of skipping)")
    pytest.skip(reason)


def require_command(name: str) -> str:
    """Return the absolute path of the external command ``name``; skip, or fail under CI."""
    path = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        missing(f"required command {name!r} not found in PATH (run `make host`)")
    return path


@pytest.fixture(name="require_command")
def require_command_fixture() -> Callable[[str], str]:
    """The :func:`require_command` helper as a fixture: ``require_command("qemu-img")``."""
    return require_command


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """The libvirt URI the tests use, checked once per session to answer; skip/fail otherwise."""
    virsh = require_command("virsh")
    try:
        proc = subprocess.run(
            [virsh, "-c", LIBVIRT_URI, "version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        missing(f"`virsh -c {LIBVIRT_URI} version` timed out (run `make host`)")
    if proc.returncode != 0:
        missing(
            f"libvirt does not answer on {LIBVIRT_URI} (run `make host`): {proc.stderr.strip()}"
        )
    return LIBVIRT_URI


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "libvirt: the test needs a running libvirtd answering on qemu:///system "
        "(skipped without one, failed under CI)",
    )
    config.addinivalue_line(
        "markers",
        "slow: a test that waits on purpose for a minute or more (sanlock's dead-host delay); "
        "it runs in `make check`, and `-m 'not slow'` leaves it out",
    )


@pytest.fixture(autouse=True)
def _libvirt_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked ``libvirt`` get the libvirt check without asking for the fixture."""
    if request.node.get_closest_marker("libvirt") is not None:
        request.getfixturevalue("libvirt_uri")


@pytest.fixture
def vdsmd(tmp_path: Path) -> Iterator[VdsmdProcess]:
    """A running vdsmd on its own state; killed at the end, whatever happened."""
    # Imported here, after the assert-rewrite hook above is registered for the module.
    from tests.functional.daemon_helpers import VdsmdProcess, running

    require_command("qemu-img")
    with running(VdsmdProcess(tmp_path / "vdsmd")) as daemon:
        yield daemon
