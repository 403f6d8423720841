"""File storage domains: the exact layout, reopening, stats, repository look-up, bad input."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.storage.support import new_uuid
from vdsm.errors import (
    InvalidParameter,
    StorageDomainAlreadyExists,
    StorageDomainCreationError,
    StorageDomainDoesNotExist,
    StorageDomainLayoutError,
    StorageDomainMetadataNotFound,
)
from vdsm.storage.constants import DomainClass, DomainRole, DomainType
from vdsm.storage.domain import FileStorageDomain
from vdsm.storage.repository import StorageRepository


def test_create_lays_out_contract_directories(
    tmp_path: Path, repository: StorageRepository
) -> None:
    sd = new_uuid()
    domain = repository.create_domain(tmp_path, sd, "fast-nfs", domain_type=DomainType.NFS)
    root = tmp_path / sd
    assert domain.path == root
    assert sorted(p.name for p in (root / "dom_md").iterdir()) == [
        "ids",
        "inbox",
        "leases",
        "metadata",
        "outbox",
    ]
    assert (root / "images").is_dir()
    assert (root / "master" / "tasks").is_dir()
    text = (root / "dom_md" / "metadata").read_text()
    lines = text.splitlines()
    assert lines[-1] == "EOF"
    assert lines[:-1] == sorted(lines[:-1])
    assert f"SDUUID={sd}" in lines and "TYPE=NFS" in lines and "CLASS=Data" in lines
    # Nothing else was left in the parent directory: no staging directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["repository", sd])


def test_open_reads_back_what_create_wrote(tmp_path: Path) -> None:
    sd = new_uuid()
    created = FileStorageDomain.create(tmp_path, sd, "local", domain_class=DomainClass.DATA)
    opened = FileStorageDomain.open(tmp_path / sd)
    assert opened.metadata == created.metadata
    assert opened.metadata.role is DomainRole.REGULAR
    assert opened.metadata.pool_uuid == ""


def test_stats_match_the_file_system(domain: FileStorageDomain) -> None:
    stats = domain.stats()
    st = os.statvfs(domain.path)
    assert stats.total_bytes == st.f_blocks * st.f_frsize
    assert 0 < stats.free_bytes <= stats.total_bytes
    assert stats.used_bytes == stats.total_bytes - stats.free_bytes


def test_direct_io_is_probed_on_the_domains_file_system(domain: FileStorageDomain) -> None:
    """The copies open both ends with O_DIRECT where it works: the test's disk takes it; a
    domain whose metadata cannot be opened says no (the copy then meets the error itself).
    The page-cache fallback of the copy: test_image_copy.py."""
    assert domain.supports_direct_io()
    domain.metadata_path.unlink()
    assert not domain.supports_direct_io()


def test_domains_in_one_file_system_share_its_device(
    make_domain: Callable[..., FileStorageDomain], tmp_path: Path
) -> None:
    one, two = make_domain("one"), make_domain("two")
    assert one.shares_device_with(two) and two.shares_device_with(one)
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        elsewhere = FileStorageDomain.create(mount, new_uuid(), "elsewhere")
        assert not one.shares_device_with(elsewhere)
        assert not elsewhere.shares_device_with(one)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_repository_finds_domains_by_uuid_after_restart(
    tmp_path: Path, repository: StorageRepository, domain: FileStorageDomain
) -> None:
    again = StorageRepository(repository.root)  # as a restarted daemon would
    assert again.domain(domain.sd_uuid).path == domain.path
    assert again.domain_uuids() == [domain.sd_uuid]


def test_unknown_domain_is_358(repository: StorageRepository) -> None:
    sd = new_uuid()
    with pytest.raises(StorageDomainDoesNotExist, match=sd):
        repository.domain(sd)


def test_domain_whose_directory_vanished_is_358(repository: StorageRepository, domain) -> None:  # type: ignore[no-untyped-def]
    os.rename(domain.path, domain.path.with_name("moved"))
    with pytest.raises(StorageDomainDoesNotExist, match="is gone"):
        repository.domain(domain.sd_uuid)


def test_create_twice_is_refused(tmp_path: Path, repository: StorageRepository) -> None:
    sd = new_uuid()
    repository.create_domain(tmp_path, sd, "one")
    with pytest.raises(StorageDomainAlreadyExists, match=sd):
        repository.create_domain(tmp_path, sd, "two")
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(StorageDomainAlreadyExists, match="already known"):
        repository.create_domain(other, sd, "three")
    assert list(other.iterdir()) == []


@pytest.mark.parametrize(
    "sd_uuid, name, error",
    [
        ("../../etc", "x", InvalidParameter),
        ("/etc/passwd", "x", InvalidParameter),
        ("12345678-1234-1234-1234-1234567890ab/..", "x", InvalidParameter),
        ("00000000-0000-0000-0000-000000000000", "x", InvalidParameter),
        (None, "x", InvalidParameter),
        ("12345678-1234-1234-1234-1234567890ab", "x" * 51, InvalidParameter),
        ("12345678-1234-1234-1234-1234567890ab", "two\nlines", InvalidParameter),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(
    tmp_path: Path, sd_uuid: object, name: str, error: type[Exception]
) -> None:
    before = sorted(tmp_path.iterdir())
    with pytest.raises(error):
        FileStorageDomain.create(tmp_path, sd_uuid, name)  # type: ignore[arg-type]
    assert sorted(tmp_path.iterdir()) == before


def test_root_must_be_an_existing_absolute_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageDomainCreationError, match="not an existing directory"):
        FileStorageDomain.create(tmp_path / "absent", new_uuid(), "x")
    with pytest.raises(InvalidParameter, match="absolute"):
        FileStorageDomain.create(Path("relative"), new_uuid(), "x")
    with pytest.raises(InvalidParameter, match="blockSize"):
        FileStorageDomain.create(tmp_path, new_uuid(), "x", block_size=1000)


def test_open_refuses_damaged_layouts(tmp_path: Path) -> None:
    sd = new_uuid()
    domain = FileStorageDomain.create(tmp_path, sd, "x")
    other = tmp_path / new_uuid()
    os.rename(domain.path, other)
    with pytest.raises(StorageDomainLayoutError, match="metadata names domain"):
        FileStorageDomain.open(other)
    (other / "dom_md" / "metadata").write_text("SDUUID=garbage\n")
    with pytest.raises(StorageDomainLayoutError, match="unreadable"):
        FileStorageDomain.open(other)
    (other / "dom_md" / "metadata").unlink()
    with pytest.raises(StorageDomainMetadataNotFound):
        FileStorageDomain.open(other)
