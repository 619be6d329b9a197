"""Make every process of a docs run import penumbra from this checkout only.

The runner puts this directory on PYTHONPATH (with the repo root).  An
editable install (``pip install -e`` of another checkout) adds a meta-path
finder that serves submodules missing here from that other checkout, so a
program could pass on code that is not in the tree under test.  Python
imports ``sitecustomize`` at start-up in every process (the driver, the
daemons, the workers); this one drops such finders.
"""
import sys

sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
