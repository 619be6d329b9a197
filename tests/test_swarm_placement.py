"""The swarm's GCS placement and head crashes (issue 15, swarm-placement):
replicas on nodes that fail independently, a head crash answered by a
recovered head, and what the core had to do for the swarm's seeds to pass."""

from __future__ import annotations

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
