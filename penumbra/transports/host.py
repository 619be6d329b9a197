"""Running core machines inside a trio process.

``MachineHost`` is the real runtime's equivalent of the simulator's host: it
owns the core machines that live in this process (the head, GCS replicas, a
node), feeds them events one at a time, and carries out their commands:

* ``Send`` to a machine in this process is queued locally; to any other
  address it goes to ``route(to, msg)``, which the daemon implements with
  channels (clients, other daemons);
* ``SetTimer`` goes in a heap; ``TimerFired`` is delivered when trio's clock
  passes it;
* every other command goes to the handler registered for its type (the
  node's worker pool, object store and transfers).

Events are processed strictly one at a time, in arrival order, on the trio
thread, so a machine never sees two events at once and never needs a lock.
Connection tasks call :meth:`MachineHost.pump` at the end of each batch they
receive, so a message is handled (and the replies are on the wire) without
waking another task; the ``run`` task covers timers and anything left.  Handlers must not block: anything slow (a transfer, a process start)
is started as a trio task that later calls ``deliver`` with the completion
event.  With ``validate=True`` every machine's ``validate()`` runs after each
event (tests run that way).

Overdue timers wait for what already arrived.  A timer that is due when it
is popped fires at once, as always.  One that is more than ``overdue_after``
late means this process did not run for a while (SIGSTOP, a swap storm, a
long GC pause): its sockets may hold messages that arrived meanwhile (the
heartbeats the head's monitor timer is about to judge).  Such timers are
held: ``run`` first lets the connection tasks read and handle what is
queued (a short ``catch_up`` sleep, during which every readable socket is
served), then fires them.  The core does not rely on this (the head's
monitor tolerates either order, see ``core/head.py``), but it is the order
a human expects, and it costs nothing on the hot path: timers that are on
time never wait, and the check is one comparison per popped timer.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from typing import Any, Callable

import trio

from ..core.messages import Command, Event, Log, Message, Send, SetTimer, TimerFired

__all__ = ["MachineHost"]

logger = logging.getLogger("penumbra.host")

Route = Callable[[str, Message, str], None]
Handler = Callable[[str, Command], None]


class MachineHost:
    def __init__(self, route: Route | None = None, validate: bool = False) -> None:
        self.machines: dict[str, Any] = {}
        self.queue: deque[tuple[str, Event]] = deque()
        self.timers: list[tuple[float, int, str, Any, str]] = []
        self._seq = itertools.count()
        self.route: Route = route or self._no_route
        self.handlers: dict[type, Handler] = {Log: self._log}
        self.validate = validate
        self._wake: trio.Event | None = None
        self.events_handled = 0
        self.log_sink: Callable[[str, Log], None] | None = None
        self.after_batch: Callable[[], None] | None = None  # e.g. flush channels
        self._pumping = False
        self._deadline = float("inf")  # when ``run`` wakes for the next timer
        self.overdue_after = 0.5  # a timer this late is held until the sockets are read
        self.catch_up = 0.05  # how long ``run`` lets connection tasks read first
        self._overdue = False  # an overdue timer is held
        self._release = False  # fire held timers now (``run`` caught up)
        self.pauses_seen = 0

    # ------------------------------------------------------------------ setup
    def add(self, *machines: tuple[str, Any]) -> None:
        """Host each ``(address, machine)``, then issue their start commands.

        Machines that talk to each other at start (the head subscribes to
        the GCS replicas) must be added in one call: a message to a machine
        not hosted yet would leave the process and be lost."""
        for address, machine in machines:
            self.machines[address] = machine
        now = trio.current_time()
        for address, machine in machines:
            start = getattr(machine, "start", None)
            if start is not None:
                self.execute(address, start(now))

    def remove(self, address: str) -> None:
        self.machines.pop(address, None)

    def on(self, command_type: type, handler: Handler) -> None:
        self.handlers[command_type] = handler

    def _no_route(self, to: str, msg: Message, src: str) -> None:
        logger.warning("no route to %s for %s from %s; dropped", to, type(msg).__name__, src)

    def _log(self, src: str, cmd: Log) -> None:
        if self.log_sink is not None:
            self.log_sink(src, cmd)
        else:
            logger.log(logging.WARNING if cmd.level == "warning" else logging.INFO, "%s: %s", src, cmd.text)

    # ------------------------------------------------------------------ events in
    def deliver(self, address: str, event: Event) -> None:
        """Queue ``event`` for the machine at ``address`` and wake the
        ``run`` task to handle it (call on the trio thread)."""
        self.queue.append((address, event))
        w = self._wake
        if w is not None:
            self._wake = None
            w.set()

    def post(self, address: str, event: Event) -> None:
        """Queue ``event`` without waking anyone: the caller promises to
        call :meth:`pump` before it next waits."""
        self.queue.append((address, event))

    # ------------------------------------------------------------------ commands out
    def execute(self, src: str, cmds: list[Command]) -> None:
        for c in cmds:
            t = type(c)
            if t is Send:
                to = c.to
                if to in self.machines:
                    self.queue.append((to, c.msg))
                else:
                    self.route(to, c.msg, src)
            elif t is SetTimer:
                heapq.heappush(self.timers, (c.at, next(self._seq), src, c.key, c.stimulus_id))
            else:
                h = self.handlers.get(t)
                if h is None:
                    raise TypeError(f"{src} issued {t.__name__}, which this process cannot carry out")
                h(src, c)

    # ------------------------------------------------------------------ the loop
    def step_all(self, limit: int = 1 << 62) -> int:
        """Handle what is queued and every due timer (at most ``limit``
        events); returns how many."""
        n = 0
        queue = self.queue
        machines = self.machines
        while n < limit:
            now = trio.current_time()
            timers = self.timers
            while timers and timers[0][0] <= now:
                if now - timers[0][0] > self.overdue_after and not self._release:
                    # this process stood still: read what queued first
                    # (``run`` fires it after its catch-up)
                    self._overdue = True
                    break
                _, _, addr, key, sid = heapq.heappop(timers)
                queue.append((addr, TimerFired(key=key, stimulus_id=sid)))
            if not queue:
                break
            addr, ev = queue.popleft()
            m = machines.get(addr)
            if m is None:
                continue
            cmds = m.handle(ev, now)
            n += 1
            if cmds:
                self.execute(addr, cmds)
            if self.validate:
                v = getattr(m, "validate", None)
                if v is not None:
                    v()
        self.events_handled += n
        return n

    def pump(self) -> None:
        """Handle what is queued now, on the caller's task, then flush
        (``after_batch``).  Cheaper than waking the ``run`` task for every
        batch a connection receives.  Not re-entrant: a call from inside a
        handler does nothing (the outer loop picks the events up)."""
        if self._pumping:
            return
        self._pumping = True
        try:
            self.step_all(limit=2000)
        finally:
            self._pumping = False
            # (in ``finally``: replies queued with ``defer_flush`` before a
            # handler raised must still go out)
            if self.after_batch is not None:
                self.after_batch()
        w = self._wake
        if w is not None and (self.queue or (self.timers and self.timers[0][0] < self._deadline)):
            # more than one batch's worth, or a timer due before the one
            # ``run`` sleeps until: let it go on
            self._wake = None
            w.set()

    async def run(self) -> None:
        """Process events forever (cancel the surrounding scope to stop)."""
        while True:
            self.pump()
            if self._overdue:
                # a timer is far overdue: let the connection tasks read and
                # handle what arrived while we stood still, then fire it
                self.pauses_seen += 1
                logger.info("timers are %.3fs overdue (was this process paused?): reading the "
                            "sockets before firing them", trio.current_time() - self.timers[0][0]
                            if self.timers else 0.0)
                await trio.sleep(self.catch_up)
                self._overdue = False
                self._release = True
                try:
                    self.pump()
                finally:
                    self._release = False
                continue
            if self.queue:
                await trio.lowlevel.checkpoint()  # let I/O tasks run, then go on
                continue
            deadline = self._deadline = self.timers[0][0] if self.timers else float("inf")
            w = self._wake = trio.Event()
            with trio.move_on_at(deadline):
                await w.wait()
            self._wake = None
