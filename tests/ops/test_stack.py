"""The `make run` supervisor's policy on its own (tests/e2e/test_stack.py runs it for
real): back-off, the crash window, giving up, start-up failures, duplicate signals."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import pytest

from ops.stack import Child, Stack, StackError


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
