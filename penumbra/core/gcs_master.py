"""The chain master: each GCS shard's chain configuration, kept by the head.

Theory of operation
-------------------
``ChainMaster`` runs inside the head.  It watches every replica's
``ReplicaHeartbeat``; a replica silent for ``GcsTiming.heartbeat_timeout``
is cut out of its chain, and a replica that finished joining
(``ReplicaReady``) is appended as the new tail.  Every change goes out as a
``ChainConfig`` with a higher epoch, to the shard's replicas (old and new)
and to every listener (nodes and the head's own GCS client), which is how
clients learn where to send.  What the replicas do with a new config is in
``gcs.py``.

A new head
    The replicas need no head to keep their config and serve: writes go
    through each chain's head replica, reads to its tail, as before; only
    reconfiguration waits.  A recovering head asks replicas for their view
    (``ChainQuery``, answered with ``ChainReport``) and starts its master
    with ``ChainMaster.from_reports``: per shard the highest epoch reported,
    members that did not say they are caught up in that epoch counted as
    not caught up (so the silent ones are cut only once a caught-up member
    lives).  A heartbeat naming a newer epoch than the master's (a config
    the reports missed) makes it ask that replica and adopt the answer,
    and change nothing in that shard meanwhile; a ``ReplicaReady`` from a
    replica that joined under the old head appends it (see core/head.py,
    "Recovery").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .gcs_config import GcsTiming
from .messages import (
    ChainConfigMsg,
    ChainQuery,
    ChainReport,
    Command,
    Event,
    Log,
    ReplicaHeartbeat,
    ReplicaJoin,
    ReplicaReady,
    Send,
    SetTimer,
    TimerFired,
)
from .records import ChainConfig

__all__ = ["ChainMaster"]


@dataclass(slots=True)
class _ShardView:
    config: ChainConfig
    joining: dict[str, float] = field(default_factory=dict)  # replica -> since


class ChainMaster:
    """Keeps each shard's chain configuration; run inside the head.

    It cuts out replicas whose heartbeats stop and appends replicas that
    finished joining.  Every change goes, with a new epoch, to the shard's
    replicas (old and new) and to every listener (nodes and the head's own
    GCS client), which is how clients learn where to send.
    """

    def __init__(self, configs: list[ChainConfig], timing: GcsTiming = GcsTiming(),
                 address: str = "head", recovered: bool = False) -> None:
        self.timing = timing
        self.address = address
        self.shards = {c.shard: _ShardView(c) for c in configs}
        self.last_seen: dict[str, float] = {}
        self.caught_up: dict[str, bool] = {}  # from heartbeats; absent: an original member
        self.dead: set[str] = set()
        # a member cut while alive (its heartbeats were late, not lost for
        # good) still heartbeats: replica -> (shard, when last heard, its
        # sequence number).  It
        # keeps every write up to its cut: the shard's last resort if its
        # only remaining member restarts empty (``_take_back``)
        self.cut_heard: dict[str, tuple[int, float, int]] = {}
        # shard -> its only member, which restarted empty while no member
        # cut alive was heard: it waits for one to be taken back
        self.stranded: dict[int, str] = {}
        self.listeners: dict[str, None] = {}  # (ordered set: one per node)
        self.changes = 0
        # ``configs()`` as last built, and the ``changes`` count it was built
        # at: every node's welcome carries it and every node's GCS client
        # keeps it (copying it only if a config changes), so one tuple is
        # shared by all of them instead of one per node (10,000 nodes x
        # 5,000 shards)
        self._configs: tuple[ChainConfig, ...] | None = None
        self._configs_at = -1
        # a master started by a recovering head from the replicas' reports
        # (core/head.py, "Recovery"): it does not know who was joining
        # under its predecessor, nor whether every member has caught up
        self.recovered = recovered
        # shard -> the highest epoch a replica's heartbeat named above ours
        # (only after a recovery whose reports missed a newer config): no
        # change to that shard until we have that config (``on_report``),
        # or we would issue a second config under an epoch already taken
        self.newer: dict[int, int] = {}

    @classmethod
    def from_reports(cls, reports: list[ChainReport], shards: set[int] | None = None,
                     timing: GcsTiming = GcsTiming(), address: str = "head") -> "ChainMaster":
        """The master of a recovering head: per shard, the config of the
        highest epoch reported.  A member counts as caught up only if it
        said so in that very epoch (one that did not answer, or answered
        from an older config, may lack acknowledged writes): the heartbeat
        timeout then cuts the silent members only once a caught-up member
        lives.

        Raises:
            ValueError: a shard in ``shards`` has no config among the
                reports (no surviving replica of it was asked).
        """
        best: dict[int, ChainConfig] = {}
        for r in reports:
            c = r.config
            if c is not None and (c.shard not in best or c.epoch > best[c.shard].epoch):
                best[c.shard] = c
        missing = sorted((shards or set()) - set(best))
        if missing:
            raise ValueError(f"no surviving GCS replica reported a config for shard(s) {missing}: name at least "
                             f"one live replica of every shard to recover from")
        m = cls([best[s] for s in sorted(best)], timing, address=address, recovered=True)
        said = {r.replica: r for r in reports}
        for c in best.values():
            for member in c.replicas:
                r = said.get(member)
                m.caught_up[member] = bool(r is not None and r.config is not None and r.config.epoch == c.epoch
                                           and r.caught_up)
        return m

    def on_report(self, ev: ChainReport, now: float) -> list[Command]:
        """A replica's view (asked when its heartbeat named an epoch newer
        than ours: a recovering head's reports missed a newer config)."""
        view = self.shards.get(ev.shard)
        c = ev.config
        if view is None or c is None or c.shard != ev.shard or c.epoch <= view.config.epoch:
            return []
        for member in c.replicas:
            if member not in view.config.replicas:
                self.last_seen.setdefault(member, now)
                self.caught_up.setdefault(member, False)
        if ev.caught_up and ev.replica in c.replicas:
            self.caught_up[ev.replica] = True
        view.config = c
        self.changes += 1
        return []

    def configs(self) -> tuple[ChainConfig, ...]:
        """Every shard's config, in shard order (the same tuple until a
        config changes: each change counts in ``changes``)."""
        if self._configs is None or self._configs_at != self.changes:
            self._configs = tuple(self.shards[s].config for s in sorted(self.shards))
            self._configs_at = self.changes
        return self._configs

    def start(self, now: float) -> list[Command]:
        for v in self.shards.values():
            for r in v.config.replicas:
                self.last_seen[r] = now
        return [SetTimer(at=now + self.timing.heartbeat_interval, key=("chain", "check"))]

    def add_listener(self, address: str) -> None:
        self.listeners[address] = None

    def remove_listener(self, address: str) -> None:
        self.listeners.pop(address, None)

    def handle(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, ReplicaHeartbeat):
            if event.replica in self.dead:
                # cut while alive (its heartbeats were lost): tell it, or it
                # goes on acting on its old config (serving stale reads)
                view = self.shards.get(event.shard)
                self.cut_heard[event.replica] = (event.shard, now, event.seq)
                if view is not None and event.shard in self.stranded:
                    return self._take_back(view, event.replica, self.stranded.pop(event.shard), now, event.stimulus_id)
                if view is not None and event.epoch and event.epoch < view.config.epoch:
                    return [Send(to=event.replica, msg=ChainConfigMsg(config=view.config, stimulus_id=event.stimulus_id))]
                return []
            self.last_seen[event.replica] = now
            view = self.shards.get(event.shard)
            if event.caught_up and view is not None and event.replica in view.config.replicas and event.epoch == view.config.epoch:
                # sticky: a member that has synced once holds every
                # acknowledged write from then on, even while it re-syncs
                # with a new predecessor after a cut
                self.caught_up[event.replica] = True
            if view is not None and event.epoch > view.config.epoch:
                # a config newer than ours: only after a recovery, whose
                # reports missed it.  Ask for it (``on_report`` adopts it).
                self.newer[event.shard] = max(self.newer.get(event.shard, 0), event.epoch)
                return [Send(to=event.replica, msg=ChainQuery(master=self.address, stimulus_id=event.stimulus_id))]
            if view is not None and event.epoch < view.config.epoch and (
                event.replica in view.config.replicas or (event.epoch == 0 and event.replica in view.joining)
            ):
                # it missed a config (a lost message would stall the chain)
                return [Send(to=event.replica, msg=ChainConfigMsg(config=view.config, stimulus_id=event.stimulus_id))]
            return []
        if isinstance(event, TimerFired) and event.key == ("chain", "check"):
            return self._check(now) + [SetTimer(at=now + self.timing.heartbeat_interval, key=("chain", "check"))]
        if isinstance(event, ReplicaJoin):
            return self._on_join(event, now)
        if isinstance(event, ReplicaReady):
            return self._on_ready(event, now)
        if isinstance(event, ChainReport):
            return self.on_report(event, now)
        return []

    def _broadcast(self, view: _ShardView, extra: tuple[str, ...] = (), sid: str = "") -> list[Command]:
        msg = ChainConfigMsg(config=view.config, stimulus_id=sid)
        targets = list(dict.fromkeys(view.config.replicas + tuple(view.joining) + extra))
        seen = set(targets)
        targets += [l for l in self.listeners if l not in seen]
        return [Send(to=t, msg=msg) for t in targets]

    def _check(self, now: float) -> list[Command]:
        cmds: list[Command] = []
        limit = now - self.timing.heartbeat_timeout
        for shard in sorted(self.shards):
            view = self.shards[shard]
            live = tuple(r for r in view.config.replicas if self.last_seen.get(r, now) >= limit)
            gone = [r for r in view.config.replicas if r not in live]
            for r in list(view.joining):
                if self.last_seen.get(r, now) < limit:
                    del view.joining[r]
            if not gone:
                continue
            if self.newer.get(shard, 0) > view.config.epoch:
                continue  # a replica knows a newer config: learn it first
            if not any(self.caught_up.get(r, True) for r in live):
                # every replica is gone, or only members still catching up
                # are left (they lack acknowledged writes): cutting would lose
                # them, so keep the config and wait (a false suspicion heals)
                continue
            self.dead.update(gone)
            view.config = ChainConfig(shard=shard, epoch=view.config.epoch + 1, replicas=live)
            self.changes += 1
            cmds += self._broadcast(view, sid=f"chain-cut:{','.join(gone)}")
        return cmds

    def _on_join(self, ev: ReplicaJoin, now: float) -> list[Command]:
        view = self.shards.get(ev.shard)
        if view is None:
            return []
        self.dead.discard(ev.replica)
        self.last_seen[ev.replica] = now
        if view.config.replicas == (ev.replica,):
            # the shard's only member restarted empty: cutting it would
            # leave no replica at all (and no tail to copy from)
            return self._on_last_member_rejoin(view, ev, now)
        if ev.replica in view.config.replicas:
            # restarted with empty state but still listed: cut it first
            view.config = ChainConfig(
                shard=ev.shard, epoch=view.config.epoch + 1,
                replicas=tuple(r for r in view.config.replicas if r != ev.replica),
            )
            self.changes += 1
            view.joining[ev.replica] = now
            return self._broadcast(view, sid=ev.stimulus_id)
        view.joining[ev.replica] = now
        return [Send(to=ev.replica, msg=ChainConfigMsg(config=view.config, stimulus_id=ev.stimulus_id))]

    def _on_last_member_rejoin(self, view: _ShardView, ev: ReplicaJoin, now: float) -> list[Command]:
        """The last member of a shard restarted empty.  The only copy of
        the shard left is a member cut earlier while alive (a pause made its
        heartbeats late: the rule "cut only when a caught-up member lives"
        held then, yet a false suspicion plus one real crash lose a chain of
        two).  Take back such a member heard lately, the one with the most
        writes; else keep the config and wait for one to heartbeat
        (``handle``).
        """
        limit = now - self.timing.heartbeat_timeout
        heard = [(seq, r) for r, (s, t, seq) in self.cut_heard.items()
                 if s == view.config.shard and r in self.dead and t >= limit]
        if heard:
            return self._take_back(view, max(heard)[1], ev.replica, now, ev.stimulus_id)
        self.stranded[view.config.shard] = ev.replica
        return [Log(level="warning", stimulus_id=ev.stimulus_id, text=(
            f"GCS shard {view.config.shard}: its only replica {ev.replica} restarted empty and no replica cut "
            f"earlier is heard: the shard waits (its requests are held) until one comes back"))]

    def _take_back(self, view: _ShardView, member: str, joiner: str, now: float, sid: str) -> list[Command]:
        """Make ``member`` (cut while alive) the shard's only member again
        and let ``joiner`` (the last member, restarted empty) copy from it.
        Writes acknowledged after ``member``'s cut are lost: say so."""
        shard = view.config.shard
        self.dead.discard(member)
        self.cut_heard.pop(member, None)
        self.last_seen[member] = self.last_seen[joiner] = now
        self.caught_up[member] = True
        view.joining[joiner] = now
        view.config = ChainConfig(shard=shard, epoch=view.config.epoch + 1, replicas=(member,))
        self.changes += 1
        return self._broadcast(view, sid=sid) + [Log(level="warning", stimulus_id=sid, text=(
            f"GCS shard {shard}: its only replica {joiner} restarted empty; {member}, cut earlier while alive, "
            f"is taken back as the shard's copy (writes acknowledged after its cut are lost); {joiner} copies from it"))]

    def _on_ready(self, ev: ReplicaReady, now: float) -> list[Command]:
        view = self.shards.get(ev.shard)
        if view is not None and self.recovered and ev.replica not in view.joining \
                and ev.replica not in view.config.replicas and ev.replica not in self.dead:
            # it joined under the old head (which died before appending
            # it): append it now; if its snapshot is too old for its new
            # predecessor, that one tells it to join again (GcsRejoin)
            view.joining[ev.replica] = now
        if view is None or ev.replica not in view.joining:
            return []
        del view.joining[ev.replica]
        self.last_seen[ev.replica] = now
        self.caught_up[ev.replica] = False  # until its heartbeat says it synced
        view.config = ChainConfig(shard=ev.shard, epoch=view.config.epoch + 1, replicas=view.config.replicas + (ev.replica,))
        self.changes += 1
        return self._broadcast(view, sid=ev.stimulus_id)

    def validate(self) -> None:
        if self._configs is not None and self._configs_at == self.changes:
            assert self._configs == tuple(self.shards[s].config for s in sorted(self.shards)), (
                "a shard's config changed without counting in ChainMaster.changes")
        for s, v in self.shards.items():
            assert v.config.shard == s
            assert len(set(v.config.replicas)) == len(v.config.replicas)
