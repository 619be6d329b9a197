"""A trio event loop in a background thread, driven from synchronous code.

The driver's user code is synchronous (``f.remote(x)``, ``ray.get(ref)``) and
runs in ordinary threads, while all of penumbra's networking is trio.  A
:class:`TrioThread` runs ``trio.run`` in a daemon thread and lets any other
thread hand it work:

* :meth:`TrioThread.submit` -- run a *sync* callable on the trio thread,
  fire-and-forget.  The cheapest path (an append to a deque, plus one
  wake-up per batch), meant for ``.remote()``: the callable typically does
  ``channel.send_nowait(msg)``, so a burst of submissions becomes one frame.
* :meth:`TrioThread.call` -- run a coroutine on the trio thread and block
  until it finishes or ``timeout`` passes (:class:`TimeoutError`; the
  coroutine is then cancelled).  :meth:`TrioThread.call_soon` returns a
  :class:`Future` instead of blocking.
* :meth:`TrioThread.future` -- a :class:`Future` that trio-side code resolves
  later (``set_result``) while a user thread waits on it (``result``): this
  is how a blocking ``get`` waits for an object without polling.

Theory of operation
-------------------
**Wake-ups.**  Jobs go into a :class:`collections.deque` (appends and pops are
atomic under the GIL).  One trio task, the *dispatcher*, drains it.  When the
deque is empty the dispatcher sets ``_sleeping`` and parks on an eventfd
(a pipe where there is no eventfd) with :func:`trio.lowlevel.wait_readable`.
A submitting thread writes to the eventfd only if it sees ``_sleeping`` set,
and clears it: a burst of N submissions costs N appends and at most one
system call.  Because the dispatcher sets the flag *before* re-checking the
deque, and a submitter appends *before* reading the flag, no job is ever left
behind (at worst there is one spurious wake-up).

**Calls without a task spawn.**  Spawning a trio task costs tens of
microseconds on a small machine.  The dispatcher therefore runs the first
step of a call's coroutine itself (``coro.send(None)``) inside the call's own
:class:`trio.CancelScope`.  A coroutine that finishes without blocking (a
lookup, a ``send_nowait``) is done right there.  One that blocks keeps
running in the dispatcher task -- the dispatcher *becomes* that call's runner,
forwarding trio's traps to the coroutine exactly as ``await`` would -- and a
fresh dispatcher task is spawned to take over the queue.  Blocking calls
therefore never hold up other jobs.

**Futures.**  :class:`Future` is a lock-based one-shot result, cheaper than
:class:`concurrent.futures.Future` (no condition variable).  It is completed
at most once, from any thread; waiters block on a plain lock.

**Deadlock guard.**  Blocking on the trio thread itself (``call``,
``run_sync`` or ``Future.result`` on an unfinished future) would wait forever
for the loop the caller is blocking; these raise :class:`RuntimeError`
instead.

**Shutdown.**  :meth:`TrioThread.stop` cancels everything, fails pending
futures with :class:`concurrent.futures.CancelledError`, and joins the thread
with a timeout.  The thread is a daemon and an ``atexit`` hook stops every
live :class:`TrioThread`, so interpreter exit never hangs on it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import types
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import CancelledError
from typing import Any, Self, TypeVar

import trio

__all__ = ["CancelledError", "Future", "TrioThread"]

logger = logging.getLogger("penumbra.transports.bridge")

T = TypeVar("T")

# Future states
_PENDING = 0
_DONE = 1
_FAILED = 2
_CANCELLED = 3

# TrioThread states
_NEW = "new"
_RUNNING = "running"
_STOPPING = "stopping"
_STOPPED = "stopped"

# Job kinds
_SYNC = 0  # fn(*args), fire-and-forget
_CALL = 1  # await fn(*args) -> future
_SPAWN = 2  # nursery.start_soon(fn, *args), fire-and-forget
_RUN_SYNC = 3  # fn(*args) -> future

# Guards every future's one state transition (uncontended: ~50 ns).
_transition = threading.Lock()


# ===========================================================================
# Future


class Future:
    """A one-shot result that one thread sets and other threads wait for.

    Completed at most once, by :meth:`set_result`, :meth:`set_exception` or
    :meth:`cancel`, from any thread.  ``result()``/``exception()`` block the
    calling thread; callbacks added with :meth:`add_done_callback` run in the
    thread that completes the future.
    """

    __slots__ = ("__weakref__", "_bridge", "_callbacks", "_lock", "_scope", "_state", "_value")

    def __init__(self, bridge: TrioThread | None = None) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._state = _PENDING
        self._value: Any = None
        self._callbacks: list[Callable[[Future], Any]] | None = None
        self._scope: trio.CancelScope | None = None  # a running call's scope
        self._bridge = bridge

    def __repr__(self) -> str:
        state = {_PENDING: "pending", _DONE: "done", _FAILED: "failed", _CANCELLED: "cancelled"}[self._state]
        return f"<Future {state}>"

    # ------------------------------------------------------------ inspection

    def done(self) -> bool:
        """True once the future has a result, an exception or was cancelled."""
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def _wait(self, timeout: float | None) -> None:
        if self._state != _PENDING:
            return
        bridge = self._bridge
        if bridge is not None and bridge._ident == threading.get_ident():
            raise RuntimeError(
                "Future.result() was called on the trio thread for an unfinished future: "
                "it would block the loop that has to finish it.  On the trio thread, "
                "await the underlying operation instead."
            )
        if timeout is None:
            ok = self._lock.acquire()
        elif timeout <= 0:
            ok = self._lock.acquire(False)
        else:
            ok = self._lock.acquire(True, timeout)
        if not ok:
            raise TimeoutError(f"the result was not ready within {timeout} s")
        self._lock.release()  # let any other waiter through too

    def result(self, timeout: float | None = None) -> Any:
        """The result, waiting up to ``timeout`` seconds (``None``: forever).

        Raises:
            TimeoutError: not done within ``timeout``.
            concurrent.futures.CancelledError: the future was cancelled.
            RuntimeError: called on the trio thread for an unfinished future.
            Exception: whatever the operation raised.
        """
        self._wait(timeout)
        state = self._state
        if state == _DONE:
            return self._value
        raise self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the operation raised (None if it succeeded)."""
        self._wait(timeout)
        if self._state == _DONE:
            return None
        if self._state == _CANCELLED:
            raise self._value
        return self._value

    # ------------------------------------------------------------ completion

    def _complete(self, state: int, value: Any) -> bool:
        with _transition:
            if self._state != _PENDING:
                return False
            self._value = value
            self._state = state
        self._lock.release()
        callbacks = self._callbacks
        if callbacks:
            self._callbacks = None
            for cb in callbacks:
                try:
                    cb(self)
                except Exception:
                    logger.exception("Future callback %r raised", cb)
        return True

    def set_result(self, value: Any) -> bool:
        """Complete with ``value``; False if already complete (first one wins)."""
        return self._complete(_DONE, value)

    def set_exception(self, exc: BaseException) -> bool:
        """Complete with ``exc``; False if already complete."""
        return self._complete(_FAILED, exc)

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel: waiters get CancelledError; a running call is cancelled too.

        Returns False if the future was already complete.
        """
        if not self._complete(_CANCELLED, CancelledError(reason)):
            return False
        scope = self._scope
        bridge = self._bridge
        if scope is not None and bridge is not None:
            try:
                bridge.submit(scope.cancel)
            except RuntimeError:
                pass  # the loop is gone; the call was cancelled with it
        return True

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` when complete (now, if it already is)."""
        with _transition:
            if self._state == _PENDING:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)


