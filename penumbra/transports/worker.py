"""A worker process: runs tasks and actor methods for its node.

A worker is forked by its node's zygote, connects to the daemon's Unix
socket as ``role="worker"``, and then does what the daemon's ``Run``
messages say.  User code runs on the main thread (so that ``cancel`` can
interrupt it); the connection lives on a trio thread.  The worker is also a
client of its node, so tasks it runs can submit tasks, ``get`` and ``put``.

Actors: the first ``Run`` that creates an actor makes this worker the
actor's for good.  ``max_concurrency > 1`` runs calls on a thread pool;
an actor with ``async def`` methods runs them on an asyncio loop, up to
``max_concurrency`` at once.

Worker output: ``print`` goes to the driver, each line prefixed with the
task's name, or the actor's class name or ``repr()``, and the pid, as in
Ray (see ``_Forward``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import io
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

from ..api import context
from ..api.context import TaskContext, use_task_context
from ..api.execution import (
    actor_state,
    assigned_resources,
    call_args,
    construct_actor,
    environment,
    exit_error,
    exit_status,
    gpu_ids_for,
    install_terminate,
    output_name,
    restore_actor,
    set_visible_gpus,
    split_returns,
    task_env,
    task_error,
)
from ..api.generators import astream_values, is_generator_result, stream_values
from ..core.records import ErrorInfo, ErrorKind
from ..core.specs import TaskSpec
from . import protocol as P
from .bridge import TrioThread
from .actor_server import ActorServer
from .client import ClientRuntime
from .direct_caller import direct_calls_enabled
from .objectstore import decode_value, encode_value
from .wire import connect_unix

__all__ = ["run_worker"]


class _Forward(io.TextIOBase):
    """sys.stdout/sys.stderr of a worker: lines go to the job's driver.

    Each batch is prefixed as in Ray: ``(name pid=N)``, where the name is
    the task's function name, or, in an actor, the actor's class name -- or
    its ``repr()`` when the class defines ``__repr__`` (Ray's way to tell
    actors apart in the log).  A line not yet ended is sent when the task
    ends (``Worker._flush_output``), so nothing a finished task printed is
    held back."""

    def __init__(self, worker: "Worker", stream: str) -> None:
        self.worker = worker
        self.stream = stream
        self.buf: list[str] = []
        self.lock = threading.Lock()
        self.pending_ctx = None  # the task context of the line in ``buf``
        self.local = threading.local()  # in_repr: the actor's __repr__ is running on this thread

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if getattr(self.local, "in_repr", False):
            self.local.side.append(s)  # the actor's __repr__ printing: sent after, on its own
            return len(s)
        if "\n" not in s:
            with self.lock:
                if not self.buf:
                    self.pending_ctx = context._task_ctx.get()  # whose line it is, if the task ends first
                self.buf.append(s)
            return len(s)
        self._send(s)
        return len(s)

    def flush(self) -> None:
        if self.buf:  # (a racy look is fine: a write racing with this sends itself)
            self._send("")

    def _send(self, s: str) -> None:
        ctx = context._task_ctx.get() or self.pending_ctx
        job = ctx.job_id if ctx is not None else self.worker.job_id
        self.local.side = []
        prefix = self._prefix(ctx)  # (before taking the lock: the actor's __repr__ may print)
        with self.lock:
            self.buf.append(s)
            text, self.buf = "".join(self.buf), []
            if text:
                # (kind: a task printing line after line sends them through
                # the trio thread, a burst in one frame; a lone line goes direct)
                self.worker.rt._send(P.Output(job, prefix, text, self.stream), P.Output)
            side, self.local.side = "".join(self.local.side), []
            if side:
                self.worker.rt._send(P.Output(job, f"({self.worker.actor_name} pid={os.getpid()})", side, self.stream), P.Output)

    def _prefix(self, ctx: Any) -> str:
        w = self.worker
        self.local.in_repr = True  # (the actor's __repr__ may print: see write)
        try:
            name = output_name(ctx.name if ctx is not None else "", w.actor, w.actor_name)
        finally:
            self.local.in_repr = False
        return f"({name} pid={os.getpid()})"


class _InputError(Exception):
    """An input of a direct call holds an error: the call fails with that
    error itself, as the node fails a routed call (not as one the call
    raised)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class Worker:
    def __init__(self, rt: ClientRuntime) -> None:
        self.rt = rt
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self._visible: tuple = ()  # the GPU ids CUDA_VISIBLE_DEVICES was last set to
        self.actor: Any = None
        self.actor_name = ""
        self.actor_spec = None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.async_slots: asyncio.Semaphore | None = None
        self.current: Any = None  # task id running on the main thread
        self.actor_env: tuple | None = None  # the actor's runtime_env env_vars, set for its life
        self.main_ident = threading.main_thread().ident
        # tasks ``cancel`` was asked for while they run here (is_canceled),
        # and the async actor calls running now, to cancel them
        self.cancelled: set = set()
        self.async_calls: dict = {}
        self.job_id = 0
        self.incarnation = 0
        self.direct = None  # the actor's ActorServer (direct calls), once it listens
        self.unix_path = ""  # the node daemon's socket (the actor's own goes next to it)

    # called on the trio thread
    def on_item(self, item: Any) -> None:
        t = type(item)
        if t is P.Interrupt:
            self.interrupt(item.task_id)
            return
        if t is P.Exit and self.rt._lost is not None:
            # The connection to the daemon is lost: nothing this worker
            # runs can be reported any more, and a task running now would
            # keep the process alive until it ends (maybe never).  (Usually
            # the daemon's death kills us first, through the zygote's
            # PR_SET_PDEATHSIG; this covers a connection lost otherwise.)
            os._exit(1)
        self.queue.put(item)

    def interrupt(self, task_id) -> None:
        """``cancel`` of ``task_id``, running (or about to run) here (any
        thread but the main one)."""
        self.cancelled.add(task_id)
        # (an actor's sync call is not interrupted, as in Ray: actors
        # have state; it sees is_canceled(), and its result becomes
        # TASK_CANCELLED)
        if self.current == task_id and self.actor is None:
            # a real signal, not _thread.interrupt_main(): only a signal
            # wakes the main thread from a blocking call (sleep, a
            # socket read), so a task asleep is cancelled at once too
            signal.pthread_kill(self.main_ident, signal.SIGINT)
        atask = self.async_calls.get(task_id)
        if atask is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(atask.cancel)

    def direct_exiting(self, task_id) -> bool:
        """``exit_actor()`` in ``task_id``: if a direct call, its inbox ends
        the actor (True); else the node does (the routed path)."""
        return self.direct is not None and self.direct.exiting(task_id)

    def run_direct(self, run: P.Run) -> None:
        """A direct call the actor's inbox lets run now (transports/actor_server.py):
        on the actor's executor, as the node's ``Run`` of a call would."""
        if self.loop is not None or self.pool is not None:
            self.dispatch(run)
        else:
            self.queue.put(run)

    def on_sigint(self, signum, frame) -> None:
        """SIGINT: interrupt the task on the main thread if it is the one
        cancelled.  (Checked here, on the main thread, between bytecodes: a
        signal that lands after that task ended, or in the next one, does
        nothing.)"""
        if self.current is not None and self.current in self.cancelled:
            raise KeyboardInterrupt

    def loop_forever(self) -> None:
        while True:
            item = self.queue.get()
            t = type(item)
            if t is P.Run:
                self.dispatch(item)
            elif t is P.Checkpoint:
                self.checkpoint(item)
            elif t is P.Exit:
                return

    def dispatch(self, run: P.Run) -> None:
        spec = run.spec
        if spec.actor_id is not None and self.actor is not None:
            if self.loop is not None:
                asyncio.run_coroutine_threadsafe(self._run_async(run), self.loop)
                return
            if self.pool is not None:
                self.pool.submit(self.execute, run)
                return
        self.execute(run, main=True)

    # ------------------------------------------------------------------ running
    def _args(self, run: P.Run) -> tuple[list, dict]:
        atts = run.args
        if atts is None:  # a direct call: its refs' values come through the node, here
            atts = self.rt.fetch_attachments(run.spec.dependencies) if run.spec.dependencies else ()
            for att in atts:
                if att[0] == "e":  # (as the node fails a routed call: with the input's own error)
                    raise _InputError(att[1])
        shm = self.rt.shm if any(att[0] == "s" for att in atts) else None
        return call_args(run.spec, [decode_value(dep, att, shm) for dep, att in zip(run.spec.dependencies, atts)])

    def _context(self, run: P.Run) -> TaskContext:
        spec = run.spec
        aid = spec.actor_id or (spec.actor_creation.actor_id if spec.actor_creation else None)
        life = self.actor_spec.resources if self.actor_spec is not None else None
        return TaskContext(spec.task_id, spec.job_id, aid, run.attempt, spec.display_name(), gpu_ids=gpu_ids_for(run.gpu_ids),
                           resources=assigned_resources(spec, life), env_vars=task_env(spec, self.actor_env),
                           scheduling=spec.scheduling or (self.actor_spec.scheduling if self.actor_spec is not None else None))

    def execute(self, run: P.Run, main: bool = False) -> None:
        spec = run.spec
        self.job_id = spec.job_id
        t0 = time.perf_counter()
        if main:
            self.current = spec.task_id
        try:
            if spec.task_id in self.cancelled:
                # cancelled between its dispatch and its start (the interrupt
                # came before the task did): it never runs
                raise KeyboardInterrupt
            ctx = self._context(run)
            if ctx.gpu_ids != self._visible:
                self._visible = ctx.gpu_ids
                set_visible_gpus(ctx.gpu_ids)
            # (an actor's env_vars are set at its creation, for its life)
            own_env = spec.env_vars if spec.actor_id is None and spec.actor_creation is None else ()
            with use_task_context(ctx), environment(own_env):
                if spec.actor_creation is not None:
                    self._create_actor(run)
                    result = None
                else:
                    args, kwargs = self._args(run)
                    if spec.actor_id is not None:
                        fn = getattr(self.actor, spec.method)
                    else:
                        fn = self.rt.load_function(spec.function.function_id)
                    result = fn(*args, **kwargs)
                    if inspect.iscoroutine(result):
                        result = asyncio.run(result)
                    if spec.num_returns == 1 and is_generator_result(result):
                        result = stream_values(spec, result, self._store)
            if main:
                self.current = None
            self.cancelled.discard(spec.task_id)
            self._finish(spec, result, time.perf_counter() - t0)
        except _InputError as e:
            if main:
                self.current = None
            self.cancelled.discard(spec.task_id)
            self._done(P.Raised(spec.task_id, e.info, False, time.perf_counter() - t0))
        except KeyboardInterrupt:
            self.current = None
            self.cancelled.discard(spec.task_id)
            self._done(P.Raised(spec.task_id, ErrorInfo(ErrorKind.TASK_CANCELLED, f"task {spec.display_name()} was cancelled", task_name=spec.display_name()), False, time.perf_counter() - t0))
        except SystemExit as e:
            if main:
                self.current = None
            self.cancelled.discard(spec.task_id)
            self._exited(spec, e, time.perf_counter() - t0)
        except BaseException as e:  # noqa: BLE001 - user code may raise anything
            if main:
                self.current = None
            self.cancelled.discard(spec.task_id)
            self._raised(spec, e, time.perf_counter() - t0)

    async def _run_async(self, run: P.Run) -> None:
        spec = run.spec
        t0 = time.perf_counter()
        async with self.async_slots:
            self.async_calls[spec.task_id] = asyncio.current_task()
            try:
                if spec.task_id in self.cancelled:
                    raise asyncio.CancelledError  # (cancelled before it started)
                with use_task_context(self._context(run)):
                    args, kwargs = await asyncio.get_running_loop().run_in_executor(None, self._args, run) if spec.dependencies else self._args(run)
                    result = getattr(self.actor, spec.method)(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                    if spec.num_returns == 1 and inspect.isasyncgen(result):
                        result = await astream_values(spec, result, self._store)
                    elif spec.num_returns == 1 and inspect.isgenerator(result):
                        result = await asyncio.get_running_loop().run_in_executor(
                            None, stream_values, spec, result, self._store)
                self._finish(spec, result, time.perf_counter() - t0)
            except _InputError as e:
                self._done(P.Raised(spec.task_id, e.info, False, time.perf_counter() - t0))
            except asyncio.CancelledError:
                # ``cancel`` of a running async call, as in Ray
                name = spec.display_name()
                self._done(P.Raised(spec.task_id, ErrorInfo(ErrorKind.TASK_CANCELLED, f"task {name} was cancelled",
                                                            task_name=name), False, time.perf_counter() - t0))
            except SystemExit as e:
                await asyncio.get_running_loop().run_in_executor(None, self._exited, spec, e, time.perf_counter() - t0)
            except BaseException as e:  # noqa: BLE001
                self._raised(spec, e, time.perf_counter() - t0)
            finally:
                self.async_calls.pop(spec.task_id, None)
                self.cancelled.discard(spec.task_id)

    def _create_actor(self, run: P.Run) -> None:
        spec = run.spec
        a = spec.actor_creation
        # an actor's env_vars hold for its life (its worker is its own)
        self.actor_env = spec.env_vars
        os.environ.update(spec.env_vars)
        cls = self.rt.load_function(spec.function.function_id)
        self.actor_name = f"{cls.__name__}"
        if a.is_async:
            # the loop first: an ``async def __init__`` runs on it, as in Ray
            # (and so can start servers and tasks that live with the actor)
            self.loop = asyncio.new_event_loop()
            self.async_slots = asyncio.Semaphore(max(1, a.max_concurrency))
            threading.Thread(target=self.loop.run_forever, name="penumbra-actor-loop", daemon=True).start()
        try:
            if run.checkpoint is not None and run.checkpoint.data is not None:
                obj = restore_actor(cls, run.checkpoint.data)
            else:
                args, kwargs = self._args(run)
                obj = construct_actor(cls, args, kwargs, self.loop)
        except BaseException:
            if self.loop is not None:  # (no actor here after all: no loop either)
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.loop = self.async_slots = None
            raise
        self.actor = install_terminate(obj)
        self.rt.actor_instance = obj  # (exit_actor runs its __ray_shutdown__)
        self.actor_spec = a
        if not a.is_async and a.max_concurrency > 1:
            self.pool = concurrent.futures.ThreadPoolExecutor(a.max_concurrency, thread_name_prefix="penumbra-actor")
        if not a.replay and direct_calls_enabled():
            # callers may now call it directly (before its creation is
            # reported: the node knows the endpoint when the actor is ALIVE)
            server = ActorServer(self, a, run.incarnation, run.gpu_ids)
            server.start(os.path.dirname(self.unix_path), self.rt.address.rpartition(":")[0] or "127.0.0.1")
            self.direct = server

    def _store(self, oid, value: Any) -> None:
        """Store one value a generator task yielded (see ``generators``):
        as ``put`` does, then unpinned, like a task's output."""
        self.rt.put_object(oid, value)
        self.rt.release([oid])

    def _finish(self, spec: TaskSpec, result: Any, duration: float) -> None:
        outputs = []
        try:
            for oid, v in zip(spec.return_ids, split_returns(spec, result)):
                size, data = encode_value(oid, v, self.rt.shm, subject=f"the return value of {spec.display_name()}")
                outputs.append((oid, size, data))
        except Exception as e:  # noqa: BLE001 - a num_returns mismatch, unpicklable results, full store
            self._raised(spec, e, duration)
            return
        self._done(P.Ran(spec.task_id, tuple(outputs), duration))

    def _raised(self, spec: TaskSpec, e: BaseException, duration: float) -> None:
        info, retryable = task_error(spec, e)
        self._done(P.Raised(spec.task_id, info, retryable, duration))

    def _exited(self, spec: TaskSpec, e: SystemExit, duration: float) -> None:
        """User code called ``sys.exit()``: see ``exit_error`` (an actor's
        worker blocks here until its node stops it; a non-zero status
        ends this process as a crash)."""
        try:
            info = exit_error(spec, e, self.rt)
        except Exception as err:  # noqa: BLE001 - the actor was not stopped in time
            self._raised(spec, err, duration)
            return
        if info is None:
            self._crash(exit_status(e))
        self._done(P.Raised(spec.task_id, info, False, duration))

    def _crash(self, status: int) -> None:
        """End this worker now, as a crash, after what it printed is sent."""
        self._flush_output()
        if self.direct is not None:
            self.direct.flush()  # (what ran before is reported: its results stand)
        try:
            sent = self.rt.bridge.future()
            self.rt.bridge.submit(self.rt.idle_flush.run)  # (replies to direct calls before it)
            self.rt.bridge.submit(self.rt._flush)
            self.rt.bridge.submit(sent.set_result, None)  # (after the output: jobs run in order)
            sent.result(2.0)
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
        os._exit(status)

    def checkpoint(self, c: P.Checkpoint) -> None:
        self._send(P.Checkpointed(c.actor_id, c.index, actor_state(self.actor)))

    def _send(self, item: Any) -> None:
        self.rt._send(item)

    def _done(self, item: P.Ran | P.Raised) -> None:
        """The task is over: report it (a wait() loop's open watch ends
        with the task that ran it), after what it printed, so its output
        reaches the driver before its result does."""
        self._flush_output()
        self.rt.close_wait_watch()
        # (the end of the run for the timeline: after its output and its
        # results are out, so the next call on this worker starts later)
        if type(item) is P.Ran:
            item = P.Ran(item.task_id, item.outputs, item.duration, time.perf_counter())
        else:
            item = P.Raised(item.task_id, item.error, item.retryable, item.duration, time.perf_counter())
        if self.direct is not None and self.direct.finish(item):
            return  # a direct call: answered to its caller, reported to the node
        # (a lone result goes out from this thread; results back to back,
        # an actor working through a queue of calls, go as one frame)
        self.rt._send(item, P.Ran)
        if self.direct is not None and not self.direct.endpoint_sent:
            self.direct.endpoint_sent = True
            self.direct.announce()  # (the actor was just created)

    @staticmethod
    def _flush_output() -> None:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _Forward):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001
                    pass


