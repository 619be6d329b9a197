"""Direct actor calls in the simulator: callers' ``ActorCaller``s, actor workers' ``ActorInbox``es.

Why its own module: the simulator drives the same pure machines as the
real transport (transports/direct_caller.py, actor_server.py, worker.py),
so the swarm draws its faults against them: a leased worker dying
mid-batch, the caller dying, an actor restarting mid-stream, a partition
between caller and actor.  This module is the thin driver of both halves
on the simulated network; it decides nothing.

Theory of operation
-------------------
**The actor's side** (``SimDirect.serve``).  Once a (non-``replay``)
actor's creation returns on a ``SimWorker``, the worker gets an
``ActorInbox`` and an *endpoint*: a kernel client ``direct:<worker id>``
placed on its node's machine (so partitions, drops and pauses of the
network apply between it and every caller), and tells its node
(``ActorEndpoint``, after the creation's result, as the real worker does),
which publishes it through the GCS.  The inbox's commands:

* ``RunCall``: an ``Execute`` of the call on the worker, through the
  cluster's executor, as a routed call runs; its end (``SimNode._completed``)
  comes back here (``finished``), not to the node;
* ``Reply``: sent from the endpoint to the caller, on the caller's
  connection (dropped if that connection broke meanwhile, as a reply
  written to a closed socket is);
* ``ReportRan``: ``DirectCallsRan`` to the node (a local pipe, like the
  worker's other events); outputs inline in the reply are written to the
  node's store then, as the real daemon stores a report's inline data.
  Outputs over ``INLINE_BYTES`` are in the node's store before the reply
  (the inbox reports them first);
* ``InterruptCall``: as ``SimNode.on_interrupt`` (an async actor's call
  ends cancelled now; a sync one runs on and sees ``is_canceled``;
  ``force`` kills the worker);
* ``EndActor``: ``KillActor(exiting=...)`` to the node;
* ``SetTimer``: the batching timer, while the worker lives.

**The caller's side** (``DirectPort``, one per simulated client: a
``SimDriver``, a sim runtime client).  It carries out its ``ActorCaller``'s
commands: ``Send`` on the connection to an endpoint, ``Watch`` as
``WatchActor`` to its node (``ActorWatched`` comes back to the client),
``Resolved``/``Failed`` as local results of its ``ClientMachine``
(``resolve_local``), ``StoreFailure`` as ``DirectCallFailed`` to its node
(which stores the error where another process handed the ref finds it),
``Republish`` as ``DirectCallsRecorded`` (the node records the results of
an incarnation that died since), ``Reroute`` as ``SubmitTask`` after
``Skipped`` as ``CallsSkipped`` (the actor's calls leave the direct path),
``Log`` into the kernel's log, and ``SetTimer`` (both timer keys).

**Connections.**  A caller opens a connection to an endpoint on its first
send there.  The simulated network loses messages (cuts, drops); TCP does
not lose bytes silently, it breaks the connection.  So a lost message
between a caller and an endpoint (either way) breaks their connection: the
caller hears ``lost(endpoint)`` ``LOST_AFTER`` later, and the worker's
replies to it are dropped until the caller connects again.  A worker that
dies closes its connections (``lost`` after one hop); connecting to an
endpoint whose worker is gone fails after a round trip: the caller hears
``unreachable(endpoint)`` (as the real link's ``on_lost(opened=False)``),
and what it sent meanwhile waited in the connection and never left, so
the caller may hand it to the routed path.  (A connect to a live worker
opens at once here; a partition then breaks the connection, ``lost``: the
simulator does not model a connect timing out.)

Values.  In the simulator a store entry is ``(size, value)``; an inline
output's ``DirectOutput.data`` is ``(value,)`` (a value may be ``None``),
and its local result's attachment is ``("v", value)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from penumbra.core.actor_caller import ENDPOINT_TIMER, ActorCaller, Failed, Republish, Reroute, Resolved, Skipped, StoreFailure, Watch
from penumbra.core.actor_inbox import ActorInbox, CheckRan, EndActor, InterruptCall, Reply, ReportRan, RunCall, from_record
from penumbra.core.messages import (
    ClientDisconnected,
    ClientGcsReply,
    ClientGcsRequest,
    Execute,
    KillActor,
    Log,
    ObjectsReady,
    Send,
    SetTimer,
    SubmitTask,
    WatchObjects,
)
from penumbra.core.msg_direct import (
    ActorEndpoint,
    ActorWatched,
    CallsSkipped,
    DirectCall,
    DirectCallFailed,
    DirectCallsRan,
    DirectCallsRecorded,
    DirectCancel,
    DirectFloor,
    DirectOutput,
    DirectReply,
    WatchActor,
)
from penumbra.core.records import ErrorInfo, ErrorKind, ObjectInfo
from penumbra.core.tables import Get

if TYPE_CHECKING:  # pragma: no cover
    from .node import Outcome, SimNode, SimWorker

__all__ = ["SimDirect", "DirectPort", "direct_calls_default", "INLINE_BYTES", "LOST_AFTER", "ENDPOINT_PREFIX"]

# outputs up to this size travel in the reply (the real object store's
# INLINE_THRESHOLD); larger ones are in the actor's node's store
INLINE_BYTES = 100 * 1024
# a connection that lost a message is noticed broken this long after
# (seconds): TCP retransmits, then gives up
LOST_AFTER = 0.05
ENDPOINT_PREFIX = "direct:"


def direct_calls_default() -> bool:
    """The switch, as on the real side: ``PENUMBRA_DIRECT_CALLS=0`` keeps
    every actor call on the routed path through the nodes."""
    return os.environ.get("PENUMBRA_DIRECT_CALLS", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(slots=True)
class _Served:
    """An actor worker taking direct calls."""

    node: Any  # SimNode
    worker: Any  # SimWorker
    inbox: ActorInbox
    endpoint: str
    client: Any  # its kernel Client
    gpu_ids: tuple = ()
    alive: bool = True
    # caller id -> address of the connection its calls last came on
    callers: dict[str, str] = field(default_factory=dict)
    # calls to start, in the order the inbox let them (a call starts once
    # its arguments are in the node's store, and after the calls before
    # it): watch request id (0: none) -> (the RunCall, the ids not reported yet)
    starting: dict[int, tuple] = field(default_factory=dict)
    # CheckRan asked of the GCS: request id -> (spec, the rows so far)
    checks: dict[int, tuple] = field(default_factory=dict)
    next_req: int = 1


class SimDirect:
    """The direct-call world of one simulated cluster (see the module doc)."""

    def __init__(self, cluster: Any, enabled: bool) -> None:
        self.cluster = cluster
        self.kernel = cluster.kernel
        self.enabled = enabled
        self.served: dict[str, _Served] = {}  # endpoint -> the worker behind it
        # (caller address, endpoint) -> None: an open connection; a list: a
        # connect that will fail, holding what was sent meanwhile
        self.open: dict[tuple[str, str], list | None] = {}
        self.ports: dict[str, DirectPort] = {}  # caller address -> its port
        self.breaks = 0  # connections broken by a lost message (for tests)
        # callers that gave an actor's direct path up for want of an endpoint
        # they had been sent (a caller bug: checked by the swarm's runner)
        self.ignored: list[str] = []
        self.kernel.net_watchers.append(self._on_net)

    # ------------------------------------------------------------------ the actor's side
    def serve(self, node: "SimNode", w: "SimWorker", spec: Any, incarnation: int, gpu_ids: tuple, sid: str) -> None:
        """Actor creation ``spec`` returned on ``w``: it takes direct calls
        now (after its creation's result, which the caller delivered)."""
        a = spec.actor_creation
        ep = ENDPOINT_PREFIX + w.worker_id
        client = self.kernel.add_client(ep, lambda msg, ep=ep: self._on_call(ep, msg), colocated_with=node.address,
                                        kind="actor")
        s = _Served(node, w, ActorInbox(a.actor_id, incarnation, max(1, a.max_concurrency)), ep, client, gpu_ids)
        self.served[ep] = s
        w.direct = s
        self._to_node(s, ActorEndpoint(worker_id=w.worker_id, actor_id=a.actor_id, incarnation=incarnation,
                                       endpoint=ep, stimulus_id=sid))

    def _on_call(self, ep: str, msg: Any) -> None:
        s = self.served.get(ep)
        if s is None or not s.alive:
            return
        t = type(msg)
        now = self._now(s)
        if t is ObjectsReady:
            self._fetched(s, msg)
            return
        if t is ClientGcsReply:
            self._row(s, msg)
            return
        if t is DirectCall:
            caller = msg.spec.caller_id
        elif t is DirectCancel or t is DirectFloor:
            caller = msg.caller_id
        else:
            return
        port = self.ports.get(caller)
        if port is not None:
            s.callers[caller] = port.address  # (its replies go on its latest connection)
        inbox = s.inbox
        if t is DirectCall:
            cmds = inbox.call(msg, now)
        elif t is DirectCancel:
            cmds = inbox.cancel(msg, now)
        else:
            cmds = inbox.floor(msg, now)
        self._carry(s, cmds)

    def _to_node(self, s: _Served, ev: Any) -> None:
        """Hand ``ev`` to the worker's node over its local pipe, now (as
        its other events: ahead of the network's messages).  From the
        host's own step or callback its clock is the time; from elsewhere
        (a timer, a message to the endpoint) an idle host's clock may lag."""
        h = s.node.host
        env_now = self.kernel.env._now
        if h.now >= env_now:
            h.deliver_now(ev, urgent=True)
        else:
            h.deliver_at(env_now, ev, urgent=True)

    def _now(self, s: _Served) -> float:
        h = s.node.host
        env_now = self.kernel.env._now
        return h.now if h is not None and h.now > env_now else env_now

    def _carry(self, s: _Served, cmds: list) -> None:
        for c in cmds:
            if not s.alive:
                return
            t = type(c)
            if t is RunCall:
                self._run_call(s, c)
            elif t is Reply:
                addr = s.callers.get(c.caller)
                if addr is not None and self.open.get((addr, s.endpoint), False) is None:
                    s.client.send(addr, c.reply)
            elif t is ReportRan:
                self._report(s, c)
            elif t is CheckRan:
                self._check(s, c)
            elif t is SetTimer:
                self.kernel.call_at(max(c.at, self.kernel.env._now), self._inbox_timer, s, c.key)
            elif t is InterruptCall:
                self._interrupt(s, c)
            elif t is EndActor:
                inbox = s.inbox
                self._to_node(s, KillActor(client=s.worker.worker_id, actor_id=inbox.actor_id, no_restart=True,
                                           exiting=c.task_id, stimulus_id=c.stimulus_id))

    def _run_call(self, s: _Served, c: RunCall) -> None:
        """Run the call once its arguments are in the node's store: the
        worker gets them through its node (a watch with fetch), as the real
        worker resolves a direct call's refs."""
        store = s.node.store
        for d in c.spec.dependencies:
            item = store.get(d)
            if item is not None and isinstance(item[1], ErrorInfo):
                # an argument holds an error: the call fails with it, unrun
                # (as the real worker's: transports/worker.py)
                self._carry(s, s.inbox.finished(c.spec.task_id, self._now(s), (), item[1], 0.0, None, c.stimulus_id))
                return
        missing = tuple(dict.fromkeys(d for d in c.spec.dependencies if d not in store))
        req = s.next_req
        s.next_req += 1
        s.starting[req] = (c, set(missing))
        if missing:
            s.client.send(s.node.address, WatchObjects(client=s.endpoint, req_id=req, object_ids=missing,
                                                       fetch=True, need=len(missing), stimulus_id=c.stimulus_id))
        self._start_ready(s)

    def _check(self, s: _Served, c: CheckRan) -> None:
        """Ask the GCS (through the node) for the rows of the call's
        return ids, one request each."""
        spec = c.spec
        rows: dict = {}
        for oid in spec.return_ids:
            req = s.next_req
            s.next_req += 1
            s.checks[req] = (spec, oid, rows)
            s.client.send(s.node.address, ClientGcsRequest(client=s.endpoint, req_id=req, request=Get("objects", oid),
                                                           stimulus_id=c.stimulus_id))

    def _row(self, s: _Served, msg: ClientGcsReply) -> None:
        item = s.checks.pop(msg.req_id, None)
        if item is None:
            return
        spec, oid, rows = item
        rows[oid] = msg.result
        if len(rows) < len(spec.return_ids):
            return
        recorded, outputs, error = from_record(spec, [rows[o] for o in spec.return_ids])
        self._carry(s, s.inbox.checked(spec.task_id, self._now(s), recorded, outputs, error, msg.stimulus_id))

    def _fetched(self, s: _Served, msg: ObjectsReady) -> None:
        f = s.starting.get(msg.req_id)
        if f is None:
            return
        c, left = f
        for oid, info in msg.objects:
            if info.error is not None:
                # an argument holds an error: the call fails with it, unrun
                del s.starting[msg.req_id]
                self._carry(s, s.inbox.finished(c.spec.task_id, self._now(s), (), info.error, 0.0, None,
                                                msg.stimulus_id))
                self._start_ready(s)
                return
            left.discard(oid)
        self._start_ready(s)

    def _start_ready(self, s: _Served) -> None:
        """Start the calls whose arguments are here, in order."""
        starting = s.starting
        while starting and s.alive:
            req = next(iter(starting))
            c, left = starting[req]
            if left:
                return
            del starting[req]
            self._execute(s, c)

    def _execute(self, s: _Served, c: RunCall) -> None:
        # (on the node's host, at the present time: an executor schedules
        # on the host's clock, which lags while the host is idle)
        s.node.host.call_at(self._now(s), self._execute_now, s, c)

    def _execute_now(self, s: _Served, c: RunCall) -> None:
        if not s.alive:
            return
        node, w = s.node, s.worker
        spec = c.spec
        cmd = Execute(worker_id=w.worker_id, spec=spec, attempt=c.attempt, gpu_ids=s.gpu_ids,
                      stimulus_id=c.stimulus_id)
        now = node.host.now
        w.began[spec.task_id] = w.free_at if w.sequential and w.free_at > now else now
        out = self.cluster.executor.execute(node, w, cmd)
        if out is not None:
            node.complete(w, cmd, out)

    def finished(self, node: "SimNode", w: "SimWorker", cmd: Execute, out: "Outcome", elapsed: float,
                 span: tuple | None) -> None:
        """A direct call ended on ``w`` (``ok`` or ``raise``; a crash kills
        the worker as for any call)."""
        s = w.direct
        spec = cmd.spec
        now = self._now(s)
        if out.kind == "ok":
            sizes = out.sizes or (8,)
            values = out.values
            outs = []
            for i, oid in enumerate(spec.return_ids):
                size = sizes[i] if i < len(sizes) else 8
                value = values[i] if i < len(values) else None
                if size <= INLINE_BYTES:
                    outs.append(DirectOutput(object_id=oid, size=size, data=(value,)))
                else:  # (in the node's store before anyone hears of it)
                    node.store[oid] = (size, value)
                    outs.append(DirectOutput(object_id=oid, size=size, node=node.address))
            node.finished += 1
            for hook in self.cluster.on_task_done:
                hook(node, spec, cmd.attempt, now)
            cmds = s.inbox.finished(spec.task_id, now, tuple(outs), None, elapsed, span, cmd.stimulus_id)
        else:
            err = out.error or ErrorInfo(ErrorKind.TASK_ERROR, f"{spec.display_name()} raised",
                                         task_name=spec.display_name())
            cmds = s.inbox.finished(spec.task_id, now, (), err, elapsed, span, cmd.stimulus_id)
        self._carry(s, cmds)

    def exiting(self, w: "SimWorker", task_id: Any) -> bool:
        """Direct call ``task_id`` on ``w`` called ``exit_actor()``: its
        inbox ends the actor once the calls running with it ended (False:
        not a direct call; the routed path's rule applies)."""
        s = w.direct
        if s is None or not s.alive or task_id not in s.inbox.running:
            return False
        self._carry(s, s.inbox.exit(task_id, self._now(s)))
        return True

    def owns(self, w: "SimWorker", task_id: Any) -> bool:
        """Is ``task_id`` a direct call running on ``w``?"""
        s = w.direct
        return s is not None and task_id in s.inbox.running

    def _report(self, s: _Served, c: ReportRan) -> None:
        node = s.node
        store = node.store
        for e in c.entries:
            for o in e.outputs:
                if o.data is not None:
                    store[o.object_id] = (o.size, o.data[0])
        inbox = s.inbox
        self._to_node(s, DirectCallsRan(worker_id=s.worker.worker_id, actor_id=inbox.actor_id,
                                        incarnation=inbox.incarnation, entries=c.entries, stimulus_id=c.stimulus_id))

    def _inbox_timer(self, s: _Served, key: Any) -> None:
        if s.alive:
            self._carry(s, s.inbox.timer(key, self._now(s)))

    def _interrupt(self, s: _Served, c: InterruptCall) -> None:
        node, w = s.node, s.worker
        if c.force:
            self.cluster.kill_worker(node.address, w.worker_id, "the call was cancelled with force=True")
            return
        tid = c.task_id
        if w.actor_async is False or tid not in w.running:
            w.cancelled.add(tid)  # (a sync actor's call runs on and sees is_canceled())
            return
        del w.running[tid]
        w.began.pop(tid, None)
        interrupt = getattr(self.cluster.executor, "interrupt", None)
        if interrupt is not None:
            interrupt(w, tid)
        err = ErrorInfo(ErrorKind.TASK_CANCELLED, "the task was interrupted (cancelled)")
        self._carry(s, s.inbox.finished(tid, self._now(s), (), err, 0.0, None, c.stimulus_id))

    def worker_gone(self, w: "SimWorker") -> None:
        """``w`` died (killed, crashed, its node crashed): its connections
        close, and its callers hear so one hop later."""
        s = w.direct
        if s is None or not s.alive:
            return
        s.alive = False
        ep = s.endpoint
        if self.served.get(ep) is s:
            del self.served[ep]
        self.kernel.remove_client(ep)
        node = s.node
        if (s.starting or s.checks) and node.alive and node.host is not None and node.host.alive:
            # (its watches of arguments end with it)
            self._to_node(s, ClientDisconnected(client=ep, stimulus_id=f"gone:{ep}"))
        for key in [k for k, conn in self.open.items() if k[1] == ep and conn is None]:
            self._break(key, self.kernel.network.latency(ep, key[0]))

    # ------------------------------------------------------------------ connections
    def port(self, client: Any, address: str, node: str, machine: Any, run: Callable[[list], None],
             alive: Callable[[], bool]) -> "DirectPort":
        """The direct calls of the client at ``address`` (see ``DirectPort``)."""
        p = DirectPort(self, client, address, node, machine, run, alive)
        self.ports[address] = p
        return p

    def send(self, port: "DirectPort", endpoint: str, msg: Any) -> None:
        key = (port.address, endpoint)
        conn = self.open.get(key, False)
        if conn is False:
            s = self.served.get(endpoint)
            if s is None or not s.alive:
                # nobody listens there (any more): the connect fails a
                # round trip later; what is sent meanwhile waits in it
                known = endpoint in self.kernel.endpoints  # (an address the network placed)
                rtt = 2 * self.kernel.network.latency(port.address, endpoint) if known else 0.0
                conn = self.open[key] = []
                self.kernel.call_after(rtt, self._refused, key, conn)
            else:
                conn = self.open[key] = None
        if conn is not None:
            conn.append(msg)  # (connecting: it never leaves)
            return
        port.client.send(endpoint, msg)

    def _refused(self, key: tuple[str, str], conn: list) -> None:
        """The connect of ``key`` failed: the connection is dropped and its
        caller told so in one step, so a later send opens a new one."""
        if self.open.get(key, False) is conn:
            del self.open[key]
        port = self.ports.get(key[0])
        if port is not None:
            port.unreachable(key[1])

    def _on_net(self, what: str, t: float, src: str, dst: str, msgs: list) -> None:
        """The network lost messages between ``src`` and ``dst``: a
        connection between a caller and an endpoint breaks."""
        if what == "dup":
            return
        if dst.startswith(ENDPOINT_PREFIX):
            key = (src, dst)
        elif src.startswith(ENDPOINT_PREFIX):
            key = (dst, src)
        else:
            return
        if self.open.get(key, False) is None:  # (an open connection)
            self.breaks += 1
            self._break(key, LOST_AFTER)

    def _break(self, key: tuple[str, str], after: float) -> None:
        self.open.pop(key, None)
        port = self.ports.get(key[0])
        if port is not None:
            self.kernel.call_after(after, port.lost, key[1])


class DirectPort:
    """One simulated client's direct calls: it carries out its
    ``ActorCaller``'s commands (see the module doc).  ``run`` carries out
    the client machine's commands; ``alive()``: may the client still act."""

    def __init__(self, direct: SimDirect, client: Any, address: str, node: str, machine: Any,
                 run: Callable[[list], None], alive: Callable[[], bool]) -> None:
        self.direct = direct
        self.client = client
        self.address = address
        self.node = node
        self.machine = machine
        self.run = run
        self.alive = alive
        self.caller = ActorCaller(address)
        self.heard: dict = {}  # actor id -> the newest endpoint incarnation delivered to the caller
        self.args: dict = {}  # task id -> argument refs of a call in flight (see ``hold``)
        # a dict to note when each call's results were answered here
        # (result id -> time), for checkers; None: not kept
        self.answered_at: dict | None = None

    @property
    def now(self) -> float:
        return self.direct.kernel.env._now

    # ------------------------------------------------------------------ events
    def submit(self, spec: Any) -> None:
        self.machine.expect_local(spec.return_ids)
        self._carry(self.caller.submit(spec, self.now))

    def hold(self, spec: Any, refs: list) -> None:
        """Keep call ``spec``'s argument refs alive until it is resolved
        (no node pins a direct call's arguments, as for a routed one)."""
        if self.caller.owns(spec.task_id):
            self.args[spec.task_id] = refs

    def cancel(self, task_id: Any, force: bool) -> bool:
        """``cancel`` of a direct call of ours (False: not one; the node
        handles it)."""
        if not self.caller.owns(task_id):
            return False
        found, cmds = self.caller.cancel(task_id, self.now, force)
        self._carry(cmds)
        return found

    def killed(self, actor_id: Any) -> None:
        self._carry(self.caller.killed(actor_id, self.now))

    def on_message(self, msg: Any) -> bool:
        """A message for the caller (True: it was one)."""
        t = type(msg)
        if t is DirectReply:
            self._carry(self.caller.reply(msg, self.now))
        elif t is ActorWatched:
            if msg.endpoint is not None and msg.endpoint.incarnation > self.heard.get(msg.actor_id, -1):
                self.heard[msg.actor_id] = msg.endpoint.incarnation
            self._carry(self.caller.watched(msg, self.now))
        else:
            return False
        return True

    def lost(self, endpoint: str) -> None:
        if self.alive() and not self.client.defer(self.lost, (endpoint,)):
            self._carry(self.caller.lost(endpoint, self.now))

    def unreachable(self, endpoint: str) -> None:
        """A connect to ``endpoint`` failed (see ``SimDirect.send``)."""
        if self.alive() and not self.client.defer(self.unreachable, (endpoint,)):
            self._carry(self.caller.unreachable(endpoint, self.now))

    def _timer(self, key: Any) -> None:
        if self.alive() and not self.client.defer(self._timer, (key,)):
            caller = self.caller
            w = caller.awaiting.get(key[1]) if key[0] == ENDPOINT_TIMER else None
            self._carry(caller.timer(key, self.now))
            if w is not None and key[1] in caller.routed and self.heard.get(key[1], -1) >= w[0]:
                self.direct.ignored.append(f"{self.address} gave actor {key[1].hex()}'s direct path up for want of "
                                           f"incarnation {w[0]}'s endpoint, which it had been sent")

    # ------------------------------------------------------------------ commands
    def _carry(self, cmds: list) -> None:
        for c in cmds:
            t = type(c)
            if t is Send:
                if self.alive():
                    self.direct.send(self, c.to, c.msg)
            elif t is Resolved:
                if self.args:
                    self.args.pop(c.spec.task_id, None)
                if self.answered_at is not None:
                    self._note(c.spec)
                self.run(self.machine.resolve_local(self._results(c.spec, c.reply), c.stimulus_id))
            elif t is Failed:
                if self.args:
                    self.args.pop(c.spec.task_id, None)
                if self.answered_at is not None:
                    self._note(c.spec)
                info = ObjectInfo(0, c.error)
                self.run(self.machine.resolve_local({oid: (info, ("e", c.error)) for oid in c.spec.return_ids},
                                                    c.stimulus_id))
            elif t is StoreFailure:
                # (no worker reports it: our node stores its error, for
                # whoever else was handed its refs)
                if self.alive():
                    self.client.send(self.node, DirectCallFailed(client=self.address, spec=c.spec, error=c.error,
                                                                 attempt=c.attempt, stimulus_id=c.stimulus_id))
            elif t is Republish:
                self._record(c.entries, c.stimulus_id)
            elif t is Watch:
                if self.alive():
                    self.client.send(self.node, WatchActor(client=self.address, actor_id=c.actor_id,
                                                           stimulus_id=c.stimulus_id))
            elif t is Reroute:
                self.args.pop(c.spec.task_id, None)  # (the node pins them now)
                # (the node answers it: a watch already waiting on it asks the node)
                self.run(self.machine.local_to_node(c.spec.return_ids, c.stimulus_id))
                if self.alive():
                    self.client.send(self.node, SubmitTask(client=self.address, spec=c.spec,
                                                           stimulus_id=c.stimulus_id))
            elif t is Skipped:
                if self.alive():
                    self.client.send(self.node, CallsSkipped(client=self.address, actor_id=c.actor_id,
                                                             caller_id=c.caller_id, after=c.after, before=c.before,
                                                             stimulus_id=c.stimulus_id))
            elif t is SetTimer:  # (RESEND_TIMER and ENDPOINT_TIMER keys alike)
                k = self.direct.kernel
                k.call_at(max(c.at, k.env._now), self._timer, c.key)
            elif t is Log:
                self.direct.kernel._log(self.now, self.address, c)

    def _note(self, spec: Any) -> None:
        now = self.now
        for oid in spec.return_ids:
            self.answered_at[oid] = now

    def _results(self, spec: Any, reply: DirectReply) -> dict:
        if reply.error is not None:
            info = ObjectInfo(0, reply.error)
            return {oid: (info, ("e", reply.error)) for oid in spec.return_ids}
        return {o.object_id: (ObjectInfo(o.size), ("v", o.data[0]) if o.data is not None else None)
                for o in reply.outputs}

    def _record(self, entries: tuple, sid: str) -> None:
        """Our node records these results (``DirectCallsRecorded``); inline
        outputs go into its store, as the real daemon puts a message's
        inline data."""
        node = self.direct.cluster.nodes.get(self.node)
        if node is None or not node.alive or not self.alive():
            return
        for e in entries:
            for o in e.outputs:
                if o.data is not None:
                    node.store[o.object_id] = (o.size, o.data[0])
        self.client.send(self.node, DirectCallsRecorded(client=self.address, entries=entries, stimulus_id=sid))
