"""The global scheduler: places the tasks nodes forward; part of the head.

Theory of operation
-------------------
The bottom-up scheduler keeps a task on the node where it was submitted
unless it must be forwarded (see core/scheduler.py, the local half).  A
forwarded task comes here.

The global scheduler filters the alive nodes whose total resources fit, then
prefers those with the resources available now, and among them picks the
lowest estimated wait::

    (queue length + tasks it placed since the last heartbeat)
        x mean task time  +  remote input bytes / bandwidth

with loads from heartbeats (exponential averages kept by the nodes) and input
sizes and locations read from the GCS.  A task no node can ever satisfy is
kept pending, reported once with a warning naming the request and the
cluster's resources, and placed when a node that fits joins (or when a
node's total grows: a placement group's bundle committed there).  Node
affinity picks the named node (hard: ``TaskUnschedulableError`` if it is
dead or can never fit the task); ``"SPREAD"`` picks the least loaded node
with room, taking turns among equals.

This module sits below the local scheduler (core/scheduler.py re-exports its
names): the head (core/head.py) imports it, and it knows the head only as
the object it is handed (``self.head``), so no import runs back up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .ids import ObjectId, TaskId
from .messages import Command, Log, PlaceTask, Send
from .placement import SPREAD, InGroup, OnNode, group_of_request, unschedulable
from .records import NodeLoad, ObjectEntry
from .specs import EMPTY, ResourceSet, TaskSpec
from .tables import AddTask, FinishTask, GetMany, key_shard

__all__ = ["GlobalScheduler", "GlobalConfig", "Rng"]


class Rng(Protocol):
    """The part of ``random.Random`` the core uses (passed in, seeded)."""

    def random(self) -> float: ...

    def randrange(self, n: int) -> int: ...

def _outlives_job(spec: TaskSpec) -> bool:
    """A detached actor's creation lives on after the job that made it."""
    a = spec.actor_creation
    return a is not None and a.detached



@dataclass(frozen=True, slots=True)
class GlobalConfig:
    bandwidth: float = 1.0e9  # bytes/s, for the remote-input term
    locality_aware: bool = True
    node_timeout: float = 1.0  # heartbeats missed for this long: node dead


@dataclass(slots=True)
class _NodeView:
    node_id: str
    total: ResourceSet
    load: NodeLoad | None = None
    alive: bool = True
    placed_since: int = 0
    last_heartbeat: float = 0.0
    reserved: ResourceSet = EMPTY


@dataclass(slots=True)
class _Pending:
    spec: TaskSpec
    attempt: int
    reconstruction: bool
    sid: str
    deps: dict[ObjectId, ObjectEntry | None] = field(default_factory=dict)
    waiting_reads: int = 0
    on_placed: Any = None  # callback (node) -> commands, for actors