# ===========================================================================
# Driving a started coroutine from another task


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], trap: Any) -> Any:
    """Keep running ``coro`` in the current task; it just yielded ``trap``.

    Equivalent to ``await coro`` for a coroutine whose first step already
    ran in this task: trio's traps go out, trio's answers (values or
    exceptions such as Cancelled) go in.
    """
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                trap = coro.send(value)
            except StopIteration as stop:
                return stop.value


# ===========================================================================
# TrioThread


def _close_fds(fds: set[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass

_live: weakref.WeakSet[TrioThread] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for tt in list(_live):
        try:
            tt.stop(timeout=1.0)
        except Exception:  # pragma: no cover - best effort at exit
            pass


atexit.register(_stop_all_at_exit)


class TrioThread:
    """A trio event loop in a daemon thread, usable from any other thread.

    Example::

        tt = TrioThread(name="driver-io").start()
        tt.submit(channel.send_nowait, msg)          # fire-and-forget
        reply = tt.call(client.request, query, timeout=10)
        tt.stop()

    Args:
        name: the thread's name (shows in logs and tracebacks).
        max_batch: the dispatcher yields to other trio tasks after this many
            consecutive jobs, so a flood of submissions cannot starve I/O.
    """

    def __init__(self, name: str = "penumbra-trio", *, max_batch: int = 1024) -> None:
        self.name = name
        self.max_batch = max_batch
        self._jobs: deque[tuple[int, Callable[..., Any], tuple[Any, ...], Future | None]] = deque()
        self._sleeping = False
        self._state = _NEW
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._root_scope: trio.CancelScope | None = None
        self._started = threading.Event()
        self._crash: BaseException | None = None
        self._futures: weakref.WeakSet[Future] = weakref.WeakSet()
        self._rfd = self._wfd = -1
        self._efd = False
        self._idle_hooks: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"<TrioThread {self.name!r} {self._state}>"

    # ---------------------------------------------------------------- start

    def start(self, timeout: float = 10.0) -> TrioThread:
        """Start the loop thread and wait until it accepts work; returns self.

        Raises:
            RuntimeError: already started, or the loop failed to start.
        """
        with self._state_lock:
            if self._state != _NEW:
                raise RuntimeError(f"{self!r} was already started; create a new TrioThread")
            self._state = _RUNNING
        if hasattr(os, "eventfd"):
            self._rfd = self._wfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._efd = True
        else:  # pragma: no cover - non-Linux
            self._rfd, self._wfd = os.pipe()
            os.set_blocking(self._rfd, False)
            os.set_blocking(self._wfd, False)
        # Closed only when this object is collected: a late submit() racing
        # with stop() must never write into a reused descriptor.
        # (Not at exit: the loop may still be running then, see _stop_all_at_exit.)
        weakref.finalize(self, _close_fds, {self._rfd, self._wfd}).atexit = False
        self._thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"{self!r} did not start within {timeout} s")
        if self._crash is not None:
            raise RuntimeError(f"{self!r} failed to start: {self._crash!r}") from self._crash
        _live.add(self)
        return self

    def __enter__(self) -> Self:
        if self._state == _NEW:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        self._ident = threading.get_ident()
        try:
            trio.run(self._main)
        except BaseException as exc:  # a bug: record it, fail everything
            self._crash = exc
            logger.exception("%r crashed", self)
        finally:
            with self._state_lock:
                self._state = _STOPPED
            self._started.set()
            self._fail_pending("the TrioThread stopped")

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._root_scope = scope
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._dispatch)
                self._started.set()
                await trio.sleep_forever()

    def _fail_pending(self, reason: str) -> None:
        jobs = self._jobs
        while jobs:
            _, _, _, fut = jobs.popleft()
            if fut is not None:
                fut._complete(_CANCELLED, CancelledError(reason))
        for fut in list(self._futures):
            fut._complete(_CANCELLED, CancelledError(reason))

    # ------------------------------------------------------------ properties

    @property
    def running(self) -> bool:
        return self._state == _RUNNING

    @property
    def trio_token(self) -> trio.lowlevel.TrioToken:
        """The loop's token, for ``trio.from_thread`` and ``run_sync_soon``."""
        if self._token is None:
            raise RuntimeError(f"{self!r} is not running")
        return self._token

    @property
    def nursery(self) -> trio.Nursery:
        """The loop's long-lived nursery (use it on the trio thread only)."""
        if self._nursery is None:
            raise RuntimeError(f"{self!r} is not running")
        return self._nursery

    def idle(self) -> bool:
        """True when the dispatcher is parked with nothing queued: every job
        submitted so far has run, and the idle hooks after them.  Work
        another thread does now cannot overtake a job submitted before it
        (``direct_send`` writes from the caller's thread only then)."""
        return self._sleeping and not self._jobs

    def in_trio_thread(self) -> bool:
        """True when called on this loop's thread."""
        return threading.get_ident() == self._ident

    # --------------------------------------------------------------- submit

    def _closed_error(self) -> RuntimeError:
        if self._crash is not None:
            return RuntimeError(f"{self!r} crashed: {self._crash!r}")
        if self._state == _NEW:
            return RuntimeError(f"{self!r} was not started; call start() first")
        return RuntimeError(f"{self!r} has been stopped; no more work can be submitted")

    def _push(self, job: tuple[int, Callable[..., Any], tuple[Any, ...], Future | None]) -> None:
        if self._state is not _RUNNING:
            raise self._closed_error()
        self._jobs.append(job)
        if self._sleeping:
            self._sleeping = False
            try:
                os.write(self._wfd, b"\x01\x00\x00\x00\x00\x00\x00\x00" if self._efd else b"\x01")
            except (BlockingIOError, OSError):
                pass  # already signalled (pipe full) or closing

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the trio thread soon; fire-and-forget.

        The cheapest way in (a deque append; a wake-up system call only when
        the loop is idle).  Jobs from one thread run in submission order.
        ``fn`` runs inside the loop, so it must not block; an exception it
        raises is logged and otherwise ignored.

        Raises:
            RuntimeError: the TrioThread is not running.
        """
        if self._state is not _RUNNING:
            raise self._closed_error()
        self._jobs.append((_SYNC, fn, args, None))
        if self._sleeping:
            self._sleeping = False
            try:
                os.write(self._wfd, b"\x01\x00\x00\x00\x00\x00\x00\x00" if self._efd else b"\x01")
            except (BlockingIOError, OSError):
                pass

    def start_soon(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start ``async_fn(*args)`` as a task in the loop's nursery; fire-and-forget.

        An exception it raises is logged; it does not stop the loop.
        """
        self._push((_SPAWN, async_fn, args, None))

    def call_soon(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> Future:
        """Run ``await async_fn(*args)`` on the trio thread; its :class:`Future`.

        ``future.cancel()`` cancels the coroutine (it sees trio.Cancelled).
        """
        fut = Future(self)
        self._push((_CALL, async_fn, args, fut))
        if self._state is _STOPPED:  # raced with the loop's exit
            fut._complete(_CANCELLED, CancelledError("the TrioThread stopped"))
        return fut

    def call(self, async_fn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None) -> T:
        """Run ``await async_fn(*args)`` on the trio thread and return its result.

        Blocks the calling thread until the coroutine finishes.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds; the
                coroutine has been cancelled.
            RuntimeError: called on the trio thread itself (it would
                deadlock: ``await async_fn(*args)`` there instead), or the
                TrioThread is not running.
            concurrent.futures.CancelledError: the TrioThread stopped first.
            Exception: whatever the coroutine raised.
        """
        if threading.get_ident() == self._ident:
            raise RuntimeError(
                f"TrioThread.call({getattr(async_fn, '__qualname__', async_fn)}) was called on the "
                "trio thread itself: it would wait for its own loop forever.  On the trio "
                "thread, `await async_fn(*args)` directly instead."
            )
        fut = self.call_soon(async_fn, *args)
        try:
            return fut.result(timeout)
        except TimeoutError:
            if fut.cancel(f"timed out after {timeout} s"):
                raise TimeoutError(
                    f"{getattr(async_fn, '__qualname__', async_fn)} did not finish within {timeout} s "
                    "(it has been cancelled)"
                ) from None
            return fut.result()  # it finished just as we gave up

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run sync ``fn(*args)`` on the trio thread and return its result.

        Raises:
            TimeoutError: not run within ``timeout`` seconds (it may still run).
            RuntimeError: called on the trio thread itself.
        """
        if threading.get_ident() == self._ident:
            raise RuntimeError(
                "TrioThread.run_sync() was called on the trio thread itself; call the function directly."
            )
        fut = Future(self)
        self._push((_RUN_SYNC, fn, args, fut))
        if self._state is _STOPPED:
            fut._complete(_CANCELLED, CancelledError("the TrioThread stopped"))
        return fut.result(timeout)

    def future(self) -> Future:
        """A new :class:`Future` tied to this loop.

        Trio-side code completes it (``set_result``/``set_exception``); user
        threads wait with ``result(timeout)``.  If the loop stops first, it
        is cancelled, so no waiter hangs.

        Raises:
            RuntimeError: the TrioThread is not running (nothing would
                ever complete or cancel the future), as ``submit`` does.
        """
        if self._state is not _RUNNING:
            raise self._closed_error()
        fut = Future(self)
        self._futures.add(fut)
        return fut

    # ----------------------------------------------------------- dispatcher

    async def _dispatch(self) -> None:
        """Drain the job queue; park on the eventfd when it is empty.

        Each dispatcher task runs in its own cancel scope, entered once: if a
        call blocks, this task becomes that call's runner (and the scope
        becomes the call's, for ``Future.cancel``); a new dispatcher starts.
        """
        with trio.CancelScope() as scope:
            jobs = self._jobs
            rfd = self._rfd
            max_batch = self.max_batch
            done_in_batch = 0
            while True:
                if not jobs:
                    done_in_batch = 0
                    self._run_idle_hooks()
                    self._sleeping = True
                    if not jobs:
                        await trio.lowlevel.wait_readable(rfd)
                        try:
                            os.read(rfd, 8 if self._efd else 4096)
                        except BlockingIOError:
                            pass
                    self._sleeping = False
                    continue
                kind, fn, args, fut = jobs.popleft()
                if kind == _SYNC:
                    try:
                        fn(*args)
                    except Exception:
                        logger.exception("%s: submitted callable %r raised", self.name, fn)
                elif kind == _CALL:
                    assert fut is not None
                    if fut._state != _PENDING:
                        continue  # cancelled before it started
                    try:
                        coro = fn(*args)
                        trap = coro.send(None)
                    except StopIteration as stop:
                        fut._complete(_DONE, stop.value)
                    except Exception as exc:
                        fut._complete(_FAILED, exc)
                    else:
                        # It blocked: hand dispatching to a new task and keep
                        # running the call in this one, under this scope.
                        self.nursery.start_soon(self._dispatch)
                        await self._finish_call(scope, coro, trap, fut)
                        return
                elif kind == _SPAWN:
                    self.nursery.start_soon(self._guard, fn, args)
                else:  # _RUN_SYNC
                    assert fut is not None
                    if fut._state == _PENDING:
                        try:
                            fut.set_result(fn(*args))
                        except Exception as exc:
                            fut.set_exception(exc)
                done_in_batch += 1
                if done_in_batch >= max_batch:
                    done_in_batch = 0
                    self._run_idle_hooks()
                    await trio.lowlevel.cancel_shielded_checkpoint()

    def on_idle(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` on the trio thread each time the dispatcher has
        run every queued job (before it sleeps).  For work that is best done
        once per burst of jobs, such as putting the messages they queued on
        the wire as one frame without waking another task."""
        self._idle_hooks.append(hook)

    def _run_idle_hooks(self) -> None:
        for hook in self._idle_hooks:
            try:
                hook()
            except Exception:
                logger.exception("%s: idle hook %r raised", self.name, hook)

    @staticmethod
    async def _finish_call(scope: trio.CancelScope, coro: Any, trap: Any, fut: Future) -> None:
        fut._scope = scope  # publish before checking the state: see Future.cancel
        if fut._state != _PENDING:
            scope.cancel()
        try:
            value = await _resume(coro, trap)
        except Exception as exc:
            fut._complete(_FAILED, exc)
        else:
            fut._complete(_DONE, value)
        finally:
            fut._scope = None
            if fut._state == _PENDING:  # cancelled (by the caller, or stop())
                fut._complete(_CANCELLED, CancelledError("the call was cancelled"))

    async def _guard(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            await fn(*args)
        except Exception:
            logger.exception("%s: task %r raised", self.name, fn)

    # ----------------------------------------------------------------- stop

    def stop(self, timeout: float = 5.0) -> bool:
        """Cancel everything and wait up to ``timeout`` s for the thread to end.

        Pending and running calls fail with CancelledError.  Idempotent.
        Returns True if the thread has ended (always False when called on
        the trio thread itself, which cannot wait for itself).
        """
        with self._state_lock:
            state = self._state
            if state == _NEW:
                self._state = _STOPPED
                return True
            if state == _RUNNING:
                self._state = _STOPPING
        _live.discard(self)
        if state == _RUNNING and self._root_scope is not None:
            if self.in_trio_thread():
                self._root_scope.cancel()
            else:
                try:
                    self.trio_token.run_sync_soon(self._root_scope.cancel)
                except trio.RunFinishedError:
                    pass
        if self.in_trio_thread():
            return False
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("%r did not stop within %s s; abandoning its daemon thread", self, timeout)
            self._fail_pending("the TrioThread was stopped")
            return False
        return True
