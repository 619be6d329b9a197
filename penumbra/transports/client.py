"""The real runtime as seen from a driver or a worker: ``ClientRuntime``.

A client talks to the daemon of its node over one ``wire`` channel, driven
by a trio loop in a background thread (``bridge.TrioThread``), which
receives.  Sends do not need that thread: a user's thread writes its
message to the socket itself when nothing is queued ahead of it
(``direct_send.DirectSender``: a lone ``.remote()``, a ``get``'s watch, a
put), and hands it to the loop otherwise (a burst of submissions, which
the loop puts in one frame; a full socket).  So ``.remote`` costs a few
microseconds, never blocks, and a sync round trip wakes the trio thread
once, for the reply.

What goes where:

* ``submit`` sends ``SubmitTask`` (fire and forget);
* ``get``/``wait`` send ``WatchObjects`` and block on a future that the
  receive loop resolves as ``ObjectsReady`` messages arrive (values come
  attached: inline bytes, or a note that they are in the node's shared
  memory, which this process then reads zero-copy);
* ``put`` writes large values straight into shared memory and tells the
  node (``PutObject``), small ones travel inline;
* a worker blocked in ``get`` tells its node (``WorkerBlocked``) so that the
  node can lend its CPU to another task (nested tasks cannot deadlock).

``start_local`` starts the embedded cluster (a daemon process that hosts the
head, the GCS and this machine's node) and connects to it; ``connect`` joins
a cluster started with ``penumbra start``.

The protocol logic (which requests wait for what, the watch a ``wait()``
leaves open, timeouts, the connection's state) is the pure machine
``penumbra.core.client.ClientMachine``, which the simulator's drivers run
too (so the swarm checks it); this module only carries its commands out
(``_run``) and feeds it what the socket and the user's threads do.  It is
called under one lock (``_mlock``) from any thread: the trio thread with
what the node sends, a user's thread with its request (so a ``get``
registers its watch and sends it without a hand-off).  Waiters are bridge
futures.

Losing the daemon.  When the connection ends (the daemon was killed or
exited), the receive loop tells the machine (``ConnectionLost``), which
fails every waiting future with ``ClusterConnectionLostError``, once.
Everything that registers a new future does so through the machine, under
the lock under which the loss is reported too, and the machine refuses a
request made after it (``Fail`` at once): no call can wait on a
connection that is gone, whatever the order of events.  Sends check it
too, so ``.remote()``, ``kill`` and ``cancel`` fail the same way, until
``shutdown()``.

Timeouts.  A caller waits on its future with its own timeout; when that
runs out it asks the machine (``give_up``) and takes the machine's verdict:
the answer, if it came first, or a timeout with what was reported so far.
So a request ends exactly once, however close the reply and the timeout.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import OrderedDict
from typing import Any, Sequence

from ..api import context
from ..api.runtime import ErrorValue, Runtime
from ..core.client import LOST, ClientMachine, ConnectionLost, Fail, Resolve, ShutDown, TimedOut
from ..core.ids import ActorId, ObjectId, TaskId
from ..core.messages import (
    ActorRegistered,
    CancelTask,
    ClientGcsReply,
    ClientGcsRequest,
    ClusterStatus,
    ClusterStatusRequest,
    KillActor,
    ObjectsReady,
    PutDone,
    PutFailed,
    PutObject,
    ReleaseObjects,
    Send,
    SubmitTask,
    WorkerBlocked,
    WorkerUnblocked,
)
from ..core.specs import TaskSpec
from ..core.tables import Get, KvIncrement
from ..exceptions import ClusterConnectionLostError, GetTimeoutError, ObjectStoreFullError, PenumbraError
from . import protocol as P
from .bridge import TrioThread
from ..core.msg_direct import ActorWatched
from .direct_caller import DirectCalls, direct_calls_enabled
from .direct_send import DirectSender, IdleFlush
from .launch import DaemonProcess, PendingDaemon
from .objectstore import LazyShm, decode_value, encode_value
from .shm_store import ShmStore, StoreNotFoundError
from .wire import ConnectionClosed, connect_tcp, connect_unix

__all__ = ["ClientRuntime", "start_local", "connect"]

logger = logging.getLogger("penumbra")

_LOCAL_CACHE_BYTES = 64 << 20


class ClientRuntime(Runtime):
    def __init__(self, bridge: TrioThread, channel, welcome: P.ClientWelcome, *, is_worker: bool,
                 namespace: str = "", log_to_driver: bool = True) -> None:
        self.bridge = bridge
        self.channel = channel
        self.node_id = welcome.node_id
        self.client_id = welcome.client_id
        self.job_id = welcome.job_id
        self.address = welcome.address
        self.namespace = namespace
        self.is_worker = is_worker
        self.log_to_driver = log_to_driver
        self.session = welcome.session
        self.shm_root = welcome.shm_root
        self._shm: ShmStore | None = None
        # what waits for what: called under ``_mlock`` only, from any thread
        # (user threads also read its ``state`` and its open watch's ``ready``)
        self.machine = ClientMachine(self.client_id, self.node_id)
        self._mlock = threading.RLock()
        # the channel's send side, for the trio thread and the user's threads
        self.sender = DirectSender(channel, bridge)
        self._cache: OrderedDict[ObjectId, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._functions: dict[bytes, Any] = {}
        self._exported: set[bytes] = set()
        self._closed = False  # no more sends: shut down, or the connection is lost
        self.on_item = None  # worker hook for Run/Interrupt/Checkpoint/Exit
        self.embedded: DaemonProcess | None = None
        self.token: str | None = None  # the cluster's (set by whoever connected)
        self._release_buf: list[ObjectId] = []
        self._free_buf: list[ObjectId] = []
        self._release_lock = threading.Lock()
        bridge.on_idle(self.sender.flush_on_loop)
        # direct actor calls (transports/direct_caller.py), made on first use
        self._direct: DirectCalls | None = None
        self._direct_on = direct_calls_enabled()
        self.idle_flush = IdleFlush(bridge)  # (the direct-call channels')
        self.exiting_hook = None  # a worker's: exit_actor() in a direct call (see ActorServer.exiting)

    @property
    def namespace(self) -> str:
        """The driver's namespace; in a worker, that of the job whose task
        runs on this thread (see ``context.job_namespace``)."""
        return context.job_namespace(self) if self.is_worker else self._namespace

    @namespace.setter
    def namespace(self, value: str) -> None:
        self._namespace = value

    # ------------------------------------------------------------------ plumbing
    @property
    def shm(self) -> ShmStore:
        if self._shm is None:
            try:
                self._shm = ShmStore(self.session, root=self.shm_root)
            except StoreNotFoundError as e:  # the daemon's store is on another machine
                raise StoreNotFoundError(
                    f"no object store of session {self.session} on this machine ({e}). If the node this process "
                    f"is connected to ({self.node_id} at {self.address}) runs on another machine: it keeps large "
                    f"objects in shared memory there, which this machine cannot read, so large objects need a "
                    f"node here. Start one (penumbra start --address HEAD:PORT --host ADDR --token-file FILE) "
                    f"and init() again: the driver then joins through it") from e
        return self._shm

    @property
    def _lost(self) -> str | None:
        """How the connection to the daemon ended, once it has (the machine
        records it on the trio thread; read anywhere)."""
        m = self.machine
        return m.detail if m.state is LOST else None

    def _send(self, item: Any, kind=None) -> None:
        """Send ``item`` (fire and forget) from any thread: written on this
        thread when nothing is queued ahead of it (``DirectSender``; with
        ``kind``, unless it is part of a burst of that kind), else through
        the trio thread."""
        if self._closed:
            self._raise_closed()
        self.sender.send(item, kind)

    def _lost_error(self) -> ClusterConnectionLostError:
        return ClusterConnectionLostError(self.address, self._lost or "")

    def lost_error(self) -> ClusterConnectionLostError | None:
        return self._lost_error() if self._lost is not None else None

    def _raise_closed(self) -> None:
        if self._lost is not None:
            raise self._lost_error()
        raise PenumbraError("this penumbra runtime has been shut down; call penumbra.init() again")

    def _check_connected(self) -> None:
        """Fail fast, on the caller's thread, once the connection is gone.
        (Only an early answer: the registration in the machine, under
        ``_mlock``, is what makes a lost connection fail every wait: the
        machine refuses it.)"""
        if self._lost is not None:
            raise self._lost_error()

    def _run(self, cmds, attachments=None) -> None:
        """Carry out the machine's commands (any thread, holding ``_mlock``:
        so sends go out in the machine's order)."""
        for c in cmds:
            t = c.__class__
            if t is Send:
                item = P.Deliver(self.node_id, c.msg, attachments, self.client_id)
                if self.bridge.in_trio_thread():
                    self.sender.send_on_loop(item)
                else:
                    try:
                        self.sender.send(item)
                    except RuntimeError:  # the loop stopped: its futures fail with it
                        pass
            elif t is Resolve:
                c.waiter.set_result(c.value)
            elif t is Fail:
                c.waiter.set_exception(self._lost_error() if c.reason is LOST else PenumbraError(
                    "this penumbra runtime has been shut down; call penumbra.init() again"))
            elif t is TimedOut:
                c.waiter.set_exception(_WatchTimeout(c.partial if c.partial is not None else {}))
            # (no SetTimer or Report: this driver's waits time out on the
            # caller's clock, see ``_verdict``, and it streams nothing)

    def _verdict(self, fut, box: list, timeout: float | None) -> Any:
        """Wait for ``fut``; when ``timeout`` runs out (or the wait is
        interrupted), ask the machine to give the request up and take its
        verdict: the answer if it came first, else ``_WatchTimeout`` with
        what was reported so far.  ``box``: the request's id, once the trio
        thread has made it."""
        try:
            return fut.result(timeout)
        except TimeoutError:
            interrupted = None
        except BaseException as e:  # an interrupt (Ctrl-C): leave nothing waiting behind
            interrupted = e

        if box:
            with self._mlock:
                self._run(self.machine.give_up(box[0]))
        if interrupted is not None:
            raise interrupted
        try:
            return fut.result(0)  # (the machine has given its verdict)
        except TimeoutError:
            raise _WatchTimeout({}) from None

    def _send_now(self, item: Any) -> None:
        # on the trio thread; ``_flush`` runs when the burst of jobs is done
        self.sender.send_on_loop(item)

    def _flush(self) -> None:
        # (trio thread)
        self.sender.flush_on_loop()

    def _deliver(self, msg, attachments=None, kind=None) -> None:
        self._send(P.Deliver(self.node_id, msg, attachments, self.client_id), kind)

    async def receive_loop(self) -> None:
        """Runs on the trio thread for the life of the connection."""
        why = ""  # what the daemon said before closing (``P.Closing``)
        try:
            async for item in self.channel:
                if type(item) is P.Deliver:
                    self._on_message(item)
                    if self.channel.outbox_size and not self.channel.buffered:
                        self._flush()  # what the replies made the machine send
                elif type(item) is P.Output:
                    self._print_output(item)
                elif type(item) is P.ClusterLog:
                    if self.log_to_driver:
                        logger.warning("%s", item.text)
                elif type(item) is P.Closing:
                    why = item.reason
                elif self.on_item is not None:
                    self.on_item(item)
            # an orderly close (the daemon exited, or was killed between
            # frames): whatever still waits on it must fail, not hang
            self._fail_all(f"the node daemon closed it: {why}" if why else
                           "the node daemon closed it: it was killed or exited")
        except ConnectionClosed as e:
            self._fail_all(f"the node daemon closed it: {why}" if why else
                           f"{e.reason}; the node daemon was killed or exited")
        except BaseException as e:
            # (the loop stopping, as shutdown() or a worker's exit stops
            # it, is this side closing, not a loss)
            self._fail_all(f"the connection ended: {e!r}", local=not self.bridge.running)
            raise
        finally:
            if self.on_item is not None:
                self.on_item(P.Exit())

    def _fail_all(self, detail: str, local: bool = False) -> None:
        """(trio thread) The connection ended: tell the machine (a loss,
        unless this side closed it), which fails everything that waits."""
        if local or self._closed and self.machine.state is not LOST:
            ev: Any = ShutDown()
        else:
            ev = ConnectionLost(detail=detail)
        self._closed = True
        with self._mlock:
            self._run(self.machine.handle(ev))

    def _on_message(self, d: P.Deliver) -> None:
        msg = d.msg
        t = type(msg)
        with self._mlock:
            if t is ObjectsReady:
                self._run(self.machine.on_objects(msg.req_id, msg.objects, d.attachments))
            elif t is ClientGcsReply or t is PutDone or t is PutFailed or t is ClusterStatus:
                self._run(self.machine.on_reply(msg.req_id, msg))
            elif t is ActorRegistered:
                self._run(self.machine.handle(msg))
            elif t is ActorWatched and self._direct is not None:
                self._direct.watched(msg)

    def _print_output(self, o: P.Output) -> None:
        if not self.log_to_driver:
            return
        stream = sys.stderr if o.stream == "stderr" else sys.stdout
        lines = o.text.splitlines()
        try:
            stream.write("".join(f"{o.prefix} {line}\n" for line in lines))
            stream.flush()
        except Exception:
            pass

    def _request(self, msg_factory, timeout: float | None, what: str, attachments=None):
        self._check_connected()
        fut = self.bridge.future()
        box: list[int] = []
        with self._mlock:
            rid, cmds = self.machine.request(fut, msg_factory)
            box.append(rid)
            self._run(cmds, attachments)
        try:
            return self._verdict(fut, box, timeout)
        except _WatchTimeout:
            raise GetTimeoutError(f"{what} got no answer from the node within {timeout} s") from None

    # ------------------------------------------------------------------ Runtime
    def submit_actor_call(self, spec: TaskSpec, direct: bool) -> None:
        if direct:
            self.submit(spec)
        else:  # (a replay=True actor's call: routed, from the first)
            self._deliver(SubmitTask(client=self.client_id, spec=spec), kind=SubmitTask)

    def submit(self, spec: TaskSpec) -> None:
        if spec.actor_id is not None and self._direct_on:
            if self._closed:
                self._raise_closed()  # (as a send would: the call fails here, at once)
            d = self._direct or self._start_direct()
            if d is not None:
                d.submit(spec)
                return
        self._deliver(SubmitTask(client=self.client_id, spec=spec), kind=SubmitTask)

    def hold_args(self, spec: TaskSpec, refs: list) -> None:
        d = self._direct
        if d is not None:
            d.hold(spec, refs)

    def _start_direct(self) -> "DirectCalls | None":
        """The direct-call driver, made on the first actor call (None: this
        client cannot reach actor workers; its calls take the routed path)."""
        if self.token is None:
            self._direct_on = False
            return None
        self._check_connected()
        if self._closed:
            self._raise_closed()
        with self._mlock:
            if self._direct is None:
                self._direct = DirectCalls(self)
        return self._direct

    @property
    def direct_calls(self) -> "DirectCalls | None":
        """This client's direct-call driver, if it made a direct call."""
        return self._direct

    def create_actor(self, spec: TaskSpec, timeout: float | None) -> None:
        a = spec.actor_creation
        if not a.name:
            self.submit(spec)
            return
        self._check_connected()
        fut = self.bridge.future()
        msg = SubmitTask(client=self.client_id, spec=spec)
        box: list[int] = []
        with self._mlock:
            rid, cmds = self.machine.register_actor(fut, a.actor_id, msg)
            box.append(rid)
            self._run(cmds)
        try:
            reply = self._verdict(fut, box, timeout)
        except _WatchTimeout:
            raise GetTimeoutError(f"registering actor name {a.name!r} timed out after {timeout} s") from None
        if reply.error:
            raise ValueError(reply.error)

    def _remember(self, oid: ObjectId, data: bytes) -> None:
        if len(data) > 64 << 10:
            return
        self._cache[oid] = data
        self._cache_bytes += len(data)
        while self._cache_bytes > _LOCAL_CACHE_BYTES:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)

    def get_objects(self, ids: Sequence[ObjectId], timeout: float | None) -> list[Any]:
        self._check_connected()
        cache = self._cache
        if all(oid in cache for oid in ids):
            return [decode_value(oid, ("i", cache[oid]), None) for oid in ids]
        if self.machine.local:
            got = self._get_local(ids)
            if got is not None:
                return got
        missing = [oid for oid in ids if oid not in cache]
        # what an open wait() watch already reported (a large result in a
        # process-as-they-come loop) needs no second trip to the node
        known = self._reported(missing)
        for _attempt in range(3):
            todo = [o for o in missing if o not in known] if known else missing
            try:
                if todo:
                    # a get that goes to the node is past any wait() loop:
                    # stop the open watch's reports (one per object)
                    self.close_wait_watch()
                    results = self._watch(todo, len(set(todo)), timeout, True)
                else:
                    results = {}
            except _WatchTimeout as t:
                not_ready = [o for o in todo if o not in t.partial]
                raise GetTimeoutError(
                    f"get timed out after {timeout} s: {len(not_ready)} of {len(ids)} object(s) not ready "
                    f"(first: {not_ready[0].hex() if not_ready else '?'})"
                ) from None
            if known:
                results.update(known)
                known = {}
            values: dict[ObjectId, Any] = {}
            vanished = []
            for oid, (info, att) in results.items():
                if info.error is not None:
                    values[oid] = ErrorValue(info.error)
                    continue
                if att is None:
                    vanished.append(oid)
                    continue
                try:
                    values[oid] = decode_value(oid, att, self._shm_for(att))
                except KeyError:
                    vanished.append(oid)  # evicted between the reply and our read
            if vanished and self.machine.local:
                with self._mlock:  # (a direct result elsewhere, or evicted: ask the node)
                    self.machine.forget_local(vanished)
            if not vanished:
                out = []
                for oid in ids:
                    if oid in values:
                        out.append(values[oid])
                    else:
                        out.append(decode_value(oid, ("i", cache[oid]), None))
                return out
            missing = vanished + [o for o in missing if o not in results]
        raise PenumbraError("objects kept vanishing from the store while being read; the store is thrashing")

    def _get_local(self, ids: Sequence[ObjectId]) -> list[Any] | None:
        """The values of ``ids`` if every one is a direct result answered
        inline already (no watch, no lock: single dict reads); else None."""
        local = self.machine.local
        out = []
        for oid in ids:
            r = local.get(oid)
            if r is None:
                return None
            info, att = r
            if info.error is not None:
                out.append(ErrorValue(info.error))
            elif att is None or att[0] != "i":
                return None
            else:
                out.append(decode_value(oid, att, None))
        return out

    def fetch_attachments(self, ids: Sequence[ObjectId]) -> list[tuple]:
        """The attachments of ``ids`` (in order), fetched into this node's
        store as a task's arguments are: for a direct call's arguments,
        which reach the actor's worker as refs."""
        cache = self._cache
        missing = [oid for oid in ids if oid not in cache]
        got: dict = {}
        for _attempt in range(3):
            if not missing:
                break
            results = self._watch(missing, len(set(missing)), None, True)
            again = []
            for oid, (info, att) in results.items():
                if info.error is not None:
                    got[oid] = ("e", info.error)
                elif att is None or (att[0] == "s" and not self.shm.contains(oid)):
                    again.append(oid)
                else:
                    got[oid] = att
            if again and self.machine.local:
                with self._mlock:
                    self.machine.forget_local(again)
            missing = again
        if missing:
            raise PenumbraError("the arguments of a call kept vanishing from the store while being read; "
                                "the store is thrashing")
        return [got[oid] if oid in got else ("i", cache[oid]) for oid in ids]

    def notify_ready(self, oid: ObjectId, callback) -> None:
        """Call ``callback(None)`` once ``oid`` is ready and local, or
        ``callback(error)`` if the connection is lost or this runtime shuts
        down first -- without blocking a thread meanwhile (``await ref``,
        ``ref.future()``: a node watch, answered by the receive loop).  The
        callback runs on the trio thread (or here, if ``oid`` is known to be
        ready already or the connection is gone) and must not block."""
        if oid in self._cache:
            callback(None)
            return
        if self._lost is not None or self._closed:
            callback(self._lost_error() if self._lost is not None else
                     PenumbraError("this penumbra runtime has been shut down; call penumbra.init() again"))
            return
        fut = self.bridge.future()

        def done(f) -> None:
            try:
                f.result(0)
            except BaseException as e:  # noqa: BLE001 - lost, or the loop stopped (cancelled)
                if not isinstance(e, PenumbraError):
                    e = PenumbraError("this penumbra runtime has been shut down; call penumbra.init() again")
                callback(e)
                return
            callback(None)

        fut.add_done_callback(done)
        with self._mlock:
            self._run(self.machine.watch(fut, (oid,), 1)[1])

    def _reported(self, ids) -> dict:
        """Reports the open wait() watch holds for ``ids`` (local objects)."""
        lg = self.machine.linger
        if lg is None or not lg.fetch or not lg.ready:
            return {}
        ready = lg.ready
        out = {}
        for oid in ids:
            r = ready.get(oid)
            if r is not None and (r[1] is not None or r[0].error is not None):
                out[oid] = r
        return out

    def close_wait_watch(self) -> None:
        """Close the watch a wait() left open (see ``_Linger``), unless a
        wait is still using it."""
        if self.machine.linger is not None:
            with self._mlock:
                self._run(self.machine.close_linger())

    def _shm_for(self, att) -> ShmStore | None:
        return self.shm if att[0] == "s" else None

    def wait_objects(self, ids: Sequence[ObjectId], num_returns: int, timeout: float | None, fetch_local: bool) -> set[ObjectId]:
        self._check_connected()
        cache = self._cache
        lg = self.machine.linger
        reported = lg.ready if lg is not None and (lg.fetch or not fetch_local) else {}
        ready = {oid for oid in ids if oid in cache or oid in reported}
        if len(ready) >= num_returns:
            self._remember_inline({o: reported[o] for o in ready if o in reported})
            return ready
        rest = [o for o in ids if o not in ready]
        try:
            results = self._watch(rest, num_returns - len(ready), timeout, fetch_local, linger=True)
        except _WatchTimeout as t:
            results = t.partial
        # The node reports every ready object it knows of, not just the
        # first, and goes on reporting (``_Linger``): keeping the small ones
        # makes the next wait() on the rest (the process-as-they-come loop)
        # answer locally.
        self._remember_inline(results)
        return ready | set(results)

    def _watch(self, ids: Sequence[ObjectId], need: int, timeout: float | None, fetch: bool,
               linger: bool = False) -> dict:
        """Wait until ``need`` of ``ids`` are ready; their reports.

        With ``linger`` (``wait``), the open watch serves it if it covers
        ``ids``; else a new node watch does and stays open after (see
        ``ClientMachine.watch``)."""
        uniq = tuple(dict.fromkeys(ids))
        if not 0 < need <= len(uniq):
            raise ValueError(f"cannot wait for {need} of {len(uniq)} distinct object(s); "
                             f"ask for between 1 and {len(uniq)}")
        fut = self.bridge.future()
        blocked = self.is_worker
        node, cid = self.node_id, self.client_id
        hold = self.report_need(need, timeout)
        machine = self.machine
        box: list[int] = []
        if blocked and not self._closed:
            self._send(P.Deliver(node, WorkerBlocked(worker_id=cid), None, cid))
        with self._mlock:
            rid, cmds = machine.watch(fut, uniq, need, fetch=fetch, report_need=hold, linger=linger)
            box.append(rid)
            self._run(cmds)
        try:
            return self._verdict(fut, box, timeout)
        finally:
            if blocked and not self._closed:
                self._send(P.Deliver(node, WorkerUnblocked(worker_id=cid), None, cid))

    def _remember_inline(self, results: dict) -> None:
        for oid, (info, att) in results.items():
            if att is not None and att[0] == "i" and info.error is None:
                self._remember(oid, att[1])

    def put_object(self, oid: ObjectId, value: Any) -> None:
        self._check_connected()  # (before writing to a store no one serves)
        size, data = encode_value(oid, value, self.shm if _maybe_large(value) else LazyShm(self), subject="the value passed to put()")
        atts = {oid: ("i", data)} if data is not None else None
        reply = self._request(lambda rid: PutObject(client=self.client_id, req_id=rid, object_id=oid, size=size), 60.0, "put()", atts)
        if type(reply) is PutFailed:
            raise ObjectStoreFullError(reply.error.message)
        if data is not None:
            self._remember(oid, data)

    def release(self, oids: Sequence[ObjectId], free: bool = False) -> None:
        if self._closed:
            return
        if self.machine.local:
            with self._mlock:
                self.machine.forget_local(oids)
                if self._direct is not None:
                    self._direct.caller.released(oids)  # (nothing to record of them if their actor dies)
        for oid in oids:
            data = self._cache.pop(oid, None)
            if data is not None:
                self._cache_bytes -= len(data)
            elif free and self._shm is not None:
                # nobody else can name it: delete it here and now, so the
                # next put reuses its (already mapped, warm) pages instead of
                # faulting in new ones; the node is told below and forgets
                # it.  (Nothing on the node can pin or want a private object:
                # a task argument or a pickled ref makes it shared, so the
                # core's ``free`` never keeps one whose bytes are gone.)
                try:
                    self._shm.delete(oid)
                except Exception:  # noqa: BLE001 - the node's Evict retries the delete
                    pass
        with self._release_lock:
            first = not self._release_buf and not self._free_buf
            (self._free_buf if free else self._release_buf).extend(oids)
        if first:
            # a lone release (a get's result dropped) goes out from here; a
            # burst of them (a list of refs dropped) as one message, from
            # the trio thread
            if self.sender.lone(ReleaseObjects):
                self._flush_release(self.sender.send)
            else:
                self.bridge.submit(self._flush_release)

    def _flush_release(self, send=None) -> None:
        send = send or self._send_now
        with self._release_lock:
            oids, self._release_buf = self._release_buf, []
            frees, self._free_buf = self._free_buf, []
        if oids:
            send(P.Deliver(self.node_id, ReleaseObjects(client=self.client_id, object_ids=tuple(oids)), None, self.client_id))
        if frees:
            send(P.Deliver(self.node_id, ReleaseObjects(client=self.client_id, object_ids=tuple(frees), free=True), None, self.client_id))

    def cancel(self, task_id: TaskId, force: bool, recursive: bool) -> None:
        if self._direct is not None and self._direct.cancel(task_id, force):
            return
        self._deliver(CancelTask(client=self.client_id, task_id=task_id, force=force, recursive=recursive))

    def kill_actor(self, actor_id: ActorId, no_restart: bool, exiting: TaskId | None = None) -> None:
        if exiting is not None and self.exiting_hook is not None and self.exiting_hook(exiting):
            return  # (a direct call: the actor's inbox ends it, see ActorServer.exiting)
        if no_restart and self._direct is not None:
            self._direct.killed(actor_id)
        self._deliver(KillActor(client=self.client_id, actor_id=actor_id, no_restart=no_restart, exiting=exiting))

    def gcs_request(self, request: Any, timeout: float | None) -> Any:
        reply = self._request(lambda rid: ClientGcsRequest(client=self.client_id, req_id=rid, request=request), timeout, "a GCS request")
        return reply.result

    def cluster_status(self, timeout: float | None) -> Any:
        return self._request(lambda rid: ClusterStatusRequest(client=self.client_id, req_id=rid), timeout, "cluster status")

    def timeline_runs(self, timeout: float | None) -> Any:
        """Every node's runs, asked of each node daemon over TCP (see
        ``transports.timeline``); nodes that do not answer are left out,
        with a warning."""
        from .timeline import fetch_timelines

        if self.token is None:
            raise PenumbraError("this process does not know the cluster's token, which the timeline is asked "
                                "for with: call penumbra.timeline() from the driver")
        limit = 30.0 if timeout is None else timeout
        got = self.bridge.call(fetch_timelines, self.address, self.token, limit, timeout=limit + 5)
        for node_id, why in sorted(got.missing.items()):
            logger.warning("timeline: node %s did not answer (%s); its runs are left out", node_id, why)
        return got.nodes

    # How long ``shutdown`` waits for the output already on its way (see
    # ``_drain_output``).
    OUTPUT_DRAIN_TIMEOUT = 2.0

    def _drain_output(self) -> None:
        """Before a driver disconnects, print the output its job's tasks
        already sent, as Ray flushes worker logs before the driver exits.

        The rule, bounded: a task's output is sent by the time the task
        ends (a line not yet ended included, see the worker's ``_Forward``),
        and the node forwards output to the driver as it comes, on the
        connection that carries everything else, in order.  So one round
        trip to the node (at most ``OUTPUT_DRAIN_TIMEOUT`` seconds) brings
        in every line the node had received by then: all of what finished
        tasks printed, and what running ones printed so far.  Tasks still
        running are not waited for, nor is what they print later."""
        if self.is_worker or not self.log_to_driver or self._closed or self._lost is not None:
            return
        try:
            self.gcs_request(Get("kv", "penumbra:output-drain"), timeout=self.OUTPUT_DRAIN_TIMEOUT)
        except Exception:  # noqa: BLE001 - nothing to print is better than a shutdown that fails
            pass

    def shutdown(self) -> None:
        self._drain_output()
        if not self._closed:
            self._closed = True
            self.sender.close()
            if self._direct is not None:
                self._direct.close()
            try:
                self.bridge.call(self.channel.aclose, timeout=2.0)
            except Exception:
                pass
        self.bridge.stop(timeout=5.0)
        if self._shm is not None:
            try:
                self._shm.close()
            except Exception:
                pass
        if self.embedded is not None:
            self.embedded.stop()


