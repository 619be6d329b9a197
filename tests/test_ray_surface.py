"""Names from Ray's documented surface, on both drivers: ``ray.actor``
(``ActorHandle``, ``exit_actor``), a bare ``@ray.method``, ``ObjectRef[T]``
in annotations, ``ray.cloudpickle``."""

from __future__ import annotations

import pytest

import penumbra as ray
from penumbra.actor import ActorClass, ActorHandle, exit_actor

pytestmark = pytest.mark.timeout(120)


@ray.remote(max_restarts=3)
class Stoppable:
    @ray.method
    def ping(self) -> str:
        return "pong"

    @ray.method(num_returns=2, enable_task_events=False)
    def pair(self):
        return 1, 2

    def stop(self):
        exit_actor()
        return "not reached"


@ray.remote
def one() -> "ray.ObjectRef[int]":
    return 1


def test_exit_actor_ends_the_actor_for_good_despite_max_restarts(driver):
    a: ActorHandle = Stoppable.remote()
    assert isinstance(a, ActorHandle) and isinstance(Stoppable, ActorClass)
    assert ray.get(a.ping.remote(), timeout=30) == "pong"
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(a.stop.remote(), timeout=30)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(a.ping.remote(), timeout=30)


def test_exit_actor_outside_an_actor_is_a_type_error(driver):
    with pytest.raises(TypeError, match="inside an actor"):
        exit_actor()


def test_bare_method_decorator_and_method_options(driver):
    a = Stoppable.remote()
    x, y = a.pair.remote()
    assert ray.get([x, y], timeout=30) == [1, 2]
    with pytest.raises(TypeError, match="keyword"):
        ray.method(lambda self: 0, num_returns=2)
    ray.kill(a)


def test_object_ref_subscripts_for_annotations(driver):
    ref: ray.ObjectRef[int] = one.remote()
    assert ray.get(ref, timeout=30) == 1
    assert ray.ObjectRef[int].__origin__ is ray.ObjectRef


def test_cloudpickle_is_reexported():
    from penumbra import cloudpickle

    assert ray.cloudpickle is cloudpickle
    f = cloudpickle.loads(cloudpickle.dumps(lambda v: v * 3))
    assert f(2) == 6
