"""The swarm's checkers (``penumbra.verification.checkers``) on hand-made
inputs: for each one a clean case (no violation) and violating cases (the
violation is reported, by the right checker, about the right item).

The swarm itself only ever shows that the checkers stay quiet on correct
runs (and, through the planted bugs, that some of them fire); these tests pin
down what each one flags and what it lets through.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from penumbra.core.ids import ActorId, ObjectId
from penumbra.core.layout import ClusterLayout, NodeShape
from penumbra.core.records import ErrorKind
from penumbra.core.specs import ResourceSet
from penumbra.sim.cluster import SimCluster
from penumbra.sim.costs import ZERO
from penumbra.verification import checkers as C
from penumbra.verification.executor import ActorExec

pytestmark = pytest.mark.timeout(120)


def kinds(violations) -> list[str]:
    return [v.checker for v in violations]


def keys(violations) -> list[str]:
    return [v.key for v in violations]


# ---------------------------------------------------------------------------- check_results

V1, V2 = ("v", 0x1111), ("v", 0x2222)


def err(kind: ErrorKind, message: str = "") -> tuple:
    return ("e", kind, message)


def results(ref, got, taints=frozenset()):
    """check_results over one item ``k``."""
    return C.check_results({"k": ref}, {"k": got}, {"k": set(taints)})


def test_results_identical_runs_are_clean():
    ref = {"a": V1, "b": V2, "c": err(ErrorKind.TASK_ERROR, "c raised (by design)")}
    assert C.check_results(ref, dict(ref), {}) == []


def test_results_a_different_value_without_taint_is_a_violation():
    out = C.check_results({"a": V1, "b": V1}, {"a": V1, "b": V2}, {"a": set(), "b": set()})
    assert kinds(out) == ["results"] and keys(out) == ["b"]
    assert "0x1111" in out[0].what and "0x2222" in out[0].what


@pytest.mark.parametrize("taint", ["state", "actor"])
def test_results_a_different_value_is_allowed_by_an_actor_taint(taint):
    assert results(V1, V2, {taint}) == []


@pytest.mark.parametrize("taint", ["retry", "lost", "store"])
def test_results_taints_that_allow_only_errors_do_not_allow_a_different_value(taint):
    out = results(V1, V2, {taint})
    assert kinds(out) == ["results"] and keys(out) == ["k"]


def test_results_a_missing_item_is_left_to_liveness():
    assert C.check_results({"a": V1}, {}, {}) == []


@pytest.mark.parametrize("kind,taint", [
    (ErrorKind.WORKER_CRASHED, "retry"),
    (ErrorKind.NODE_DIED, "retry"),
    (ErrorKind.OBJECT_LOST, "retry"),
    (ErrorKind.ACTOR_DIED, "actor"),
    (ErrorKind.OBJECT_LOST, "actor"),
    (ErrorKind.OBJECT_LOST, "lost"),
    (ErrorKind.OBJECT_STORE_FULL, "store"),
])
def test_results_an_error_its_taint_allows_is_clean(kind, taint):
    assert results(V1, err(kind), {taint}) == []


def test_results_an_object_the_reference_evicted_for_good_may_be_a_value_here():
    """A full store (timing) evicted it in the reference, and its retry
    budget forbade rebuilding it; this run had room (found by the strategy-
    drawn swarm test with a placement group's tasks crowding one node)."""
    assert results(err(ErrorKind.OBJECT_LOST), V1, {"store", "retry"}) == []
    for taints in ({"store"}, {"retry"}, {"lost"}):
        assert kinds(results(err(ErrorKind.OBJECT_LOST), V1, taints)) == ["results"]


@pytest.mark.parametrize("kind,taints", [
    (ErrorKind.WORKER_CRASHED, set()),
    (ErrorKind.NODE_DIED, {"actor", "lost", "state", "store"}),
    (ErrorKind.ACTOR_DIED, {"retry", "state", "lost"}),
    (ErrorKind.OBJECT_LOST, {"state", "store"}),
    (ErrorKind.OBJECT_STORE_FULL, {"retry", "actor", "state", "lost"}),
    (ErrorKind.TASK_ERROR, {"retry", "actor", "state", "lost", "store"}),
])
def test_results_an_error_no_taint_allows_is_a_violation(kind, taints):
    out = results(V1, err(kind, "boom"), taints)
    assert kinds(out) == ["results"] and keys(out) == ["k"]
    assert kind.value in out[0].what


def test_results_task_errors_must_carry_the_same_message():
    ref = err(ErrorKind.TASK_ERROR, "t3 raised (by design)")
    assert results(ref, err(ErrorKind.TASK_ERROR, "t3 raised (by design)")) == []
    out = results(ref, err(ErrorKind.TASK_ERROR, "t4 raised (by design)"))
    assert kinds(out) == ["results"] and keys(out) == ["k"]


def test_results_a_value_where_the_reference_raised_is_a_violation():
    out = results(err(ErrorKind.TASK_ERROR, "t3 raised (by design)"), V1, {"retry"})
    assert kinds(out) == ["results"] and keys(out) == ["k"]


def test_results_actor_died_in_the_reference_may_be_a_value_if_the_kill_races():
    ref = err(ErrorKind.ACTOR_DIED)
    assert results(ref, V1, {"actor"}) == []
    assert kinds(results(ref, V1, {"retry"})) == ["results"]


def test_results_store_full_in_the_reference_may_be_anything_with_the_store_taint():
    ref = err(ErrorKind.OBJECT_STORE_FULL)
    assert results(ref, V1, {"store"}) == []
    assert kinds(results(ref, V1)) == ["results"]


def test_results_reports_every_bad_item_in_key_order():
    ref = {"b": V1, "a": V1, "c": V1}
    got = {"b": V2, "a": err(ErrorKind.NODE_DIED), "c": V1}
    out = C.check_results(ref, got, {})
    assert keys(out) == ["a", "b"] and set(kinds(out)) == {"results"}


# ---------------------------------------------------------------------------- check_liveness


def test_liveness_clean():
    assert C.check_liveness({"a", "b"}, {"a": V1, "b": err(ErrorKind.TASK_ERROR, "x")}, []) == []


def test_liveness_an_item_never_ready():
    out = C.check_liveness({"a", "b", "c"}, {"b": V1}, [])
    assert kinds(out) == ["liveness", "liveness"] and keys(out) == ["a", "c"]


def test_liveness_a_task_left_pending_in_the_gcs():
    out = C.check_liveness({"a"}, {"a": V1}, ["t7 at node:1"])
    assert kinds(out) == ["liveness"] and "t7 at node:1" in out[0].what


def test_liveness_reports_at_most_twenty_pending_rows():
    out = C.check_liveness(set(), {}, [f"t{i} at (unplaced)" for i in range(50)])
    assert len(out) == 20


def test_pending_task_rows_lists_only_pending_rows():
    from penumbra.core.records import TaskState

    def row(name, state, node):
        return SimpleNamespace(state=state, node=node, spec=SimpleNamespace(display_name=lambda: name))

    rows = {1: row("t1", TaskState.PENDING, None), 2: row("t2", TaskState.PENDING, "node:1"),
            3: row("t3", next(s for s in TaskState if s is not TaskState.PENDING), "node:0")}
    cluster = SimpleNamespace(gcs_row=lambda table, tid: rows.get(tid))
    assert C.pending_task_rows(cluster, [1, 2, 3, 4]) == ["t1 at (unplaced)", "t2 at node:1"]


# ---------------------------------------------------------------------------- check_actor_order

A1, A2 = ActorId(b"\x01" * 16), ActorId(b"\x02" * 16)


def ex(seq, caller="driver", worker="w1", actor=A1):
    return ActorExec(actor, worker, caller, seq, None, 0.0)


META = {A1: ("a0", -1, False), A2: ("a1", 0, False)}


def test_actor_order_in_sequence_is_clean():
    assert C.check_actor_order([ex(0), ex(1), ex(2), ex(0, actor=A2), ex(1, actor=A2)], META) == []


def test_actor_order_interleaved_callers_are_fine():
    log = [ex(0, "d1"), ex(0, "d2"), ex(1, "d1"), ex(5, "d2"), ex(2, "d1"), ex(6, "d2")]
    assert C.check_actor_order(log, META) == []
    # another caller's lower sequence numbers after a high one: still fine
    assert C.check_actor_order([ex(9, "d1"), ex(0, "d2"), ex(1, "d2")], META) == []


def test_actor_order_out_of_order_for_one_caller_is_a_violation():
    out = C.check_actor_order([ex(0), ex(2), ex(1)], META)
    assert kinds(out) == ["actor-order"] and keys(out) == ["a0"]
    assert "#1" in out[0].what and "#2" in out[0].what


def test_actor_order_a_new_instance_starts_over():
    # a restart (new worker) re-runs calls from the start: each instance is
    # checked on its own, and actor a0 allows task retries
    log = [ex(0), ex(1), ex(2), ex(1, worker="w2"), ex(2, worker="w2"), ex(3, worker="w2")]
    assert C.check_actor_order(log, META) == []


def test_actor_order_a_call_run_twice_without_retries_is_a_violation():
    # actor a1: max_task_retries=0, no replay: at most once
    out = C.check_actor_order([ex(0, actor=A2), ex(1, actor=A2), ex(1, worker="w2", actor=A2)], META)
    assert kinds(out) == ["actor-order"] and keys(out) == ["a1"]
    assert "max_task_retries=0" in out[0].what


def test_actor_order_a_call_run_twice_with_replay_or_retries_is_fine():
    log = [ex(0, actor=A2), ex(0, worker="w2", actor=A2)]
    assert C.check_actor_order(log, {A2: ("a1", 0, True)}) == []
    assert C.check_actor_order(log, {A2: ("a1", -1, False)}) == []
    assert C.check_actor_order(log, {A2: ("a1", 2, False)}) == []


def test_actor_order_a_call_run_twice_on_one_instance_is_a_violation():
    out = C.check_actor_order([ex(0), ex(1), ex(1)], META)
    assert set(kinds(out)) == {"actor-order"} and set(keys(out)) == {"a0"}
    assert any("twice on one instance" in v.what for v in out)


def test_actor_order_an_unknown_actor_is_held_to_at_most_once():
    out = C.check_actor_order([ex(0, actor=A2), ex(0, worker="w2", actor=A2)], {})
    assert kinds(out) == ["actor-order"] and keys(out) == ["?"]


# ---------------------------------------------------------------------------- check_gcs


def tail(seq, name="gcs:0:1"):
    return SimpleNamespace(seq=seq, replica_id=name)


def ledger(*commits, acks=()):
    led = C.GcsLedger()
    for c in commits:
        led.on_commit(*c)
    for a in acks:
        led.on_ack(*a)
    return led


def test_gcs_clean():
    led = ledger(("gcs:0:1", 0, 1, "node:0", 7), ("gcs:0:1", 0, 2, "node:1", 3),
                 ("gcs:1:0", 1, 1, "node:0", 8),
                 acks=[(0, "node:0", 7), (0, "node:1", 3), (1, "node:0", 8)])
    assert C.check_gcs(led, {0: tail(2), 1: tail(1, "gcs:1:0")}) == []


def test_gcs_the_same_commit_seen_by_two_tails_is_no_fork():
    # after a reconfiguration the new tail commits what the old one did
    led = ledger(("gcs:0:1", 0, 1, "node:0", 7), ("gcs:0:0", 0, 1, "node:0", 7), acks=[(0, "node:0", 7)])
    assert C.check_gcs(led, {0: tail(1, "gcs:0:0")}) == []


def test_gcs_an_acknowledged_write_missing_from_the_tail_is_a_violation():
    led = ledger(("gcs:0:1", 0, 1, "node:0", 7), ("gcs:0:1", 0, 2, "node:1", 3),
                 acks=[(0, "node:0", 7), (0, "node:1", 3)])
    out = C.check_gcs(led, {0: tail(1, "gcs:0:0")})
    assert kinds(out) == ["gcs"] and "node:1#3" in out[0].what and "lost" in out[0].what
    assert "node:0#7" not in out[0].what


def test_gcs_an_acknowledged_write_never_committed_is_a_violation():
    out = C.check_gcs(ledger(acks=[(0, "node:0", 7)]), {0: tail(5)})
    assert kinds(out) == ["gcs"] and "node:0#7" in out[0].what and "never committed" in out[0].what


def test_gcs_a_shard_with_no_live_tail_is_skipped():
    assert C.check_gcs(ledger(acks=[(0, "node:0", 7)]), {0: None}) == []


def test_gcs_a_fork_is_a_violation():
    led = ledger(("gcs:0:1", 0, 4, "node:0", 7), ("gcs:0:2", 0, 4, "node:1", 3))
    out = C.check_gcs(led, {0: tail(4)})
    assert kinds(out) == ["gcs"] and "fork" in out[0].what and "seq 4" in out[0].what


def test_gcs_a_write_applied_twice_is_a_violation():
    led = ledger(("gcs:0:1", 0, 4, "node:0", 7), ("gcs:0:1", 0, 5, "node:0", 7), acks=[(0, "node:0", 7)])
    out = C.check_gcs(led, {0: tail(5)})
    assert kinds(out) == ["gcs"] and "applied twice" in out[0].what


def test_gcs_request_ids_are_per_shard():
    # the same (client, req id) on two shards is two different writes
    led = ledger(("gcs:0:0", 0, 1, "node:0", 7), ("gcs:1:0", 1, 3, "node:0", 7),
                 acks=[(0, "node:0", 7), (1, "node:0", 7)])
    assert C.check_gcs(led, {0: tail(1), 1: tail(3)}) == []


# ---------------------------------------------------------------------------- check_resources


def fake_cluster(**scheduler):
    """A one-node duck-typed cluster for check_resources."""
    total = ResourceSet.of(CPU=2, GPU=1)
    s = dict(total=total, available=total, debt=ResourceSet(), workers={}, tasks={}, bundled=ResourceSet())
    s.update(scheduler)
    held = s.pop("held", ResourceSet())
    m = SimpleNamespace(fenced=False, scheduler=SimpleNamespace(**s), host=SimpleNamespace(held=lambda: held))
    return SimpleNamespace(alive_nodes=lambda: ["node:0"], node=lambda a: SimpleNamespace(machine=m))


def test_resources_fake_quiet_node_is_clean():
    assert C.check_resources(fake_cluster()) == []
    # an actor holding a GPU for life: available + held == total
    assert C.check_resources(fake_cluster(available=ResourceSet.of(CPU=2), held=ResourceSet.of(GPU=1))) == []


def test_resources_set_apart_for_placement_group_bundles_count_as_held():
    assert C.check_resources(fake_cluster(available=ResourceSet.of(CPU=1, GPU=1), bundled=ResourceSet.of(CPU=1))) == []


def test_resources_held_after_every_actor_was_killed_is_a_leak():
    out = C.check_resources(fake_cluster(available=ResourceSet.of(CPU=2), held=ResourceSet.of(GPU=1)), actors_gone=True)
    assert kinds(out) == ["resources"] and "after every actor was killed" in out[0].what


@pytest.mark.parametrize("tamper,words", [
    (dict(available=ResourceSet.of(CPU=1, GPU=1)), "!= total"),
    (dict(available=ResourceSet.of(CPU=2)), "!= total"),  # a GPU leaked
    (dict(debt=ResourceSet.of(CPU=1)), "debt"),
    (dict(workers={"w1": SimpleNamespace(worker_id="w1", state="busy")}), "busy"),
    (dict(tasks={1: SimpleNamespace(spec=SimpleNamespace(display_name=lambda: "t9"))}), "t9"),
])
def test_resources_fake_leaks_are_violations(tamper, words):
    out = C.check_resources(fake_cluster(**tamper))
    assert kinds(out) == ["resources"] and "node:0" in out[0].what and words in out[0].what


def test_resources_fenced_or_dead_machines_are_skipped():
    c = fake_cluster(available=ResourceSet())
    c.node("node:0").machine.fenced = True
    assert C.check_resources(c) == []
    assert C.check_resources(SimpleNamespace(alive_nodes=lambda: ["node:0"],
                                             node=lambda a: SimpleNamespace(machine=None))) == []


@pytest.fixture(scope="module")
def quiet_cluster():
    """A real two-node cluster that ran a few tasks and went quiet."""
    c = SimCluster(ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)), NodeShape(ResourceSet.of(CPU=1)))),
                   costs=ZERO, seed=3, validate=True)
    c.wait_ready(timeout=10.0)
    d = c.driver("node:0")
    specs = [d.submit(d.spec(None, name=f"t{i}", resources=ResourceSet.of(CPU=1))) for i in range(6)]
    d.watch([s.return_ids[0] for s in specs])
    assert c.run_until(lambda: d.all_ready(specs), 10.0)
    c.run_for(1.0)
    return c


