"""A small store keeps the outputs of actor methods longest.

Lineage rebuilds an evicted task output; nothing rebuilds an actor
method's output (core/lineage.py: a replay actor re-creates only those of
the calls a restart replays).  So the store (``StoreAccounting``) evicts
such ``final`` objects last: after every other unpinned object, and after
spilling.  Found by the real-runtime swarm (seed 27 in 8 MiB stores): one
1 MiB output evicted the 8-byte results of 30 actor calls, the oldest in
the store, before the driver read them; every ``get`` of them raised
``ObjectLostError``.

Three layers: the core's choice, driven by hand; the same program (a
replay actor with checkpoints whose results wait unread while 1 MiB task
outputs overflow an 8 MiB store) on the simulator and on real processes.
"""

from __future__ import annotations

import pytest

from penumbra.core.ids import driver_task_id, put_object_id
from penumbra.core.objects import StoreAccounting

MiB = 1 << 20
STORE = 8 * MiB
CALLS = 10
FLOOD = 20  # 1 MiB task outputs: two and a half stores' worth


def oid(i: int):
    return put_object_id(driver_task_id(1), i + 1)


# ---------------------------------------------------------------- the core


def test_unpinned_outputs_lineage_can_rebuild_go_before_final_ones() -> None:
    s = StoreAccounting(100)
    s.admit(oid(0), 10, final=True)  # the oldest: plain LRU would take it first
    s.admit(oid(1), 10, final=True)
    s.admit(oid(2), 40)
    s.admit(oid(3), 40)
    adm = s.admit(oid(4), 30)
    assert adm.ok and adm.evicted == (oid(2),)
    assert oid(0) in s and oid(1) in s
    s.validate()


def test_final_objects_go_last_oldest_first_and_only_if_that_makes_room() -> None:
    s = StoreAccounting(100)
    s.admit(oid(0), 30, final=True)
    s.admit(oid(1), 30, final=True)
    s.admit(oid(2), 20)
    s.admit(oid(3), 20, pin="task")
    adm = s.admit(oid(4), 40)  # 20 of the plain one, then 30 of the oldest final one
    assert adm.ok and adm.evicted == (oid(2), oid(0))
    assert s.evictions == 2
    # no room even with every unpinned object: nothing goes
    before = (s.used, list(s.objects))
    assert not s.admit(oid(5), 90).ok
    assert (s.used, list(s.objects)) == before
    s.validate()


def test_readmitting_an_object_as_final_marks_it_final() -> None:
    s = StoreAccounting(50)
    s.admit(oid(0), 20)
    s.admit(oid(1), 20)
    s.admit(oid(0), 20, final=True)  # (a fetched copy, then known to be an actor's output)
    s.touch(oid(1))
    adm = s.admit(oid(2), 20)
    assert adm.evicted == (oid(1),)
    s.validate()


def test_spilling_comes_before_evicting_a_final_object() -> None:
    s = StoreAccounting(100, spilling=True, spill_threshold=1.0)
    s.admit(oid(0), 30, final=True)
    s.admit(oid(1), 50, pin=("client", "c1"))  # a put whose ref is alive: spillable
    s.admit(oid(2), 10)
    adm = s.admit(oid(3), 40)
    assert adm.ok and adm.evicted == (oid(2),) and adm.spill == (oid(1),)
    assert oid(0) in s
    s.validate()


def test_a_fetched_copy_of_an_actor_result_is_final_and_a_task_outputs_is_not(core) -> None:
    from test_core_node import NodeBox, of, other_node

    from penumbra.core.ids import actor_id_of
    from penumbra.core.messages import Fetch, FetchCompleted, WatchObjects
    from penumbra.core.tables import FinishTask

    box = NodeBox()
    other_node(box)
    call, task = core.spec(), core.spec()
    box.gcs_write(FinishTask(call.task_id, "node:1", ((call.return_ids[0], 30),), actor_id=actor_id_of(task.task_id)))
    box.gcs_write(FinishTask(task.task_id, "node:1", ((task.return_ids[0], 30),)))
    for i, oid in enumerate((call.return_ids[0], task.return_ids[0])):
        box.feed(WatchObjects(client="c:driver", req_id=i + 1, object_ids=(oid,)))
        (f,) = of(box.out, Fetch)
        box.out.clear()
        box.feed(FetchCompleted(object_id=f.object_id, size=30))
    store = box.node.objects.store
    assert store.objects[call.return_ids[0]].final and not store.objects[task.return_ids[0]].final


