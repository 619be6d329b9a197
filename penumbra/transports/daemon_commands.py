"""The node machine's commands a daemon carries out, and spilling to disk.

Part of ``Daemon`` (see daemon.py).  ``install_handlers`` maps each command
type the core emits to the daemon's hands: the worker pool
(daemon_workers.py), object transfers (daemon_peers.py), the store, the
head link (``StopNode``: daemon_head_link.py), and spilling, which lives
here: ``SpillObjects`` writes objects to the spill directory and
``RestoreObject`` reads one back, each in a thread with one disk operation
of a kind at a time; the core hears how it went as an event
(``ObjectsSpilled``/``SpillFailed``, ``ObjectRestored``/``RestoreFailed``)
and decides what follows.
"""

from __future__ import annotations

import logging

import trio

from ..core.messages import (
    CheckpointActor,
    DeleteSpilled,
    Evict,
    Execute,
    Fetch,
    InterruptTask,
    KillWorker,
    ObjectRestored,
    ObjectsSpilled,
    RestoreFailed,
    RestoreObject,
    SpillFailed,
    SpillObjects,
    StartWorker,
    StopNode,
    StoreError,
)
from . import protocol as P

logger = logging.getLogger("penumbra.daemon")  # (one logger for the whole daemon: its log reads as one)


class DaemonCommands:
    """(``Daemon``'s) command handlers and spilling; see the module docstring."""

    # ================================================================== commands
    def install_handlers(self) -> None:
        h = self.host
        h.on(StartWorker, lambda src, c: self.start_worker(c.worker_id))
        h.on(Execute, lambda src, c: self.execute(c))
        h.on(KillWorker, lambda src, c: self.kill_worker(c.worker_id, c.reason))
        h.on(InterruptTask, lambda src, c: self._worker_send(c.worker_id, P.Interrupt(c.task_id)))
        h.on(CheckpointActor, lambda src, c: self._worker_send(c.worker_id, P.Checkpoint(c.actor_id, c.index)))
        h.on(Fetch, lambda src, c: self.nursery.start_soon(self.fetch, c))
        h.on(Evict, lambda src, c: self.objects.delete(c.object_id))
        h.on(StoreError, lambda src, c: [self.objects.put_error(o, c.error) for o in c.object_ids])
        h.on(StopNode, lambda src, c: self._fenced(c.reason))
        h.on(SpillObjects, lambda src, c: self.nursery.start_soon(self.spill_objects, c))
        h.on(RestoreObject, lambda src, c: self.nursery.start_soon(self.restore_object, c))
        h.on(DeleteSpilled, lambda src, c: [self.spill.delete(o) for o in c.object_ids])

    # ---------------------------------------------------------------- spilling
    async def spill_objects(self, c: SpillObjects) -> None:
        """Write ``c``'s objects to the spill directory in a thread; the core
        hears ``ObjectsSpilled`` (then evicts them) or ``SpillFailed``."""
        node = self.node_id
        spill = self.spill

        def write_all() -> str:
            done = []
            try:
                for oid in c.object_ids:
                    data = self.objects.read_bytes(oid)
                    if data is None:
                        return f"object {oid.short()} is not in the store any more"
                    spill.write(oid, data)
                    del data  # (a shared-memory view: let the region go)
                    done.append(oid)
            except OSError as e:
                for oid in done:
                    spill.delete(oid)
                what = e.strerror or str(e)
                return (f"cannot write {sum(c.sizes)} bytes to the object spilling directory {spill.root}: "
                        f"{what} ({type(e).__name__})")
            return ""

        reason = await trio.to_thread.run_sync(write_all, limiter=self.disk_write)
        if reason:
            logger.warning("spilling %d object(s) failed: %s", len(c.object_ids), reason)
            self.host.deliver(node, SpillFailed(object_ids=c.object_ids, reason=reason, stimulus_id=c.stimulus_id))
        else:
            self.host.deliver(node, ObjectsSpilled(object_ids=c.object_ids, stimulus_id=c.stimulus_id))

    async def restore_object(self, c: RestoreObject) -> None:
        """Read a spilled object back into the store (``ObjectRestored``)."""
        node = self.node_id
        oid = c.object_id

        def read_back() -> int:
            return self.objects.restore_file(oid, self.spill.file(oid))

        try:
            size = await trio.to_thread.run_sync(read_back, limiter=self.disk_read)
        except Exception as e:  # an unreadable file, a full store: the core finds another copy
            logger.warning("restoring %s from %s failed: %s", oid.short(), self.spill.path, e)
            self.host.deliver(node, RestoreFailed(object_id=oid, reason=f"{type(e).__name__}: {e}",
                                                  stimulus_id=c.stimulus_id))
            return
        self.host.deliver(node, ObjectRestored(object_id=oid, size=size, stimulus_id=c.stimulus_id))