def test_resources_real_quiet_cluster_is_clean(quiet_cluster):
    assert C.check_resources(quiet_cluster) == []
    assert C.check_no_rescues(quiet_cluster) == []


def test_resources_real_cluster_with_a_leaked_cpu(quiet_cluster):
    s = quiet_cluster.node("node:1").machine.scheduler
    before = s.available
    s.available = before - ResourceSet.of(CPU=1)
    try:
        out = C.check_resources(quiet_cluster)
    finally:
        s.available = before
    assert kinds(out) == ["resources"] and "node:1" in out[0].what


def test_no_rescues_flags_a_refresh_rescue():
    m = SimpleNamespace(objects=SimpleNamespace(refresh_rescues=2))
    c = SimpleNamespace(alive_nodes=lambda: ["node:3"], node=lambda a: SimpleNamespace(machine=m))
    out = C.check_no_rescues(c)
    assert kinds(out) == ["pubsub"] and "node:3" in out[0].what
    m.objects.refresh_rescues = 0
    assert C.check_no_rescues(c) == []


# ---------------------------------------------------------------------------- check_waits
# (new with the swarm's waits; skipped where checkers.py does not have it)


def wait_plan(key="w0", refs=("a", "b", "c"), num_returns=2, timeout=None, fetch=False):
    return SimpleNamespace(key=key, refs=tuple(refs), num_returns=num_returns, timeout=timeout, fetch=fetch, at=0.0)


