"""cloudpickle that keeps where a function's code was written.

Why: cloudpickle (3.x) pickles a function it cannot import by name -- one
defined in ``__main__`` (a script), in a test module run by pytest, in a
closure -- by value, and writes ``"<dynamic-code>"`` as its code's file name
so that the bytes do not depend on where the function was defined.  The
worker then runs code that does not know its own file: a task's traceback
reads ``File "<dynamic-code>", line 9, in f`` with no source line, and the
user cannot find what failed.  Ray's own cloudpickle keeps the file name.

How: ``Pickler`` is cloudpickle's, with the code-object reducer wrapped so
the rebuilt code object gets the original ``co_filename`` back (line numbers
were always kept).  The price is that the same function defined in two
different files pickles to different bytes, hence gets a different function
id -- which is right: they are different functions.
"""

from __future__ import annotations

import io
import types
from collections import ChainMap
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp

__all__ = ["Pickler", "dumps", "loads"]

# What reads ``dumps``'s bytes: cloudpickle's own (the code objects rebuild
# through ``_code_at``, an importable function, so stock unpickling is enough).
# The API (``api.args``, ``api.runtime``) and ``exceptions`` take it from here,
# the lowest layer, so that none of them imports another for it.
loads = cloudpickle.loads


def _code_at(args: tuple, filename: str) -> types.CodeType:
    """Rebuild a code object from cloudpickle's constructor arguments, with
    its real file name."""
    return types.CodeType(*args).replace(co_filename=filename)


def _reduce_code(code: types.CodeType) -> Any:
    make, args = _cp._code_reduce(code)
    if make is not types.CodeType:  # pragma: no cover - a cloudpickle we do not know: keep its behaviour
        return make, args
    return _code_at, (args, code.co_filename)


class Pickler(cloudpickle.Pickler):
    """``cloudpickle.Pickler`` whose pickled functions keep their file name."""

    dispatch_table = ChainMap({types.CodeType: _reduce_code}, *cloudpickle.Pickler.dispatch_table.maps)


def dumps(value: Any, protocol: int = 5) -> bytes:
    """``cloudpickle.dumps``, keeping code objects' file names."""
    with io.BytesIO() as f:
        Pickler(f, protocol=protocol).dump(value)
        return f.getvalue()
