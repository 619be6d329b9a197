"""The client machine's local results (direct actor calls, issue 16): a
watch of direct results never asks the node; a watch of a mix asks it only
for the others, and cancels that node watch once the local ones satisfy
it; answered results are kept within a bound."""

from __future__ import annotations

from penumbra.core import client as CL
from penumbra.core.client import ClientMachine, ConnectionLost, Fail, Resolve, TimedOut
from penumbra.core.ids import ObjectId
from penumbra.core.messages import CancelWatch, Send, WatchObjects
from penumbra.core.records import ObjectInfo

A, B, C, D = (ObjectId(bytes([i]) * 20) for i in range(1, 5))
INFO = ObjectInfo(size=1)


def _sends(cmds):
    return [c.msg for c in cmds if type(c) is Send]


def test_a_watch_of_answered_local_results_resolves_at_once_without_the_node():
    m = ClientMachine("c", "n")
    m.expect_local([A, B])
    assert m.resolve_local({A: (INFO, ("i", b"a")), B: (INFO, ("i", b"b"))}) == []
    _, cmds = m.watch("w", [A, B], 2)
    assert _sends(cmds) == []
    assert [type(c) for c in cmds] == [Resolve] and set(cmds[0].value) == {A, B}
    assert m.pending() == 0
    m.validate()


def test_a_watch_of_results_in_flight_waits_for_their_replies_only():
    m = ClientMachine("c", "n")
    m.expect_local([A])
    rid, cmds = m.watch("w", [A], 1)
    assert cmds == [] and m.pending() == 1
    m.validate()
    out = m.resolve_local({A: (INFO, ("i", b"a"))})
    assert [type(c) for c in out] == [Resolve] and out[0].waiter == "w"
    assert m.resolve_local({A: (INFO, ("i", b"again"))}) == []  # (a duplicate is ignored)
    assert m.local[A][1] == ("i", b"a")
    m.validate()


def test_a_mixed_watch_asks_the_node_only_for_the_others():
    m = ClientMachine("c", "n")
    m.expect_local([A])
    rid, cmds = m.watch("w", [A, B, C], 3, report_need=3)
    (msg,) = _sends(cmds)
    assert type(msg) is WatchObjects and set(msg.object_ids) == {B, C} and msg.need == 2
    assert m.on_objects(rid, ((B, INFO), (C, INFO)), None) == []
    out = m.resolve_local({A: (INFO, ("i", b"a"))})
    assert [type(c) for c in out] == [Resolve] and set(out[0].value) == {A, B, C}
    assert _sends(out) == []  # (the node reported all it watched: nothing to cancel)
    m.validate()


def test_a_mixed_watch_lets_the_node_hold_no_longer_than_report_need():
    """A wait with a timeout (report_need 1) must hear of each of the
    others as it comes, whatever the direct results among them.  (Found by
    the swarm driving direct calls: the node held its reports until
    num_returns minus the direct ones were ready, and the wait timed out
    unaware of tasks the node had.)"""
    m = ClientMachine("c", "n")
    m.expect_local([A])
    rid, cmds = m.watch("w", [A, B, C], 3, report_need=1, deadline=5.0)
    (msg,) = _sends(cmds)
    assert set(msg.object_ids) == {B, C} and msg.need == 1
    m.validate()


def test_a_wait_satisfied_by_a_local_result_cancels_the_node_watch():
    m = ClientMachine("c", "n")
    m.expect_local([A])
    rid, cmds = m.watch("w", [A, B], 1)
    assert _sends(cmds)[0].need == 1
    out = m.resolve_local({A: (INFO, ("i", b"a"))})
    assert [type(c) for c in out] == [Send, Resolve]
    assert type(out[0].msg) is CancelWatch and out[0].msg.req_id == rid
    assert m.on_objects(rid, ((B, INFO),), None) == []  # (late: ignored)
    m.validate()


def test_giving_up_a_local_only_watch_sends_nothing_and_a_mixed_one_cancels():
    m = ClientMachine("c", "n")
    m.expect_local([A, C])
    rid, _ = m.watch("w", [A], 1)
    out = m.give_up(rid)
    assert [type(c) for c in out] == [TimedOut]
    rid2, _ = m.watch("w2", [C, D], 2)
    out = m.give_up(rid2)
    assert [type(c) for c in out] == [Send, TimedOut] and type(out[0].msg) is CancelWatch
    assert m.resolve_local({A: (INFO, ("i", b"a"))}) == []  # (nobody waits any more)
    m.validate()


def test_a_lost_connection_fails_local_waiters_too():
    m = ClientMachine("c", "n")
    m.expect_local([A])
    m.watch("w", [A], 1)
    out = m.handle(ConnectionLost(detail="gone"))
    assert [type(c) for c in out] == [Fail]
    assert m.resolve_local({A: (INFO, ("i", b"a"))}) == []
    m.validate()


def test_forgotten_results_are_asked_of_the_node(monkeypatch):
    m = ClientMachine("c", "n")
    m.expect_local([A])
    m.resolve_local({A: (INFO, None)})  # (a value in another node's store)
    m.forget_local([A])
    _, cmds = m.watch("w", [A], 1)
    assert [type(x) for x in _sends(cmds)] == [WatchObjects]


def test_answered_results_are_kept_within_a_bound(monkeypatch):
    monkeypatch.setattr(CL, "LOCAL_KEEP", 2)
    m = ClientMachine("c", "n")
    m.expect_local([A, B, C])
    m.resolve_local({A: (INFO, ("i", b"a"))})
    m.resolve_local({B: (INFO, ("i", b"b"))})
    m.resolve_local({C: (INFO, ("i", b"c"))})
    assert A not in m.local and m.local[B] is not None and m.local[C] is not None
    monkeypatch.setattr(CL, "LOCAL_KEEP_BYTES", 1)
    m.expect_local([D])
    m.resolve_local({D: (INFO, ("i", b"d"))})
    assert list(m.local) == [D]


def test_a_watch_waiting_on_a_call_that_is_rerouted_asks_the_node_for_it():
    """A call expected as a direct result takes the routed path after all
    (its actor's worker could not be reached): a watch already waiting on it
    must have the node watch it -- it waited forever."""
    m = ClientMachine("c", "n")
    m.expect_local([A, B])
    rid, cmds = m.watch("w", [A, B, C], 3, fetch=False)
    (first,) = _sends(cmds)
    assert first.object_ids == (C,)
    out = m.local_to_node([A])
    # the node part is asked again, whole, under the watch's id
    assert [type(x) for x in _sends(out)] == [CancelWatch, WatchObjects]
    w = _sends(out)[1]
    assert (w.req_id, set(w.object_ids), w.need, w.fetch) == (rid, {A, C}, 2, False)
    assert A not in m.local and B in m.local
    m.validate()
    assert m.resolve_local({A: (INFO, ("i", b"late"))}) == []  # (not expected here any more)
    assert m.on_objects(rid, ((A, INFO), (C, INFO)), None) == []
    out = m.resolve_local({B: (INFO, ("i", b"b"))})
    assert [type(c) for c in out] == [Resolve] and set(out[0].value) == {A, B, C}
    m.validate()
    # a watch of only local results: the first node watch of it
    m.expect_local([D])
    rid, cmds = m.watch("w2", [D], 1)
    assert cmds == []
    (w,) = _sends(m.local_to_node([D]))
    assert type(w) is WatchObjects and w.object_ids == (D,) and w.req_id == rid and w.fetch
    assert [type(c) for c in m.on_objects(rid, ((D, INFO),), None)] == [Resolve]
    assert m.local_to_node([D]) == []  # (nobody waits: nothing to ask)