def outcome(**kw):
    if not hasattr(C, "WaitOutcome"):
        pytest.skip("checkers.check_waits is not there")
    base = dict(started=1.0, ready=["a", "b"], done=True, finished=1.5)
    base.update(kw)
    return C.WaitOutcome(**base)


def test_waits_clean():
    assert C.check_waits([wait_plan()], {"w0": outcome()}) == []
    # a wait that timed out with fewer refs ready, in time
    assert C.check_waits([wait_plan(timeout=0.5)], {"w0": outcome(ready=["a"], timed_out=True, finished=1.5)}) == []


@pytest.mark.parametrize("plan,got,words", [
    (wait_plan(), None, "never issued"),
    (wait_plan(), dict(done=False), "never returned"),
    (wait_plan(), dict(ready=["a"], timed_out=True), "timed out without a timeout"),
    (wait_plan(timeout=1.0), dict(timed_out=True), "timed out with enough"),
    (wait_plan(), dict(ready=["a"]), "returned 1 ready"),
    (wait_plan(timeout=0.2), dict(finished=1.5), "returned after"),
    (wait_plan(), dict(ready=["a", "z"]), "not given"),
    (wait_plan(), dict(twice=["a"]), "twice"),
    (wait_plan(fetch=True), dict(early=["b"]), "before the object existed on the waiting node"),
])
def test_waits_violations(plan, got, words):
    outcomes = {} if got is None else {"w0": outcome(**got)}
    if got is None and not hasattr(C, "check_waits"):
        pytest.skip("checkers.check_waits is not there")
    out = C.check_waits([plan], outcomes)
    assert kinds(out) == ["waits"] and keys(out) == ["w0"] and words in out[0].what


