"""objects.StoreAccounting: capacity, LRU eviction, pins, failed admission."""

from __future__ import annotations

import pytest

from penumbra.core.ids import driver_task_id, put_object_id
from penumbra.core.objects import StoreAccounting
from penumbra.core.records import ErrorKind


def oid(i: int):
    return put_object_id(driver_task_id(1), i + 1)


def test_admit_evicts_least_recently_used() -> None:
    s = StoreAccounting(100)
    for i in range(4):
        assert s.admit(oid(i), 25).ok
    s.touch(oid(0))  # now 1 is the oldest
    adm = s.admit(oid(4), 30)
    assert adm.ok and adm.evicted == (oid(1), oid(2))
    assert s.used == 80 and oid(0) in s and oid(1) not in s
    assert s.evictions == 2
    s.validate()


def test_pinned_objects_are_never_evicted() -> None:
    s = StoreAccounting(100)
    s.admit(oid(0), 40, pin="task-a")
    s.admit(oid(1), 40)
    adm = s.admit(oid(2), 50)
    assert adm.ok and adm.evicted == (oid(1),)
    assert s.is_pinned(oid(0)) and s.pinned_bytes == 40
    s.validate()


def test_failed_admission_changes_nothing_and_says_why() -> None:
    s = StoreAccounting(100)
    s.admit(oid(0), 60, pin="client")
    s.admit(oid(1), 30)
    before = (s.used, s.pinned_bytes, list(s.objects), s.evictions)
    adm = s.admit(oid(2), 50)
    assert not adm.ok and adm.evicted == ()
    assert (s.used, s.pinned_bytes, list(s.objects), s.evictions) == before
    err = adm.error
    assert err.kind is ErrorKind.OBJECT_STORE_FULL
    for needle in ("50 bytes", "90 of 100", "60 of them", "pinned", "object_store_memory"):
        assert needle in err.message, (needle, err.message)
    s.validate()


def test_pins_are_counted_per_holder() -> None:
    s = StoreAccounting(100)
    s.admit(oid(0), 10)
    s.pin(oid(0), "a")
    s.pin(oid(0), "a")
    s.pin(oid(0), "b")
    assert s.pinned_bytes == 10
    s.unpin(oid(0), "a")
    s.unpin(oid(0), "b")
    assert s.is_pinned(oid(0))
    s.unpin(oid(0), "a")
    assert not s.is_pinned(oid(0)) and s.pinned_bytes == 0
    s.unpin(oid(0), "a")  # unpinning too often is harmless
    s.unpin(oid(9), "a")  # as is unpinning what is not there
    assert s.pinned_bytes == 0
    s.admit(oid(1), 10, pin="c")
    s.admit(oid(2), 10, pin="c")
    s.pin(oid(2), "d")
    s.unpin_holder("c")
    assert s.pinned_bytes == 10 and not s.is_pinned(oid(1)) and s.is_pinned(oid(2))
    s.validate()


def test_readmission_touches_and_pins() -> None:
    s = StoreAccounting(30)
    s.admit(oid(0), 10)
    s.admit(oid(1), 10)
    adm = s.admit(oid(0), 10, pin="x")  # already there: no double counting
    assert adm.ok and s.used == 20 and s.is_pinned(oid(0))
    assert list(s.objects) == [oid(1), oid(0)]
    assert s.remove(oid(0)) and not s.remove(oid(0))  # remove even when pinned
    assert s.used == 10 and s.pinned_bytes == 0
    s.validate()


def test_zero_sized_and_bad_input() -> None:
    s = StoreAccounting(10)
    assert s.admit(oid(0), 0).ok and s.admit(oid(1), 10).ok
    assert s.used == 10
    with pytest.raises(ValueError, match=">= 0"):
        s.admit(oid(2), -1)
    with pytest.raises(ValueError, match="capacity"):
        StoreAccounting(0)
    assert not s.admit(oid(3), 11).ok  # larger than the whole store
