"""Processes that die or restart under a live move, against a real vdsmd, libvirt and QEMU.

- The machine's libvirtd restarted while the mirror runs, and right after the merge was
  issued: QEMU (and its block jobs) outlive libvirtd, vdsmd reconnects, and the move goes on
  to the end with every write the guest saw acknowledged on the destination.
- While libvirtd restarts, callers of list and getVmStats (eight threads, without pause) get
  the VM Up, or 4001 (libvirt is not available) when libvirtd stays away: never 100.
- The VM's QEMU killed during syncImageData: the move rolls back, the source chain whole and
  LEGAL, nothing left on the destination.
- vdsmd's own state directory full: the record that cannot be written is an error the caller
  sees, and nothing is left half-written.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.fakes.faultfs import FaultFs
from tests.functional.daemon_helpers import VdsmdProcess, running
from tests.functional.lsm_helpers import (
    VmFixture,
    guest_params,
    ok,
    qemu_pid,
    restart_libvirtd,
    virsh,
    wait_writes,
)
from tests.functional.mover import Mover, assert_on_destination, images, volumes
from vdsm_cli.move.fault import TEST_PAUSE_AT
from vdsm_guest import checker
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt


def test_callers_while_libvirtd_restarts_never_get_an_unexpected_error(
    moving_vms: VmFixture,
) -> None:
    vm_id = moving_vms.start()
    pid = qemu_pid(vm_id)
    answers: collections.Counter[tuple[str, int, str]] = collections.Counter()
    stop = threading.Event()

    def call() -> None:
        rpc = moving_vms.daemon.xmlrpc()
        while not stop.is_set():
            for verb, reply in (("list", rpc.list()), ("getVmStats", rpc.getVmStats(vm_id))):
                status = reply["status"]
                if status["code"] == 0 and verb == "getVmStats":
                    answers[(verb, 0, reply["statsList"][0]["status"])] += 1
                else:
                    answers[(verb, status["code"], status["message"][:200])] += 1

    callers = [threading.Thread(target=call) for _ in range(8)]
    for caller in callers:
        caller.start()
    try:
        restart_libvirtd()
        restart_libvirtd()  # twice: the second one against a connection made after the first
    finally:
        stop.set()
        for caller in callers:
            caller.join(timeout=60)
    assert answers[("getVmStats", 0, "Up")] > 0, answers
    unexpected = {k: n for k, n in answers.items() if k[1] not in (0, 4001) or k[2] == "Down"}
    assert unexpected == {}, answers
    assert qemu_pid(vm_id) == pid and moving_vms.stats(vm_id)["status"] == "Up"


# wait_ready: the mirror runs (the sync is done); merge+: the merge job was just started.
@pytest.mark.parametrize("point", ["wait_ready", "merge+"])
def test_libvirtd_restarted_under_the_move_it_goes_on(
    moving_vms: VmFixture, guest: GuestImage, tmp_path: Path, point: str
) -> None:
    vm_id = moving_vms.start(**guest_params(guest, slots=64, pause=0.02))
    console = Path(moving_vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 10)
    m = Mover(moving_vms, vm_id, tmp_path)
    client = m.start(**{TEST_PAUSE_AT: point})
    client.wait_paused()
    restart_libvirtd()
    client.signal(signal.SIGCONT)
    code, out = client.finish()
    assert code == 0, out
    wait_writes(console, wait_writes(console, 0) + 20)  # it writes on the destination now
    assert_on_destination(m)
    leaf = Path(moving_vms.stats(vm_id)["disks"]["vda"]["path"])
    result = checker.check(leaf, "qcow2", console)
    assert result.ok, result.failures


def test_qemu_killed_during_the_sync_rolls_back(moving_vms: VmFixture, tmp_path: Path) -> None:
    """The VM's QEMU killed while syncImageData runs under its mirror: the move cannot go on
    (nothing runs the VM any more), so it rolls back: the destination deleted, the source
    chain whole and LEGAL, the VM reported Down."""
    vms, st = moving_vms, moving_vms.storage
    vm_id = vms.start()
    m = Mover(vms, vm_id, tmp_path)
    client = m.start(**{TEST_PAUSE_AT: "sync+"})  # the sync task submitted, the mirror running
    client.wait_paused()
    os.kill(qemu_pid(vm_id), signal.SIGKILL)
    client.signal(signal.SIGCONT)
    code, out = client.finish()
    assert code == 1, out
    assert "rolled back" in out and "The VM is Down; its disk is on the source" in out, out
    assert vms.stats(vm_id)["status"] == "Down"
    assert vms.img not in images(vms, st.sd2)
    assert not list(tmp_path.glob(f"*/{st.sd2}/images/{vms.img}")), "left on the destination"
    # No live merge without a running VM: the auto-snapshot stays as the chain's leaf (the
    # VM, started again, runs on it), and the client says so.
    chain = volumes(vms, st.sd)
    assert chain[:-1] == m.chain and len(chain) == len(m.chain) + 1, chain
    assert f"the auto-snapshot {chain[-1]} stays in the chain" in out, out
    for vol in chain:
        info = vms.daemon.api().volume_info(st.sd, st.sp, vms.img, vol)
        assert info["legality"] == "LEGAL", info
    assert m.leftover_state() == [], "journal or lock left behind"


def test_a_full_state_directory_is_an_error_the_caller_sees(tmp_path: Path) -> None:
    """vdsmd's own state directory on the FAKE fault file system (tests/fakes/faultfs.py),
    full for the VM records: VM.create answers the error with the record's path and the
    errno, no VM is left running, no record (whole or half) is left; once there is room
    again, VMs start."""
    state = tmp_path / "vdsmd" / "state"
    with FaultFs(tmp_path / "state-backing", state, tmp_path / "state-fault") as fs:
        daemon = VdsmdProcess(tmp_path / "vdsmd")
        with running(daemon):
            vms = VmFixture(daemon, tmp_path)
            try:
                fs.set("enospc", "vms")
                params = vms.params()
                vms.started.append(params["vmId"])  # destroyed at the end if it ran after all
                reply = daemon.xmlrpc().create(params)
                message = reply["status"]["message"]
                assert reply["status"]["code"] == 100, reply
                assert "cannot write the VM record" in message and "No space left" in message
                assert params["vmId"] in message, message
                assert ok(daemon.xmlrpc().list())["vmList"] == []
                assert params["vmId"] not in virsh("list", "--all", "--uuid")
                assert sorted(p.name for p in (state / "vms").iterdir()) == []
                fs.heal()
                vm_id = vms.start()
                assert vms.stats(vm_id)["status"] == "Up"
            finally:
                vms.cleanup()