# ---------------------------------------------------------------------------- draws-surface (issue 14)


def _derive(v, i):
    return v * 10 + i


def test_returns_clean_and_consistent_errors():
    res = {"t": ("v", 7), "t.r1": ("v", 71), "t.r2": ("v", 72),
           "u": err(ErrorKind.TASK_ERROR, "u raised"), "u.r1": err(ErrorKind.TASK_ERROR, "u raised"),
           "w": ("v", 3), "w.r1": err(ErrorKind.OBJECT_LOST)}  # (one copy lost, the other still there)
    assert C.check_returns([["t", "t.r1", "t.r2"], ["u", "u.r1"], ["w", "w.r1"]], res, _derive) == []


@pytest.mark.parametrize("got", [("v", 99), ("v", 71), err(ErrorKind.TASK_ERROR, "t raised"), err(ErrorKind.WORKER_CRASHED)])
def test_returns_a_second_return_that_does_not_fit_the_first(got):
    out = C.check_returns([["t", "t.r1", "t.r2"]], {"t": ("v", 7), "t.r1": ("v", 71), "t.r2": got}, _derive)
    assert kinds(out) == ["returns"] and keys(out) == ["t.r2"]


def test_flaky_clean():
    items = [("a", 2, -1), ("b", 2, 2), ("c", 3, 1)]
    res = {"a": ("v", 1), "b": ("v", 2), "c": err(ErrorKind.TASK_ERROR, "c raised on an early attempt (by design)")}
    assert C.check_flaky(items, res, None) == []
    # faults spent b's budget: its early error is allowed where the taint says so
    res["b"] = err(ErrorKind.TASK_ERROR, "b raised on an early attempt (by design)")
    assert C.check_flaky(items, res, {"b": {"retry", "flaky"}}) == []


