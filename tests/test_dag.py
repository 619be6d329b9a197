"""Ray's DAG API (``.bind``/``.execute``) and ``experimental.tqdm_ray``, on
both drivers."""

from __future__ import annotations

import pytest

import penumbra as ray
from penumbra.dag import InputNode, MultiOutputNode
from penumbra.experimental.tqdm_ray import tqdm

pytestmark = pytest.mark.timeout(120)


@ray.remote
def add(x, y=0):
    return x + y


@ray.remote
class Acc:
    def __init__(self, v):
        self.v = v

    def inc(self, k):
        self.v += k
        return self.v

    def get(self):
        return self.v


def test_bound_functions_run_once_per_execution_each(driver):
    a = add.bind(1, y=2)
    b = add.bind(a, y=a)  # the same node twice: one task
    assert ray.get(b.execute(), timeout=60) == 6
    assert ray.get(add.bind([1, 2][0], y=add.bind(3)).execute(), timeout=60) == 4


def test_class_nodes_run_every_bound_call_in_order(driver):
    acc = Acc.bind(10)
    acc.inc.bind(2)
    acc.inc.bind(3)
    assert ray.get(acc.get.bind().execute(), timeout=60) == 15
    other = Acc.bind(1)
    dag = add.bind(acc.get.bind(), other.get.bind())
    assert ray.get(dag.execute(), timeout=60) == 16  # a fresh actor per execution: 10+2+3, and 1


def test_inputs_and_multiple_outputs(driver):
    with InputNode() as inp:
        dag = MultiOutputNode([add.bind(inp["x"], 1), add.bind(inp["y"], 2)])
    assert ray.get(dag.execute({"x": 1, "y": 2}), timeout=60) == [2, 4]
    with InputNode() as inp:
        two = add.bind(inp[0], inp[1])
    assert ray.get(two.execute(3, 4), timeout=60) == 7
    with pytest.raises(ValueError, match="execute"):
        two.execute()
    with pytest.raises(TypeError, match="bound nodes"):
        MultiOutputNode([1])


def test_a_live_actor_is_called_on_every_execution(driver):
    live = Acc.remote(0)
    with InputNode() as inp:
        dag = live.inc.bind(inp)
    assert [ray.get(dag.execute(k), timeout=60) for k in (1, 2, 3)] == [1, 3, 6]


@ray.remote
def counted(n):
    total = 0
    for _ in tqdm(range(n), desc="counting", flush_interval_s=0):
        total += 1
    return total


def test_tqdm_ray_counts_every_item_inside_tasks(driver, capsys):
    assert ray.get(counted.remote(5), timeout=60) == 5
    bar = tqdm(total=3, desc="driver", flush_interval_s=0)
    bar.update(2)
    bar.close()
    assert "driver: 2/3" in capsys.readouterr().out
    with pytest.raises(TypeError, match="update"):
        list(tqdm(total=1))

