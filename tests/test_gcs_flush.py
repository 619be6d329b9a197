"""GCS flushing (the paper's Figure 10b): old rows move to disk and are still
found when lineage reconstruction needs them.

Core (tables and a chain on memnet), the simulator's modelled disk, and the
real runtime's head daemon writing segment files under its session dir.
"""

from __future__ import annotations

import pytest

from penumbra.core.gcs import FlushConfig, GcsReplica, GcsTiming
from penumbra.core.messages import (
    FlushRows,
    GcsRead,
    GcsReply,
    GcsWrite,
    LoadRows,
    NodeDied,
    ObjectsReady,
    RowsLoaded,
    Send,
    SubmitTask,
    WatchObjects,
)
from penumbra.core.records import ChainConfig, TaskState
from penumbra.core.tables import (
    AddLocation,
    AddTask,
    FinishTask,
    FlushOld,
    ForgetJob,
    Get,
    GetMany,
    RemoveLocation,
    RetryTask,
    Tables,
)
from penumbra.verification.memnet import MemNet, ok

R = ("gcs:0:0", "gcs:0:1", "gcs:0:2")
CFG = ChainConfig(shard=0, epoch=1, replicas=R)


def finished(core, t: Tables, n: int, node: str = "node:0", free: bool = True):
    """``n`` tasks added and finished on ``t``; their outputs freed (no
    location left) when ``free``."""
    specs = []
    for _ in range(n):
        s = core.spec()
        t.apply(AddTask(s, node))
        t.apply(FinishTask(s.task_id, node, ((s.return_ids[0], 8),)))
        if free:
            t.apply(RemoveLocation(s.return_ids[0], node))
        specs.append(s)
    return specs


# ============================================================================ tables


def test_flush_moves_only_rows_that_may_go_and_keeps_the_newest(core) -> None:
    t = Tables()
    old = finished(core, t, 5)
    kept_obj = finished(core, t, 1, free=False)[0]  # its output still has a copy
    pending = core.spec()
    t.apply(AddTask(pending, "node:1"))
    new = finished(core, t, 2)
    (seg, n), _ = t.apply(FlushOld(keep=2, limit=100))
    assert seg == 0 and t.flush_next == 1
    # the 5 old tasks and the first 6 tasks' freed outputs (the 2 newest
    # object rows stay); never the pending task or a located object
    gone_tasks = {s.task_id for s in old} | {kept_obj.task_id}
    assert set(t.flushed["tasks"]) == gone_tasks
    assert set(t.flushed["objects"]) == {s.return_ids[0] for s in old}
    assert n == len(gone_tasks) + len(old)
    assert pending.task_id in t.data["tasks"] and kept_obj.return_ids[0] in t.data["objects"]
    assert all(s.task_id in t.data["tasks"] for s in new)
    assert not any(k in t.data["tasks"] for k in gone_tasks)
    seg_out, rows = t.flush_out
    assert seg_out == 0 and {(tb, k) for tb, k, _ in rows} == (
        {("tasks", k) for k in gone_tasks} | {("objects", s.return_ids[0]) for s in old})
    # a read that needs them says which, from which segment
    assert t.flushed_wants(Get("tasks", old[0].task_id)) == (("tasks", old[0].task_id, 0),)
    assert t.flushed_wants(Get("tasks", new[0].task_id)) == ()
    by_key = {(tb, k): r for tb, k, r in rows}
    assert t.read_loaded(GetMany("tasks", (old[0].task_id, new[0].task_id)), rows) == (
        by_key[("tasks", old[0].task_id)], t.data["tasks"][new[0].task_id])
    # a second flush with nothing left to move makes no segment
    assert t.apply(FlushOld(keep=2, limit=100)) == ((None, 0), []) and t.flush_next == 1


def test_flush_limit_snapshot_and_written_keys_leave_the_index(core) -> None:
    t = Tables()
    specs = finished(core, t, 6)
    (seg, n), _ = t.apply(FlushOld(keep=0, limit=4))
    assert n == 4 and len(t.flushed["tasks"]) == 4
    # a replica that joins copies the index along with the tables
    copy = Tables.restore(t.snapshot())
    assert copy.fingerprint() == t.fingerprint() and copy.flush_next == 1
    # a write that brings a row into memory drops it from the index
    s = specs[0]
    t.apply(AddTask(s, "node:2"))  # (in a chain the row is restored first: see below)
    assert s.task_id in t.data["tasks"] and s.task_id not in t.flushed["tasks"]


