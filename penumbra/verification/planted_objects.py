"""Planted bugs in the object manager: pins, fetches, store accounting, spilling.

Each function plants one bug (a small diff to one function of ``penumbra/core``) and
returns its undo; ``bugs.py`` lists them with their names, descriptions and seeds.
"""

from __future__ import annotations

from ..core import objects as O
from .planting import patch


def fetch_failure_not_retried():
    def on_fetch_failed(self, oid, from_node, now, sid):
        w = self.wants.get(oid)
        if w is not None:
            w.fetching_from = None  # BUG: no other location is tried
        return []

    return patch(O.ObjectManager, "on_fetch_failed", on_fetch_failed)


def task_inputs_not_pinned():
    def pin(self, oid, holder):
        if isinstance(holder, tuple) and holder and holder[0] == "task":
            return  # BUG: inputs of queued and running tasks are not pinned
        return orig(self, oid, holder)

    orig = O.StoreAccounting.pin
    return patch(O.StoreAccounting, "pin", pin)


def fetching_waiters_told_located():
    orig = O.ObjectManager._react

    def _react(self, w, now, sid):
        e = w.entry
        cmds = []
        if e is not None and e.created and e.error is None:
            # BUG: should be `if not fetch`: a waiter that needs the bytes is
            # told the object is ready as soon as its location is known
            untold = [t for t in w.waiters if t not in w.located_told]
            if untold:
                w.located_told = {*w.located_told, *untold}
                cmds += self.on_located(w.oid, e, untold, now, sid)
        return cmds + orig(self, w, now, sid)

    return patch(O.ObjectManager, "_react", _react)


def unpin_without_holder():
    def unpin(self, oid, holder):
        o = self.objects.get(oid)
        if o is None:
            return
        n = o.pins.get(holder, 0)
        if n <= 1:
            o.pins.pop(holder, None)
        else:
            o.pins[holder] = n - 1
        if not o.pins:  # BUG: should be ``and n``: unpinning a holder that held no pin unpins the bytes again
            self.pinned_bytes -= o.size

    return patch(O.StoreAccounting, "unpin", unpin)


def fetched_copy_not_recorded():
    orig = O.ObjectManager.add_local

    def on_fetch_completed(self, oid, size, now, sid):
        w = self.wants.get(oid)
        if w is not None:
            w.fetching_from = None
        self.bytes_fetched += size
        if self.is_local(oid):
            return None, []
        # BUG: "a fetched copy is not a new object": its location is never
        # added to the object table (record=False)
        adm, cmds = orig(self, oid, size, now, sid, record=False)
        if not adm.ok:
            cmds.append(O.Evict(object_id=oid, stimulus_id=sid))
            if w is not None:
                self.wants.pop(oid, None)
                if w.subscribed:
                    cmds += self.gcs_write(O.Unsubscribe(self.address, "objects", oid), None, now, sid)
                cmds += self.on_ready(oid, O.ObjectInfo(size=size, error=adm.error), list(w.waiters), now, sid)
        return adm, cmds

    return patch(O.ObjectManager, "on_fetch_completed", on_fetch_completed)