def test_flaky_retried_beyond_the_budget_or_not_at_all():
    out = C.check_flaky([("c", 3, 2)], {"c": ("v", 1)}, None)
    assert kinds(out) == ["retries"] and "ran more often" in out[0].what
    out = C.check_flaky([("b", 1, 1)], {"b": err(ErrorKind.TASK_ERROR, "b raised on an early attempt (by design)")}, {})
    assert kinds(out) == ["retries"] and "not retried" in out[0].what


def _store(objects):
    """A fake cluster whose node:0 store accounting holds ``objects`` (oid -> pins)."""
    stored = {o: SimpleNamespace(pins=dict(p)) for o, p in objects.items()}
    machine = SimpleNamespace(objects=SimpleNamespace(store=SimpleNamespace(objects=stored)))
    node = SimpleNamespace(machine=machine, alive=True, store={o: (8, 0) for o in objects})
    return SimpleNamespace(nodes={"node:0": node}, gcs_row=lambda table, key: "row" if key in objects else None)


def test_freed_clean_and_violations():
    a, b = ObjectId(b"a" * 20), ObjectId(b"b" * 20)
    assert C.check_freed(_store({b: {}}), "node:0", [a], [b], "d") == []
    out = C.check_freed(_store({a: {}, b: {("client", "d"): 1}}), "node:0", [a], [b], "d")
    assert kinds(out) == ["freed"] * 3
    assert "still holds" in out[0].what and "row" in out[1].what and "still pins" in out[2].what


def _names_cluster(rows):
    return SimpleNamespace(gcs_row=lambda table, key: rows.get(key))


def test_names_clean_and_violations():
    from penumbra.core.records import ActorState

    a, b = ActorId(b"a" * 16), ActorId(b"b" * 16)
    named = [("a0", "swarm-a0", a), ("a1", "swarm-a1", b)]
    alive = {"a0": (ActorState.ALIVE, a), "a1": (ActorState.DEAD, None)}
    found = SimpleNamespace(found=True, plan=SimpleNamespace(name="swarm-a0", key="a0"))
    assert C.check_names(named, alive, _names_cluster({}), [found]) == []
    # alive without its name; a name left after every actor was killed; a lookup that never found it
    lost = {"a0": (ActorState.RESTARTING, None), "a1": (ActorState.DEAD, None)}
    missed = SimpleNamespace(found=False, plan=SimpleNamespace(name="swarm-a1", key="a1"))
    out = C.check_names(named, lost, _names_cluster({("", "swarm-a1"): b}), [missed])
    assert kinds(out) == ["names"] * 3 and keys(out) == ["a0", "a1", "a1"]


# ---------------------------------------------------------------- client-machine: a driver that loses its node


def _req(at: float, *ends) -> C.DriverRequest:
    return C.DriverRequest("r", "get", at, list(ends))


def test_lost_driver_clean():
    reqs = [_req(0.1, (0.2, "value")), _req(0.2, (0.3, "timeout")), _req(0.3, (0.5, "lost")),
            _req(0.6, (0.6, "lost"))]
    assert C.check_lost_driver(reqs, 0.5) == []


@pytest.mark.parametrize("req,words", [
    (_req(0.1), "never ended"),
    (_req(0.1, (0.2, "value"), (0.5, "lost")), "ended 2 times"),
    (_req(0.1, (0.7, "value")), "after the loss"),
    (_req(0.6, (0.6, "value")), "instead of failing at once"),
    (_req(0.6, (0.6, "shut down")), "instead of failing at once"),
])
def test_lost_driver_violations(req, words):
    out = C.check_lost_driver([req], 0.5)
    assert kinds(out) == ["lost-driver"] and words in out[0].what


def test_lost_driver_reports_a_broken_client_machine():
    from penumbra.core.client import LOST, ClientMachine

    m = ClientMachine("driver:1", "node:1")
    m.watch("w", [ActorId(b"x" * 20)], 1)
    m.state = LOST  # (a machine that kept a waiter after the loss)
    out = C.check_lost_driver([], 0.5, m)
    assert kinds(out) == ["lost-driver"] and "pending on a connection that is lost" in out[0].what


