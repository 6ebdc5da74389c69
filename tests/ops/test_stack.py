"""The `make run` supervisor's policy on its own (tests/e2e/test_stack.py runs it for
real): back-off, the crash window, giving up, start-up failures, duplicate signals; and a
small stack (embedded Redis and one child) in a real supervisor process, to show that
nothing outlives it: not a hang-up, not a SIGKILL."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.ports import free_port
from ops.stack import ROOT, Child, Stack, StackError
from tests.ops.test_redis_server import _process_gone


class FakeProcess:
    pid = 4_000_000  # never signalled: _killpg is replaced below


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setattr("ops.stack._killpg", lambda pgid, sig: None)
    monkeypatch.setenv("STACK_RESTART_LIMIT", "8")
    monkeypatch.setenv("STACK_RESTART_WINDOW", "1000")
    monkeypatch.setenv("STACK_BACKOFF_SECONDS", "1")
    running = Stack()
    running.up = True
    return running


def child() -> Child:
    process: Any = FakeProcess()
    return Child("worker", lambda: process, process)


def test_the_back_off_doubles_up_to_its_cap_then_the_stack_gives_up(stack: Stack) -> None:
    worker = child()
    delays = []
    for n in range(7):
        stack._crashed(worker, 1, now=100.0 + n)
        assert worker.restart_at is not None
        delays.append(worker.restart_at - (100.0 + n))

    assert delays == [1, 2, 4, 8, 16, 30, 30]
    with pytest.raises(StackError, match=r"worker exited .* code 1: 8 crashes within 1000s"):
        stack._crashed(worker, 1, now=107.0)


def test_crashes_older_than_the_window_are_forgotten(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stack` set the env and patched _killpg; this one needs a 60 s window."""
    monkeypatch.setenv("STACK_RESTART_WINDOW", "60")
    stack = Stack()
    stack.up = True
    worker = child()

    for n in range(20):  # one crash every two minutes: never a loop
        stack._crashed(worker, -9, now=120.0 * n)
        assert worker.restart_at == 120.0 * n + 1
    assert len(worker.crashes) == 1


def test_a_child_dying_while_the_stack_starts_is_fatal_at_once(stack: Stack) -> None:
    stack.up = False

    with pytest.raises(StackError, match=r"code -9 \(SIGKILL\) while the stack was starting"):
        stack._crashed(child(), -9, now=1.0)


def test_a_child_is_relaunched_when_its_back_off_is_over(stack: Stack) -> None:
    worker = child()
    fresh = subprocess.Popen(["true"])
    fresh.wait()
    worker.launch = lambda: fresh
    stack.children.append(worker)
    stack._crashed(worker, 1, now=0.0)

    stack.check()  # restart_at (1.0) is long past on the monotonic clock

    assert worker.proc is fresh
    assert worker.restart_at is None


def test_the_same_signal_twice_at_once_counts_once_a_later_one_forces(stack: Stack) -> None:
    stack._on_signal(signal.SIGTERM, None)
    stack._on_signal(signal.SIGTERM, None)  # make's forwarded copy

    assert stack.stop_requested == "SIGTERM"
    assert not stack.force_kill
    stack.stop_requested_at -= 2
    stack._on_signal(signal.SIGINT, None)  # a second Ctrl-C, later
    assert stack.force_kill


def test_bad_policy_values_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_STOP_GRACE_SECONDS", "soon")

    with pytest.raises(StackError, match="STACK_STOP_GRACE_SECONDS='soon' is not a number"):
        Stack()


# The supervisor's own loop, signals and stop, on a stack of Redis and one sleeper.
SMALL_STACK = """
import sys
from ops.stack import Stack, log

class Small(Stack):
    def start(self):
        self.start_redis()
        self.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
        self.up = True
        return {}

    def banner(self, urls):
        log("stack", "up")

sys.exit(Small().run())
"""


@pytest.fixture
def small_stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """The supervisor, in its own session as under `setsid make run`, once it is up;
    and the pids of its children."""
    env = {**os.environ, "API_PORT": str(free_port()), "STACK_VAR_DIR": str(tmp_path)}
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-c", SMALL_STACK],
        cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("[stack] up"):
            break
    pids = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", "".join(lines))]
    assert len(pids) == 2, "".join(lines)
    yield process, pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait()


@pytest.mark.parametrize("stop_signal", [signal.SIGHUP, signal.SIGQUIT], ids=["HUP", "QUIT"])
def test_a_hang_up_or_quit_is_a_graceful_stop(
    small_stack: tuple[subprocess.Popen[str], list[int]], stop_signal: signal.Signals
) -> None:
    """The terminal closed (or the SSH session dropped): the group gets SIGHUP, and the
    supervisor's output has nowhere to go any more. It stops the stack as on SIGTERM."""
    process, pids = small_stack
    assert process.stdout is not None
    process.stdout.close()  # the terminal is gone: writes fail

    os.killpg(process.pid, stop_signal)

    assert process.wait(30) == 0
    assert [pid for pid in pids if not _process_gone(pid)] == []


def test_children_die_with_a_killed_supervisor(
    small_stack: tuple[subprocess.Popen[str], list[int]],
) -> None:
    """SIGKILL leaves the supervisor no chance to stop anything: each child was told by
    the kernel to take SIGTERM when it dies (PR_SET_PDEATHSIG)."""
    process, pids = small_stack

    process.kill()
    process.wait()
    started = time.monotonic()

    assert [pid for pid in pids if not _process_gone(pid, timeout=10)] == []
    assert time.monotonic() - started < 10