# ---------------------------------------------------------- a whole program


def program(ray) -> tuple[list[int], list[int]]:
    """A replay actor with checkpoints answers CALLS calls; all but the last
    are left unread while FLOOD 1 MiB task outputs pass through the store.
    Returns (the calls' values, what they must be)."""

    @ray.remote(max_restarts=-1, replay=True, checkpoint_interval=2)
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def add(self, k: int) -> int:
            self.n += k
            return self.n

    @ray.remote(max_retries=-1)
    def big(i: int, prev) -> bytes:
        return bytes([i]) * MiB

    c = Counter.remote()
    refs = [c.add.remote(k) for k in range(1, CALLS + 1)]
    ray.get(refs[-1])  # every call ran (in order); the others wait unread
    prev = None
    for i in range(FLOOD):  # a chain: each ran once the one before was stored
        prev = big.remote(i, prev)
    assert ray.get(prev)[:1] == bytes([FLOOD - 1])
    expect = [k * (k + 1) // 2 for k in range(1, CALLS + 1)]
    return ray.get(refs, timeout=60), expect


@pytest.fixture
def real_ray():
    import penumbra as ray

    yield ray
    ray.shutdown()


@pytest.mark.timeout(120)
def test_simulator_keeps_unread_actor_results_while_task_outputs_overflow(real_ray) -> None:
    ray = real_ray
    ray.init(simulated=True, num_cpus=1, object_store_memory=STORE)
    from penumbra.api import context

    got, expect = program(ray)
    assert got == expect
    store = context.current_runtime().cluster.nodes["node:0"].machine.objects.store
    assert store.evictions >= FLOOD - STORE // MiB  # (the flood did overflow it)


@pytest.mark.timeout(180)
def test_real_runtime_keeps_unread_actor_results_while_task_outputs_overflow(real_ray) -> None:
    ray = real_ray
    ray.init(num_cpus=1, object_store_memory=STORE, _system_config={"validate": True})
    got, expect = program(ray)
    assert got == expect


def lost_program(ray) -> BaseException:
    """An actor whose own 1 MiB results overflow the store: with nothing
    else to evict, its oldest results go.  Returns what reading the first
    one raised."""

    @ray.remote(max_restarts=-1, replay=True, checkpoint_interval=2)
    class Source:
        def make(self, i: int) -> bytes:
            return bytes([i]) * MiB

    s = Source.remote()
    refs = [s.make.remote(i) for i in range(FLOOD)]
    assert ray.get(refs[-1])[:1] == bytes([FLOOD - 1])
    with pytest.raises(ray.exceptions.ObjectLostError) as e:
        ray.get(refs[0], timeout=60)
    return e.value


def _says_what_and_why(e: BaseException) -> None:
    text = str(e)
    for needle in ("returned by a method of actor", "Source", "evicted from a full object store",
                   "lineage does not rebuild", "replays logged calls only when it restarts", "object_store_memory"):
        assert needle in text, (needle, text)


@pytest.mark.timeout(120)
def test_simulator_says_what_was_lost_when_only_actor_results_fill_the_store(real_ray) -> None:
    ray = real_ray
    ray.init(simulated=True, num_cpus=1, object_store_memory=STORE)
    _says_what_and_why(lost_program(ray))


@pytest.mark.timeout(180)
def test_real_runtime_says_what_was_lost_when_only_actor_results_fill_the_store(real_ray) -> None:
    ray = real_ray
    ray.init(num_cpus=1, object_store_memory=STORE, _system_config={"validate": True})
    _says_what_and_why(lost_program(ray))