# ---------------------------------------------------------------------------- quiet-cluster checks (branch quiet)
# On the real quiet cluster above, tampered with one thing at a time (and
# put back), and on a real cluster whose zero-resource actor was killed.

from msgspec.structs import replace as _replace  # noqa: E402

from penumbra.core.ids import TaskId  # noqa: E402
from penumbra.core.objects import _Want  # noqa: E402
from penumbra.core.records import ActorState, TaskState  # noqa: E402
from penumbra.verification.executor import VerifyExecutor  # noqa: E402
from penumbra.verification.workload import VActor, VCall  # noqa: E402


def _stored(cluster):
    """``(address, machine, object id)`` of an object a live node stores."""
    for addr in cluster.alive_nodes():
        m = cluster.node(addr).machine
        for oid in m.objects.store.objects:
            return addr, m, oid
    raise AssertionError("the quiet cluster stores no object")


def test_quiet_checks_are_clean_on_a_real_quiet_cluster(quiet_cluster):
    assert C.check_pins(quiet_cluster) == []
    assert C.check_tables_agree(quiet_cluster) == []
    assert C.check_killed_actors(quiet_cluster, {}, {}) == []


def test_pins_a_pin_held_for_a_task_that_is_over_is_a_violation(quiet_cluster):
    addr, m, oid = _stored(quiet_cluster)
    store, tid = m.objects.store, TaskId(b"\x07" * len(oid.task_id))
    store.pin(oid, ("task", tid))
    try:
        out = C.check_pins(quiet_cluster)
        # the same pin for a task still queued there is fine
        m.scheduler.tasks[tid] = None
        try:
            assert C.check_pins(quiet_cluster) == []
        finally:
            del m.scheduler.tasks[tid]
    finally:
        store.unpin(oid, ("task", tid))
    assert kinds(out) == ["pins"] and addr in out[0].what and oid.short() in out[0].what
    assert "is over" in out[0].what


def test_pins_a_client_pin_counts_while_the_client_lives(quiet_cluster):
    _, m, oid = _stored(quiet_cluster)
    m.objects.store.pin(oid, ("client", "driver:9"))
    try:
        assert C.check_pins(quiet_cluster, client_alive=lambda c: True) == []
        out = C.check_pins(quiet_cluster, client_alive=lambda c: False)
    finally:
        m.objects.store.unpin(oid, ("client", "driver:9"))
    assert kinds(out) == ["pins"] and "driver:9" in out[0].what and "gone" in out[0].what


@pytest.mark.parametrize("want,words", [
    (dict(waiters={("watch", "driver:1", 99): True}), "watch 99"),
    (dict(waiters={("task", TaskId(b"\x05" * 14)): True}), "wanted for task"),
    (dict(waiters={}, fetching_from="node:0"), "still in flight"),
    (dict(waiters={}), "wanted by nobody"),
])
def test_pins_stale_wants_and_fetches_are_violations(quiet_cluster, want, words):
    _, m, oid = _stored(quiet_cluster)
    m.objects.wants[oid] = _Want(oid, **want)
    try:
        out = C.check_pins(quiet_cluster)
    finally:
        del m.objects.wants[oid]
    assert "pins" in kinds(out) and any(words in v.what for v in out), out


def test_pins_a_rebuild_mark_left_for_a_finished_task_is_a_violation(quiet_cluster):
    rec = quiet_cluster.head.recovery
    _, _, oid = _stored(quiet_cluster)
    row = quiet_cluster.gcs_row("tasks", oid.task_id)
    assert row is not None and row.state is TaskState.FINISHED
    rec.rebuilding[oid.task_id] = 0.0
    try:
        out = C.check_pins(quiet_cluster)
        rec.rebuild_attempt[oid.task_id] = row.attempt + 1  # a newer re-run is on its way: fine
        assert C.check_pins(quiet_cluster) == []
    finally:
        rec.rebuilding.pop(oid.task_id, None)
        rec.rebuild_attempt.pop(oid.task_id, None)
    assert kinds(out) == ["pins"] and "being rebuilt" in out[0].what


def _row(attempt=0, reconstructions=0):
    return SimpleNamespace(attempt=attempt, reconstructions=reconstructions)


def test_executions_within_budget_are_clean():
    tasks = [("a", 1, 0), ("b", 2, 2), ("c", 3, -1)]
    attempts = {1: [0], 2: [0, 1, 2], 3: [0, 1, 2, 3, 4, 5]}
    rows = {1: _row(), 2: _row(2, 1), 3: _row(5, 5)}
    assert C.check_executions(tasks, attempts, rows.get) == []


@pytest.mark.parametrize("attempts,row,words", [
    ([0, 1], _row(1), "ran 2 times"),  # max_retries=0: once at most
    ([1], _row(1), "past its budget"),  # one run, but of an attempt the budget never allowed
    ([0], _row(0, 1), "1 reconstruction"),  # rebuilt once although max_retries=0
    ([0], _row(1), "attempt 1"),
])
def test_executions_over_budget_are_violations(attempts, row, words):
    out = C.check_executions([("t7", 7, 0)], {7: attempts}, {7: row}.get)
    assert kinds(out)[:1] == ["executions"] and keys(out)[0] == "t7"
    assert any(words in v.what for v in out), out


