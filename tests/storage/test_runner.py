"""The subprocess runner, exercised with real small programs (python3, sleep, sh, qemu-img)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.storage.support import alive
from vdsm.errors import CommandAborted, CommandError, CommandTimeout
from vdsm.storage import runner
from vdsm.storage.runner import Cancellation

PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def wait_for_pid_file(path: Path) -> int:
    assert wait_for(lambda: path.exists() and path.read_text().strip() != ""), "no pid written"
    return int(path.read_text())


def test_stdout_captured() -> None:
    result = runner.run(py("print('hello'); print('world')"))
    assert result.rc == 0
    assert result.stdout == b"hello\nworld\n"
    assert result.stderr == ""
    assert result.argv[0] == PY


def test_failure_carries_rc_and_stderr() -> None:
    with pytest.raises(CommandError) as e:
        runner.run(py("import sys; sys.stderr.write('disk on fire\\n'); sys.exit(3)"))
    assert e.value.rc == 3
    assert e.value.stderr == "disk on fire\n"
    assert "disk on fire" in str(e.value)
    assert "exit code 3" in str(e.value)
    assert type(e.value) is CommandError


def test_ok_codes() -> None:
    result = runner.run(py("import sys; sys.exit(3)"), ok_codes=(0, 3))
    assert result.rc == 3


def test_large_output_on_both_pipes() -> None:
    # 8 MiB on each pipe, interleaved: a runner reading one pipe after the other would hang.
    code = (
        "import sys\n"
        "for _ in range(128):\n"
        "    sys.stdout.buffer.write(b'o' * 65536); sys.stdout.flush()\n"
        "    sys.stderr.buffer.write(b'e' * 65536); sys.stderr.flush()\n"
    )
    result = runner.run(py(code), timeout=60)
    assert result.stdout == b"o" * (8 << 20)
    assert result.stderr == "e" * (8 << 20)


def test_stdin_is_empty_cwd_and_env(tmp_path: Path) -> None:
    code = "import os, sys; print(repr(sys.stdin.read()), os.getcwd(), os.environ['WHO'])"
    result = runner.run(py(code), cwd=tmp_path, env={**os.environ, "WHO": "vdsm"})
    assert result.stdout.decode().split() == ["''", str(tmp_path), "vdsm"]


def test_string_argv_refused() -> None:
    with pytest.raises(TypeError):
        runner.run("echo hello")


def test_command_not_found() -> None:
    with pytest.raises(CommandError) as e:
        runner.run(["/nonexistent/qemu-img", "info"])
    assert e.value.rc is None
    assert "cannot start" in str(e.value)
    assert "No such file or directory" in str(e.value)
    assert "/nonexistent/qemu-img" in str(e.value)


def test_timeout_kills_process_group(tmp_path: Path, kill_leftovers: Callable[[int], None]) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # The program under test starts a grandchild and waits for it; both must die.
    argv = ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as e:
        runner.run(argv, timeout=0.5)
    assert time.monotonic() - started < 0.5 + runner.TERM_GRACE
    assert "timed out after 0.5 s" in str(e.value)
    grandchild = wait_for_pid_file(pid_file)
    kill_leftovers(grandchild)
    assert wait_for(lambda: not alive(grandchild)), "the grandchild survived the timeout"


def test_sigterm_ignored_escalates_to_sigkill() -> None:
    # The program reports "progress" once it ignores SIGTERM; the callback then cancels, so
    # the runner's SIGTERM surely finds it ignoring and must escalate.
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "sys.stdout.write('(1.00/100%)\\n'); sys.stdout.flush()\n"
        "time.sleep(60)\n"
    )
    cancellation = Cancellation()
    started = time.monotonic()
    with pytest.raises(CommandAborted) as e:
        runner.run(py(code), on_progress=lambda _: cancellation.cancel(), cancellation=cancellation)
    assert e.value.rc == -signal.SIGKILL
    assert runner.TERM_GRACE <= time.monotonic() - started < runner.TERM_GRACE + 3


def test_timeout_covers_grandchild_holding_stdout(
    tmp_path: Path, kill_leftovers: Callable[[int], None]
) -> None:
    # The child exits at once but leaves a grandchild holding stdout open: the run is not
    # over until the output is complete, and the timeout ends it.
    pid_file = tmp_path / "grandchild.pid"
    argv = ["sh", "-c", f"sleep 60 & echo $! > {pid_file}"]
    with pytest.raises(CommandTimeout):
        runner.run(argv, timeout=0.5)
    grandchild = wait_for_pid_file(pid_file)
    kill_leftovers(grandchild)
    assert wait_for(lambda: not alive(grandchild))


def test_cancel_from_another_thread() -> None:
    cancellation = Cancellation()
    timer = threading.Timer(0.3, cancellation.cancel)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(CommandAborted) as e:
            runner.run(["sleep", "30"], cancellation=cancellation)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 1.3
    assert e.value.rc == -signal.SIGTERM
    assert cancellation.cancelled


def test_cancel_stops_every_command_of_the_token() -> None:
    cancellation = Cancellation()
    errors: list[BaseException] = []

    def sleeper() -> None:
        try:
            runner.run(["sleep", "30"], cancellation=cancellation)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=sleeper) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    cancellation.cancel()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    assert len(errors) == 3
    assert all(isinstance(e, CommandAborted) for e in errors)


def test_a_child_token_stops_with_its_parent_and_alone_without_it() -> None:
    """Copies run at once under a child of the task's token: a failed one stops its siblings
    (the child alone), a stopped task stops them all (the parent)."""
    task = Cancellation("task-1")
    group = task.child()
    assert group.label == "task-1"  # its children carry the task's tag for a restarted vdsmd
    timer = threading.Timer(0.3, task.cancel)
    timer.start()
    try:
        with pytest.raises(CommandAborted):
            runner.run(["sleep", "30"], cancellation=group)
    finally:
        timer.cancel()
    assert group.cancelled and task.cancelled
    assert task.child().cancelled  # a child of a stopped task never starts anything

    task = Cancellation()
    group = task.child()
    group.cancel()
    assert group.cancelled and not task.cancelled
    runner.run(["true"], cancellation=task)  # the task's own commands still run


def test_pre_cancelled_token_never_starts(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    cancellation = Cancellation()
    cancellation.cancel()
    with pytest.raises(CommandAborted) as e:
        runner.run(py(f"open({str(marker)!r}, 'w')"), cancellation=cancellation)
    assert e.value.rc is None
    assert "cancelled before start" in str(e.value)
    assert not marker.exists()


def test_progress_reported_while_running(tmp_path: Path) -> None:
    # The program prints one record, then waits until the callback has seen it: this only
    # finishes if progress is delivered as it happens, not after the process exits.
    seen = tmp_path / "seen"
    code = (
        "import os, sys, time\n"
        "sys.stdout.write('    (42.50/100%)\\r'); sys.stdout.flush()\n"
        "deadline = time.monotonic() + 10\n"
        f"while not os.path.exists({str(seen)!r}):\n"
        "    if time.monotonic() > deadline: sys.exit(1)\n"
        "    time.sleep(0.01)\n"
        "sys.stdout.write('    (100.00/100%)\\n')\n"
    )
    values: list[float] = []

    def on_progress(percent: float) -> None:
        values.append(percent)
        seen.touch()

    runner.run(py(code), on_progress=on_progress, timeout=30)
    assert values == [42.5, 100.0]


def test_broken_progress_callback_does_not_fail_the_command() -> None:
    def on_progress(percent: float) -> None:
        raise RuntimeError("reporter bug")

    result = runner.run(py("print('(10.00/100%)')"), on_progress=on_progress)
    assert result.rc == 0


def test_progress_of_real_qemu_img_convert(
    tmp_path: Path, require_command: Callable[[str], str]
) -> None:
    qemu_img = require_command("qemu-img")
    qemu_io = require_command("qemu-io")
    src = tmp_path / "src.raw"
    runner.run([qemu_img, "create", "-f", "raw", str(src), "256M"])
    runner.run([qemu_io, "-f", "raw", "-c", "write -P 0x5a 0 256M", str(src)], timeout=120)
    values: list[float] = []
    argv = [qemu_img, "convert", "-p", "-f", "raw", "-O", "qcow2", str(src), str(tmp_path / "d")]
    runner.run(argv, on_progress=values.append, timeout=120)
    assert len(values) >= 3
    assert values == sorted(values)
    assert values[0] < 50.0
    assert values[-1] == 100.0
