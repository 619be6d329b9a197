"""The swarm's GCS placement and head crashes (issue 15, swarm-placement):
replicas on nodes that fail independently, a head crash answered by a
recovered head, and what the core had to do for the swarm's seeds to pass."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from penumbra.core.layout import ClusterLayout, NodeShape
from penumbra.core.specs import ResourceSet
from penumbra.sim.cluster import SimCluster
from penumbra.sim.workloads import TaskModel
from penumbra.verification import swarm

pytestmark = pytest.mark.timeout(120)


def _layout(n: int = 3) -> ClusterLayout:
    return ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)),) * n, chain_length=2,
                         replica_hosts={"gcs:0:1": "node:1"})


def test_a_job_whose_driver_exits_while_the_head_is_down_is_ended_by_the_recovered_head():
    # The node tells the head JobFinished once; sent while there is no head,
    # it is lost.  The recovered head learns it from the node's report
    # (swarm seeds 15, 25, 72, ... of the placement draws: "the head never
    # learned that it ended").
    c = SimCluster(_layout(), validate=True, seed=1)
    c.wait_ready()
    d = c.driver("node:0")
    spec = d.submit(d.spec(TaskModel(duration=0.01)))
    d.watch(spec.return_ids)
    assert c.run_until(lambda: d.all_ready([spec]), 2.0)
    job = d.job_id
    c.crash_head()
    d.close()
    c.run_for(0.2)  # the node's JobFinished went to a dead head
    c.recover_head()
    assert c.run_until(lambda: c.head.recovering is None and job in c.head.ended_jobs, 3.0), \
        "the recovered head never learned that the job ended"
    assert c.run_until(lambda: c.gcs_row("tasks", spec.task_id) is None, 5.0), "the ended job was never forgotten"


PLANS = pathlib.Path(__file__).parent / "swarm_plans"


def test_tasks_forwarded_to_the_old_head_whose_rows_land_late_are_placed_by_the_recovered_head():
    # Seed 122's plan: the chain heads of both shards lived on node:3, which
    # died while there was no head, so node:0's task-row writes stalled until
    # the new head reconfigured the chains -- after it had read node:0's
    # pending rows.  The tasks node:0 had forwarded to the old head were
    # never placed.  Now the head reads a node's pending rows only once the
    # node says its writes landed (branch head-recover found and fixed it
    # too, 44fa8af; its fix is the one kept).
    plan = swarm.plan_from_text((PLANS / "head-crash-122.txt").read_text())
    report = swarm.check_plan(plan)
    assert report.ok, [str(v) for v in report.violations[:5]]


def test_an_actor_whose_worker_died_while_there_was_no_head_is_restarted():
    # Seed 991's plan: actor a0's worker on node:0 died while the head was
    # down; the node's one ActorReported went to the dead head, and the
    # recovered head, finding the actor ALIVE on a live node in the table,
    # never restarted it: its calls hung (and its caller's router sent them
    # to node:0 and back, stale, for good).  Now the node tells a recovered
    # head again of the deaths it reported.
    plan = swarm.plan_from_text((PLANS / "head-crash-991.txt").read_text())
    report = swarm.check_plan(plan)
    assert report.ok, [str(v) for v in report.violations[:5]]


def test_a_shard_whose_last_member_rejoins_empty_takes_back_the_member_cut_while_paused():
    # Seed 591's plan: a pause got gcs:0:1 cut (gcs:0:0, caught up, lived),
    # then gcs:0:0 crashed and rejoined empty; the master cut it too, the
    # shard had no replica and the GCS client raised IndexError.  Now the
    # master takes gcs:0:1 back (the shard's only copy left) and the client
    # holds requests for a chain with no replica
    # (tests/test_core_chain_last_member.py).
    plan = swarm.plan_from_text((PLANS / "chain-last-member-591.txt").read_text())
    report = swarm.check_plan(plan)
    assert report.ok, [str(v) for v in report.violations[:5]]


def test_a_node_that_joins_while_there_is_no_head_is_known_to_the_recovered_head():
    # A node's NodeJoin sent while there is no head is lost; the recovered
    # head did not know it (it is in no table) and ignored its heartbeats,
    # so a task only it could run stayed infeasible for good (seed 600: a
    # crashed node's replacement, the only one with ``special``).  Now a
    # node says NodeJoin again (on its refresh timer) until welcomed.
    c = SimCluster(_layout(), validate=True, seed=1)
    c.wait_ready()
    c.crash_head()
    new = c.add_node(NodeShape(ResourceSet.of(CPU=2, special=1)))
    c.run_for(0.3)  # its NodeJoin went to a dead head
    c.recover_head()
    assert c.run_until(lambda: c.head.recovering is None and new in c.head.misses, 3.0), \
        "the recovered head never learned of the node that joined while it was down"
    d = c.driver("node:0")
    spec = d.submit(d.spec(TaskModel(duration=0.01), resources=ResourceSet.of(CPU=1, special=1)))
    d.watch(spec.return_ids)
    assert c.run_until(lambda: d.all_ready([spec]), 3.0), "a task only the new node can run never ran"


def test_actor_calls_behind_a_task_only_a_node_joined_while_there_was_no_head_can_run():
    # Seed 600's plan: node:1 crashed and its replacement node:2 (the only
    # node with ``special``) joined while the head was down; the recovered
    # head never knew node:2, so t2 (needing ``special``) stayed infeasible
    # and a1's calls after a1.c5 (which takes t2) hung.
    plan = swarm.plan_from_text((PLANS / "head-crash-600.txt").read_text())
    report = swarm.check_plan(plan)
    assert report.ok, [str(v) for v in report.violations[:5]]


def test_copies_of_a_job_forgotten_just_before_the_head_died_are_dropped():
    # Seed 562's plan: the head wrote ForgetJob for job 3 and crashed before
    # the reply, which names the nodes that must drop the job's copies
    # (DropObjects); the recovered head found the job forgotten, and node:0
    # kept six copies the object table does not list.  Now a node, once its
    # writes landed after a head recovery, reads which of its copies the
    # table lists (ObjectsOnNode) and drops the rest.
    plan = swarm.plan_from_text((PLANS / "head-crash-562.txt").read_text())
    report = swarm.check_plan(plan)
    assert report.ok, [str(v) for v in report.violations[:5]]


def test_a_remote_put_whose_record_a_head_outage_stalls_is_drawn_clear_of_it():
    # Seed 348's plan as drawn before: node:3's driver put r0 and r1 while
    # there was no head; shard 0's chain head had died with the head, so
    # their AddLocation writes waited for the new head, and node:3 died
    # before they landed: the objects were in no table and the gets of
    # them hung.  penumbra's objects are recorded in the GCS (no owners to
    # raise OwnerDiedError), so the draw now keeps such puts clear of the
    # outage (_keep_remote_puts_recorded): here the crash comes too early
    # (0.063 s) to move them before it, and they are left out.
    old = swarm.plan_from_text((PLANS / "remote-puts-in-head-outage-348.txt").read_text())
    assert not swarm.check_plan(old).ok  # (the plan as drawn then: a hang)
    workload = swarm._keep_remote_puts_recorded(old.workload, old.faults)
    assert {p.key for p in old.workload.puts} - {p.key for p in workload.puts} == {"r0", "r1"}
    assert not {"r0t", "r1t"} & {t.key for t in workload.tasks}
    plan = dataclasses.replace(old, workload=workload)
    assert plan == swarm.plan_seed(348)
    report = swarm.check_plan(plan)
    assert report.ok, [str(v) for v in report.violations[:5]]