def run_worker(cfg: dict, token: str, worker_id: str) -> None:
    """Entry point of a forked worker (see ``zygote``)."""
    bridge = TrioThread(name="penumbra-worker").start()

    async def opening():
        ch = await connect_unix(cfg["unix_path"], token, "worker", worker_id)
        ch.send_nowait(P.ClientHello(worker_id, os.getpid(), False, 0, worker_id))
        welcome = await ch.receive()
        return ch, welcome

    try:
        ch, welcome = bridge.call(opening, timeout=30.0)
    except Exception as e:
        # The usual cause is a daemon shutting down while this worker was
        # still starting; the daemon then kills our zygote, and we die with
        # it (PR_SET_PDEATHSIG) within a moment.  Say something only if we
        # are still alive after that moment: then it is a real problem.
        zygote = os.getppid()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and os.getppid() == zygote:
            time.sleep(0.05)
        if os.getppid() == zygote:
            print(f"penumbra worker {worker_id}: cannot connect to the daemon: {e}", file=sys.__stderr__)
        os._exit(1)
    rt = ClientRuntime(bridge, ch, welcome, is_worker=True)
    rt.token = token
    worker = Worker(rt)
    worker.unix_path = cfg["unix_path"]
    rt.exiting_hook = worker.direct_exiting
    rt.on_item = worker.on_item
    rt.task_cancelled = worker.cancelled.__contains__
    signal.signal(signal.SIGINT, worker.on_sigint)
    context.set_runtime(rt, None)
    bridge.start_soon(rt.receive_loop)
    sys.stdout = _Forward(worker, "stdout")
    sys.stderr = _Forward(worker, "stderr")
    profile_dir = os.environ.get("PENUMBRA_PROFILE_WORKER")  # a directory: write cProfile stats there
    try:
        if profile_dir:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
            try:
                worker.loop_forever()
            finally:
                prof.disable()
                prof.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.prof"))
        else:
            worker.loop_forever()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        bridge.stop(timeout=2.0)