def test_forget_job_forgets_flushed_rows_too(core) -> None:
    t = Tables()
    finished(core, t, 4)
    t.apply(FlushOld(keep=0, limit=100))
    assert t.flushed_rows() == 8
    t.apply(ForgetJob(1))
    assert t.flushed_rows() == 0 and not t.data["tasks"] and not t.data["objects"]


def test_forget_job_drops_objects_of_its_flushed_tasks(core) -> None:
    """(Found by the swarm: the object of a task whose row was on disk
    outlived its job, because ForgetJob matched objects to the job's tasks
    in memory only.)"""
    t = Tables()
    (s,) = finished(core, t, 1, free=False)  # its output still has a copy
    t.apply(FlushOld(keep=0, limit=100))
    assert s.task_id in t.flushed["tasks"] and s.return_ids[0] in t.data["objects"]
    (released, _) = t.apply(ForgetJob(1))
    assert s.return_ids[0] not in t.data["objects"] and released == ((s.return_ids[0], frozenset({"node:0"})),)


def test_flush_config_refuses_settings_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="keep_rows .* must be below max_rows"):
        FlushConfig(max_rows=10, keep_rows=10)
    with pytest.raises(ValueError, match="interval must be a positive"):
        FlushConfig(interval=0)
    with pytest.raises(ValueError, match="unknown GCS flush setting"):
        FlushConfig.from_value({"max_row": 5})
    assert FlushConfig.from_value(True) == FlushConfig() and FlushConfig.from_value(None) is None


# ============================================================================ a chain on memnet


def chain_net():
    net = MemNet(latency=0.001)
    for r in R:
        net.add(r, GcsReplica(r, 0, config=CFG))
    inbox = net.add_client("c")
    return net, inbox


def replies(inbox, req_id):
    return [m.result for m in inbox if isinstance(m, GcsReply) and m.req_id == req_id]


def test_a_chain_flushes_the_same_rows_and_answers_reads_and_writes_of_them(core) -> None:
    net, inbox = chain_net()
    req = 0
    specs = []
    for _ in range(5):
        s = core.spec()
        specs.append(s)
        for op in (AddTask(s, "node:0"), FinishTask(s.task_id, "node:0", ((s.return_ids[0], 8),))):
            req += 1
            net.send("c", R[0], GcsWrite(client="c", req_id=req, op=op))
    net.run_for(0.1)
    head = net.machines[R[0]]
    net._execute(R[0], head.flush_now(net.now, keep=1))
    net.run_for(0.1)
    fps = {net.machines[r].tables.fingerprint() for r in R}
    assert len(fps) == 1, "the replicas differ after a flush"
    for r in R:
        assert len(net.machines[r].tables.flushed["tasks"]) == 4
    assert (0, 0) in net.disk and len(net.disk[(0, 0)]) == 4
    # a read of a flushed row at the tail: loaded, then answered
    s0 = specs[0]
    net.send("c", R[2], GcsRead(client="c", req_id=100, query=Get("tasks", s0.task_id)))
    net.run_for(0.1)
    (row,) = replies(inbox, 100)
    assert row.spec == s0 and row.state is TaskState.FINISHED
    assert s0.task_id not in net.machines[R[2]].tables.data["tasks"]  # a read changes nothing
    # a write to a flushed row (reconstruction re-runs the task): the row
    # comes back on every replica first, then the write applies to it
    net.send("c", R[0], GcsWrite(client="c", req_id=101, op=RetryTask(s0.task_id, "node:1", reconstruction=True, attempt=1)))
    net.send("c", R[0], GcsWrite(client="c", req_id=102, op=AddLocation(specs[4].return_ids[0], "node:1", 8)))
    net.run_for(0.1)
    (row,) = replies(inbox, 101)
    assert row is not None and row.state is TaskState.PENDING and row.reconstructions == 1
    assert replies(inbox, 102) == [True]
    for r in R:
        t = net.machines[r].tables
        assert t.data["tasks"][s0.task_id].node == "node:1" and s0.task_id not in t.flushed["tasks"]
    assert len({net.machines[r].tables.fingerprint() for r in R}) == 1


