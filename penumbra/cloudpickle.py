"""``penumbra.cloudpickle``: the cloudpickle penumbra pickles functions and
values with, under the name Ray gives its own (``ray.cloudpickle``), so
``from ray import cloudpickle`` keeps working with ``import penumbra as ray``.

It is the ``cloudpickle`` package, re-exported, with ``dumps`` and
``Pickler`` replaced by penumbra's (which keep a function's file name in its
code, so remote tracebacks point at the user's source).
"""

from cloudpickle import *  # noqa: F401,F403 - the whole public API, re-exported
from cloudpickle import __all__ as _cloudpickle_all
from cloudpickle import dump, load, loads  # noqa: F401

from ._codepickle import Pickler, dumps  # noqa: F401

__all__ = sorted(set(_cloudpickle_all) | {"Pickler", "dump", "dumps", "load", "loads"})
