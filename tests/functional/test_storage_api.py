"""Every storage and task verb through both bindings of a real vdsmd, success and errors.

XML-RPC uses VDSM's legacy verbs with positional arguments and answers with the envelope;
JSON-RPC uses the namespaced verbs with named parameters and answers result or error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, wait_task
from tests.functional.storage_helpers import BLANK, GiB, Storage, code, ok


@pytest.fixture
def storage(vdsmd: VdsmdProcess, tmp_path: Path) -> Storage:
    return Storage(vdsmd, tmp_path)


def test_pool_and_domain_verbs_over_xmlrpc(storage: Storage) -> None:
    rpc = storage.rpc
    info = ok(rpc.getStoragePoolInfo(storage.sp))
    assert info["info"]["master_uuid"] == storage.sd
    assert set(info["dominfo"]) == {storage.sd, storage.sd2}
    dom = ok(rpc.getStorageDomainInfo(storage.sd2))["info"]
    assert dom["uuid"] == storage.sd2 and dom["pool"] == [storage.sp] and dom["type"] == "LOCALFS"
    stats = ok(rpc.getStorageDomainStats(storage.sd))["stats"]
    assert int(stats["disktotal"]) >= int(stats["diskfree"]) > 0
    assert ok(rpc.getImagesList(storage.sd))["imageslist"] == []
    assert ok(rpc.getSpmStatus(storage.sp))["spm_st"]["spmStatus"] == "SPM"


def test_snapshot_chain_and_volume_verbs_over_xmlrpc(storage: Storage) -> None:
    rpc = storage.rpc
    img, base, snap1, snap2 = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    assert storage.create_volume(img, base, fmt=5)["taskResult"] == "success"  # 5 = RAW
    assert storage.create_volume(img, snap1, parent=base)["taskResult"] == "success"
    assert storage.create_volume(img, snap2, fmt=4, parent=snap1)["taskResult"] == "success"
    assert storage.chain(img) == [base, snap1, snap2]
    assert ok(rpc.getImagesList(storage.sd))["imageslist"] == [img]

    info = ok(rpc.getVolumeInfo(storage.sd, storage.sp, img, snap1))["info"]
    assert info["voltype"] == "INTERNAL" and info["parent"] == base and info["format"] == "COW"
    assert info["capacity"] == str(GiB)  # sizes travel as strings: XML-RPC ints are 32-bit
    assert info["children"] == [snap2] and info["legality"] == "LEGAL"

    prepared = ok(rpc.prepareImage(storage.sp, storage.sd, img, snap2))
    assert [v["volumeID"] for v in prepared["volumeChain"]] == [base, snap1, snap2]
    assert Path(prepared["path"]).name == snap2
    ok(rpc.teardownImage(storage.sp, storage.sd, img, snap2))

    # Legacy deleteVolume takes a list; the leaf goes first whatever the order given.
    task = ok(rpc.deleteVolume(storage.sd, storage.sp, img, [snap1, snap2], False, False))["uuid"]
    assert wait_task(storage.daemon, task)["taskResult"] == "success"
    assert storage.chain(img) == [base]
    task = ok(rpc.deleteImage(storage.sd, storage.sp, img))["uuid"]
    assert wait_task(storage.daemon, task)["taskResult"] == "success"
    assert ok(rpc.getImagesList(storage.sd))["imageslist"] == []


def test_task_verbs_over_xmlrpc(storage: Storage) -> None:
    rpc = storage.rpc
    img, vol = new_uuid(), new_uuid()
    task = ok(rpc.createVolume(storage.sd, storage.sp, img, str(GiB), 5, 2, "DATA", vol))["uuid"]
    status = wait_task(storage.daemon, task)
    assert status == {
        "taskID": task,
        "taskState": "finished",
        "taskResult": "success",
        "code": 0,
        "message": status["message"],
        "progress": 100.0,
        "bytesDone": "",
        "bytesTotal": "",
        "heldBack": "",
    }
    assert ok(rpc.getTaskInfo(task))["TaskInfo"] == {"id": task, "verb": "createVolume"}
    assert task in ok(rpc.getAllTasksStatuses())["allTasksStatus"]
    assert ok(rpc.getAllTasksInfo())["allTasksInfo"][task]["verb"] == "createVolume"
    assert code(rpc.stopTask(task)) == 410  # finished: nothing to stop

    # Revert undoes the create; clear forgets the task.
    ok(rpc.revertTask(task))
    assert wait_task(storage.daemon, task)["taskResult"] == "cleanSuccess"
    assert ok(rpc.getImagesList(storage.sd))["imageslist"] == []
    ok(rpc.clearTask(task))
    assert code(rpc.getTaskStatus(task)) == 401
    assert code(rpc.clearTask(task)) == 401


def test_clone_and_sync_over_xmlrpc(storage: Storage) -> None:
    rpc = storage.rpc
    img, base, leaf = new_uuid(), new_uuid(), new_uuid()
    storage.create_volume(img, base, fmt="RAW")
    storage.create_volume(img, leaf, parent=base)
    task = ok(rpc.cloneImageStructure(storage.sp, storage.sd, img, storage.sd2))["uuid"]
    assert wait_task(storage.daemon, task)["taskResult"] == "success"
    assert storage.chain(img, storage.sd2) == [base, leaf]
    task = ok(rpc.syncImageData(storage.sp, storage.sd, img, storage.sd2, "INTERNAL"))["uuid"]
    status = wait_task(storage.daemon, task)
    assert status["taskResult"] == "success" and status["progress"] == 100.0
    assert code(rpc.syncImageData(storage.sp, storage.sd, img, storage.sd2, "SOME")) == 2000


def test_errors_over_xmlrpc(storage: Storage) -> None:
    rpc = storage.rpc
    unknown = new_uuid()
    assert code(rpc.getStorageDomainInfo(unknown)) == 358
    assert code(rpc.getStoragePoolInfo(unknown)) == 309
    assert code(rpc.getTaskStatus(unknown)) == 401
    assert code(rpc.getVolumeInfo(storage.sd, storage.sp, unknown, unknown)) == 201
    reply = rpc.getVolumeInfo(storage.sd, storage.sp, unknown, "../../etc/passwd")
    assert code(reply) == 1000 and "volumeID" in reply["status"]["message"]
    reply = rpc.createVolume(
        storage.sd, storage.sp, unknown, "-1", "COW", "SPARSE", "DATA", unknown
    )
    assert code(reply) == 1000 and "size" in reply["status"]["message"]
    reply = rpc.createVolume(storage.sd, storage.sp, unknown, str(GiB), "VMDK", 2, "DATA", unknown)
    assert code(reply) == 1000 and "volFormat" in reply["status"]["message"]
    reply = rpc.createVolume(storage.sd, storage.sp, unknown)
    assert code(reply) == 1000 and "missing" in reply["status"]["message"]
    assert code(rpc.getVolumesList(storage.sd)) == 1000  # spUUID missing
    assert code(rpc.cloneImageStructure(storage.sp, storage.sd, unknown, storage.sd2)) == 268
    # A volume whose parent does not exist: refused at once, before any task.
    reply = rpc.createVolume(
        storage.sd,
        storage.sp,
        unknown,
        str(GiB),
        "COW",
        "SPARSE",
        "DATA",
        new_uuid(),
        "",
        BLANK,
        new_uuid(),
    )
    assert code(reply) == 201
    # A domain outside the pool.
    assert code(rpc.getVolumesList(storage.sd, new_uuid(), unknown)) == 309
    # Not the SPM any more: every SPM verb answers 654, until spmStart.
    ok(rpc.spmStop(storage.sp))
    reply = rpc.createVolume(storage.sd, storage.sp, unknown, str(GiB), "COW", 2, "DATA", unknown)
    assert code(reply) == 654
    assert code(rpc.cloneImageStructure(storage.sp, storage.sd, unknown, storage.sd2)) == 654
    storage.become_spm()
    # Too many arguments for a legacy verb.
    assert code(rpc.getStorageDomainInfo(storage.sd, "extra")) == 1000


def test_storage_flow_over_jsonrpc(storage: Storage) -> None:
    d = storage.daemon
    img, base, leaf = new_uuid(), new_uuid(), new_uuid()
    common = {"storagepoolID": storage.sp, "storagedomainID": storage.sd, "imageID": img}
    reply = d.jsonrpc(
        "Volume.create",
        {**common, "volumeID": base, "size": GiB, "volFormat": "RAW", "preallocate": "SPARSE"},
    )
    assert wait_task(d, reply["result"])["taskResult"] == "success"
    reply = d.jsonrpc(
        "Volume.create",
        {
            **common,
            "volumeID": leaf,
            "size": str(GiB),
            "volFormat": 4,
            "preallocate": 2,
            "srcVolUUID": base,
            "desc": "snapshot",
        },
    )
    task = reply["result"]
    assert wait_task(d, task)["taskResult"] == "success"

    status = d.jsonrpc("Task.getStatus", {"taskID": task})["result"]
    assert status["taskState"] == "finished" and status["taskResult"] == "success"
    info = d.jsonrpc("Volume.getInfo", {**common, "volumeID": leaf})["result"]
    assert info["parent"] == base and info["description"] == "snapshot"
    vols = d.jsonrpc(
        "StorageDomain.getVolumes",
        {"storagedomainID": storage.sd, "storagepoolID": storage.sp, "imageID": img},
    )
    assert vols["result"] == [base, leaf]
    # Positional params follow the JSON-RPC order of the schema.
    assert d.jsonrpc("StorageDomain.getImages", [storage.sd])["result"] == [img]
    assert d.jsonrpc("Host.getAllTasksStatuses")["result"][task]["taskID"] == task
    pool = d.jsonrpc("StoragePool.getInfo", {"storagepoolID": storage.sp})["result"]
    assert pool["info"]["master_uuid"] == storage.sd

    clone = d.jsonrpc(
        "Image.cloneStructure",
        {
            "imageID": img,
            "storagepoolID": storage.sp,
            "storagedomainID": storage.sd,
            "dstSdUUID": storage.sd2,
        },
    )
    assert wait_task(d, clone["result"])["taskResult"] == "success"
    task = d.jsonrpc("Image.delete", {**common, "postZero": False, "force": False})["result"]
    assert wait_task(d, task)["taskResult"] == "success"

    # Errors: VDSM's code and message as the JSON-RPC error.
    error = d.jsonrpc("Volume.getInfo", {**common, "volumeID": new_uuid()})["error"]
    assert error["code"] == 268 or error["code"] == 201
    error = d.jsonrpc("Task.getStatus", {"taskID": "nope"})["error"]
    assert error["code"] == 1000 and "taskID" in error["message"]
    error = d.jsonrpc("Task.getStatus", {"taskID": new_uuid(), "extra": 1})["error"]
    assert error["code"] == 1000 and "extra" in error["message"]
    error = d.jsonrpc(
        "StorageDomain.create",
        {"storagedomainID": new_uuid(), "domainType": "ZFS", "typeArgs": "/tmp", "name": "x"},
    )["error"]
    assert error["code"] == 1000 and "domainType" in error["message"]
    assert d.jsonrpc("No.such")["error"]["code"] == -32601


def test_task_files_live_on_the_master_domain(storage: Storage, tmp_path: Path) -> None:
    img, vol = new_uuid(), new_uuid()
    task = storage.create_volume(img, vol)["taskID"]
    task_dir = tmp_path / "src" / storage.sd / "master" / "tasks" / task
    assert (task_dir / "task.json").is_file()
    ok(storage.rpc.clearTask(task))
    assert not task_dir.exists()