def test_a_row_the_disk_lost_reads_as_missing_instead_of_hanging(core) -> None:
    net, inbox = chain_net()
    s = core.spec()
    net.send("c", R[0], GcsWrite(client="c", req_id=1, op=AddTask(s, "node:0")))
    net.send("c", R[0], GcsWrite(client="c", req_id=2, op=FinishTask(s.task_id, "node:0", ((s.return_ids[0], 8),))))
    net.run_for(0.1)
    net._execute(R[0], net.machines[R[0]].flush_now(net.now))
    net.run_for(0.1)
    net.disk.clear()
    net.send("c", R[0], GcsWrite(client="c", req_id=3, op=RetryTask(s.task_id, "node:1", attempt=1)))
    net.run_for(0.1)
    assert replies(inbox, 3) == [None]  # as if never written: no row to retry
    assert not any(net.machines[r].tables.flushed_rows() and s.task_id in net.machines[r].tables.flushed["tasks"] for r in R)


def test_only_the_head_orders_a_flush() -> None:
    r = GcsReplica(R[1], 0, config=CFG)
    with pytest.raises(RuntimeError, match="not the head"):
        r.flush_now(0.0)


def test_a_replica_joining_after_a_flush_copies_the_rows_in_a_window_before_it_is_ready(core) -> None:
    """Issues 15+18, the protocol: the snapshot carries the flushed-row
    index, not the rows; the joiner asks the tail for them a few segments
    at a time (``FlushedRowsRequest``), the tail loads them (``LoadRows``)
    and sends them (``FlushedRowsCopy``), the joiner writes each to its own
    disk (``FlushRows``) and reports ready only after the last; an answer
    lost on the way is asked for again."""
    from penumbra.core.messages import (
        ChainConfigMsg,
        FlushedRowsCopy,
        FlushedRowsRequest,
        ReplicaReady,
        StateSnapshot,
        StateTransferRequest,
        TimerFired,
    )

    solo = ChainConfig(shard=0, epoch=1, replicas=(R[0],))
    tail = GcsReplica(R[0], 0, config=solo)
    disk: dict = {}  # the tail's disk: segment -> {(table, key): row}
    finished(core, tail.tables, 6)
    for _ in range(6):
        tail.tables.apply(FlushOld(keep=0, limit=2))
        seg, rows = tail.tables.flush_out
        disk[seg] = {(tb, k): r for tb, k, r in rows}
    assert len(disk) == 6 and tail.tables.flushed_rows() == 12
    joiner = GcsReplica(R[1], 0, joining=True)

    def sends(cmds, kind):
        return [c.msg for c in cmds if isinstance(c, Send) and isinstance(c.msg, kind)]

    (req,) = sends(joiner.handle(ChainConfigMsg(config=solo), 0.0), StateTransferRequest)
    (snap,) = sends(tail.handle(req, 0.0), StateSnapshot)
    asks = sends(joiner.handle(snap, 0.0), FlushedRowsRequest)
    assert [a.segment for a in asks] == [0, 1, 2, 3]  # a window, not all at once
    assert joiner.joining, "ready before it has the flushed rows"

    def answer(ask):
        (load,) = [c for c in tail.handle(ask, 0.0) if isinstance(c, LoadRows)]
        rows = tuple((tb, k, disk[seg][(tb, k)]) for tb, k, seg in load.wants if (tb, k) in disk.get(seg, {}))
        (copy,) = sends(tail.handle(RowsLoaded(token=load.token, rows=rows), 0.0), FlushedRowsCopy)
        return copy

    written: dict = {}
    pending = list(asks)
    lost = pending.pop(1)  # its answer never arrives
    cmds = []
    while pending:
        cmds = joiner.handle(answer(pending.pop(0)), 0.001)
        for c in cmds:
            if isinstance(c, FlushRows):
                written[c.segment] = {(tb, k): r for tb, k, r in c.rows}
        pending += sends(cmds, FlushedRowsRequest)
    assert lost.segment not in written and not sends(cmds, ReplicaReady)
    # the joiner's timer asks again for what is still missing
    later = joiner.timing.heartbeat_timeout + 0.01
    again = sends(joiner.handle(TimerFired(key=("gcs", "tick")), later), FlushedRowsRequest)
    assert [a.segment for a in again] == [lost.segment]
    cmds = joiner.handle(answer(again[0]), later)
    written.update({c.segment: {(tb, k): r for tb, k, r in c.rows} for c in cmds if isinstance(c, FlushRows)})
    assert sends(cmds, ReplicaReady) and not joiner.joining
    assert written == disk  # its own disk now holds every row its index names
    assert joiner.tables.fingerprint() == tail.tables.fingerprint()


