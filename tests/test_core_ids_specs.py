"""ids.py and specs.py: deterministic ids, fixed-point resource sets."""

from __future__ import annotations

import pickle

import pytest

from penumbra.core.ids import (
    ActorId,
    ObjectId,
    TaskId,
    actor_id_of,
    child_task_id,
    driver_task_id,
    put_object_id,
    return_object_id,
    shard_of,
)
from penumbra.core.specs import UNIT, FunctionDescriptor, ResourceSet, TaskSpec
from penumbra.core.tables import key_shard


# ----------------------------------------------------------------------------- ids


def test_ids_are_deterministic_and_distinct() -> None:
    root = driver_task_id(7)
    assert root == driver_task_id(7) and root != driver_task_id(8)
    assert isinstance(root, TaskId) and len(root) == 16
    kids = [child_task_id(root, i) for i in range(100)]
    assert kids == [child_task_id(root, i) for i in range(100)]
    assert len(set(kids)) == 100
    # a re-executed parent submits the same children: same ids
    assert child_task_id(kids[3], 0) == child_task_id(child_task_id(root, 3), 0)
    a = actor_id_of(kids[0])
    assert isinstance(a, ActorId) and a == actor_id_of(kids[0]) and a != actor_id_of(kids[1])


def test_return_and_put_ids_never_collide() -> None:
    t = child_task_id(driver_task_id(1), 0)
    rets = {return_object_id(t, i) for i in range(1, 50)}
    puts = {put_object_id(t, i) for i in range(1, 50)}
    assert not rets & puts
    r, p = return_object_id(t, 3), put_object_id(t, 3)
    assert isinstance(r, ObjectId) and len(r) == 20
    assert (r.task_id, r.index, r.is_put) == (t, 3, False)
    assert (p.task_id, p.index, p.is_put) == (t, 3, True)
    assert "ret3" in repr(r) and "put3" in repr(p)
    assert r.short().endswith("r3") and p.short().endswith("p3")


@pytest.mark.parametrize("bad", [0, -1, 2**31])
def test_object_index_bounds(bad: int) -> None:
    t = driver_task_id(1)
    with pytest.raises(ValueError, match="index"):
        return_object_id(t, bad)
    with pytest.raises(ValueError, match="index"):
        put_object_id(t, bad)


def test_shard_of_keeps_a_task_and_its_outputs_together() -> None:
    root = driver_task_id(1)
    counts = [0] * 4
    for i in range(400):
        t = child_task_id(root, i)
        s = shard_of(t, 4)
        counts[s] += 1
        assert 0 <= s < 4
        assert shard_of(return_object_id(t, 1), 4) == s == shard_of(put_object_id(t, 2), 4)
        assert key_shard("tasks", t, 4) == key_shard("objects", return_object_id(t, 1), 4) == s
        assert shard_of(t, 1) == 0
    assert min(counts) > 60, counts  # roughly uniform


def test_ids_pickle_and_keep_type() -> None:
    t = child_task_id(driver_task_id(1), 5)
    o = return_object_id(t, 1)
    assert pickle.loads(pickle.dumps(t)) == t
    o2 = pickle.loads(pickle.dumps(o))
    assert type(o2) is ObjectId and o2.task_id == t


# ----------------------------------------------------------------------------- ResourceSet


def test_fixed_point_is_exact() -> None:
    tenth = ResourceSet.of(CPU=0.1)
    total = ResourceSet()
    for _ in range(10):
        total = total + tenth
    assert total == ResourceSet.of(CPU=1)
    assert total.units("CPU") == UNIT
    left = ResourceSet.of(CPU=1)
    for _ in range(10):
        left = left - tenth
    assert left == ResourceSet() and left.is_empty()
    assert ResourceSet.of(CPU=0.3) + ResourceSet.of(CPU=0.6) == ResourceSet.of(CPU=0.9)


def test_resource_set_operations() -> None:
    a = ResourceSet.of(CPU=2, GPU=1, custom=0.5)
    b = ResourceSet.of(CPU=1.5, custom=0.5)
    assert b.is_subset_of(a) and not a.is_subset_of(b)
    assert ResourceSet().is_subset_of(b)
    assert (a - b) == ResourceSet.of(CPU=0.5, GPU=1)
    assert (b - a).is_nonnegative() is False
    assert a.get("GPU") == 1.0 and a.get("TPU") == 0.0
    assert a.to_dict() == {"CPU": 2.0, "GPU": 1.0, "custom": 0.5}
    assert a.only(["CPU"]) == ResourceSet.of(CPU=2)
    assert a.min_with(b) == ResourceSet.of(CPU=1.5, custom=0.5)
    assert b.scaled(2) == ResourceSet.of(CPU=3, custom=1)
    assert ResourceSet.of(CPU=0) == ResourceSet() and hash(ResourceSet.of(CPU=0)) == hash(ResourceSet())
    assert hash(ResourceSet.of(CPU=1, GPU=2)) == hash(ResourceSet.from_dict({"GPU": 2, "CPU": 1}))
    assert pickle.loads(pickle.dumps(a)) == a
    assert "CPU=2" in repr(a)
    assert sorted(a.names()) == ["CPU", "GPU", "custom"]


@pytest.mark.parametrize(
    "amounts, match",
    [
        ({"CPU": -1}, ">= 0"),
        ({"CPU": float("nan")}, ">= 0"),
        ({"CPU": "lots"}, "must be a number"),
        ({"CPU": None}, "must be a number"),
        ({"": 1}, "non-empty"),
        ({3: 1}, "non-empty"),
        ({"CPU": 1e-9}, "smallest unit"),
    ],
)
def test_resource_set_rejects_bad_input(amounts, match) -> None:
    with pytest.raises(ValueError, match=match):
        ResourceSet.from_dict(amounts)


# ----------------------------------------------------------------------------- TaskSpec


def test_task_spec_return_ids() -> None:
    t = child_task_id(driver_task_id(1), 0)
    fn = FunctionDescriptor(b"x", "mod.f")
    s = TaskSpec(task_id=t, job_id=1, parent_task_id=driver_task_id(1), function=fn, num_returns=3)
    assert s.return_ids == tuple(return_object_id(t, i) for i in (1, 2, 3))
    assert TaskSpec(task_id=t, job_id=1, parent_task_id=t, function=fn, num_returns=0).return_ids == ()
    assert s.display_name() == "mod.f" and not s.is_actor_task and not s.is_actor_creation
    with pytest.raises(ValueError, match="num_returns"):
        TaskSpec(task_id=t, job_id=1, parent_task_id=t, function=fn, num_returns=-1)
    # equal specs compare equal (return_ids is derived)
    assert s == TaskSpec(task_id=t, job_id=1, parent_task_id=driver_task_id(1), function=fn, num_returns=3)
