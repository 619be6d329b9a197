"""Run a docs mirror program under a different start-up: ``python _bootstrap.py MODE prog.py``.

MODE ``simulated``: the program runs on penumbra's simulator, in virtual
time.  penumbra is initialized with ``init(simulated=True)`` before the
program starts (the programs that never call ``init`` rely on implicit init,
which the simulator cannot provide by itself), and ``penumbra.init`` is
wrapped so a program's own ``init(...)`` restarts the simulated cluster with
its arguments (num_cpus, num_gpus, resources, namespace ...).  A program
that joins a cluster by address cannot run on the simulator and is reported
as such.

MODE ``preinit``: the real runtime, with ``penumbra.init()`` called before
the program; this measures a program past a missing implicit init (used to
name what else it lacks, in the catalogue).

The program runs with ``runpy.run_path`` as ``__main__``.  On success the
bootstrap prints ``RAY_DOCS_OK`` last: a program that ends the process
early (``os._exit`` in code the simulator runs in-process) cannot pass by
accident.
"""
import os
import runpy
import sys

import penumbra


def main() -> None:
    mode, prog = sys.argv[1], os.path.abspath(sys.argv[2])
    if mode not in ("simulated", "preinit"):
        raise SystemExit(f"unknown mode {mode!r}: use 'simulated' or 'preinit'")
    original = penumbra.init
    state = {"preinit": True}

    def init(address=None, **kwargs):
        if mode == "simulated":
            if address not in (None, "local"):
                raise SystemExit(f"{os.path.basename(prog)} joins a cluster at {address!r}: not possible on the simulator")
            kwargs["simulated"] = True
        if penumbra.is_initialized():
            if not state["preinit"]:
                return original(address, **kwargs)  # the program's own second init: its own rules apply
            penumbra.shutdown()
        state["preinit"] = False
        return original(address, **kwargs)

    original(simulated=True) if mode == "simulated" else original()
    penumbra.init = init
    sys.argv = [prog] + sys.argv[3:]
    sys.path.insert(0, os.path.dirname(prog))
    runpy.run_path(prog, run_name="__main__")
    print("RAY_DOCS_OK", flush=True)


if __name__ == "__main__":
    main()