class _WatchTimeout(Exception):
    def __init__(self, partial: dict) -> None:
        self.partial = partial


def _maybe_large(value: Any) -> bool:
    n = getattr(value, "nbytes", None)
    return isinstance(n, int) and n > (64 << 10)


# ===========================================================================
# Starting and joining clusters


def _open(bridge: TrioThread, *, unix_path: str | None, tcp: tuple[str, int] | None, token: str,
          job_id: int, namespace: str, log_to_driver: bool) -> ClientRuntime:
    name = f"driver:{os.getpid()}"

    async def opening():
        if unix_path is not None:
            ch = await connect_unix(unix_path, token, "driver", name)
        else:
            ch = await connect_tcp(tcp[0], tcp[1], token, "driver", name)
        ch.send_nowait(P.ClientHello(name, os.getpid(), True, job_id))
        welcome = await ch.receive()
        if type(welcome) is not P.ClientWelcome:
            raise ConnectionError(f"unexpected first reply from the node: {welcome!r}")
        return ch, welcome

    ch, welcome = bridge.call(opening, timeout=30.0)
    rt = ClientRuntime(bridge, ch, welcome, is_worker=False, namespace=namespace, log_to_driver=log_to_driver)
    rt.token = token
    bridge.start_soon(rt.receive_loop)
    # a cluster-unique job id from the GCS, then tell the node
    rt.job_id = rt.gcs_request(KvIncrement("job_counter"), timeout=30.0)
    rt._send(P.ClientHello(rt.client_id, os.getpid(), True, rt.job_id))
    return rt


