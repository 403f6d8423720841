"""The convergence monitor of an auto-mode replication survives libvirt failing under it.

QEMU is frozen (SIGSTOP) while the monitor polls the mirror, so the monitor's blockJobInfo
and a diskReplicateFinish wait on QEMU's monitor socket; then QEMU is killed, and libvirt
answers both with its own error. The monitor must end cleanly (a log line saying why, no
traceback, no "Exception in thread"), and Finish must answer 55 naming the cause, never 100.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.functional.lsm_helpers import (
    Migration,
    VmFixture,
    guest_params,
    ok,
    qemu_pid,
    wait_writes,
)
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt


def wait_for(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_qemu_killed_under_the_monitor_ends_it_cleanly_and_finish_is_55(
    vms: VmFixture, guest: GuestImage
) -> None:
    # A guest outrunning a mirror capped at 1 MiB/s: the mirror stays far from READY, so the
    # auto-mode monitor keeps polling it.
    vm_id = vms.start(**guest_params(guest, slots=64, pause=0))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 100)
    m = Migration(vms, vm_id)
    m.clone()
    src, dst = m.disk(m.st.sd, vms.leaf), m.disk(m.st.sd2, vms.leaf)
    ok(m.rpc.diskReplicateStart(vm_id, src, dst, True, "auto", 1))
    wait_for(lambda: "convergence monitor started" in vms.daemon.log(), "the monitor")
    assert vms.stats(vm_id)["blockJobs"]["vda"]["ready"] is False

    pid = qemu_pid(vm_id)
    replies: list[dict[str, Any]] = []
    finisher = threading.Thread(
        target=lambda: replies.append(vms.daemon.xmlrpc().diskReplicateFinish(vm_id, src, dst))
    )
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # the monitor (every 0.5 s) is now waiting on the frozen QEMU
        finisher.start()
        time.sleep(1.0)  # and so is Finish
    finally:
        os.kill(pid, signal.SIGKILL)
    finisher.join(timeout=60)
    assert not finisher.is_alive(), "diskReplicateFinish never answered"

    reply = replies[0]
    assert reply["status"]["code"] == 55, reply
    message = reply["status"]["message"]
    assert "vda" in message and ("libvirt" in message or "not running" in message), message

    wait_for(lambda: vms.stats(vm_id)["status"] == "Down", "the VM to be Down")
    wait_for(lambda: "convergence monitor stopped" in vms.daemon.log(), "the monitor to end")
    log = vms.daemon.log()
    assert "Exception in thread" not in log and "Traceback" not in log, log[-4000:]
    assert "libvirtError" not in log, log[-4000:]

    # The replication is cleaned up: a later Finish reports the VM gone (55), then nothing (88).
    codes = [m.rpc.diskReplicateFinish(vm_id, src, dst)["status"]["code"] for _ in range(2)]
    assert codes in ([55, 88], [88, 88]), codes
