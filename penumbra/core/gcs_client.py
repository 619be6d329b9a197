"""The GCS client embedded in every machine that talks to the GCS.

Theory of operation
-------------------
A machine (a node, the head) asks for a write or a read and gives a
*token*; when the answer comes the client calls the owner's ``on_reply``
with ``(token, result, now, stimulus_id)``.  The client hides sharding and failures:

* an op is routed to its shard (``tables.shards_for``); an op for every shard
  (``NodeDown``, ``TasksOnNode``) completes once all shards answered, with a
  tuple of their results in shard order;
* writes go to the chain head, reads to the tail, as the latest
  ``ChainConfig`` says;
* a request unanswered for ``retry_after`` seconds, or outstanding when a new
  config arrives, is sent again with the same ``req_id`` (replicas apply a
  write once and answer repeats with the first result);
* requests made before any config is known wait for one.

Notifications (``GcsNotify``) are filtered: one whose version is not newer
than the last seen for that key is a repeat and is dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from .messages import ChainConfigMsg, Command, GcsNotify, GcsRead, GcsReply, GcsWrite, Send, SetTimer, TimerFired
from .records import ChainConfig
from .tables import Op, Query, key_shard, shards_for

__all__ = ["GcsClient"]

ReplyFn = Callable[[Hashable, Any, float, str], list[Command]]


@dataclass(slots=True)
class _Req:
    req_id: int
    shard: int
    request: Op | Query
    token: Hashable
    sent_at: float
    group: "_Group | None"
    sid: str
    retries: int = 0
    key: tuple | None = None  # (table, key) of a single-key write, for ordering
    made: int = 0  # the client's ``made`` count when it was asked for (see ``settled``)


@dataclass(slots=True)
class _Group:
    token: Hashable
    results: dict[int, Any]
    expected: int


class GcsClient:
    def __init__(self, address: str, on_reply: ReplyFn, retry_after: float = 0.05) -> None:
        self.address = address
        self.on_reply = on_reply
        self.retry_after = retry_after
        # each shard's config, indexed by shard (``None``: not known yet).
        # Usually the very tuple the head's welcome carried, shared with
        # every other client (copied into a list of our own only when one
        # shard's config changes: ``_own``); a dict per client was 5,000
        # entries on each of 10,000 nodes
        self.configs: tuple[ChainConfig | None, ...] | list[ChainConfig | None] = ()
        self._own = False
        self._known = 0  # shards with a config
        self.num_shards = 0
        self.next_req = 1
        self.made = 0  # requests asked for so far (``settled``)
        self.outstanding: dict[int, _Req] = {}
        self.waiting: list[_Req] = []  # made before any config arrived
        self.key_queues: dict[tuple, deque[_Req] | None] = {}  # single-key writes waiting their turn
        self.versions: dict[tuple[str, Hashable], int] = {}
        self._timer_armed = False

    # ------------------------------------------------------------------ config
    def set_configs(self, configs: tuple[ChainConfig, ...] | list[ChainConfig], now: float) -> list[Command]:
        # take every shard's config before routing the requests that waited
        # for one: with only a prefix known, ``num_shards`` is too small and
        # a request would go to the wrong shard
        if not self._known and type(configs) is tuple and all(c.shard == i for i, c in enumerate(configs)):
            # the first configs we hear of, every shard in order (a welcome):
            # keep the tuple itself, shared (nothing can be outstanding yet,
            # so there is nothing to re-send)
            self.configs = configs
            self._own = False
            self._known = self.num_shards = len(configs)
            return self._flush_waiting(now)
        cmds: list[Command] = []
        for c in configs:
            cmds += self._config(c, now, flush=False)
        return cmds + self._flush_waiting(now)

    def _config(self, c: ChainConfig, now: float, flush: bool = True) -> list[Command]:
        configs = self.configs
        shard = c.shard
        old = configs[shard] if shard < len(configs) else None
        if old is not None and old.epoch >= c.epoch:
            return []
        if not self._own:  # (copy on write: the tuple is shared)
            configs = self.configs = list(configs)
            self._own = True
        if shard >= len(configs):
            configs.extend([None] * (shard + 1 - len(configs)))
        if old is None:
            self._known += 1
        configs[shard] = c
        self.num_shards = max(self.num_shards, shard + 1)
        cmds: list[Command] = []
        # the chain changed: re-send what was outstanding on this shard now
        for r in self.outstanding.values():
            if r.shard == c.shard:
                r.sent_at = now
                cmds += self._send(r)
        if flush:
            cmds += self._flush_waiting(now)
        return cmds

    def _flush_waiting(self, now: float) -> list[Command]:
        if not self.waiting or not self.ready:
            return []
        waiting, self.waiting = self.waiting, []
        cmds: list[Command] = []
        for r in waiting:
            cmds += self._issue(r.request, r.token, now, r.sid, r.made)
        return cmds

    @property
    def ready(self) -> bool:
        return self._known > 0 and self._known == self.num_shards

    # ------------------------------------------------------------------ requests
    def write(self, op: Op, token: Hashable, now: float, sid: str = "") -> list[Command]:
        return self._issue(op, token, now, sid)

    def read(self, query: Query, token: Hashable, now: float, sid: str = "") -> list[Command]:
        return self._issue(query, token, now, sid)

    def settled(self, mark: int) -> bool:
        """Has every request asked for up to ``mark`` (a value of ``made``)
        been answered?  (Not the oldest outstanding ``req_id``: a write
        queued behind an earlier one to its key gets its id only when it is
        sent; found by a strategy-drawn plan, 64806: a dead node's scan
        missed a placement on it that was still queued.)"""
        if any(r.made <= mark for r in self.waiting) or any(r.made <= mark for r in self.outstanding.values()):
            return False
        return not any(r.made <= mark for q in self.key_queues.values() if q for r in q)

    def _issue(self, request: Op | Query, token: Hashable, now: float, sid: str, made: int = 0) -> list[Command]:
        if not made:
            self.made = made = self.made + 1
        if not self.ready:
            self.waiting.append(_Req(0, 0, request, token, now, None, sid, made=made))
            return []
        route = request.route()
        if route[1] is not None and isinstance(request, Op):
            # the common case, a write of one key: one shard, in key order
            return self._issue_keyed(request, key_shard(route[0], route[1], self.num_shards), token, now, sid, made)
        shards = shards_for(route, self.num_shards)
        group = _Group(token, {}, len(shards)) if len(shards) > 1 or isinstance(shards, range) else None
        cmds: list[Command] = []
        # (reads, and writes to a whole table; neither waits for its key)
        for shard in shards:
            cmds += self._start(_Req(0, shard, request, token, now, group, sid, made=made), now)
        if not self._timer_armed:
            self._timer_armed = True
            cmds.append(SetTimer(at=now + self.retry_after, key=("gcs-client", "retry")))
        return cmds

    def _issue_keyed(self, op: Op, shard: int, token: Hashable, now: float, sid: str, made: int = 0) -> list[Command]:
        key = op.order_key()
        r = _Req(0, shard, op, token, now, None, sid, key=key, made=made)
        key_queues = self.key_queues
        # writes to one key go out one at a time, in the order they were
        # made: a retried or reordered AddTask must never land after the same
        # task's FinishTask.  (``None``: one write of this key is in flight
        # and none waits; a queue is made only when a second comes, rarely.)
        if key in key_queues:
            q = key_queues[key]
            if q is None:
                q = key_queues[key] = deque()
            q.append(r)
            cmds: list[Command] = []
        else:
            key_queues[key] = None
            cmds = self._start(r, now)
        if not self._timer_armed:
            self._timer_armed = True
            cmds.append(SetTimer(at=now + self.retry_after, key=("gcs-client", "retry")))
        return cmds

    def _start(self, r: _Req, now: float) -> list[Command]:
        # ids are handed out when a request is sent, so they increase in send
        # order and ``low_water`` never passes a request still to be sent
        r.req_id = rid = self.next_req
        self.next_req = rid + 1
        r.sent_at = now
        self.outstanding[rid] = r
        return self._send(r)

    def _send(self, r: _Req) -> list[Command]:
        config = self.configs[r.shard]
        if not config.replicas:
            # a shard with no replica (its chain master lost every copy):
            # hold the request; it goes out with the next config or retry
            return []
        if isinstance(r.request, Query):
            return [Send(to=config.replicas[-1], msg=GcsRead(client=self.address, req_id=r.req_id, query=r.request, shard=r.shard, stimulus_id=r.sid))]
        # ids are issued in increasing order, so the oldest outstanding is
        # first (``r`` itself is outstanding: it is never empty here)
        return [Send(to=config.replicas[0], msg=GcsWrite(client=self.address, req_id=r.req_id, op=r.request, shard=r.shard,
                                                         low_water=next(iter(self.outstanding)), stimulus_id=r.sid))]

    # ------------------------------------------------------------------ events
    def handle(self, event, now: float) -> list[Command]:
        """Route one of the client's events; returns None if not ours."""
        t = type(event)
        if t is GcsReply:
            return self._on_reply(event, now)
        if t is ChainConfigMsg:
            return self._config(event.config, now)
        if t is TimerFired and event.key == ("gcs-client", "retry"):
            return self._on_retry(now)
        raise TypeError(f"GcsClient cannot handle {event!r}")

    def owns(self, event) -> bool:
        t = type(event)
        return t is GcsReply or t is ChainConfigMsg or (t is TimerFired and event.key == ("gcs-client", "retry"))

    def _on_reply(self, ev: GcsReply, now: float) -> list[Command]:
        r = self.outstanding.pop(ev.req_id, None)
        if r is None:
            return []  # a repeat
        cmds: list[Command] = []
        if r.key is not None:
            q = self.key_queues.get(r.key)
            if q:
                cmds += self._start(q.popleft(), now)
            else:
                self.key_queues.pop(r.key, None)
        if r.group is None:
            return cmds + self.on_reply(r.token, ev.result, now, ev.stimulus_id or r.sid)
        g = r.group
        g.results[r.shard] = ev.result
        if len(g.results) < g.expected:
            return []
        results = tuple(g.results[s] for s in sorted(g.results))
        return self.on_reply(g.token, results, now, ev.stimulus_id or r.sid)

    def _on_retry(self, now: float) -> list[Command]:
        cmds: list[Command] = []
        for r in self.outstanding.values():
            if now - r.sent_at >= self.retry_after:
                r.sent_at = now
                r.retries += 1
                sends = self._send(r)
                cmds += sends
                if r.retries >= 2 and sends:
                    cmds += self._probe(r, sends[0])
        if self.outstanding or self.waiting:
            cmds.append(SetTimer(at=now + self.retry_after, key=("gcs-client", "retry")))
        else:
            self._timer_armed = False
        return cmds

    def _probe(self, r: _Req, send: Send) -> list[Command]:
        """A request unanswered twice: our config may be stale (a lost
        ChainConfigMsg while the old head or tail is dead).  Send a copy to
        the chain's other replicas; a live one that is not the head (tail)
        does not serve it but answers with its config."""
        return [Send(to=x, msg=send.msg) for x in self.configs[r.shard].replicas if x != send.to]

    def fresh(self, ev: GcsNotify) -> bool:
        """True if this notification is newer than what we saw for its key."""
        k = (ev.table, ev.key)
        last = self.versions.get(k)
        if last is not None and ev.version <= last:
            return False
        self.versions[k] = ev.version
        return True

    def forget(self, table: str, key: Hashable) -> None:
        self.versions.pop((table, key), None)

    def validate(self) -> None:
        for rid, r in self.outstanding.items():
            assert rid == r.req_id
