"""Offline moves through a real vdsmd: moveImage (COPY and MOVE) and copyImage (collapsed).

Real qemu-img, real sanlock, real QEMU for the VM that holds a lease. Checked: the copy reads
the same as its source (``qemu-img compare``), thin stays thin and preallocated preallocated
(allocated bytes of each volume), a VM on the image refuses the task (651), a VM cannot start
on the image while it is copied, a stop or a kill -9 of vdsmd mid-copy leaves the source
intact and LEGAL and nothing on the destination, and a crash past a MOVE's point of no return
(vdsm.crash_point) is finished by the restarted SPM, never undone.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, running, wait_task
from tests.functional.lsm_helpers import VmFixture
from tests.functional.storage_helpers import BLANK, GiB, Storage, code, ok
from vdsm.crash_point import ENV as CRASH_AT
from vdsm.storage import qemuimg

MiB = 1024**2


@pytest.fixture
def vdsmd(tmp_path: Path) -> Iterator[VdsmdProcess]:
    with running(VdsmdProcess(tmp_path / "vdsmd")) as daemon:
        yield daemon


@pytest.fixture
def slow_vdsmd(tmp_path: Path) -> Iterator[VdsmdProcess]:
    # 1 MiB/s: a copy of a few MiB is still running when the test stops or kills it.
    with running(VdsmdProcess(tmp_path / "vdsmd", extra_args=["--copy-rate-limit", "1"])) as d:
        yield d


def image_dir(root: Path, st: Storage, sd: str, img: str) -> Path:
    name = "src" if sd == st.sd else "dst"
    return root / name / sd / "images" / img


def make_chain(st: Storage, root: Path, allocation: str, base_fmt: str) -> tuple[str, list[str]]:
    """An image base (base_fmt) + qcow2 leaf, 1 GiB, with a few MiB of data in each layer."""
    img, base, leaf = new_uuid(), new_uuid(), new_uuid()
    for vol, fmt, parent in ((base, base_fmt, BLANK), (leaf, "COW", base)):
        reply = ok(
            st.rpc.createVolume(
                st.sd, st.sp, img, str(GiB), fmt, allocation, "DATA", vol, "d", img, parent
            )
        )
        assert wait_task(st.daemon, reply["uuid"])["taskResult"] == "success"
    d = image_dir(root, st, st.sd, img)
    src_fmt = {"COW": "qcow2", "RAW": "raw"}
    # A raw base takes the data directly; a qcow2 one through qemu-img convert.
    data = os.urandom(3 * MiB)
    if base_fmt == "RAW":
        with open(d / base, "r+b") as f:
            f.seek(100 * MiB)
            f.write(data)
    else:
        raw = root / "data.raw"
        raw.write_bytes(data)
        qemuimg.convert(
            raw, d / base, src_format="raw", dst_format=src_fmt[base_fmt], target_exists=True
        )
    return img, [base, leaf]


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def legality(st: Storage, sd: str, img: str, vol: str) -> str:
    return str(ok(st.rpc.getVolumeInfo(sd, st.sp, img, vol))["info"]["legality"])


def compare(a: Path, b: Path) -> None:
    proc = subprocess.run(
        ["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"{a} and {b} differ: {proc.stdout} {proc.stderr}"


@pytest.mark.parametrize(
    ("allocation", "base_fmt"), [("SPARSE", "RAW"), ("SPARSE", "COW"), ("PREALLOCATED", "RAW")]
)
def test_move_keeps_the_chain_its_data_and_its_allocation(
    vdsmd: VdsmdProcess, tmp_path: Path, allocation: str, base_fmt: str
) -> None:
    st = Storage(vdsmd, tmp_path)
    img, vols = make_chain(st, tmp_path, allocation, base_fmt)
    src_dir = image_dir(tmp_path, st, st.sd, img)
    before = {v: allocated(src_dir / v) for v in vols}
    reference = tmp_path / "reference.qcow2"  # the source leaf's content, for the compare
    qemuimg.convert(src_dir / vols[-1], reference, src_format="qcow2", dst_format="qcow2")

    reply = ok(st.rpc.moveImage(st.sp, st.sd, st.sd2, img, "", "MOVE", False, False))
    status = wait_task(vdsmd, reply["uuid"])
    assert status["taskResult"] == "success", status
    assert status["progress"] == 100

    dst_dir = image_dir(tmp_path, st, st.sd2, img)
    assert set(st.chain(img, st.sd2)) == set(vols)
    parent = ok(st.rpc.getVolumeInfo(st.sd2, st.sp, img, vols[1]))["info"]["parent"]
    assert parent == vols[0]  # the chain's shape kept
    assert not src_dir.exists()  # moved: the source is gone
    compare(reference, dst_dir / vols[-1])
    for v in vols:
        assert legality(st, st.sd2, img, v) == "LEGAL"
        after = allocated(dst_dir / v)
        if allocation == "PREALLOCATED":
            assert after >= GiB * 0.99, (v, after)  # preallocated stays preallocated
        else:
            assert after <= before[v] + MiB, (v, before[v], after)  # thin stays thin


def test_copy_keeps_the_source_and_copy_image_collapses(
    vdsmd: VdsmdProcess, tmp_path: Path
) -> None:
    st = Storage(vdsmd, tmp_path)
    img, vols = make_chain(st, tmp_path, "SPARSE", "RAW")
    src_dir = image_dir(tmp_path, st, st.sd, img)

    started = time.monotonic()
    reply = ok(st.rpc.moveImage(st.sp, st.sd, st.sd2, img, "", 1, False, False))  # 1: COPY
    assert wait_task(vdsmd, reply["uuid"])["taskResult"] == "success"
    compare(src_dir / vols[-1], image_dir(tmp_path, st, st.sd2, img) / vols[-1])
    assert all(legality(st, st.sd, img, v) == "LEGAL" for v in vols)  # the source stays

    # Again without force: the image is there already.
    assert code(st.rpc.moveImage(st.sp, st.sd, st.sd2, img, "", "COPY", False, False)) == 260

    # copyImage: the chain collapsed into one sparse volume of a new image, a template.
    new_img, new_vol = new_uuid(), new_uuid()
    reply = ok(
        st.rpc.copyImage(
            st.sd,
            st.sp,
            "",
            img,
            vols[-1],
            new_img,
            new_vol,
            "tpl",
            st.sd2,
            "SHARED",
            "RAW",
            "UNKNOWN",
            False,
            False,
        )
    )
    assert wait_task(vdsmd, reply["uuid"])["taskResult"] == "success"
    new_path = image_dir(tmp_path, st, st.sd2, new_img) / new_vol
    compare(src_dir / vols[-1], new_path)
    info = ok(st.rpc.getVolumeInfo(st.sd2, st.sp, new_img, new_vol))["info"]
    assert (info["format"], info["voltype"], info["parent"]) == ("RAW", "SHARED", BLANK)
    assert allocated(new_path) < 8 * MiB  # zeros not written: thin
    assert time.monotonic() - started < 30


def test_move_is_refused_while_a_vm_runs_the_image(vdsmd: VdsmdProcess, tmp_path: Path) -> None:
    vms = VmFixture(vdsmd, tmp_path)
    try:
        st = vms.storage
        vms.start()  # its QEMU holds the leaf's lease
        reply = ok(st.rpc.moveImage(st.sp, st.sd, st.sd2, vms.img, "", "MOVE", False, False))
        status = wait_task(vdsmd, reply["uuid"])
        assert status["code"] == 651 and vms.leaf in status["message"], status
        assert st.chain(vms.img) and not image_dir(tmp_path, st, st.sd2, vms.img).exists()
    finally:
        vms.cleanup()


def start_slow_move(d: VdsmdProcess, root: Path) -> tuple[VmFixture, str, Path]:
    """A MOVE whose base copy runs at 1 MiB/s (8 MiB of data), caught while qemu-img runs."""
    vms = VmFixture(d, root)
    st = vms.storage
    with open(image_dir(root, st, st.sd, vms.img) / vms.base, "r+b") as f:
        f.write(os.urandom(8 * MiB))
    reply = ok(st.rpc.moveImage(st.sp, st.sd, st.sd2, vms.img, "", "MOVE", True, False))
    task = reply["uuid"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = ok(st.rpc.getTaskStatus(task))["taskStatus"]
        if status["bytesTotal"] and int(status["bytesDone"] or 0) > 0:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the copy never started: {status}")
    return vms, task, image_dir(root, st, st.sd2, vms.img)


def source_intact(vms: VmFixture, dst_dir: Path) -> None:
    st = vms.storage
    assert st.chain(vms.img) and set(st.chain(vms.img)) == {vms.base, vms.leaf}
    assert legality(st, st.sd, vms.img, vms.base) == "LEGAL"
    assert legality(st, st.sd, vms.img, vms.leaf) == "LEGAL"
    assert not dst_dir.exists() or not any(dst_dir.iterdir()), list(dst_dir.iterdir())


def test_a_vm_cannot_start_during_a_move_and_a_stop_keeps_the_source(
    slow_vdsmd: VdsmdProcess, tmp_path: Path
) -> None:
    vms, task, dst_dir = start_slow_move(slow_vdsmd, tmp_path)
    try:
        # vdsmd holds the image's leases: sanlock refuses the VM's QEMU.
        reply = slow_vdsmd.xmlrpc().create(vms.params())
        assert code(reply) == 9, reply
        ok(vms.storage.rpc.stopTask(task))
        status = wait_task(slow_vdsmd, task)
        assert (status["taskResult"], status["code"]) == ("cleanSuccess", 411), status
        source_intact(vms, dst_dir)
        vms.start()  # the leases are free again
    finally:
        vms.cleanup()


def test_a_vdsmd_crash_mid_move_rolls_back_to_the_source(
    slow_vdsmd: VdsmdProcess, tmp_path: Path
) -> None:
    vms, task, dst_dir = start_slow_move(slow_vdsmd, tmp_path)
    try:
        slow_vdsmd.kill()
        slow_vdsmd.restart()  # and spmStart: the SPM recovers the master's tasks
        status = wait_task(slow_vdsmd, task)
        assert (status["taskResult"], status["code"]) == ("cleanSuccess", 411), status
        vms.storage.rpc = slow_vdsmd.xmlrpc()
        source_intact(vms, dst_dir)
    finally:
        vms.cleanup()


def test_a_vdsmd_crash_past_the_point_of_no_return_finishes_the_move(
    vdsmd: VdsmdProcess, tmp_path: Path
) -> None:
    """vdsmd dies right after the MOVE's undo log became "finish the move" (every twin LEGAL
    and flushed, the source not yet touched): the restarted SPM deletes the source, never the
    twins."""
    vms = VmFixture(vdsmd, tmp_path)
    st = vms.storage
    vdsmd.env[CRASH_AT] = "move:point-of-no-return"
    vdsmd.restart()
    reply = ok(st.rpc.moveImage(st.sp, st.sd, st.sd2, vms.img, "", "MOVE", False, False))
    deadline = time.monotonic() + 30
    while vdsmd.running:
        assert time.monotonic() < deadline, "vdsmd did not die at its crash point"
        time.sleep(0.05)
    assert "crash point move:point-of-no-return reached" in vdsmd.log()
    source = image_dir(tmp_path, st, st.sd, vms.img)
    assert (source / vms.base).exists() and (source / vms.leaf).exists()  # not touched yet
    del vdsmd.env[CRASH_AT]
    vdsmd.restart()  # and spmStart: the SPM recovers the task, and finishes the move
    st.rpc = vdsmd.xmlrpc()
    status = wait_task(vdsmd, reply["uuid"])
    assert status["taskState"] == "finished", status
    assert not source.exists()
    assert vms.img not in ok(st.rpc.getImagesList(st.sd))["imageslist"]
    for vol in (vms.base, vms.leaf):
        assert legality(st, st.sd2, vms.img, vol) == "LEGAL"


def test_bad_requests_are_answered_at_once(vdsmd: VdsmdProcess, tmp_path: Path) -> None:
    st = Storage(vdsmd, tmp_path)
    img = new_uuid()
    assert code(st.rpc.moveImage(st.sp, st.sd, st.sd2, img, "", "MOVE", False, False)) == 268
    assert code(st.rpc.moveImage(st.sp, st.sd, st.sd, img, "", "MOVE", False, False)) == 1000
    assert code(st.rpc.moveImage(st.sp, st.sd, st.sd2, img, "", 0, False, False)) == 1000
    answer: dict[str, Any] = vdsmd.jsonrpc(
        "Image.move",
        {
            "imageID": img,
            "storagepoolID": st.sp,
            "storagedomainID": st.sd,
            "dstSdUUID": st.sd2,
            "operation": "COPY",
        },
    )
    assert answer["error"]["code"] == 268, answer
