"""OSErrors keep their meaning: out of descriptors is GeneralException (100) naming the errno,
never "layout corrupted" (371) or "metadata unreadable" (207); a damaged layout still is 371.

The descriptors really run out: the test lowers its own RLIMIT_NOFILE and fills the table.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.support import sample_metadata
from vdsm.errors import StorageDomainLayoutError, VdsmError
from vdsm.storage import volume_metadata
from vdsm.storage.domain import FileStorageDomain


@contextlib.contextmanager
def no_free_descriptors() -> Iterator[None]:
    """Every open() in the block fails with EMFILE; the limit and the table are restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def assert_general_emfile(error: VdsmError, path: Path) -> None:
    assert type(error) is VdsmError and error.code == 100, error
    assert f"{path}: [Errno 24] Too many open files" in error.message, error.message


def test_domain_open_without_descriptors_is_100_not_371(domain: FileStorageDomain) -> None:
    with no_free_descriptors(), pytest.raises(VdsmError) as raised:
        FileStorageDomain.open(domain.path)
    assert_general_emfile(raised.value, domain.metadata_path)
    FileStorageDomain.open(domain.path)  # and all is well once descriptors are back


def test_volume_metadata_without_descriptors_is_100_not_207(tmp_path: Path) -> None:
    path = tmp_path / "vol.meta"
    volume_metadata.write(path, sample_metadata(), "vol")
    with no_free_descriptors(), pytest.raises(VdsmError) as raised:
        volume_metadata.read(path, "vol")
    assert_general_emfile(raised.value, path)
    with no_free_descriptors(), pytest.raises(VdsmError) as raised:
        volume_metadata.write(path, sample_metadata(), "vol")
    assert type(raised.value) is VdsmError and "[Errno 24]" in raised.value.message


def test_a_damaged_layout_is_still_371(domain: FileStorageDomain) -> None:
    # A directory where the metadata file belongs.
    domain.metadata_path.unlink()
    domain.metadata_path.mkdir()
    with pytest.raises(StorageDomainLayoutError, match="Is a directory"):
        FileStorageDomain.open(domain.path)
    # A file where dom_md/ belongs.
    domain.metadata_path.rmdir()
    dom_md = domain.metadata_path.parent
    for entry in dom_md.iterdir():
        entry.unlink()
    dom_md.rmdir()
    dom_md.write_text("not a directory")
    with pytest.raises(StorageDomainLayoutError, match="Not a directory"):
        FileStorageDomain.open(domain.path)