# ============================================================================ whole cluster on memnet


FLUSH = GcsTiming(flush=FlushConfig(interval=0.05, max_rows=1, keep_rows=0, batch=1000))


def test_memory_stays_bounded_and_a_flushed_task_is_reconstructed(core) -> None:
    """A chain whose producer rows were flushed: node:1 dies holding a and b;
    waiting on c (needs b) rebuilds both from the rows read back off disk."""
    net = core.cluster(nodes=3, shards=2, chain=2, behaviour=lambda s, a: ok(0.1), gcs_timing=FLUSH)
    inbox = net.add_client("c:d")
    net.add_client("c:w")
    a = core.spec()
    b = core.spec(deps=a.return_ids)
    for s in (a, b):
        net.send("c:w", "node:1", SubmitTask(client="c:w", spec=s))
    net.run_for(1.0)
    replicas = [m for addr, m in net.machines.items() if addr.startswith("gcs:")]
    flushed = set().union(*(m.tables.flushed["tasks"] for m in replicas))
    assert {a.task_id, b.task_id} <= flushed, "the finished tasks' rows were not flushed"
    assert not any(a.task_id in m.tables.data["tasks"] for m in replicas)
    net.crash("node:1")
    net.inject("head", NodeDied(node_id="node:1"))
    net.run_for(0.5)
    c = core.spec(deps=b.return_ids)
    net.send("c:d", "node:0", SubmitTask(client="c:d", spec=c))
    net.send("c:d", "node:0", WatchObjects(client="c:d", req_id=1, object_ids=c.return_ids, fetch=True))
    net.run_for(3.0)
    got = {}
    for m in inbox:
        if isinstance(m, ObjectsReady):
            got.update(dict(m.objects))
    assert got[c.return_ids[0]].error is None
    assert net.machines["head"].recovery.reexecuted == 2


# ============================================================================ simulator


def test_sim_flushes_and_rebuilds_lost_objects_from_flushed_lineage() -> None:
    """On SimCluster: chains of tasks with a tight flush threshold; a node
    dies mid-run and what it held is rebuilt from task rows read back off
    the modelled disk."""
    from penumbra.core.layout import ClusterLayout, NodeShape
    from penumbra.core.scheduler import SchedulerConfig
    from penumbra.core.specs import ResourceSet
    from penumbra.sim.cluster import SimCluster
    from penumbra.sim.costs import PAPER
    from penumbra.sim.workloads import ChainStream

    flush = FlushConfig(interval=0.05, max_rows=8, keep_rows=2, batch=1000)
    layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)),) * 4, gcs_shards=2, chain_length=2,
                           scheduler=SchedulerConfig(forward_queue_threshold=2), node_timeout=0.5,
                           gcs_timing=GcsTiming(heartbeat_interval=0.01, heartbeat_timeout=0.1, flush=flush))
    c = SimCluster(layout, costs=PAPER, seed=3, validate=True)
    c.wait_ready()
    s = ChainStream(c.driver("node:0"), 8, 12, duration=0.05, size=1000).start()
    c.run_for(0.3)
    assert c.gcs_disk.rows_written > 0, "nothing was flushed"
    c.crash_node("node:2")
    assert c.run_until(lambda: s.complete, 120)
    assert s.all_correct()
    assert c.head.recovery.reexecuted > 0
    assert c.gcs_disk.loads > 0, "no flushed row was read back"
    for shard in c.head.chain.shards.values():
        fps = {c.replica(r).tables.fingerprint() for r in shard.config.replicas}
        assert len(fps) == 1


def _flushing_sim(seed: int = 3):
    from penumbra.core.layout import ClusterLayout, NodeShape
    from penumbra.core.scheduler import SchedulerConfig
    from penumbra.core.specs import ResourceSet
    from penumbra.sim.cluster import SimCluster
    from penumbra.sim.costs import PAPER

    flush = FlushConfig(interval=0.05, max_rows=8, keep_rows=2, batch=1000)
    layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)),) * 4, gcs_shards=1, chain_length=2,
                           scheduler=SchedulerConfig(forward_queue_threshold=2), node_timeout=0.5,
                           gcs_timing=GcsTiming(heartbeat_interval=0.01, heartbeat_timeout=0.1, flush=flush))
    return SimCluster(layout, costs=PAPER, seed=seed, validate=True)