class GlobalScheduler:
    """Places forwarded tasks; part of the head machine."""

    def __init__(self, head, config: GlobalConfig, rng: Rng) -> None:
        self.head = head
        self.config = config
        self.rng = rng
        self.nodes: dict[str, _NodeView] = {}
        self.pending: dict[TaskId, _Pending] = {}
        self.infeasible: dict[TaskId, _Pending] = {}
        self.warned: set[ResourceSet] = set()
        self.placements = 0
        self.spread_turn = 0  # SPREAD takes turns among equally loaded nodes
        self.recheck = False  # a node's total changed: infeasible tasks may fit

    # ------------------------------------------------------------------ membership
    def add_node(self, node_id: str, total: ResourceSet, now: float, sid: str) -> list[Command]:
        self.nodes[node_id] = _NodeView(node_id, total, last_heartbeat=now)
        # a new node may make infeasible tasks feasible
        cmds: list[Command] = []
        for tid, p in list(self.infeasible.items()):
            if p.spec.resources.is_subset_of(total):
                del self.infeasible[tid]
                cmds += self._place(p, now, p.sid)
        return cmds

    def remove_node(self, node_id: str) -> None:
        v = self.nodes.get(node_id)
        if v is not None:
            v.alive = False

    def forget_node(self, node_id: str) -> None:
        """A dead node's view goes (core/dead_nodes.py: the head keeps
        the latest dead nodes only)."""
        v = self.nodes.get(node_id)
        if v is not None and not v.alive:
            del self.nodes[node_id]

    def on_heartbeat(self, node_id: str, load: NodeLoad, now: float) -> None:
        v = self.nodes.get(node_id)
        if v is None or not v.alive:
            return
        v.load = load
        changed = v.total != load.total
        v.total = load.total
        v.placed_since = 0
        v.reserved = EMPTY
        v.last_heartbeat = now
        if changed and self.infeasible:
            self.recheck = True

    def alive_nodes(self) -> list[str]:
        return [n for n, v in self.nodes.items() if v.alive]

    # ------------------------------------------------------------------ placement
    def submit(self, spec: TaskSpec, attempt: int, now: float, sid: str, reconstruction: bool = False, on_placed=None) -> list[Command]:
        p = _Pending(spec, attempt, reconstruction, sid, on_placed=on_placed)
        deps = spec.dependencies
        if not deps or not self.config.locality_aware:
            return self._place(p, now, sid)
        # read the inputs' sizes and locations from the GCS, grouped by shard
        self.pending[spec.task_id] = p
        for d in deps:
            p.deps[d] = None
        by_shard: dict[int, list[ObjectId]] = {}
        n = self.head.gcs.num_shards or 1
        for d in dict.fromkeys(deps):
            by_shard.setdefault(key_shard("objects", d, n), []).append(d)
        cmds: list[Command] = []
        for shard in sorted(by_shard):
            keys = tuple(by_shard[shard])
            p.waiting_reads += 1
            cmds += self.head.gcs.read(GetMany("objects", keys), ("gs-deps", spec.task_id, keys), now, sid)
        return cmds

    def on_deps(self, tid: TaskId, keys: tuple, rows: tuple, now: float, sid: str) -> list[Command]:
        p = self.pending.get(tid)
        if p is None:
            return []
        for k, row in zip(keys, rows):
            p.deps[k] = row
        p.waiting_reads -= 1
        if p.waiting_reads > 0:
            return []
        del self.pending[tid]
        return self._place(p, now, sid)

    def retry_infeasible(self, now: float, sid: str) -> list[Command]:
        """Place the infeasible tasks that a node's new total (a committed
        placement group bundle) now fits."""
        self.recheck = False
        cmds: list[Command] = []
        for tid, p in list(self.infeasible.items()):
            req = p.spec.resources
            if any(v.alive and req.is_subset_of(v.total) for v in self.nodes.values()) or self._group_removed(req):
                del self.infeasible[tid]
                cmds += self._place(p, now, p.sid)
        return cmds

    def _group_removed(self, req: ResourceSet) -> bool:
        pg = group_of_request(req)
        return pg is not None and self.head.placement.removed(pg)

    def fail_group(self, pg: str, now: float, sid: str) -> list[Command]:
        """Group ``pg`` was removed: the tasks waiting to be placed in it
        fail."""
        cmds: list[Command] = []
        for table in (self.pending, self.infeasible):
            for tid, p in list(table.items()):
                if group_of_request(p.spec.resources) == pg:
                    del table[tid]
                    cmds += self._unschedulable(p, f"its placement group {pg} was removed", now, sid)
        return cmds

    def _unschedulable(self, p: _Pending, why: str, now: float, sid: str) -> list[Command]:
        """A hard constraint no node meets: the task fails with
        ``TaskUnschedulableError`` (an actor's creation: the actor dies)."""
        spec = p.spec
        err = unschedulable(spec, why)
        cmds: list[Command] = [Log(level="warning", text=err.message, job_id=spec.job_id, stimulus_id=sid)]
        if spec.is_actor_creation:
            return cmds + self.head.actors.kill(spec.actor_creation.actor_id, True, now, sid, why=f"it cannot be scheduled: {why}")
        outputs = tuple((o, 0) for o in spec.return_ids)
        return cmds + self.head.gcs.write(FinishTask(spec.task_id, "", outputs, err, p.attempt, job_id=spec.job_id), None, now, sid)

    def _place(self, p: _Pending, now: float, sid: str) -> list[Command]:
        req = p.spec.resources
        strategy = p.spec.scheduling
        if isinstance(strategy, OnNode):
            v = self.nodes.get(strategy.node_id)
            if v is not None and v.alive and req.is_subset_of(v.total):
                return self._chosen(p, v, req, now, sid)
            if not strategy.soft:
                why = ("node affinity to a node that is dead or not in the cluster" if v is None or not v.alive
                       else f"node affinity to a node whose resources {v.total.to_dict()} can never fit {req.to_dict()}")
                return self._unschedulable(p, f"{why} (node {strategy.node_id}, soft=False); "
                                              f"use soft=True to let it run elsewhere", now, sid)
        pg = group_of_request(req) if isinstance(strategy, InGroup) or p.spec.is_actor_creation else None
        if pg is not None and self.head.placement.removed(pg):
            return self._unschedulable(p, f"its placement group {pg} was removed", now, sid)
        feasible = [v for v in self.nodes.values() if v.alive and req.is_subset_of(v.total)]
        if not feasible and (isinstance(strategy, InGroup) or group_of_request(req) is not None):
            if self._group_removed(req):
                return self._unschedulable(p, f"its placement group {group_of_request(req)} was removed", now, sid)
            # waits for its group's bundles to be reserved (no warning:
            # the group is pending, and says so)
            self.infeasible[p.spec.task_id] = p
            return []
        if not feasible:
            self.infeasible[p.spec.task_id] = p
            if req not in self.warned:
                self.warned.add(req)
                cluster = {v.node_id: v.total.to_dict() for v in self.nodes.values() if v.alive}
                return [Log(
                    level="warning",
                    text=(
                        f"task {p.spec.display_name()} requests {req.to_dict()}, which no node in the "
                        f"cluster can satisfy (nodes: {cluster}). It stays pending until a node with "
                        f"these resources joins; add one (penumbra start --address ... --resources ...) "
                        f"or lower the request."
                    ),
                    job_id=p.spec.job_id,
                    stimulus_id=sid,
                )]
            return []
        def free_now(v: _NodeView) -> bool:
            avail = v.load.available if v.load is not None else v.total
            return req.is_subset_of(avail - v.reserved)
        candidates = [v for v in feasible if free_now(v)] or feasible
        if strategy == SPREAD:
            # the least loaded node; among equals, take turns
            def spread_load(v: _NodeView) -> int:
                load = v.load
                return (load.queue_length + load.running if load else 0) + v.placed_since
            low = min(spread_load(v) for v in candidates)
            best_nodes = sorted((v for v in candidates if spread_load(v) == low), key=lambda v: v.node_id)
            self.spread_turn += 1
            return self._chosen(p, best_nodes[self.spread_turn % len(best_nodes)], req, now, sid)
        bw = self.config.bandwidth
        best: list[_NodeView] = []
        best_score = None
        for v in candidates:
            load = v.load
            q = (load.queue_length if load else 0) + v.placed_since
            mean = load.mean_task_time if load and load.mean_task_time > 0 else 1e-3
            score = q * mean
            if self.config.locality_aware and p.deps:
                remote = 0
                for oid, row in p.deps.items():
                    if row is not None and v.node_id not in row.locations:
                        remote += row.size
                score += remote / bw
            if best_score is None or score < best_score - 1e-12:
                best, best_score = [v], score
            elif abs(score - best_score) <= 1e-12:
                best.append(v)
        chosen = best[0] if len(best) == 1 else best[self.rng.randrange(len(best))]
        return self._chosen(p, chosen, req, now, sid)

    def _chosen(self, p: _Pending, chosen: _NodeView, req: ResourceSet, now: float, sid: str) -> list[Command]:
        chosen.placed_since += 1
        chosen.reserved = chosen.reserved + req
        self.placements += 1
        if p.on_placed is not None:
            return p.on_placed(chosen.node_id, now, sid)
        cmds: list[Command] = [Send(to=chosen.node_id, msg=PlaceTask(spec=p.spec, attempt=p.attempt, reconstruction=p.reconstruction, stimulus_id=sid))]
        # (the spec too: this write may land before the submitting node's)
        cmds += self.head.gcs.write(AddTask(p.spec, chosen.node_id, placed=True), None, now, sid)
        return cmds

    def drop_job(self, job_id: int) -> None:
        """Job ``job_id`` ended: forget its forwarded tasks not placed yet
        (actor placements stay with the actor manager, which decides)."""
        for table in (self.pending, self.infeasible):
            for tid in [t for t, p in table.items()
                        if p.spec.job_id == job_id and p.on_placed is None and not _outlives_job(p.spec)]:
                del table[tid]

    def validate(self) -> None:
        for tid in self.infeasible:
            assert tid not in self.pending
