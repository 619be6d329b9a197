"""A recovering head: rebuilding the head's roles from the surviving replicas.

Theory of operation
-------------------
This is the query and rebuild half of head recovery, ``HeadRecovery``, a
base class of ``HeadMachine`` (core/head.py): its methods run on the head,
whose state (``self.recovering``, the GCS client, the roles) they read and
set.  It sits below core/head.py and imports none of it; what the head does
with events while it recovers (``_while_recovering``, which dispatches
through the head's handler table) stays there.

Recovery: a new head from surviving replicas
--------------------------------------------
The head keeps nothing that the cluster cannot rebuild: what must survive
is in the GCS, and the GCS replicas may live outside the head's process
(on nodes' hosts).  When the head dies, a new one is started with
``HeadConfig.recover_from``: the addresses of replicas known to survive
(``()``, the default: a fresh cluster, as before).  It is at the same
address (``"head"``): nodes and replicas keep sending to it, and while
there is no head their messages are simply lost.  Meanwhile the replicas
keep their config and keep serving (writes through the head of each
chain, reads at the tail); nodes keep running their tasks.

The recovering head goes through three phases:

1. **query**: it sends ``ChainQuery`` to every replica of
   ``recover_from`` (again every ``gcs_retry_after`` until answered); each
   answers ``ChainReport`` (its config, sequence number, whether it is
   caught up, and the highest request id it saw from the head's own GCS
   client).  Once every one answered -- or ``recover_wait`` has passed and
   every shard has at least one report -- it adopts, per shard, the
   config of the highest epoch reported (``config.chains`` is not
   trusted: it only says how many shards to wait for, when given).
   ``recover_from`` must name at least one live replica of each shard.
2. **rebuild**: it starts the chain master with the adopted configs
   (members that did not report count as not caught up: the usual
   heartbeat timeout cuts the silent ones -- those that died with the old
   head -- once a caught-up member lives, and no sooner), and its GCS
   client, numbering its requests above every id its predecessor used
   (else a replica would take a new write for a repeat of an old one).
   Then it reads the tables and rebuilds each role:

   * **monitor, global scheduler**: every node alive in ``nodes`` is put
     under the monitor with a fresh grace period; one that heartbeats is
     adopted as it is, one that stays silent is declared dead by the
     usual rule (``NodeDown``: its tasks re-run, its actors restarted
     within their budget).  Each is sent ``NodeWelcome`` with the
     adopted configs.  Node loads come back with the next heartbeats.
   * **dead nodes** (``alive`` false in ``nodes``): the old head may have
     died half way through re-homing one; the re-homing is done again
     (its pending tasks are found by ``TasksOnNode`` as usual; what was
     already re-homed is no longer on it).
   * **actors** (``Scan("actors")``, then the table subscription as
     before): ALIVE on a live node: tracked; ALIVE on a dead node:
     restarted within budget; RESTARTING: the old head's restart may or
     may not have reached a node, so it is restarted again under a new
     incarnation (fencing a start the old head sent; the budget is not
     spent twice); PENDING: its creation task is a task like any other
     (below); DEAD: nothing.
   * **placement groups** (the subscription's rows): a group this head
     does not know whose row names nodes for its bundles keeps the
     bundles on live nodes and reserves the rest again.  An attempt the
     old head had in flight (prepared, not committed) is dropped: its
     bundles on a node stay set apart (a known leak, until that node
     restarts).
   * **tasks the old head had queued** (forwarded, not placed): a pending
     row on no node (``UnplacedTasks``: re-homed by the old head's
     recovery, not placed yet) is placed again; a pending row on a live
     node is queued or running there, or was forwarded, or was placed
     there by a ``PlaceTask`` lost with the old head: the head asks the
     node (``TasksHeldQuery``), first to say when the rows it wrote while
     there was no head have landed (they waited for a new chain head),
     then, with the rows pending on it read, which of those it forwarded
     and which it never heard of (``TasksHeldReport``), and places them
     (an actor's creation only if forwarded).  A task the old head placed
     whose row did not say so yet, or whose ``PlaceTask`` is still on its
     way when the node answers, may run twice (at-least-once, as with any
     retry).
   * **job end**: jobs in ``ended_jobs`` (forgotten) stay ended; a job
     that ended but was not forgotten yet is known to the nodes (each
     ``TasksHeldReport`` lists the jobs the node saw end): it is ended
     again (``JobEnded`` to every live node, then ``ForgetJob``).
   * **recovery, watched tasks, stories**: dropped.  A rebuild the old
     head had in flight is asked for again by the node that waits for the
     object (nodes re-send ``ReconstructObject`` on their refresh timer).

3. **ready**: the monitor starts and the events that arrived meanwhile
   (kept in order, except heartbeats and the chain's own messages, which
   repeat) are handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .gcs import ChainMaster
from .head_services import HeadServices
from .messages import (
    ChainQuery,
    ChainReport,
    Command,
    JobFinished,
    Log,
    NodeWelcome,
    Send,
    SetTimer,
    TasksHeldQuery,
    TasksHeldReport,
)
from .records import TaskState
from .tables import Keys, Scan, TasksOnNode, UnplacedTasks

__all__ = ["HeadRecovery"]


# a recovering head's GCS client numbers its requests from the next
# multiple of this above every id its predecessors used (see ``_adopt``)
REQ_GENERATION = 1 << 40

# the rebuild reads of a recovering head (see "Recovery" above)
_REBUILD_READS = ("nodes", "ended", "actors", "unplaced")


@dataclass(slots=True)
class _Recovering:
    """A recovering head's progress (see "Recovery" in the docstring)."""

    started: float
    phase: str = "query"  # then "rebuild"
    reports: dict[str, ChainReport] = field(default_factory=dict)
    waited_warned: bool = False
    reads: dict[str, Any] = field(default_factory=dict)  # rebuild read -> result
    held: list = field(default_factory=list)  # events kept until ready, in order