def start_local(pending: PendingDaemon, *, namespace="", log_to_driver=True) -> ClientRuntime:
    """Connect to the embedded cluster ``launch.start_embedded`` started.

    The daemon listens on loopback and a Unix socket only, with a fresh
    token, and exits with this process.
    """
    daemon = pending.wait_ready()
    bridge = TrioThread(name="penumbra-driver").start()
    try:
        rt = _open(bridge, unix_path=daemon.unix_path, tcp=None, token=daemon.token,
                   job_id=0, namespace=namespace, log_to_driver=log_to_driver)
    except BaseException:
        bridge.stop()
        daemon.stop()
        raise
    rt.embedded = daemon
    _register_atexit(rt)
    return rt


def connect(address: str, *, token: str | None = None, namespace: str = "", log_to_driver: bool = True) -> ClientRuntime:
    """Join a running cluster at ``host:port`` (its token from ``token``,
    ``$PENUMBRA_TOKEN`` or the cluster file written by ``penumbra start``)."""
    from .cluster_file import read_cluster

    info = read_cluster(address)
    token = token or os.environ.get("PENUMBRA_TOKEN") or (info or {}).get("token")
    if not token:
        raise ConnectionError(
            f"no token for the cluster at {address}: pass init(address, _token=...), set $PENUMBRA_TOKEN, "
            f"or run on the machine where 'penumbra start --head' printed it"
        )
    host, _, port = address.rpartition(":")
    bridge = TrioThread(name="penumbra-driver").start()
    try:
        unix = (info or {}).get("unix_path")
        use_unix = unix if unix and os.path.exists(unix) else None
        rt = _open(bridge, unix_path=use_unix, tcp=(host or "127.0.0.1", int(port)), token=token,
                   job_id=0, namespace=namespace, log_to_driver=log_to_driver)
    except BaseException:
        bridge.stop()
        raise
    _register_atexit(rt)
    return rt


_atexit_done = False


def _register_atexit(rt: ClientRuntime) -> None:
    global _atexit_done
    if _atexit_done:
        return
    _atexit_done = True
    import atexit

    def stop() -> None:
        from ..api import functions

        try:
            functions.shutdown()
        except Exception:
            pass

    atexit.register(stop)