@pytest.fixture(scope="module")
def killed_actor_cluster():
    """A real cluster whose zero-resource actor ran a call and was killed
    for good, then went quiet."""
    ex = VerifyExecutor()
    c = SimCluster(ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)), NodeShape(ResourceSet.of(CPU=1)))),
                   costs=ZERO, seed=5, validate=True, executor=ex)
    c.wait_ready(timeout=10.0)
    d = c.driver("node:0")
    h = d.create_actor(VActor("a"), cls="A", resources=ResourceSet())  # holds nothing for life
    spec = h.call(VCall("a.c0"))
    d.watch(list(spec.return_ids))
    assert c.run_until(lambda: d.all_ready([spec]), 10.0)
    h.kill(no_restart=True)
    c.run_for(1.0)
    return c, ex, h.actor_id


def test_killed_actor_clean(killed_actor_cluster):
    c, ex, aid = killed_actor_cluster
    assert ex.instances[aid]  # it did run somewhere
    assert C.check_killed_actors(c, {"a": aid}, ex.instances) == []
    assert C.check_pins(c) == [] and C.check_tables_agree(c) == [] and C.check_resources(c, actors_gone=True) == []


def test_killed_actor_alive_at_the_head_or_in_the_gcs(killed_actor_cluster):
    c, ex, aid = killed_actor_cluster
    actors = c.head.actors.actors
    dead = actors[aid]
    actors[aid] = _replace(dead, state=ActorState.ALIVE)
    try:
        out = C.check_killed_actors(c, {"a": aid}, ex.instances)
    finally:
        actors[aid] = dead
    assert kinds(out) == ["killed-actor"] and keys(out) == ["a"] and "the head has it alive" in out[0].what


def test_killed_actor_still_hosted_with_no_resources_is_a_violation(killed_actor_cluster):
    """What ``check_resources`` cannot see: the actor holds nothing."""
    c, ex, aid = killed_actor_cluster
    wid = ex.instances[aid][-1]
    addr = wid.split("/")[0]
    m = c.node(addr).machine
    m.host.actors[aid] = SimpleNamespace(worker=wid, held=ResourceSet())
    try:
        assert C.check_resources(c, actors_gone=True) == []
        out = C.check_killed_actors(c, {"a": aid}, ex.instances)
    finally:
        del m.host.actors[aid]
    assert kinds(out) == ["killed-actor"] and f"{addr} still hosts" in out[0].what


def test_killed_actor_worker_still_running_or_kept_is_a_violation(killed_actor_cluster):
    c, ex, aid = killed_actor_cluster
    wid = ex.instances[aid][-1]
    node = c.node(wid.split("/")[0])
    node.workers[wid] = SimpleNamespace(alive=True)
    node.machine.scheduler.workers[wid] = SimpleNamespace(worker_id=wid, state="actor")
    try:
        out = C.check_killed_actors(c, {"a": aid}, ex.instances)
    finally:
        del node.workers[wid]
        del node.machine.scheduler.workers[wid]
    assert kinds(out) == ["killed-actor"] * 2
    assert "still runs" in out[0].what and "keeps actor workers" in out[1].what


def test_tables_a_listed_location_the_store_lacks(quiet_cluster):
    addr, m, oid = _stored(quiet_cluster)
    store = m.objects.store
    size = store.size_of(oid)
    store.remove(oid)
    try:
        out = C.check_tables_agree(quiet_cluster)
    finally:
        store.admit(oid, size)
    assert "tables" in kinds(out)
    assert any(f"lists {addr} as holding object {oid.short()}" in v.what for v in out), out


def test_tables_an_unlisted_stored_object(quiet_cluster):
    addr, m, oid = _stored(quiet_cluster)
    ghost = type(oid)(bytes([oid[0] ^ 0xFF]) + bytes(oid[1:]))
    m.objects.store.admit(ghost, 8)
    quiet_cluster.node(addr).store[ghost] = (8, 0)
    try:
        out = C.check_tables_agree(quiet_cluster)
    finally:
        m.objects.store.remove(ghost)
        del quiet_cluster.node(addr).store[ghost]
    assert kinds(out) == ["tables"] and "does not list it there" in out[0].what and ghost.short() in out[0].what


def test_tables_a_pending_task_row_or_a_wrong_node_row(quiet_cluster):
    _, _, oid = _stored(quiet_cluster)
    head = quiet_cluster.head
    tail = quiet_cluster.replica(head.chain.shards[0].config.tail)
    rows = tail.tables.data["nodes"]
    row = rows["node:1"]
    rows["node:1"] = _replace(row, alive=False)
    try:
        out = C.check_tables_agree(quiet_cluster)
    finally:
        rows["node:1"] = row
    assert kinds(out) == ["tables"] and "node:1 dead" in out[0].what
    tid = oid.task_id
    for view in head.chain.shards.values():
        tasks = quiet_cluster.replica(view.config.tail).tables.data["tasks"]
        if tid in tasks:
            break
    done = tasks[tid]
    tasks[tid] = _replace(done, state=TaskState.PENDING)
    try:
        out = C.check_tables_agree(quiet_cluster)
    finally:
        tasks[tid] = done
    assert kinds(out) == ["tables"] and "pending" in out[0].what


