"""Generator tasks and actor methods (Ray's streaming and dynamic
generators), on the real runtime and on the simulator."""

from __future__ import annotations

import asyncio
import os

import pytest

import penumbra as ray
from penumbra import exceptions as exc

pytestmark = pytest.mark.timeout(120)


@ray.remote
def count(n):
    for i in range(n):
        yield i * 10


@ray.remote(num_returns="streaming")
def fails_at(n, bad):
    for i in range(n):
        if i == bad:
            raise ValueError(f"no {i}")
        yield i


@ray.remote(num_returns="dynamic")
def dynamic(n):
    for i in range(n):
        yield i


@ray.remote(num_returns=2)
def two():
    yield "a"
    yield "b"


@ray.remote
def not_a_generator():
    return 5


@ray.remote
class Source:
    def __init__(self):
        self.calls = 0

    def values(self, n):
        self.calls += 1
        for i in range(n):
            yield (self.calls, i)

    @ray.method(num_returns="dynamic")
    def batch(self, n):
        yield from range(n)


def test_a_generator_function_streams_by_default(driver):
    g = count.remote(4)
    assert isinstance(g, ray.ObjectRefGenerator)
    refs = list(g)
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs, timeout=60) == [0, 10, 20, 30]
    assert list(g) == []  # consumed


def test_an_error_comes_at_the_value_it_happened(driver):
    got = []
    for ref in fails_at.remote(5, 2):
        try:
            got.append(ray.get(ref, timeout=60))
        except ValueError as e:  # the user's class, as for any task error
            assert isinstance(e, exc.TaskError)
            got.append("error")
    assert got == [0, 1, "error"]


def test_dynamic_returns_one_ref_of_all_the_refs(driver):
    ref = dynamic.remote(3)
    assert isinstance(ref, ray.ObjectRef)
    refs = ray.get(ref, timeout=60)
    assert isinstance(refs, ray.DynamicObjectRefGenerator) and len(refs) == 3
    assert ray.get(list(refs), timeout=60) == [0, 1, 2]


def test_num_returns_n_still_collects_n_values(driver):
    a, b = two.remote()
    assert ray.get([a, b], timeout=60) == ["a", "b"]


def test_wait_on_a_generator_and_its_completion(driver):
    g = count.remote(2)
    ready, rest = ray.wait([g], timeout=60)
    assert ready == [g] and rest == []
    assert [ray.get(r, timeout=60) for r in g] == [0, 10]
    ray.get(g.completed(), timeout=60)  # the end is there
    ready, _ = ray.wait([g], timeout=60)  # an exhausted generator is ready: next() ends at once
    assert ready == [g]


def test_streaming_a_task_that_does_not_yield_says_so(driver):
    g = not_a_generator.options(num_returns="streaming").remote()
    with pytest.raises(TypeError, match="not a generator"):
        next(g)


def test_actor_generator_methods(driver):
    s = Source.remote()
    assert [ray.get(r, timeout=60) for r in s.values.remote(3)] == [(1, 0), (1, 1), (1, 2)]
    assert ray.get(list(ray.get(s.batch.remote(2), timeout=60)), timeout=60) == [0, 1]
    # options override the mode
    a, b = s.values.options(num_returns=2).remote(2)
    assert ray.get([a, b], timeout=60) == [(2, 0), (2, 1)]


def test_async_for_over_a_generator(driver):
    async def main():
        return [await asyncio.wrap_future(r.future()) async for r in count.remote(3)]

    assert asyncio.run(main()) == [0, 10, 20]


def test_bad_num_returns_is_refused_where_given():
    with pytest.raises(ValueError, match="streaming"):
        count.options(num_returns="stream")


@ray.remote
class AsyncSource:
    async def values(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i


def test_an_async_actors_async_generator_streams(driver):
    if driver == "sim":
        pytest.skip("the simulator runs an async actor's calls one at a time, with no event loop to stream from")
    a = AsyncSource.remote()
    assert [ray.get(r, timeout=60) for r in a.values.remote(3)] == [0, 1, 2]


@ray.remote(max_retries=1)
def crashes_once(path, n):
    for i in range(n):
        if i == 2 and not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        yield i


def test_a_retried_generator_yields_its_values_again(driver, tmp_path):
    if driver == "sim":
        pytest.skip("os._exit would end the simulation's own process")
    g = crashes_once.remote(str(tmp_path / "crashed"), 4)
    assert [ray.get(r, timeout=60) for r in g] == [0, 1, 2, 3]


@ray.remote
def two_then_fail():
    yield 0
    yield 1
    raise KeyError("third")


def test_values_before_an_error_keep_their_values_in_every_mode(driver):
    # Ray's rule: the refs of the values yielded before the error hold them;
    # the error comes after
    r = two_then_fail.options(num_returns=4).remote()
    assert ray.get(r[:2], timeout=60) == [0, 1]
    for ref in r[2:]:
        with pytest.raises(KeyError):
            ray.get(ref, timeout=60)
    refs = list(ray.get(two_then_fail.options(num_returns="dynamic").remote(), timeout=60))
    assert len(refs) == 3 and ray.get(refs[:2], timeout=60) == [0, 1]
    with pytest.raises(KeyError):
        ray.get(refs[2], timeout=60)
    got = []
    for ref in two_then_fail.remote():
        try:
            got.append(ray.get(ref, timeout=60))
        except KeyError:
            got.append("error")
    assert got == [0, 1, "error"]
    # an errored value passed on fails the task it is given to
    with pytest.raises(KeyError):
        ray.get(consume.remote(r[3]), timeout=60)


@ray.remote
def consume(x):
    return x