class HeadRecovery(HeadServices):
    """The query and rebuild phases of a recovering head (see above); a
    base of ``HeadMachine``, which sets every attribute used here."""

    def _recover_start(self, now: float) -> list[Command]:
        rec = self.recovering
        rec.started = now
        cmds: list[Command] = [Send(to=r, msg=ChainQuery(master=self.address, stimulus_id="head-recover"))
                               for r in self.config.recover_from]
        cmds.append(SetTimer(at=now + self.config.gcs_retry_after, key=("head", "recover")))
        return cmds + [Log(level="info", stimulus_id="head-recover",
                           text=f"head: recovering from the GCS replicas {list(self.config.recover_from)}")]

    def _query_again(self, now: float, sid: str) -> list[Command]:
        rec = self.recovering
        cmds = self._maybe_adopt(now, sid)
        if self.recovering is None or rec.phase != "query":
            return cmds
        cmds += [Send(to=r, msg=ChainQuery(master=self.address, stimulus_id=sid))
                 for r in self.config.recover_from if r not in rec.reports]
        cmds.append(SetTimer(at=now + self.config.gcs_retry_after, key=("head", "recover")))
        if now - rec.started >= self.config.recover_wait and not rec.waited_warned:
            rec.waited_warned = True
            have = sorted({r.shard for r in rec.reports.values() if r.config is not None})
            empty = sorted(r.replica for r in rec.reports.values() if r.config is None)
            cmds.append(Log(level="warning", stimulus_id=sid, text=(
                f"head: recovering, but no live replica of some GCS shard answered after "
                f"{self.config.recover_wait}s (shards with an answer: {have}; asked: "
                f"{list(self.config.recover_from)}); still asking.  Name a surviving replica of every shard "
                f"in recover_from."
                + (f"  {empty} answered empty (restarted while there was no head, they never rejoined): if "
                   f"they are all that is left of a shard, its data died with its last replica." if empty else ""))))
        return cmds

    def _maybe_adopt(self, now: float, sid: str) -> list[Command]:
        rec = self.recovering
        cfg = self.config
        if len(rec.reports) < len(set(cfg.recover_from)):
            if now - rec.started < cfg.recover_wait:
                return []  # wait for every replica asked (one may know a newer epoch)
        needed = {c.shard for c in cfg.chains} or {r.shard for r in rec.reports.values()}
        have = {r.config.shard for r in rec.reports.values() if r.config is not None}
        if not needed or not needed <= have:
            return []
        return self._adopt(now, sid, needed)

    def _adopt(self, now: float, sid: str, shards: set[int]) -> list[Command]:
        """Phase 2: the chains as the replicas know them; the GCS client;
        then read the tables the roles are rebuilt from."""
        rec = self.recovering
        reports = [rec.reports[r] for r in sorted(rec.reports)]
        self.chain = ChainMaster.from_reports(reports, shards, self.config.gcs_timing, self.address)
        rec.phase = "rebuild"
        # our requests get ids above every one the old head's client used:
        # a replica remembers (client, id) -> result, and would answer a new
        # write with an old id with the old write's result
        used = max((r.client_req for r in reports), default=0)
        self.gcs.next_req = max(self.gcs.next_req, (used // REQ_GENERATION + 1) * REQ_GENERATION)
        cmds = self.chain.start(now)
        cmds += self.gcs.set_configs(self.chain.configs(), now)
        cmds += self.gcs.read(Scan("nodes"), ("recover", "nodes"), now, sid)
        cmds += self.gcs.read(Keys("ended_jobs"), ("recover", "ended"), now, sid)
        cmds += self.gcs.read(Scan("actors"), ("recover", "actors"), now, sid)
        cmds += self.gcs.read(UnplacedTasks(), ("recover", "unplaced"), now, sid)
        epochs = {c.shard: c.epoch for c in self.chain.configs()}
        return cmds + [Log(level="info", stimulus_id=sid, text=(
            f"head: adopted the GCS chains {[list(c.replicas) for c in self.chain.configs()]} (epochs {epochs}) "
            f"from {len(reports)} replica report(s); rebuilding state from the tables"))]

    def _on_recover_read(self, what: str, result: Any, now: float, sid: str) -> list[Command]:
        rec = self.recovering
        if rec is None or rec.phase != "rebuild" or what in rec.reads:
            return []
        rec.reads[what] = result
        if len(rec.reads) < len(_REBUILD_READS):
            return []
        return self._rebuild(now, sid)

    def _rebuild(self, now: float, sid: str) -> list[Command]:
        """Phase 2, with the tables read: each role's state (see "Recovery")."""
        rec = self.recovering
        reads = rec.reads
        cmds: list[Command] = []
        # job end: forgotten jobs stay ended (those ended, not yet
        # forgotten come back with the nodes' TasksHeldReport)
        for keys in reads["ended"]:
            self.ended_jobs.update(keys)
        # the monitor and the global scheduler: the nodes alive in the table
        live: list[str] = []
        for e in sorted(reads["nodes"], key=lambda e: e.node_id):
            node = e.node_id
            if not e.alive:
                for old in self.dead_nodes.add(node):
                    self.forget_dead(old)
                continue
            live.append(node)
            self.misses[node] = 0
            self.last_seq[node] = 0  # (no gap counted against its first heartbeat)
            self.chain.add_listener(node)
            cmds += self.scheduler.add_node(node, e.resources, now, sid)
            cmds.append(Send(to=node, msg=NodeWelcome(configs=self.chain.configs(), stimulus_id=sid)))
        # actors, as the table has them (the subscription below keeps them
        # current from here on)
        self.actors.adopt([e for rows in reads["actors"] for e in rows], now, sid)
        cmds += self._subscribe_and_monitor(now, sid)
        # re-homing the old head may have left half done
        for node in sorted(self.dead_nodes):
            cmds += self.actors.on_node_dead(node, now, sid)
            cmds += self.recovery.on_node_dead(node, now, sid)
        # restarts the old head had begun
        cmds += self.actors.adopt_restarts(now, sid)
        # tasks the old head had re-homed and not placed yet
        for rows in reads["unplaced"]:
            for e in rows:
                cmds += self._place_adopted(e, now, sid)
        # tasks a live node forwarded to the old head: ask the node (once
        # the task rows it wrote while there was no head have landed)
        for node in live:
            self.held_asks[node] = None
            cmds.append(Send(to=node, msg=TasksHeldQuery(task_ids=None, stimulus_id=sid)))
        self.recovering = None
        held = rec.held
        cmds.append(Log(level="info", stimulus_id=sid, text=(
            f"head: recovered: {len(live)} live node(s), {len(self.dead_nodes)} dead, "
            f"{len(self.actors.actors)} actor(s), {len(self.ended_jobs)} ended job(s); handling "
            f"{len(held)} event(s) that arrived meanwhile")))
        cmds.append(SetTimer(at=now + self.config.job_end_retry, key=("head", "held")))
        for ev in held:
            cmds += self.handle(ev, now)
        return cmds

    def _place_adopted(self, e: Any, now: float, sid: str) -> list[Command]:
        """Place a pending task found in the table that no node holds."""
        spec = e.spec
        if e.state is not TaskState.PENDING or spec.actor_id is not None or self.job_over(spec):
            return []  # (actor calls are resolved by their callers' nodes)
        if spec.task_id in self.scheduler.pending or spec.task_id in self.scheduler.infeasible:
            return []
        if spec.is_actor_creation:
            return self.actors.on_creation_lost(spec, now, sid)
        return self.scheduler.submit(spec, e.attempt, now, sid)

    def _on_tasks_on_node(self, node: str, per_shard: tuple, now: float, sid: str) -> list[Command]:
        if node not in self.misses or self.held_asks.get(node) != "reading":
            return []  # died meanwhile: its pending tasks were re-homed
        rows = {e.spec.task_id: e for shard in per_shard for e in shard
                if e.state is TaskState.PENDING and e.spec.actor_id is None}
        self.held_asks[node] = rows
        return [Send(to=node, msg=TasksHeldQuery(task_ids=tuple(sorted(rows)), stimulus_id=sid))]

    def _on_tasks_held(self, ev: TasksHeldReport, now: float) -> list[Command]:
        """A node's answer to one of the two rounds of ``TasksHeldQuery``."""
        node, sid = ev.node_id, ev.stimulus_id
        if node not in self.held_asks:
            return []
        state = self.held_asks[node]
        cmds: list[Command] = []
        for job in ev.ended_jobs:
            cmds += self._on_job_finished(JobFinished(job_id=job, stimulus_id=sid), now)
        if ev.settled:
            if state is not None:
                return cmds  # a repeated answer
            # its rows are all in the table now: read those pending on it
            self.held_asks[node] = "reading"
            return cmds + self.gcs.read(TasksOnNode(node), ("recover", "on-node", node), now, sid)
        if not isinstance(state, dict):
            return cmds
        rows = self.held_asks.pop(node)
        # forwarded and not placed: the old head held it; placed by the old
        # head and unknown to the node: its PlaceTask was lost with it (an
        # actor's creation excepted: once the actor is up, its node no
        # longer knows the task either, and its row stays pending)
        for tid in ev.forwarded:
            e = rows.get(tid)
            if e is not None and not e.placed:
                cmds += self._place_adopted(e, now, sid)
        for tid in ev.unknown:
            e = rows.get(tid)
            if e is not None and e.placed and not e.spec.is_actor_creation:
                cmds += self._place_adopted(e, now, sid)
        return cmds

    def _held_retry(self, now: float, sid: str) -> list[Command]:
        """Ask again the nodes that have not answered (a lost message); a
        node that died meanwhile had its pending tasks re-homed."""
        alive = set(self.misses)
        for node in [n for n in self.held_asks if n not in alive]:
            del self.held_asks[node]
        cmds: list[Command] = []
        for n, state in sorted(self.held_asks.items()):
            if state is None:
                cmds.append(Send(to=n, msg=TasksHeldQuery(task_ids=None, stimulus_id=sid)))
            elif isinstance(state, dict):
                cmds.append(Send(to=n, msg=TasksHeldQuery(task_ids=tuple(sorted(state)), stimulus_id=sid)))
        if self.held_asks:
            cmds.append(SetTimer(at=now + self.config.job_end_retry, key=("head", "held")))
        return cmds
