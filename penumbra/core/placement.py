"""Placement groups and scheduling strategies: gang reservation of bundles.

Theory of operation
-------------------
A placement group is a list of *bundles* (resource sets) reserved together,
all or none, on nodes chosen by a *strategy*:

=============  ===========================================================
strategy       where the bundles go
=============  ===========================================================
STRICT_PACK    all on one node
PACK           on as few nodes as possible (one if it fits)
STRICT_SPREAD  each on a different node
SPREAD         on different nodes where possible, else anywhere
=============  ===========================================================

A client writes the group's row to the GCS (``CreatePlacementGroup``); the
head, subscribed to the table, reserves it in two phases so that a group is
never half usable:

1. *prepare*: the head plans nodes for the unplaced bundles from its view
   of their free resources and sends ``PrepareBundles``; each node sets the
   resources apart from its free pool if they still fit (else
   ``BundlesPrepareFailed``: the head's view was stale; the attempt is
   given back and retried);
2. *commit*: once every node prepared, ``CommitBundles``: each node adds the
   bundle's resources under the group's names to its total and free pool
   (Ray's naming: ``CPU_group_<i>_<pg>`` for bundle ``i`` and
   ``CPU_group_<pg>`` for "any bundle", plus ``bundle_group_...`` markers
   that a zero-CPU task asks a sliver of).  When every node committed, the
   row says ``CREATED``.

A task or actor in a group asks for its resources *under those names*
(``bundle_request``), so the ordinary bottom-up scheduler puts it only on
a node holding its bundle and runs it only on the bundle's resources; until
the group is placed, no node has the names and the task waits at the global
scheduler as infeasible.  ``pg.ready()`` is such a task.

A group no node set can hold stays ``PENDING`` and is retried every
``retry_interval`` and when a node joins.  When a node holding bundles
dies, its bundles are unplaced and reserved again elsewhere
(``RESCHEDULING``, then ``CREATED``); the tasks there retry into them.
Removal (``RemovePlacementGroup``) is final: the head kills the group's
actors, fails its waiting tasks, and tells the nodes to release the
bundles (``ReleaseBundles``): their running tasks are killed, queued ones
fail, and the resources go back to the free pool.  A group of a job that
ended goes the same way unless it is detached.

Every message to a node is repeated on the retry timer until answered, and
every node handler is idempotent, so a lost message delays, never wedges.

Node affinity (``OnNode``) and ``"SPREAD"`` are the other strategies: the
local scheduler forwards such a task to the global scheduler, which runs it
on the named node (hard: ``TaskUnschedulableError`` when that node is dead
or cannot ever fit it; soft: anywhere then), or spreads it to the least
loaded node, taking turns among equals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .messages import (
    BundlesCommitted,
    BundlesPrepared,
    BundlesPrepareFailed,
    BundlesReleased,
    Command,
    CommitBundles,
    PrepareBundles,
    ReleaseBundles,
    Send,
    SetTimer,
)
from .records import ErrorInfo, ErrorKind, PlacementGroupEntry
from .specs import EMPTY, ResourceSet
from .tables import RemovePlacementGroup, UpdatePlacementGroup

if TYPE_CHECKING:
    from .head_services import HeadServices

__all__ = [
    "STRATEGIES",
    "SPREAD",
    "InGroup",
    "OnNode",
    "bundle_request",
    "bundle_grant",
    "group_of_request",
    "is_group_name",
    "plan",
    "PlacementManager",
]

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
SPREAD = "SPREAD"
MARKER = "bundle"
# every bundle offers this many marker units; a task in it asks for one
# thousandth of one (Ray's numbers), so even a zero-CPU task is held to it
_MARKER_GRANT = 1000.0
_MARKER_ASK = 0.001


@dataclass(frozen=True, slots=True)
class InGroup:
    """Run in bundle ``bundle_index`` (-1: any) of group ``pg_id``;
    ``capture``: tasks it submits go into the group too."""

    pg_id: str
    bundle_index: int = -1
    capture: bool = False


@dataclass(frozen=True, slots=True)
class OnNode:
    """Run on node ``node_id``; ``soft``: anywhere if it cannot."""

    node_id: str
    soft: bool = False


# ------------------------------------------------------------------ naming
def _name(res: str, pg: str, index: int) -> str:
    return f"{res}_group_{pg}" if index < 0 else f"{res}_group_{index}_{pg}"


def bundle_request(req: ResourceSet, pg: str, index: int) -> ResourceSet:
    """What a task asking ``req`` in bundle ``index`` (-1: any) of ``pg``
    asks of a node: the same amounts under the group's names, and a sliver
    of the bundle marker."""
    amounts = {_name(k, pg, index): v for k, v in req.to_dict().items()}
    amounts[_name(MARKER, pg, index)] = _MARKER_ASK
    return ResourceSet.from_dict(amounts)


def bundle_grant(res: ResourceSet, pg: str, index: int) -> ResourceSet:
    """What a node holding bundle ``index`` (resources ``res``) of ``pg``
    offers: each amount under the indexed and the any-bundle names, and
    the markers."""
    amounts: dict[str, float] = {}
    for k, v in res.to_dict().items():
        amounts[_name(k, pg, index)] = v
        amounts[_name(k, pg, -1)] = v
    amounts[_name(MARKER, pg, index)] = _MARKER_GRANT
    amounts[_name(MARKER, pg, -1)] = _MARKER_GRANT
    return ResourceSet.from_dict(amounts)


def is_group_name(name: str, pg: str | None = None) -> bool:
    if "_group_" not in name:
        return False
    return pg is None or name.endswith("_" + pg)


def group_of_request(req: ResourceSet) -> str | None:
    """The placement group a request names (None: it names none)."""
    for n in req.names():
        if "_group_" in n:
            return n.rsplit("_", 1)[1]
    return None


def requested_bundle(req: ResourceSet) -> tuple[str, int] | None:
    """(group, bundle index or -1) a request names, read from its names."""
    found = None
    for n in req.names():
        if "_group_" not in n:
            continue
        parts = n.split("_group_", 1)[1].split("_")
        if len(parts) == 2:
            return parts[1], int(parts[0])
        found = (parts[0], -1)
    return found


def only_group(res: ResourceSet, pg: str) -> ResourceSet:
    return res.only([n for n in res.names() if is_group_name(n, pg)])


# ------------------------------------------------------------------ planning
def _cpu(r: ResourceSet) -> int:
    return r.units("CPU")


def plan(bundles: dict[int, ResourceSet], strategy: str, free: dict[str, ResourceSet],
         holding: dict[str, set[int]]) -> dict[int, str] | None:
    """Nodes for the unplaced ``bundles`` (index -> resources), given each
    alive node's ``free`` resources and the bundles of this group each node
    already ``holding``; None if the strategy cannot be met now.
    Deterministic: nodes are tried by most free CPU, then by id."""
    left = dict(free)
    out: dict[int, str] = {}

    def order(cands):
        return sorted(cands, key=lambda n: (-_cpu(left[n]), n))

    idx = sorted(bundles, key=lambda i: (-_cpu(bundles[i]), i))
    if strategy == "STRICT_PACK" or strategy == "PACK":
        total = EMPTY
        for r in bundles.values():
            total = total + r
        held = [n for n in holding if holding[n] and n in left]
        cands = held if (strategy == "STRICT_PACK" and held) else order(set(held)) + [n for n in order(left) if n not in held]
        for n in cands:
            if total.is_subset_of(left[n]):
                return {i: n for i in bundles}
        if strategy == "STRICT_PACK":
            return None
        # PACK, best effort: fill the fullest-fitting nodes in turn
        for i in idx:
            placed = next((n for n in list(dict.fromkeys(out.values())) + order(left) if bundles[i].is_subset_of(left[n])), None)
            if placed is None:
                return None
            out[i] = placed
            left[placed] = left[placed] - bundles[i]
        return out
    used = {n for n, s in holding.items() if s}
    for i in idx:
        fresh = [n for n in order(left) if n not in used and bundles[i].is_subset_of(left[n])]
        if fresh:
            n = fresh[0]
        elif strategy == "SPREAD":
            n = next((m for m in order(left) if bundles[i].is_subset_of(left[m])), None)
            if n is None:
                return None
        else:
            return None
        out[i] = n
        used.add(n)
        left[n] = left[n] - bundles[i]
    return out


# ------------------------------------------------------------------ the head's role
# group states (the row's state is derived: see ``_row_state``)
PENDING = "pending"  # bundles unplaced, no attempt in flight
PREPARING = "preparing"
COMMITTING = "committing"
CREATED = "created"
REMOVED = "removed"


@dataclass(slots=True, eq=False)
class _Group:
    entry: PlacementGroupEntry
    state: str = PENDING
    nodes: list = field(default_factory=list)  # per bundle: its node or None
    trying: dict = field(default_factory=dict)  # bundle -> node, this attempt
    waiting: set = field(default_factory=set)  # nodes yet to answer this phase
    ok: set = field(default_factory=set)  # nodes that prepared this attempt
    was_created: bool = False


class PlacementManager:
    """Reserves, reschedules and removes placement groups; part of the head."""

    def __init__(self, head: "HeadServices", retry_interval: float = 0.2) -> None:
        self.head = head
        self.retry_interval = retry_interval
        self.groups: dict[str, _Group] = {}
        # (pg, node) -> indexes (None: all) to release, until answered
        self.releasing: dict[tuple[str, str], tuple[int, ...] | None] = {}
        self.armed = False

    # ---------------------------------------------------------------- stories
    def _story(self, pg: str, now: float, sid: str, what: str) -> None:
        s = self.head.stories.setdefault(("pg", pg), [])
        s.append((now, sid, what))
        if len(s) > 200:
            del s[0]

    def removed(self, pg: str) -> bool:
        g = self.groups.get(pg)
        return g is not None and g.state == REMOVED

    # ---------------------------------------------------------------- entries
    def on_entry(self, pg: str, entry: PlacementGroupEntry | None, now: float, sid: str) -> list[Command]:
        if entry is None:
            return []
        g = self.groups.get(pg)
        if g is None:
            if entry.state == "REMOVED":
                self.groups[pg] = _Group(entry, REMOVED, [None] * len(entry.bundles))
                return []
            if self.head.ended_jobs and entry.job_id in self.head.ended_jobs and not entry.detached:
                self.groups[pg] = _Group(entry, REMOVED, [None] * len(entry.bundles))
                return []
            g = self.groups[pg] = _Group(entry, PENDING, [None] * len(entry.bundles))
            if any(entry.nodes):
                # a row naming nodes that this head never placed: a head
                # recovering from the GCS (core/head_recovery.py, "Recovery") adopts
                # the bundles its predecessor reserved on live nodes and
                # reserves the rest again
                return self._adopt(g, now, sid)
            self._story(pg, now, sid, f"created: {len(entry.bundles)} bundles, {entry.strategy}")
            return self._try(g, now, sid)
        if entry.state == "REMOVED" and g.state != REMOVED:
            return self.remove(pg, now, sid)
        return []

    def _adopt(self, g: _Group, now: float, sid: str) -> list[Command]:
        alive = set(self.head.scheduler.alive_nodes())
        entry = g.entry
        for i, n in enumerate(entry.nodes[:len(g.nodes)]):
            if n and n in alive:
                g.nodes[i] = n
        lost = [i for i, n in enumerate(entry.nodes) if n and n not in alive]
        self._story(entry.pg_id, now, sid, f"adopted from the GCS: bundles on {g.nodes}"
                                           + (f"; bundles {lost} were on dead nodes" if lost else ""))
        if all(n is not None for n in g.nodes) and entry.state == "CREATED":
            g.state = CREATED
            g.was_created = True
            return []
        g.was_created = entry.state in ("CREATED", "RESCHEDULING")
        cmds: list[Command] = []
        if lost:
            cmds += self.head.gcs.write(UpdatePlacementGroup(entry.pg_id, "RESCHEDULING",
                                                             tuple(n or "" for n in g.nodes)), None, now, sid)
        return cmds + self._try(g, now, sid)

    # ---------------------------------------------------------------- placing
    def _free(self) -> dict[str, ResourceSet]:
        """Each alive node's free resources, as far as the head knows:
        the last heartbeat less what attempts in flight are preparing."""
        sched = self.head.scheduler
        free: dict[str, ResourceSet] = {}
        for n, v in sched.nodes.items():
            if not v.alive:
                continue
            avail = v.load.available if v.load is not None else v.total
            free[n] = avail.only([k for k in avail.names() if "_group_" not in k])
        for g in self.groups.values():
            if g.state == PREPARING:
                for i, n in g.trying.items():
                    if n in free:
                        free[n] = free[n] - g.entry.bundles[i]
        return free

    def _try(self, g: _Group, now: float, sid: str) -> list[Command]:
        if g.state != PENDING:
            return []
        unplaced = {i: g.entry.bundles[i] for i, n in enumerate(g.nodes) if n is None}
        if not unplaced:
            return self._created(g, now, sid)
        holding: dict[str, set[int]] = {}
        for i, n in enumerate(g.nodes):
            if n is not None:
                holding.setdefault(n, set()).add(i)
        pg = g.entry.pg_id
        # (a node still giving back an earlier attempt's bundles of this
        # group is left out until it has: a late release must not meet a
        # new prepare of the same bundle)
        free = {n: r for n, r in self._free().items() if (pg, n) not in self.releasing}
        chosen = plan(unplaced, g.entry.strategy, free, holding)
        if chosen is None:
            return self._arm(now)
        g.state = PREPARING
        g.trying = chosen
        g.waiting = set(chosen.values())
        g.ok = set()
        self._story(pg, now, sid, f"preparing {sorted(chosen.items())}")
        return self._send_phase(g, sid) + self._arm(now)

    def _send_phase(self, g: _Group, sid: str) -> list[Command]:
        pg = g.entry.pg_id
        cmds: list[Command] = []
        for n in sorted(g.waiting):
            idx = tuple(sorted(i for i, m in g.trying.items() if m == n))
            if g.state == PREPARING:
                msg = PrepareBundles(pg_id=pg, bundles=tuple((i, g.entry.bundles[i]) for i in idx), stimulus_id=sid)
            else:
                msg = CommitBundles(pg_id=pg, indexes=idx, stimulus_id=sid)
            cmds.append(Send(to=n, msg=msg))
        return cmds

    def _arm(self, now: float) -> list[Command]:
        if self.armed:
            return []
        self.armed = True
        return [SetTimer(at=now + self.retry_interval, key=("pg", "retry"))]

    def on_timer(self, now: float, sid: str) -> list[Command]:
        self.armed = False
        cmds: list[Command] = []
        busy = False
        for pg in sorted(self.groups):
            g = self.groups[pg]
            if g.state == PENDING:
                busy = True
                cmds += self._try(g, now, sid)
            elif g.state in (PREPARING, COMMITTING):
                busy = True
                cmds += self._send_phase(g, sid)
        alive = set(self.head.scheduler.alive_nodes())
        for (pg, n), idx in sorted(self.releasing.items(), key=lambda kv: kv[0]):
            if n not in alive:
                del self.releasing[(pg, n)]
                continue
            busy = True
            cmds.append(Send(to=n, msg=ReleaseBundles(pg_id=pg, indexes=idx, stimulus_id=sid)))
        if busy:
            cmds += self._arm(now)
        return cmds

    def on_node_joined(self, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        for pg in sorted(self.groups):
            cmds += self._try(self.groups[pg], now, sid)
        return cmds

    def on_prepared(self, ev: BundlesPrepared, now: float) -> list[Command]:
        g = self.groups.get(ev.pg_id)
        node, sid = ev.node_id, ev.stimulus_id
        mine = g is not None and g.state == PREPARING and node in g.waiting and \
            set(ev.indexes) == {i for i, n in g.trying.items() if n == node}
        if not mine:
            if g is not None and g.state == COMMITTING and g.trying and node in {g.trying.get(i) for i in ev.indexes}:
                return []  # a repeated answer
            if g is not None and g.state in (COMMITTING, CREATED) and all(g.nodes[i] == node for i in ev.indexes):
                return []
            # an answer to an attempt given up: give the bundles back
            return self._release(ev.pg_id, node, ev.indexes, now)
        g.waiting.discard(node)
        g.ok.add(node)
        if g.waiting:
            return []
        g.state = COMMITTING
        g.waiting = set(g.trying.values())
        self._story(ev.pg_id, now, sid, "every bundle prepared: committing")
        return self._send_phase(g, sid)

    def on_prepare_failed(self, ev: BundlesPrepareFailed, now: float) -> list[Command]:
        g = self.groups.get(ev.pg_id)
        if g is None or g.state not in (PREPARING, COMMITTING) or ev.node_id not in g.waiting:
            return []
        self._story(ev.pg_id, now, ev.stimulus_id, f"{ev.node_id} could not {g.state[:-3]}e: {ev.reason}")
        if g.state == PREPARING:
            return self._abort(g, now, ev.stimulus_id)
        # a commit found its bundles gone (a late release of an earlier
        # attempt overtook it): keep what the others committed, place the
        # rest again
        idx = tuple(sorted(i for i, n in g.trying.items() if n == ev.node_id))
        return self._release(ev.pg_id, ev.node_id, idx, now) + self._drop_from_commit(g, ev.node_id, now, ev.stimulus_id)

    def _drop_from_commit(self, g: _Group, node: str, now: float, sid: str) -> list[Command]:
        g.waiting.discard(node)
        for i, n in g.trying.items():
            if n != node and n not in g.waiting:
                g.nodes[i] = n
        g.trying = {i: n for i, n in g.trying.items() if n in g.waiting}
        if g.waiting:
            return []
        g.trying, g.ok = {}, set()
        g.state = PENDING
        return self._try(g, now, sid)

    def _abort(self, g: _Group, now: float, sid: str) -> list[Command]:
        """Give this attempt's prepared bundles back; try again later."""
        cmds: list[Command] = []
        for n in sorted(set(g.trying.values())):
            if n in self.head.scheduler.alive_nodes():
                cmds += self._release(g.entry.pg_id, n, tuple(sorted(i for i, m in g.trying.items() if m == n)), now)
        g.trying, g.waiting, g.ok = {}, set(), set()
        g.state = PENDING
        return cmds + self._arm(now)

    def on_committed(self, ev: BundlesCommitted, now: float) -> list[Command]:
        g = self.groups.get(ev.pg_id)
        node, sid = ev.node_id, ev.stimulus_id
        if g is None or g.state != COMMITTING or node not in g.waiting:
            return []
        g.waiting.discard(node)
        for i in ev.indexes:
            if g.trying.get(i) == node:
                g.nodes[i] = node
        v = self.head.scheduler.nodes.get(node)
        if v is not None:
            # (the node's grant of this group, as a heartbeat will say)
            v.total = v.total - only_group(v.total, ev.pg_id) + ev.granted
        if g.waiting:
            return []
        g.trying, g.ok = {}, set()
        g.state = PENDING
        return self._created(g, now, sid)

    def _created(self, g: _Group, now: float, sid: str) -> list[Command]:
        if any(n is None for n in g.nodes):
            g.state = PENDING
            return self._try(g, now, sid)
        g.state = CREATED
        g.was_created = True
        pg = g.entry.pg_id
        self._story(pg, now, sid, f"created on {g.nodes}")
        cmds = self.head.gcs.write(UpdatePlacementGroup(pg, "CREATED", tuple(g.nodes)), None, now, sid)
        return cmds + self.head.scheduler.retry_infeasible(now, sid)

    # ---------------------------------------------------------------- failures
    def on_node_dead(self, node: str, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        for key in [k for k in self.releasing if k[1] == node]:
            del self.releasing[key]
        for pg in sorted(self.groups):
            g = self.groups[pg]
            if g.state == REMOVED:
                continue
            lost = [i for i, n in enumerate(g.nodes) if n == node]
            if g.state in (PREPARING, COMMITTING) and node in g.trying.values():
                if g.state == COMMITTING:
                    # bundles committed on the living nodes stay theirs
                    cmds += self._drop_from_commit(g, node, now, sid)
                else:
                    g.waiting.discard(node)
                    cmds += self._abort(g, now, sid)
            if lost:
                for i in lost:
                    g.nodes[i] = None
                self._story(pg, now, sid, f"node {node} died holding bundles {lost}: rescheduling them")
                if g.state == CREATED:
                    g.state = PENDING
                cmds += self.head.gcs.write(UpdatePlacementGroup(pg, "RESCHEDULING", tuple(n or "" for n in g.nodes)), None, now, sid)
            cmds += self._try(g, now, sid)
        return cmds

    # ---------------------------------------------------------------- removal
    def _release(self, pg: str, node: str, indexes: tuple[int, ...] | None, now: float) -> list[Command]:
        old = self.releasing.get((pg, node), ())
        if old is None or indexes is None:
            indexes = None
        else:
            indexes = tuple(sorted(set(old) | set(indexes)))
        self.releasing[(pg, node)] = indexes
        return [Send(to=node, msg=ReleaseBundles(pg_id=pg, indexes=indexes, stimulus_id=f"release:{pg}"))] + self._arm(now)

    def on_released(self, ev: BundlesReleased, now: float) -> list[Command]:
        self.releasing.pop((ev.pg_id, ev.node_id), None)
        return []

    def remove(self, pg: str, now: float, sid: str) -> list[Command]:
        """The group is removed (final): release its bundles everywhere,
        kill its actors and fail the tasks waiting for it."""
        g = self.groups.get(pg)
        if g is None or g.state == REMOVED:
            return []
        holders = {n for n in g.nodes if n} | set(g.trying.values())
        # every live node is told, not only the holders: one may still hold
        # a bundle prepared for an attempt given up (a prepare that came
        # after its release), and the message is the group's tombstone
        holders |= set(self.head.scheduler.alive_nodes())
        g.state = REMOVED
        g.nodes = [None] * len(g.nodes)
        g.trying, g.waiting, g.ok = {}, set(), set()
        self._story(pg, now, sid, f"removed: releasing on {sorted(holders)}")
        cmds: list[Command] = []
        alive = set(self.head.scheduler.alive_nodes())
        for n in sorted(holders & alive):
            v = self.head.scheduler.nodes.get(n)
            if v is not None:
                v.total = v.total - only_group(v.total, pg)
            cmds += self._release(pg, n, None, now)
        # (a no-op when the client removed it; the job's end needs it)
        cmds += self.head.gcs.write(RemovePlacementGroup(pg), None, now, sid)
        cmds += self.head.scheduler.fail_group(pg, now, sid)
        cmds += self._kill_actors(pg, now, sid)
        return cmds

    def _kill_actors(self, pg: str, now: float, sid: str) -> list[Command]:
        from .records import ActorState

        cmds: list[Command] = []
        actors = self.head.actors
        for aid, e in sorted(actors.actors.items()):
            if e.state is ActorState.DEAD:
                continue
            if group_of_request(e.creation.resources) == pg:
                cmds += actors.kill(aid, True, now, sid, why=f"its placement group {pg} was removed")
        return cmds

    def on_job_finished(self, job_id: int, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        for pg in sorted(self.groups):
            e = self.groups[pg].entry
            if e.job_id == job_id and not e.detached:
                cmds += self.remove(pg, now, sid)
        return cmds

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        for pg, g in self.groups.items():
            assert len(g.nodes) == len(g.entry.bundles), f"group {pg}: {len(g.nodes)} locations for {len(g.entry.bundles)} bundles"
            if g.state == CREATED:
                assert all(g.nodes), f"group {pg} is created with unplaced bundles {g.nodes}"
                if g.entry.strategy == "STRICT_PACK":
                    assert len(set(g.nodes)) == 1, f"STRICT_PACK group {pg} spans {set(g.nodes)}"
                if g.entry.strategy == "STRICT_SPREAD":
                    assert len(set(g.nodes)) == len(g.nodes), f"STRICT_SPREAD group {pg} shares nodes {g.nodes}"
            if g.state == REMOVED:
                assert not any(g.nodes) and not g.trying, f"removed group {pg} still holds bundles"
            if g.state in (PREPARING, COMMITTING):
                assert g.waiting <= set(g.trying.values()), f"group {pg} waits for nodes outside its attempt"
                for i, n in g.trying.items():
                    assert g.nodes[i] in (None, n), f"group {pg} bundle {i} is placed on {g.nodes[i]} and being placed on {n}"
            else:
                assert not g.waiting, f"group {pg} in state {g.state} waits for {g.waiting}"


# ------------------------------------------------------------------ the node's role
class BundleHolder:
    """A node's bundles: prepared ones (set apart from the free pool) and
    committed ones (usable under the group's names).  Every handler is
    idempotent: the head repeats a message until it is answered."""

    def __init__(self, node) -> None:
        self.node = node
        self.prepared: dict[tuple[str, int], ResourceSet] = {}
        self.committed: dict[tuple[str, int], ResourceSet] = {}
        self.removed: set[str] = set()

    def _reply(self, msg) -> list[Command]:
        return [Send(to=self.node.head, msg=msg)]

    def on_prepare(self, ev: PrepareBundles, now: float) -> list[Command]:
        node, pg, sid = self.node, ev.pg_id, ev.stimulus_id
        idx = tuple(i for i, _ in ev.bundles)
        if pg in self.removed:
            return self._reply(BundlesPrepareFailed(pg_id=pg, node_id=node.node_id, indexes=idx, reason="the group was removed", stimulus_id=sid))
        need = EMPTY
        fresh = []
        for i, res in ev.bundles:
            if (pg, i) not in self.prepared and (pg, i) not in self.committed:
                need = need + res
                fresh.append((i, res))
        if fresh and not node.scheduler.set_apart(need):
            return self._reply(BundlesPrepareFailed(
                pg_id=pg, node_id=node.node_id, indexes=idx, stimulus_id=sid,
                reason=f"needs {need.to_dict()}, free {node.scheduler.available.to_dict()}"))
        for i, res in fresh:
            self.prepared[(pg, i)] = res
        return self._reply(BundlesPrepared(pg_id=pg, node_id=node.node_id, indexes=idx, stimulus_id=sid))

    def on_commit(self, ev: CommitBundles, now: float) -> list[Command]:
        node, pg, sid = self.node, ev.pg_id, ev.stimulus_id
        missing = tuple(i for i in ev.indexes if (pg, i) not in self.prepared and (pg, i) not in self.committed)
        if missing:
            # released before this commit came (messages may overtake each
            # other): commit nothing; the head gives these back and places
            # them again
            return self._reply(BundlesPrepareFailed(
                pg_id=pg, node_id=node.node_id, indexes=missing, stimulus_id=sid,
                reason="the bundles were released before the commit"))
        cmds: list[Command] = []
        for i in ev.indexes:
            res = self.prepared.pop((pg, i), None)
            if res is not None:
                self.committed[(pg, i)] = res
                cmds += node.scheduler.grant(bundle_grant(res, pg, i), now, sid)
        mine = EMPTY
        for (p, i), res in self.committed.items():
            if p == pg:
                mine = mine + bundle_grant(res, p, i)
        return cmds + self._reply(BundlesCommitted(pg_id=pg, node_id=node.node_id, indexes=tuple(ev.indexes),
                                                   granted=mine, stimulus_id=sid))

    def on_release(self, ev: ReleaseBundles, now: float) -> list[Command]:
        node, pg, sid = self.node, ev.pg_id, ev.stimulus_id
        sched = node.scheduler
        cmds: list[Command] = []
        give = EMPTY
        for key in [k for k in self.prepared if k[0] == pg and (ev.indexes is None or k[1] in ev.indexes)]:
            give = give + self.prepared.pop(key)
        if ev.indexes is None:
            self.removed.add(pg)
            held = [k for k in self.committed if k[0] == pg]
            if held:
                cmds += sched.revoke_group(pg, now, sid)
            for key in held:
                give = give + self.committed.pop(key)
        if not give.is_empty():
            cmds += sched.give_back(give, now, sid)
        return cmds + self._reply(BundlesReleased(pg_id=pg, node_id=node.node_id, stimulus_id=sid))

    def validate(self) -> None:
        sched = self.node.scheduler
        held = EMPTY
        for r in list(self.prepared.values()) + list(self.committed.values()):
            held = held + r
        assert held == sched.bundled, f"node {self.node.node_id}: bundles hold {held}, the scheduler set apart {sched.bundled}"
        for key in self.prepared:
            assert key not in self.committed, f"bundle {key} both prepared and committed"
        for (pg, i), res in self.committed.items():
            g = bundle_grant(res, pg, i).only([_name(k, pg, i) for k in list(res.names()) + [MARKER]])
            assert g.is_subset_of(sched.total), f"committed bundle {(pg, i)} missing from the node's total"


def unschedulable(spec, why: str) -> ErrorInfo:
    return ErrorInfo(ErrorKind.TASK_UNSCHEDULABLE, f"task {spec.display_name()} cannot be scheduled: {why}",
                     task_name=spec.display_name())


__all__ += ["unschedulable", "only_group", "requested_bundle", "MARKER", "BundleHolder"]
