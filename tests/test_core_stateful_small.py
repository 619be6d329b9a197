"""Hypothesis state machines: StoreAccounting, and global-scheduler placement."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from penumbra.core.head import HeadConfig, HeadMachine
from penumbra.core.ids import child_task_id, driver_task_id, put_object_id
from penumbra.core.messages import ForwardTask, Heartbeat, NodeDied, NodeJoin, PlaceTask, Send
from penumbra.core.objects import StoreAccounting
from penumbra.core.records import ChainConfig, NodeLoad
from penumbra.core.specs import FunctionDescriptor, ResourceSet, TaskSpec

SETTINGS = settings(max_examples=40, stateful_step_count=40, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

OIDS = [put_object_id(driver_task_id(9), i + 1) for i in range(12)]
HOLDERS = ["a", "b", "c"]


class StoreMachine(RuleBasedStateMachine):
    """Random admit/pin/unpin/touch/remove against a model of pins."""

    def __init__(self) -> None:
        super().__init__()
        self.store = StoreAccounting(1000)
        self.pins: dict = {}  # oid -> Counter(holder)

    def _pinned(self):
        return {o for o, c in self.pins.items() if +c}

    @rule(i=st.integers(0, 11), size=st.integers(0, 600), pin=st.sampled_from([None] + HOLDERS))
    def admit(self, i, size, pin):
        oid = OIDS[i]
        pinned_before = self._pinned()
        present = oid in self.store
        before = (self.store.used, list(self.store.objects))
        adm = self.store.admit(oid, size, pin)
        if not adm.ok:
            assert not present
            assert (self.store.used, list(self.store.objects)) == before, "failed admission changed state"
            assert adm.error is not None and str(size) in adm.error.message
            return
        for v in adm.evicted:
            assert v not in pinned_before, f"evicted pinned {v}"
            assert v not in self.store
            self.pins.pop(v, None)
        for o in pinned_before:
            assert o in self.store, "a pinned object disappeared"
        if pin is not None:
            self.pins.setdefault(oid, Counter())[pin] += 1
        assert list(self.store.objects)[-1] == oid  # most recently used

    @rule(i=st.integers(0, 11), holder=st.sampled_from(HOLDERS))
    def pin(self, i, holder):
        oid = OIDS[i]
        if oid in self.store:
            self.store.pin(oid, holder)
            self.pins.setdefault(oid, Counter())[holder] += 1

    @rule(i=st.integers(0, 11), holder=st.sampled_from(HOLDERS))
    def unpin(self, i, holder):
        oid = OIDS[i]
        self.store.unpin(oid, holder)
        c = self.pins.get(oid)
        if c and c[holder] > 0:
            c[holder] -= 1

    @rule(holder=st.sampled_from(HOLDERS))
    def unpin_holder(self, holder):
        self.store.unpin_holder(holder)
        for c in self.pins.values():
            c[holder] = 0

    @rule(i=st.integers(0, 11))
    def touch(self, i):
        self.store.touch(OIDS[i])
        if OIDS[i] in self.store:
            assert list(self.store.objects)[-1] == OIDS[i]

    @rule(i=st.integers(0, 11))
    def remove(self, i):
        self.store.remove(OIDS[i])
        self.pins.pop(OIDS[i], None)

    @invariant()
    def consistent(self):
        s = self.store
        s.validate()
        assert 0 <= s.used <= s.capacity
        assert s.used == sum(o.size for o in s.objects.values())
        assert {o for o in s.objects if s.is_pinned(o)} == self._pinned() & set(s.objects)


TestStoreAccounting = StoreMachine.TestCase
TestStoreAccounting.settings = SETTINGS


# ============================================================================ placement

NAMES = ["CPU", "GPU", "mem"]
res_amount = st.sampled_from([0, 0.25, 0.5, 1, 2, 4])
resources = st.fixed_dictionaries({n: res_amount for n in NAMES}).map(ResourceSet.from_dict)


class PlacementMachine(RuleBasedStateMachine):
    """Whatever the cluster looks like, a placement goes to an alive node
    whose total resources fit; with none, the task waits (and is placed when
    a fitting node joins)."""

    @initialize(seed=st.integers(0, 1000))
    def setup(self, seed):
        self.head = HeadMachine(HeadConfig(chains=(ChainConfig(0, 1, ("g",)),)), random.Random(seed))
        self.head.start(0.0)
        self.nodes: dict[str, ResourceSet] = {}
        self.dead: set[str] = set()
        self.count = 0
        self.now = 0.0

    def _check(self, cmds):
        for c in cmds:
            if isinstance(c, Send) and isinstance(c.msg, PlaceTask):
                req = c.msg.spec.resources
                assert c.to in self.nodes and c.to not in self.dead, f"placed on dead/unknown {c.to}"
                assert req.is_subset_of(self.nodes[c.to]), f"{req} does not fit {c.to} {self.nodes[c.to]}"

    @rule(total=resources)
    def join(self, total):
        name = f"node:{len(self.nodes)}"
        self.nodes[name] = total
        self._check(self.head.handle(NodeJoin(node_id=name, resources=total), self.now))

    @precondition(lambda self: len(self.nodes) > len(self.dead))
    @rule(data=st.data())
    def kill(self, data):
        name = data.draw(st.sampled_from(sorted(set(self.nodes) - self.dead)))
        self.dead.add(name)
        self.head.handle(NodeDied(node_id=name), self.now)

    @precondition(lambda self: self.nodes)
    @rule(data=st.data(), queue=st.integers(0, 50), mean=st.floats(0, 2), frac=st.sampled_from([0, 0.5, 1]))
    def heartbeat(self, data, queue, mean, frac):
        name = data.draw(st.sampled_from(sorted(self.nodes)))
        total = self.nodes[name]
        avail = ResourceSet({k: int(total.units(k) * frac) for k in total.names()})
        load = NodeLoad(queue_length=queue, running=0, available=avail, total=total, mean_task_time=mean)
        self.head.handle(Heartbeat(node_id=name, load=load), self.now)

    @rule(req=resources)
    def forward(self, req):
        root = driver_task_id(1)
        spec = TaskSpec(task_id=child_task_id(root, self.count), job_id=1, parent_task_id=root,
                        function=FunctionDescriptor(b"f", "f"), resources=req)
        self.count += 1
        cmds = self.head.handle(ForwardTask(spec=spec, from_node="node:x", reason="overloaded"), self.now)
        self._check(cmds)
        placed = any(isinstance(c, Send) and isinstance(c.msg, PlaceTask) for c in cmds)
        fits = any(req.is_subset_of(t) for n, t in self.nodes.items() if n not in self.dead)
        assert placed == fits
        assert placed != (spec.task_id in self.head.scheduler.infeasible)

    @invariant()
    def valid(self):
        if hasattr(self, "head"):
            self.head.validate()
            for tid, p in self.head.scheduler.infeasible.items():
                assert not any(p.spec.resources.is_subset_of(t) for n, t in self.nodes.items() if n not in self.dead)


TestPlacement = PlacementMachine.TestCase
TestPlacement.settings = SETTINGS


LONG = settings(SETTINGS, max_examples=1000, stateful_step_count=60)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # (the suite's default is 120 s)
class TestStoreAccountingLong(StoreMachine.TestCase):
    settings = LONG


@pytest.mark.slow
@pytest.mark.timeout(3600)  # (the suite's default is 120 s)
class TestPlacementLong(PlacementMachine.TestCase):
    settings = LONG
