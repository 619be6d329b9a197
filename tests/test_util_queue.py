"""``penumbra.util.queue``: Ray's documented Queue, on the real runtime."""

from __future__ import annotations

import asyncio
import queue as stdqueue

import pytest

import penumbra as ray
from penumbra.util.queue import Empty, Full, Queue

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def runtime():
    ray.init(num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()


def test_fifo_and_sizes():
    q = Queue(maxsize=3)
    assert q.empty() and not q.full() and q.size() == 0
    for i in range(3):
        q.put(i)
    assert q.full() and len(q) == 3 and q.qsize() == 3
    assert [q.get() for _ in range(3)] == [0, 1, 2]
    assert q.empty()


def test_nowait_and_timeouts_raise_the_documented_errors():
    q = Queue(maxsize=1)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=True, timeout=0.05)
    q.put_nowait("a")
    with pytest.raises(Full):
        q.put_nowait("b")
    with pytest.raises(Full):
        q.put("b", timeout=0.05)
    # Ray's Empty and Full are the standard library's, so either except works
    with pytest.raises(stdqueue.Full):
        q.put("b", block=False)
    assert q.get() == "a"
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="maxsize"):
        Queue(maxsize=-1)


def test_batches_are_all_or_nothing():
    q = Queue(maxsize=4)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full):
        q.put_nowait_batch([4, 5])
    assert q.size() == 3
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(1) == [3]


@ray.remote
def consumer(q, n):
    return [q.get(timeout=30) for _ in range(n)]


@ray.remote
def producer(q, items):
    for x in items:
        q.put(x)
    return len(items)


def test_the_queue_travels_to_tasks_and_a_blocked_get_waits_for_a_put():
    q = Queue()
    got = consumer.remote(q, 4)  # blocks in get until the producer puts
    assert ray.get(producer.remote(q, [10, 11, 12, 13]), timeout=60) == 4
    assert ray.get(got, timeout=60) == [10, 11, 12, 13]


def test_a_blocked_put_waits_for_room():
    q = Queue(maxsize=1)
    q.put(0)
    done = producer.remote(q, [1])  # waits: the queue is full
    assert q.get(timeout=30) == 0
    assert ray.get(done, timeout=60) == 1
    assert q.get(timeout=30) == 1


def test_async_variants():
    q = Queue(maxsize=2)

    async def main():
        await q.put_async("x")
        await q.put_async("y", block=False)
        with pytest.raises(Full):
            await q.put_async("z", timeout=0.05)
        return [await q.get_async(), await q.get_async(block=False)]

    assert asyncio.run(main()) == ["x", "y"]


def test_shutdown_ends_the_actor():
    q = Queue()
    q.put(1)
    actor = q.actor
    q.shutdown()
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(actor.qsize.remote(), timeout=30)