def test_sim_disk_is_per_replica_and_a_restart_empties_it() -> None:
    c = _flushing_sim()
    c.wait_ready()
    from penumbra.sim.workloads import ChainStream

    ChainStream(c.driver("node:0"), 8, 12, duration=0.05, size=1000).start()
    c.run_for(0.3)
    r0, r1 = c.head.chain.shards[0].config.replicas
    assert c.gcs_disk.segments(r0) and c.gcs_disk.segments(r0).keys() == c.gcs_disk.segments(r1).keys()
    c.crash_replica(r1)
    c.restart_replica(r1)
    assert not c.gcs_disk.segments(r1), "a replica restarted empty kept its disk"


def test_sim_replica_that_joined_after_a_flush_serves_the_flushed_rows() -> None:
    """Issues 15+18: a replica joins after a flush (copying the tail's
    snapshot, flushed-row index included), the old member dies, and the
    joiner, now the tail, must still find the flushed rows on its own disk:
    for a read and for the lineage reconstruction of a lost object."""
    from penumbra.sim.workloads import ChainStream

    c = _flushing_sim()
    c.wait_ready()
    s = ChainStream(c.driver("node:0"), 8, 12, duration=0.05, size=1000).start()
    c.run_for(0.3)
    assert c.gcs_disk.rows_written > 0, "nothing was flushed"
    r0, r1 = c.head.chain.shards[0].config.replicas
    c.crash_replica(r1, restart_after=0.02)

    def joined() -> bool:
        m = c.replica(r1)
        return m is not None and m.active and m._can_read() and r1 in c.head.chain.shards[0].config.replicas

    assert c.run_until(joined, 5), "the restarted replica did not join again"
    before = dict(c.replica(r1).tables.flushed["tasks"])
    assert before, "the joiner's snapshot had no flushed rows"
    c.crash_replica(r0)  # the joiner carries the shard alone now
    assert c.run_until(lambda: c.head.chain.shards[0].config.replicas == (r1,), 5)
    missing = [t for t in before if c.gcs_row("tasks", t) is None]
    assert not missing, f"{len(missing)} of {len(before)} flushed task rows are lost at the new tail"
    c.crash_node("node:2")
    assert c.run_until(lambda: s.complete, 120)
    assert s.all_correct() and not s.errors, s.errors
    assert c.head.recovery.reexecuted > 0
    assert c.gcs_disk.loads > 0


@pytest.mark.timeout(600)
def test_swarm_every_member_holds_on_its_own_disk_the_rows_its_index_names(monkeypatch) -> None:
    """Over the swarm's seeds that draw flushing (faults on: replicas crash
    and rejoin, heads die and recover): at the end of each run, every chain
    member's flushed-row index names only rows its own disk holds (a member
    that joined after a flush copied them).  The swarm's checkers compare
    outcomes, which a lost flushed row rarely changes; this says it directly."""
    from penumbra.core import gcs
    from penumbra.core.messages import FlushedRowsCopy
    from penumbra.verification import swarm

    copies = []
    on_copy = gcs.GcsReplica._on_copy

    def counting(self, ev, now):
        copies.append(ev.segment)
        return on_copy(self, ev, now)

    monkeypatch.setitem(gcs._HANDLERS, FlushedRowsCopy, counting)
    runs = joined = 0
    for seed in range(300):
        plan = swarm.plan_seed(seed)
        if plan.layout.gcs_timing.flush is None:
            continue
        r = swarm.run_plan(plan, faults=True)
        assert not r.violations, [str(v) for v in r.violations]
        c = r.cluster
        runs += 1
        joined += bool(copies)
        copies.clear()
        for shard, view in c.head.chain.shards.items():
            for rid in view.config.replicas:
                m = c.replica(rid)
                if m is None or m.joining:
                    continue
                disk = c.gcs_disk.segments(rid)
                lost = [(t, k) for t, idx in m.tables.flushed.items() for k, seg in idx.items()
                        if (t, k) not in disk.get((shard, seg), {})]
                assert not lost, f"seed {seed}: {rid} lacks {len(lost)} flushed rows its index names, e.g. {lost[:3]}"
    assert runs >= 30 and joined >= 10, (runs, joined)


# ============================================================================ real runtime


def _flushed_task_ids(session_dir: str) -> set:
    """Task ids in the head daemon's segment files (what went to disk)."""
    import glob
    import pickle

    out = set()
    for path in glob.glob(f"{session_dir}/gcs-flush/shard-*/segment-*.pkl"):
        with open(path, "rb") as f:
            out |= {key for table, key in pickle.load(f) if table == "tasks"}
    return out


