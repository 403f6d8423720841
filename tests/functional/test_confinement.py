"""Every path a client names is confined: vdsmd, as root, never creates or opens a file of the
client's choosing.

The defects these reproduce: VM.create's ``consoleLog`` was any absolute path (libvirtd, as
root, created it or appended the guest's output to an existing root-only file), ``kernel`` and
``initrd`` were any host file handed to QEMU, and createStorageDomain created a domain in any
existing directory, ``..`` and symlinks included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_command
from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, running


def code(reply: dict[str, Any]) -> int:
    return int(reply["status"]["code"])


def tree(path: Path) -> list[str]:
    """Every entry under ``path`` (relative), to compare before and after."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def confined(tmp_path: Path) -> Any:
    """A daemon whose storage root is tmp/roots and boot dir tmp/boot, beside tmp/outside
    (a root-only file in it) and symlinks inside the confined directories pointing out."""
    require_command("qemu-img")
    roots, boot, outside = tmp_path / "roots", tmp_path / "boot", tmp_path / "outside"
    for d in (roots, boot, outside):
        d.mkdir()
    secret = outside / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    (roots / "escape").symlink_to(outside)
    (roots / "inside").mkdir()
    (roots / "alias").symlink_to(roots / "inside")
    (boot / "vmlinuz").write_bytes(b"not really a kernel")
    (boot / "passwd").symlink_to("/etc/passwd")
    daemon = VdsmdProcess(tmp_path / "vdsmd", storage_roots=[roots], boot_dir=boot)
    with running(daemon):
        yield daemon, roots, boot, outside


def vm_params(**extra: Any) -> dict[str, Any]:
    return {"vmId": new_uuid(), "vmName": "confined", "memSize": 64, "devices": [], **extra}


@pytest.mark.parametrize("where", ["outside/new.log", "outside/secret", "roots/x.log"])
def test_console_log_is_not_the_clients_to_choose(confined: Any, where: str) -> None:
    daemon, roots, _, outside = confined
    before = tree(outside), (outside / "secret").read_bytes()
    path = str(roots.parent / where)
    reply = daemon.xmlrpc().create(vm_params(consoleLog=path, kernelArgs="x" * 50))
    assert code(reply) == 1000, reply
    assert "consoleLog" in reply["status"]["message"]
    assert "it is not settable" in reply["status"]["message"]
    assert (tree(outside), (outside / "secret").read_bytes()) == before
    assert not (roots / "x.log").exists()
    assert code(daemon.xmlrpc().list()) == 0 and daemon.xmlrpc().list()["vmList"] == []


@pytest.mark.parametrize("key", ["kernel", "initrd"])
@pytest.mark.parametrize(
    "value",
    ["/etc/shadow", "/etc/passwd", "{boot}/../outside/secret", "{boot}/passwd", "passwd",
     "../outside/secret", "{boot}", "/dev/zero", "nonexistent"],
)  # fmt: skip
def test_kernel_and_initrd_only_from_the_boot_dir(confined: Any, key: str, value: str) -> None:
    daemon, _, boot, _ = confined
    extra = {key: value.format(boot=boot)}
    if key == "initrd":
        extra["kernel"] = "vmlinuz"  # a kernel from the boot dir: only initrd is wrong
    reply = daemon.xmlrpc().create(vm_params(**extra))
    assert code(reply) == 1000, reply
    assert reply["status"]["message"].startswith(f"Invalid parameter: {key}="), reply


def test_a_kernel_in_the_boot_dir_passes_the_check(confined: Any) -> None:
    """By name or by absolute path: the refusal, if any, is no longer about the kernel."""
    daemon, _, boot, _ = confined
    for kernel in ("vmlinuz", str(boot / "vmlinuz")):
        reply = daemon.xmlrpc().create(vm_params(kernel=kernel, memSize=1))
        assert code(reply) == 1000 and "memSize" in reply["status"]["message"], reply


@pytest.mark.parametrize(
    "where",
    ["/etc", "/", "{outside}", "{roots}/../outside", "{roots}/escape", "{roots}/escape/.",
     "{roots}/inside/../../outside", "relative/dir"],
)  # fmt: skip
def test_storage_domains_only_under_the_storage_roots(confined: Any, where: str) -> None:
    daemon, roots, _, outside = confined
    before = tree(outside), sorted(os.listdir("/etc"))
    directory = where.format(roots=roots, outside=outside)
    reply = daemon.xmlrpc().createStorageDomain(4, new_uuid(), "d", directory, 1)
    assert code(reply) == 1000, reply
    assert reply["status"]["message"].startswith("Invalid parameter: typeArgs="), reply
    assert (tree(outside), sorted(os.listdir("/etc"))) == before


def test_a_domain_inside_a_root_is_created_at_its_real_path(confined: Any) -> None:
    daemon, roots, _, _ = confined
    rpc = daemon.xmlrpc()
    sd, via_link = new_uuid(), new_uuid()
    assert code(rpc.createStorageDomain(4, sd, "d", str(roots / "inside"), 1)) == 0
    assert (roots / "inside" / sd / "dom_md" / "metadata").is_file()
    # Through a symlink that stays inside the roots: created, and recorded by its real path.
    assert code(rpc.createStorageDomain(4, via_link, "d", str(roots / "alias"), 1)) == 0
    info = rpc.getStorageDomainInfo(via_link)["info"]
    assert info["remotePath"] == str((roots / "inside").resolve())
    # The root itself is a valid place; a directory that does not exist is 351.
    assert code(rpc.createStorageDomain(4, new_uuid(), "d", str(roots), 1)) == 0
    reply = rpc.createStorageDomain(4, new_uuid(), "d", str(roots / "absent"), 1)
    assert code(reply) == 351, reply
