"""The cyclic garbage collector during a simulation: ``gc_paused``.

Why its own module: a simulation's run loop allocates millions of
long-lived objects; how the collector is held off during a ``run()`` chunk
and what is left for it afterwards is a policy of its own, used by the
kernel's callers (``SimCluster.run``), not part of the kernel's event
handling.  ``penumbra.sim.kernel`` re-exports it.
"""

from __future__ import annotations

import contextlib
import gc

__all__ = ["gc_paused"]

_gc_state = {"live": 0, "grown": 0}  # objects after our last full collection; made since


@contextlib.contextmanager
def gc_paused():
    """Run a block with Python's cyclic collector off, and leave no
    collection pass behind it.

    Why: a simulation allocates millions of long-lived objects.  Simply
    disabling the collector and enabling it again after a ``run()`` chunk
    leaves all of them in the youngest generation, so the first allocation
    after the chunk walks everything the chunk left alive (0.4 s a chunk at
    1,000 nodes; experiments run 20+ chunks).  Instead, at the end of the
    block every live object is moved to the oldest generation
    (``gc.freeze()`` then ``gc.unfreeze()``: two list splices, O(1)), where
    it waits for a full collection as any long-lived object does.  Nothing
    stays frozen: an explicit ``gc.collect()`` still sees everything.

    Safety: CPython starts full collections by counting what survives its
    younger generations, which these objects skip, so the blocks count the
    objects they leave (``gc.get_count()``, O(1)); when that is four times
    what was alive after the last full collection run here (and over a
    million), the block ends with one (``gc.collect()``): amortised O(1) per
    object, as CPython's own rule for its oldest generation.  Nested blocks
    and a collector that was already off are left alone.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    st = _gc_state
    c0 = gc.get_count()[0]
    try:
        yield
    finally:
        st["grown"] += max(0, gc.get_count()[0] - c0)
        if st["grown"] > max(4 * st["live"], 1_000_000):
            gc.collect()
            gc.freeze()
            st["live"] = gc.get_freeze_count()
            st["grown"] = 0
        else:
            gc.freeze()
        gc.unfreeze()  # everything now in the oldest generation
        gc.enable()