def _gcs_rows() -> dict:
    from penumbra.api.context import current_runtime
    from penumbra.core.tables import TableSizes

    out: dict = {}
    for shard in current_runtime().gcs_request(TableSizes(), timeout=60):
        for name, n in shard:
            out[name] = out.get(name, 0) + n
    return out


@pytest.fixture
def flushing_cluster():
    import penumbra as ray
    from penumbra.transports.launch import Cluster

    c = Cluster(head_node_args={"num_cpus": 1, "validate": True, "node_timeout": 2.0,
                                "gcs_flush": {"interval": 0.2, "max_rows": 50, "keep_rows": 5, "batch": 10_000}})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _poll(cond, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.timeout(180)
def test_real_head_keeps_gcs_rows_bounded_over_a_long_run(flushing_cluster):
    import penumbra as ray

    ray.init(address=flushing_cluster.address, _token=flushing_cluster.token)

    @ray.remote
    def tiny(i):
        return i

    peak = 0
    for k in range(10):  # 3,000 tasks in one job: without flushing, 3,000 task rows
        assert ray.get([tiny.remote(k * 300 + i) for i in range(300)], timeout=60) == list(range(k * 300, k * 300 + 300))
        peak = max(peak, _gcs_rows()["tasks"])
    session = flushing_cluster.head.session_dir
    _poll(lambda: len(_flushed_task_ids(session)) >= 2_500, 30, "the finished tasks' rows to reach disk")
    # what stays in memory: the threshold plus what a 0.2 s flush interval
    # lets through.  (The results' object rows stay: each object is still
    # cached in the store, and a row with a location is live; it goes once
    # the object is evicted.)
    assert peak < 1_500, peak


@pytest.mark.timeout(180)
def test_real_lineage_reconstruction_reads_flushed_rows_back(flushing_cluster):
    """As test_runtime_cluster's node-death test, but the producers' task
    rows are on disk (not in the head's memory) when the node dies."""
    import numpy as np

    import penumbra as ray

    doomed = flushing_cluster.add_node(num_cpus=1, resources={"doomed": 1})
    survivor = flushing_cluster.add_node(num_cpus=1, resources={"doomed": 1})
    ray.init(address=flushing_cluster.address, _token=flushing_cluster.token)
    flushing_cluster.wait_for_nodes()

    @ray.remote(resources={"doomed": 1})
    def produce(i):
        return ray.get_runtime_context().get_node_id(), np.full(200_000, i, dtype=np.int64)

    @ray.remote
    def tiny(i):
        return i

    refs = [produce.remote(i) for i in range(6)]
    ray.wait(refs, num_returns=6, timeout=60, fetch_local=False)
    # push the GCS past its threshold so the producers' rows are flushed
    assert ray.get([tiny.remote(i) for i in range(200)], timeout=60) == list(range(200))
    producers = {r.task_id() for r in refs}
    session = flushing_cluster.head.session_dir
    _poll(lambda: producers <= _flushed_task_ids(session), 30, "the producers' task rows to be flushed")
    flushing_cluster.remove_node(doomed)  # SIGKILL: its objects are lost
    values = ray.get(refs, timeout=120)
    assert [int(v[1][0]) for v in values] == list(range(6))
    assert {v[0] for v in values} <= {doomed.node_id, survivor.node_id}


@pytest.mark.timeout(180)
def test_real_replica_joining_after_a_flush_copies_the_flushed_rows_and_serves_them(flushing_cluster):
    """Issues 15+18 on real processes: a node started with ``gcs_replica``
    AFTER tasks were flushed joins each chain as its tail.  Its replica
    copies the flushed segments to its own session's disk while joining,
    and a read of a flushed task row, now served by that tail, loads it
    from there (before the fix: no such files, the row read as missing)."""
    import penumbra as ray
    from penumbra.api.context import current_runtime
    from penumbra.cli import _ask_daemon
    from penumbra.core.tables import Get

    ray.init(address=flushing_cluster.address, _token=flushing_cluster.token)

    @ray.remote
    def tiny(i):
        return i

    refs = [tiny.remote(i) for i in range(300)]
    assert ray.get(refs, timeout=60) == list(range(300))
    session = flushing_cluster.head.session_dir
    _poll(lambda: len(_flushed_task_ids(session)) >= 200, 30, "the finished tasks' rows to reach disk")
    before = _flushed_task_ids(session)
    b = flushing_cluster.add_node(num_cpus=1, gcs_replica=True)

    def b_is_every_tail() -> bool:
        table = _ask_daemon(flushing_cluster.address, flushing_cluster.token, "addresses")
        chains = getattr(table, "chains", ()) or ()
        return bool(chains) and all(table.replicas.get(c.replicas[-1]) == b.address for c in chains)

    _poll(b_is_every_tail, 60, "B's replica to join every chain as its tail")
    # (the daemon writes the copies from a thread: they land shortly after)
    _poll(lambda: before <= _flushed_task_ids(b.session_dir), 30, "B's replica to write the flushed segments")
    probe = sorted(before & {r.task_id() for r in refs}, key=repr)[:20]
    assert probe
    rows = [current_runtime().gcs_request(Get("tasks", t), timeout=60) for t in probe]
    assert all(row is not None and row.spec.task_id == t for row, t in zip(rows, probe)), rows


@pytest.mark.timeout(240)
def test_real_flushed_rows_survive_the_head_daemon_killed_and_recovered_from_a_late_replica(flushing_cluster):
    """Issues 15+18, the whole story: node B starts with ``gcs_replica``
    after tasks were flushed (its replica copies the segments while
    joining); the head daemon is killed (SIGKILL) and a new head recovers
    from B; the recovered head's own replicas join after the flush too,
    copying from B, and become the tails.  A flushed task row still reads
    back through the recovered cluster.

    (The driver's node C is stopped before the kill: a node drops its
    drivers when it loses the head, and a job known to have ended is
    forgotten, flushed rows included; stopped, C never says so, so the
    rows must stay.)"""
    import os
    import signal

    import penumbra as ray
    from penumbra.api.context import current_runtime
    from penumbra.cli import _ask_daemon
    from penumbra.core.tables import Get
    from penumbra.transports.launch import spawn_daemon

    c = flushing_cluster.add_node(num_cpus=1)  # the driver's node
    ray.init(address=c.address, _token=flushing_cluster.token)

    @ray.remote
    def tiny(i):
        return i

    refs = [tiny.remote(i) for i in range(300)]
    assert ray.get(refs, timeout=60) == list(range(300))
    head = flushing_cluster.head
    _poll(lambda: len(_flushed_task_ids(head.session_dir)) >= 200, 30, "the finished tasks' rows to reach disk")
    before = _flushed_task_ids(head.session_dir)
    b = flushing_cluster.add_node(num_cpus=1, gcs_replica=True)

    def tails_at(address: str) -> bool:
        try:
            table = _ask_daemon(flushing_cluster.address, flushing_cluster.token, "addresses")
        except Exception:  # (the new head is not up yet)
            return False
        chains = getattr(table, "chains", ()) or ()
        return bool(chains) and all(table.replicas.get(ch.replicas[-1]) == address for ch in chains)

    _poll(lambda: tails_at(b.address), 60, "B's replica to join every chain as its tail")
    # (the daemon writes the copies from a thread: they land shortly after)
    _poll(lambda: before <= _flushed_task_ids(b.session_dir), 30, "B's replica to write the flushed segments")
    probe = sorted(before & {r.task_id() for r in refs}, key=repr)[:20]
    assert probe
    os.kill(c.proc.pid, signal.SIGSTOP)
    try:
        ray.shutdown()
        port = int(head.address.rsplit(":", 1)[1])
        head.kill()  # SIGKILL: the head daemon and the replicas it hosted
        # (no flushing at the new head: every segment it holds is a copy)
        flushing_cluster.head = new = spawn_daemon(
            head=True, token=flushing_cluster.token, parent_pid=os.getpid(), num_cpus=1, port=port,
            recover_from=[b.address], node_timeout=2.0, validate=True)
        _poll(lambda: tails_at(new.address), 60, "the recovered head's replicas to join every chain as its tail")
        _poll(lambda: before <= _flushed_task_ids(new.session_dir), 30,
              "the recovered head's replicas to write the flushed segments")
        ray.init(address=b.address, _token=flushing_cluster.token)
        rows = [current_runtime().gcs_request(Get("tasks", t), timeout=60) for t in probe]
        assert all(row is not None and row.spec.task_id == t for row, t in zip(rows, probe)), rows
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)
