"""Deterministic identifiers.

Theory of operation
-------------------
Every id in penumbra is derived, never drawn at random, so that the same
program produces the same ids on every run and under both drivers (the
simulator and the real transport).  That is what lets a failing simulation
seed replay exactly, and what lets lineage reconstruction re-create an object
under the *same* id it had before it was lost.

* A job's root task id comes from the job number.
* A task id is a hash of its parent task id and the parent's submission index
  (the n-th ``.remote()`` call made while the parent ran).  A re-executed task
  therefore submits children with the same ids as the first execution.
* An object id is its creating task id plus a 4-byte index.  Return values use
  indexes 1..n; ``put`` objects set the high bit, so the two never collide and
  ``ObjectId.is_put`` can tell them apart.
* An actor id is derived from the id of the task that created it.

Ids subclass ``bytes`` (hashable, compact, cheap to compare and to pickle).
"""

from __future__ import annotations

import hashlib

__all__ = [
    "TaskId",
    "ObjectId",
    "ActorId",
    "driver_task_id",
    "child_task_id",
    "actor_id_of",
    "return_object_id",
    "put_object_id",
    "shard_of",
]

_TASK_ID_BYTES = 16
_PUT_BIT = 0x8000_0000


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=_TASK_ID_BYTES)
    for p in parts:
        h.update(p)
    return h.digest()


class TaskId(bytes):
    """16 bytes identifying one task (its retries and re-executions share it)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"TaskId({self.hex()[:12]})"

    def short(self) -> str:
        return self.hex()[:8]

    __str__ = __repr__


class ActorId(bytes):
    """16 bytes identifying one actor (stable across restarts)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ActorId({self.hex()[:12]})"

    def short(self) -> str:
        return self.hex()[:8]

    __str__ = __repr__


class ObjectId(bytes):
    """20 bytes: the creating task's id and a 4-byte big-endian index."""

    __slots__ = ()

    @property
    def task_id(self) -> TaskId:
        return TaskId(self[:_TASK_ID_BYTES])

    @property
    def index(self) -> int:
        return int.from_bytes(self[_TASK_ID_BYTES:], "big") & ~_PUT_BIT

    @property
    def is_put(self) -> bool:
        return bool(self[_TASK_ID_BYTES] & 0x80)

    def __repr__(self) -> str:
        kind = "put" if self.is_put else "ret"
        return f"ObjectId({self[:_TASK_ID_BYTES].hex()[:12]}:{kind}{self.index})"

    def short(self) -> str:
        return f"{self[:_TASK_ID_BYTES].hex()[:8]}{'p' if self.is_put else 'r'}{self.index}"

    __str__ = __repr__


def driver_task_id(job_id: int) -> TaskId:
    """The root task of a job: the driver program itself."""
    return TaskId(_digest(b"driver", job_id.to_bytes(8, "big")))


def child_task_id(parent: TaskId, index: int) -> TaskId:
    """The ``index``-th task submitted while ``parent`` ran (index from 0)."""
    return TaskId(_digest(parent, index.to_bytes(8, "big")))


def actor_id_of(creation_task: TaskId) -> ActorId:
    return ActorId(_digest(b"actor", creation_task))


def return_object_id(task: TaskId, index: int) -> ObjectId:
    """Return value ``index`` (1-based, as in Ray) of ``task``."""
    if not 1 <= index < _PUT_BIT:
        raise ValueError(f"return index must be in [1, 2**31), got {index}")
    return ObjectId(task + index.to_bytes(4, "big"))


def put_object_id(task: TaskId, index: int) -> ObjectId:
    """The ``index``-th object ``put`` while ``task`` ran (1-based)."""
    if not 1 <= index < _PUT_BIT:
        raise ValueError(f"put index must be in [1, 2**31), got {index}")
    return ObjectId(task + (index | _PUT_BIT).to_bytes(4, "big"))


def shard_of(key: bytes, num_shards: int) -> int:
    """The GCS shard holding ``key``.

    Ids are hashes, so their leading bytes are uniform.  An object id begins
    with its task id, so a task and its return objects share a shard: the
    write that records a finished task and its outputs touches one shard.
    """
    if num_shards == 1:
        return 0
    return int.from_bytes(key[:4], "big") % num_shards
