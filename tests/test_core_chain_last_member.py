"""A shard whose last member restarts empty (issue 15, seed 591).

A chain of two, gcs:0:0 and gcs:0:1: a pause makes gcs:0:1's heartbeats
late, the master cuts it (gcs:0:0, caught up, lives: the rule held), then
gcs:0:0 crashes and rejoins empty.  Cutting the rejoiner left the shard with
no replica and the GCS client raised IndexError on the empty chain.  Now
the master takes back the member it cut while alive (the shard's only copy
left), or waits for it; and the client holds requests for a chain with no
replica instead of raising.
"""

from __future__ import annotations

from penumbra.core.gcs import ChainMaster, GcsTiming
from penumbra.core.gcs_client import GcsClient
from penumbra.core.messages import ChainConfigMsg, Log, ReplicaHeartbeat, ReplicaJoin, Send, TimerFired
from penumbra.core.records import ChainConfig
from penumbra.core.tables import KvPut

A, B = "gcs:0:0", "gcs:0:1"
T = GcsTiming(heartbeat_interval=0.02, heartbeat_timeout=0.08)


def _cut_b() -> ChainMaster:
    """A master that cut B (silent) while A, caught up, lived."""
    m = ChainMaster([ChainConfig(0, 1, (A, B))], T)
    m.start(0.0)
    m.handle(ReplicaHeartbeat(replica=A, shard=0, epoch=1), 0.1)
    cmds = m.handle(TimerFired(key=("chain", "check")), 0.1)
    assert m.configs()[0].replicas == (A,), cmds
    return m


def _configs_sent(cmds):
    return [c.msg.config for c in cmds if isinstance(c, Send) and isinstance(c.msg, ChainConfigMsg)]


def test_the_member_cut_while_alive_is_taken_back_when_the_last_member_rejoins_empty():
    m = _cut_b()
    m.handle(ReplicaHeartbeat(replica=B, shard=0, epoch=1), 0.15)  # B was only paused
    cmds = m.handle(ReplicaJoin(replica=A, shard=0), 0.16)
    assert m.configs()[0] == ChainConfig(0, 3, (B,))
    assert all(c.replicas for c in _configs_sent(cmds)), "an empty chain was sent"
    assert {c.to for c in cmds if isinstance(c, Send)} >= {A, B}, "the joiner and the member taken back must hear"
    assert any(isinstance(c, Log) and "lost" in c.text for c in cmds)
    assert A in m.shards[0].joining and B not in m.dead
    m.validate()


def test_the_shard_waits_for_a_cut_member_that_is_not_heard_yet():
    m = _cut_b()
    cmds = m.handle(ReplicaJoin(replica=A, shard=0), 0.16)
    assert m.configs()[0] == ChainConfig(0, 2, (A,)), "no config change while no copy is known"
    assert not _configs_sent(cmds) and any(isinstance(c, Log) for c in cmds)
    # B resumes: its heartbeat (from its old epoch) brings it back
    cmds = m.handle(ReplicaHeartbeat(replica=B, shard=0, epoch=1), 0.5)
    assert m.configs()[0] == ChainConfig(0, 3, (B,))
    assert _configs_sent(cmds)
    m.validate()


def test_the_gcs_client_holds_requests_for_a_shard_with_no_replica():
    c = GcsClient("node:0", lambda token, result, now, sid: [], retry_after=0.05)
    c.set_configs([ChainConfig(0, 1, (A,))], 0.0)
    c.set_configs([ChainConfig(0, 2, ())], 0.1)  # raised IndexError before
    assert not [x for x in c.write(KvPut("k", 1), "t", 0.1) if isinstance(x, Send)]
    assert not [x for x in c.handle(TimerFired(key=("gcs-client", "retry")), 0.2) if isinstance(x, Send)]
    sent = [x for x in c.set_configs([ChainConfig(0, 3, (B,))], 0.3) if isinstance(x, Send)]
    assert sent and all(x.to == B for x in sent), "held requests go out with the next config"
