"""Planted bugs in direct actor calls: the caller's ``ActorCaller``, the
worker's ``ActorInbox`` (core/actor_caller.py, core/actor_inbox.py).

Each function plants one bug (a small diff to one function of ``penumbra/core``) and
returns its undo; ``bugs.py`` lists them with their names, descriptions and seeds.
The simulator drives these machines for every actor without ``replay``
(``penumbra.sim.direct``), so the swarm's faults reach them: a worker
killed mid-batch, a restart mid-stream, a connection broken by a cut.
"""

from __future__ import annotations

from ..core import actor_caller as ACR
from ..core import actor_inbox as AI
from .planting import patch


def inbox_runs_a_repeat():
    orig = AI.ActorInbox.call

    def call(self, msg, now):
        spec = msg.spec
        kept = self.kept.get(spec.caller_id)
        if msg.incarnation == self.incarnation and kept and spec.sequence_no in kept and not self.ending:
            # BUG: a call sent again (after a lost connection) runs again,
            # instead of being answered from the result kept for it
            del kept[spec.sequence_no]
            self.running[spec.task_id] = AI._Call(spec, msg.attempt)
            return [AI.RunCall(spec=spec, attempt=msg.attempt, stimulus_id=msg.stimulus_id)]
        return orig(self, msg, now)

    return patch(AI.ActorInbox, "call", call)


def inbox_ignores_floor():
    orig = AI.ActorInbox._advance

    def _advance(self, caller, floor):
        # BUG: a caller's order starts at 0 in every incarnation: the floor
        # its calls carry (calls below it were resolved elsewhere) is ignored
        self.next_seq.setdefault(caller, 0)
        return orig(self, caller, 0)

    return patch(AI.ActorInbox, "_advance", _advance)


def resend_timer_keeps_actor_down():
    orig = ACR.ActorCaller.timer

    def timer(self, key, now, sid=""):
        if type(key) is tuple and len(key) == 2 and key[0] == ACR.RESEND_TIMER and key[1] in self.down:
            # BUG: ``self.down.discard(aid)`` forgotten: after a lost
            # connection the actor counts as unreachable for good
            book = self.books.get(key[1])
            return [] if book is None or book.entry is None else self._resend(book, now, sid)
        return orig(self, key, now, sid)

    return patch(ACR.ActorCaller, "timer", timer)


def caller_ignores_newer_endpoint():
    orig = ACR.ActorCaller.endpoint

    def endpoint(self, actor_id, row, now, sid=""):
        old = self.endpoints.get(actor_id)
        if row is not None and old is not None and row.incarnation > old.incarnation:
            # BUG: the first endpoint learned is kept (``if old is None``
            # stood for "is it newer"): a restarted actor's new address is
            # never used
            return []
        return orig(self, actor_id, row, now, sid)

    return patch(ACR.ActorCaller, "endpoint", endpoint)


def unreported_results_not_republished():
    def _republish(self, aid, entry, sid):
        # BUG: results an incarnation answered are taken for recorded by its
        # node: when it dies before its batched report, they are lost to
        # everyone but their caller
        self.recent.pop(aid, None)
        return []

    return patch(ACR.ActorCaller, "_republish", _republish)


def retried_call_runs_unchecked():
    orig = AI.ActorInbox.call

    def call(self, msg, now):
        # BUG: a call sent again to a new incarnation runs at once, without
        # asking whether an earlier incarnation ran it and its node recorded
        # it (its objects then hold two values)
        if msg.attempt > 0:
            msg = msg.__class__(spec=msg.spec, incarnation=msg.incarnation, floor=msg.floor, attempt=0,
                                stimulus_id=msg.stimulus_id)
        return orig(self, msg, now)

    return patch(AI.ActorInbox, "call", call)