# ---------------------------------------------------------------------------- check_derived_values (branch quiet)

from penumbra.core.ids import ObjectId  # noqa: E402
from penumbra.verification.workload import (ActorPlan, CallPlan, TaskPlan, VChild, VTask, Workload,  # noqa: E402
                                            digest)


def _oid(i: int) -> ObjectId:
    return ObjectId(bytes([i]) * 14 + b"\x00\x00\x00\x01")


def _derived_world():
    """A put, a task on it, a nested task, and an actor without replay
    whose two calls from one caller ran on one instance, then call 1 again
    on a second instance (a restart: its state started over)."""
    tasks = (TaskPlan("t0", ("p0",), VTask("t0"), ResourceSet.of(CPU=1), -1, 0.0),
             TaskPlan("t1", (), VTask("t1", children=(VChild("t1c0"), VChild("t1c1", children=(VChild("g"),)))),
                      ResourceSet.of(CPU=1), -1, 0.0))
    calls = (CallPlan("a0.c0", (), None, 0.0), CallPlan("a0.c1", ("t0",), None, 0.0))
    w = Workload((), tasks, (ActorPlan("a0", -1, -1, False, 0, 0.0, calls),))
    keys = {"t0": _oid(1), "t1": _oid(2), "a0.c0": _oid(3), "a0.c1": _oid(4)}
    aid = ActorId(b"\x09" * 12)
    p0 = digest("put", "p0")
    t0 = digest("t0", (p0,))
    t1 = digest("t1", (), (digest("t1c0", ()), digest("t1c1", (), (digest("g", ()),))))
    init = digest("init", "a0", ())
    c0 = digest(init, "a0.c0", ())
    c1_first = digest(c0, "a0.c1", (t0,))
    c1_again = digest(init, "a0.c1", (t0,))  # on the new instance, from the initial state
    log = [ActorExec(aid, "node:1/w1", "driver", 0, keys["a0.c0"].task_id, 0.1),
           ActorExec(aid, "node:1/w1", "driver", 1, keys["a0.c1"].task_id, 0.2),
           ActorExec(aid, "node:2/w0", "driver", 1, keys["a0.c1"].task_id, 0.5)]
    results = {"p0": ("v", p0), "t0": ("v", t0), "t1": ("v", t1), "a0.c0": ("v", c0), "a0.c1": ("v", c1_again)}
    return w, results, log, keys, c1_first


def test_derived_values_clean():
    w, results, log, keys, c1_first = _derived_world()
    assert C.check_derived_values(w, results, log, keys) == []
    # either execution's value may be the one delivered
    assert C.check_derived_values(w, {**results, "a0.c1": ("v", c1_first)}, log, keys) == []


@pytest.mark.parametrize("key", ["t0", "t1", "a0.c0", "a0.c1"])
def test_derived_values_a_value_nothing_computed_is_a_violation(key):
    w, results, log, keys, _ = _derived_world()
    results[key] = ("v", results[key][1] ^ 1)
    out = C.check_derived_values(w, results, log, keys)
    assert "derived" in kinds(out) and key in keys_of(out)


def keys_of(violations) -> list[str]:
    return [v.key for v in violations]


def test_derived_values_errors_and_undeterminable_inputs_are_skipped():
    w, results, log, keys, _ = _derived_world()
    # t0 failed: t0's own error is the results checker's business, and a0.c1
    # (its input) can no longer be derived
    results["t0"] = err(ErrorKind.WORKER_CRASHED)
    results["a0.c1"] = ("v", 12345)
    assert C.check_derived_values(w, results, log, keys) == []


def test_derived_values_a_call_no_instance_ran_is_a_violation():
    w, results, log, keys, _ = _derived_world()
    out = C.check_derived_values(w, results, log[:1], keys)
    assert kinds(out) == ["derived"] and keys_of(out) == ["a0.c1"] and "ever ran it" in out[0].what


def test_tables_an_actor_output_its_router_failed_is_the_known_race(quiet_cluster):
    """A value its host stored whose row its caller's router overwrote with
    ACTOR_DIED (a known race, ``checkers.value_overwritten``) is not
    reported as unlisted; the same row holding any other error is."""
    from penumbra.core.records import ErrorInfo

    addr, m, oid = _stored(quiet_cluster)
    head = quiet_cluster.head
    for view in head.chain.shards.values():
        objs = quiet_cluster.replica(view.config.tail).tables.data["objects"]
        if oid in objs:
            break
    row = objs[oid]
    try:
        for kind, reported in ((ErrorKind.ACTOR_DIED, False), (ErrorKind.WORKER_CRASHED, True)):
            objs[oid] = _replace(row, locations=frozenset(), error=ErrorInfo(kind, "x"), actor_id=ActorId(b"\x01" * 12))
            out = C.check_tables_agree(quiet_cluster)
            assert any("does not list it there" in v.what for v in out) is reported, (kind, out)
    finally:
        objs[oid] = row
