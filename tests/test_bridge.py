"""Tests for penumbra.transports.bridge: TrioThread and Future.

No test sleeps and hopes: they synchronise on threading/trio events, always
with a timeout, so a bug fails fast instead of hanging.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import trio
import trio.lowlevel

from penumbra.transports.bridge import CancelledError, Future, TrioThread

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # generous upper bound for anything that should happen "now"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tt():
    t = TrioThread(name="test-trio").start()
    yield t
    assert t.stop(timeout=WAIT)


async def add(a, b):
    return a + b


async def fail(msg):
    raise ValueError(msg)


# ------------------------------------------------------------------ submit


def test_submit_runs_in_order_on_the_trio_thread(tt):
    seen = []
    for i in range(1000):
        tt.submit(lambda i=i: seen.append((i, threading.get_ident())))
    tt.run_sync(lambda: None, timeout=WAIT)  # a barrier: runs after the submits
    assert [i for i, _ in seen] == list(range(1000))
    assert {ident for _, ident in seen} == {tt.run_sync(threading.get_ident, timeout=WAIT)}
    assert threading.get_ident() not in {ident for _, ident in seen}


def test_submit_from_many_threads(tt):
    counts = {}
    lock = threading.Lock()

    def bump(k):
        with lock:
            counts[k] = counts.get(k, 0) + 1

    def worker(k):
        for _ in range(2000):
            tt.submit(bump, k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    tt.run_sync(lambda: None, timeout=WAIT)
    assert counts == {k: 2000 for k in range(4)}


def test_submit_exception_is_logged_and_loop_survives(tt, caplog):
    caplog.set_level(logging.ERROR, logger="penumbra.transports.bridge")

    def boom():
        raise RuntimeError("kaboom")

    tt.submit(boom)
    assert tt.call(add, 1, 2, timeout=WAIT) == 3
    assert any("raised" in r.getMessage() for r in caplog.records)
    assert any("kaboom" in (r.exc_text or "") for r in caplog.records)


def test_start_soon_runs_a_task_and_logs_its_failure(tt, caplog):
    caplog.set_level(logging.ERROR, logger="penumbra.transports.bridge")
    done = threading.Event()

    async def task():
        await trio.lowlevel.checkpoint()
        done.set()

    tt.start_soon(task)
    assert done.wait(WAIT)
    tt.start_soon(fail, "task failed")
    tt.call(_wait_all_blocked, timeout=WAIT)
    assert any("task failed" in (r.exc_text or "") for r in caplog.records)


async def _wait_all_blocked():
    import trio.testing

    await trio.testing.wait_all_tasks_blocked()


# -------------------------------------------------------------------- call


def test_call_returns_result_and_raises_errors(tt):
    assert tt.call(add, 2, 3) == 5
    with pytest.raises(ValueError, match="nope"):
        tt.call(fail, "nope")
    fut = tt.call_soon(add, "a", "b")
    assert fut.result(WAIT) == "ab" and fut.done() and fut.exception() is None


def test_blocking_call_does_not_hold_up_other_work(tt):
    """A call that waits does not delay submits or other calls."""
    release = trio.Event  # created on the trio thread below
    holder = {}

    async def make_event():
        holder["ev"] = release()

    tt.call(make_event, timeout=WAIT)

    async def wait_for_release():
        await holder["ev"].wait()
        return "released"

    slow = tt.call_soon(wait_for_release)
    # Meanwhile other calls and submits keep flowing.
    for i in range(50):
        assert tt.call(add, i, 1, timeout=WAIT) == i + 1
    hit = threading.Event()
    tt.submit(hit.set)
    assert hit.wait(WAIT)
    assert not slow.done()
    tt.submit(holder["ev"].set)
    assert slow.result(WAIT) == "released"


def test_call_timeout_raises_and_cancels_the_coroutine(tt):
    cancelled = threading.Event()

    async def forever():
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match="did not finish within"):
        tt.call(forever, timeout=0.05)
    assert cancelled.wait(WAIT)
    assert tt.call(add, 1, 1, timeout=WAIT) == 2  # the loop is fine


def test_future_cancel_before_and_while_running(tt):
    started = threading.Event()
    cancelled = threading.Event()

    async def slow():
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    fut = tt.call_soon(slow)
    assert started.wait(WAIT)
    assert fut.cancel()
    assert cancelled.wait(WAIT)
    with pytest.raises(CancelledError):
        fut.result(WAIT)
    assert fut.cancelled() and not fut.cancel()


def test_call_from_the_trio_thread_raises_instead_of_deadlocking(tt):
    async def nested():
        return tt.call(add, 1, 2)

    with pytest.raises(RuntimeError, match="trio thread itself"):
        tt.call(nested, timeout=WAIT)

    def nested_sync():
        return tt.run_sync(len, "abc")

    with pytest.raises(RuntimeError, match="trio thread itself"):
        tt.run_sync(nested_sync, timeout=WAIT)

    fut = tt.future()

    async def wait_on_future():
        return fut.result()

    with pytest.raises(RuntimeError, match="trio thread"):
        tt.call(wait_on_future, timeout=WAIT)


def test_call_sees_trio_context(tt):
    async def info():
        await trio.lowlevel.checkpoint()
        return trio.lowlevel.current_task() is not None, threading.current_thread().name

    assert tt.call(info, timeout=WAIT) == (True, "test-trio")


def test_many_concurrent_blocking_calls(tt):
    """Each blocking call gets its own task; all finish."""
    n = 50
    holder = {}

    async def setup():
        holder["ev"] = trio.Event()

    tt.call(setup, timeout=WAIT)

    async def waiter(i):
        await holder["ev"].wait()
        return i

    futs = [tt.call_soon(waiter, i) for i in range(n)]
    tt.call(_wait_all_blocked, timeout=WAIT)
    assert not any(f.done() for f in futs)
    tt.submit(holder["ev"].set)
    assert [f.result(WAIT) for f in futs] == list(range(n))


# ------------------------------------------------------------------ future


def test_future_set_from_trio_side(tt):
    fut = tt.future()
    tt.submit(fut.set_result, 42)
    assert fut.result(WAIT) == 42
    assert not fut.set_result(43)  # first completion wins
    fut2 = tt.future()
    tt.submit(fut2.set_exception, KeyError("k"))
    with pytest.raises(KeyError):
        fut2.result(WAIT)
    assert isinstance(fut2.exception(), KeyError)


def test_future_result_timeout_and_callbacks():
    fut = Future()
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        fut.result(timeout=0)
    seen = []
    fut.add_done_callback(lambda f: seen.append(f.result()))
    waiter_result = []
    t = threading.Thread(target=lambda: waiter_result.append(fut.result(WAIT)))
    t.start()
    fut.set_result("v")
    t.join(WAIT)
    assert seen == ["v"] and waiter_result == ["v"]
    fut.add_done_callback(lambda f: seen.append("late"))
    assert seen == ["v", "late"]


# -------------------------------------------------------------------- stop


def test_stop_cancels_pending_work_and_rejects_new_work():
    tt = TrioThread(name="stopper").start()
    started = threading.Event()

    async def forever():
        started.set()
        await trio.sleep_forever()

    running = tt.call_soon(forever)
    waiting = tt.future()
    assert started.wait(WAIT)
    assert tt.stop(timeout=WAIT)
    assert not tt.running
    with pytest.raises(CancelledError):
        running.result(WAIT)
    with pytest.raises(CancelledError):
        waiting.result(WAIT)
    with pytest.raises(RuntimeError, match="stopped"):
        tt.submit(print)
    with pytest.raises(RuntimeError, match="stopped"):
        tt.call(add, 1, 2)
    assert tt.stop(timeout=WAIT)  # idempotent


def test_stop_from_the_trio_thread(tt):
    assert tt.run_sync(tt.stop, timeout=WAIT) is False  # cannot join itself
    tt._thread.join(WAIT)
    assert not tt._thread.is_alive()


def test_context_manager_and_not_started():
    t = TrioThread()
    with pytest.raises(RuntimeError, match="not started"):
        t.submit(print)
    with TrioThread() as t2:
        assert t2.call(add, 1, 2, timeout=WAIT) == 3
    assert not t2.running
    with pytest.raises(RuntimeError, match="already started"):
        t2.start()


def test_interpreter_exit_does_not_hang():
    """A TrioThread left running (even mid-call) does not block exit."""
    script = textwrap.dedent(
        """
        import sys, threading, trio
        sys.path.insert(0, sys.argv[1])
        from penumbra.transports.bridge import TrioThread
        tt = TrioThread().start()
        started = threading.Event()
        async def forever():
            started.set()
            await trio.sleep_forever()
        tt.start_soon(forever)
        fut = tt.call_soon(forever)
        started.wait(10)
        # exit with a running task and a running call: the atexit hook stops the loop
        print("exiting", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, REPO], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exiting"
    assert "Traceback" not in proc.stderr, proc.stderr
