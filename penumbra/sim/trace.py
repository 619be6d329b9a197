"""A trace of a simulation: compact lines, a running hash, per-address stories.

Theory of operation
-------------------
The kernel reports to its ``Trace`` every event a machine handles (``<``),
every command it emits (``>``), every message a client endpoint sends or
receives, every message the network cuts, drops or duplicates (``x``), and
every fault and crash/restart (``!``).  Each becomes one record, a tuple of plain values::

    (0.000125, 'node:3', '<', ('SubmitTask', 'stim-7', 'driver:0', ...))
    (0.000133, 'node:3', '>', 'Send', 'head', ('ForwardTask', 'stim-7', ...))

i.e. time, address, direction, and the type name, stimulus id and *key
fields* of the event or command, taken by a per-type ``operator.attrgetter``
(C code: recording costs a fraction of a microsecond).

Records feed a running BLAKE2b hash in chunks of 4,096, each serialised with
``pickle`` (protocol 4: binary floats, no memory addresses, ~5x cheaper than
``repr``); a chunk that cannot be pickled is hashed as its ``repr`` lines.
Chunk boundaries fall at fixed record counts and ``hexdigest()`` hashes the
unfinished chunk on a copy, so the hash does not depend on when it is read.  The same seed and configuration must
give the same hash on every run, in every process: that is the simulator's
determinism check (``hexdigest()``; ``SimKernel.summary()`` prints it).  A
differing hash means the run diverged; keep lines (``keep=True``) or
per-address stories in two runs and diff them to find where.

What goes into a line is configurable (``fields``):

* ``"type"``: type name and stimulus id only (cheapest);
* ``"key"`` (default): plus every field except heavy ones (specs, ops,
  snapshots, results, payloads...); a ``spec`` contributes its task id; a
  ``Send`` record holds the destination and its message's key fields;
* ``"full"``: the whole ``repr`` (slow for large messages);
* ``key_fields={Type: ("a", "b.c") or callable(obj) -> value}`` overrides
  per type (dotted attribute paths are allowed).

Keep values in messages and timer keys deterministic: a ``set`` or
``frozenset`` of strings iterates (and so pickles) in an order that changes
with ``PYTHONHASHSEED``, and would make the hash differ between processes.
Lines (stories, ``keep``, ``echo``) are the ``repr`` of the records, with
memory addresses (``at 0x...``) scrubbed.

``per_address=N`` keeps the last N lines of each address in memory
(``story(address)``, ``find(text)``), for "what happened to X" debugging;
``echo=True`` prints every line.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from typing import Any

from penumbra.core.messages import Send
from penumbra.core.msg_base import field_names

__all__ = ["Trace", "HEAVY_FIELDS"]

# Fields left out of "key" lines: big, nested or not identifying.
HEAVY_FIELDS = frozenset({
    "stimulus_id", "spec", "op", "query", "result", "snapshot", "dedup", "value",
    "configs", "config", "load", "entry", "replay", "outputs", "objects", "error",
    "nodes", "resources", "payload", "data", "args", "request", "msg",
    "span",  # (a run's measured bar, for the timeline: it decides nothing)
    "entries",  # (a direct-call report's runs: specs and values, as "outputs")
})

_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")
_CHUNK = 4096
_NAME = "__class__.__name__"


class Trace:
    """Records a simulation, hashes it, and keeps stories.

    Args:
        fields: ``"type"``, ``"key"`` or ``"full"`` (see the module doc).
        key_fields: per-type override: a tuple of attribute paths or a
            callable returning a value with a stable ``repr``.
        hash: feed records into the running hash (default True).
        per_address: keep the last N lines per address (0: none).
        keep: keep every line in ``self.lines`` (memory grows with the run).
        echo: print every line as it is recorded.
        digest_size: BLAKE2b digest size in bytes.
    """

    def __init__(
        self,
        *,
        fields: str = "key",
        key_fields: Mapping[type, Iterable[str] | Callable[[Any], Any]] | None = None,
        hash: bool = True,
        per_address: int = 0,
        keep: bool = False,
        echo: bool = False,
        digest_size: int = 16,
    ):
        if fields not in ("type", "key", "full"):
            raise ValueError(f"fields must be 'type', 'key' or 'full', got {fields!r}")
        self.fields = fields
        self._full = fields == "full"
        self.hashing = hash
        self.per_address = int(per_address)
        self.keep = keep
        self.echo = echo
        self._h = hashlib.blake2b(digest_size=digest_size)
        self._rec: list[tuple] = []
        self._lined = 0  # records of _rec already turned into lines
        self._hashed = 0
        self._lines_mode = bool(self.per_address or keep or echo)
        self.lines: list[str] = []
        self.stories: dict[str, deque] = {}
        self._keys: dict[type, Callable[[Any], Any]] = {}
        for t, spec in (key_fields or {}).items():
            if callable(spec):
                self._keys[t] = (lambda fn, name: lambda o: (name, fn(o)))(spec, t.__name__)
            else:
                self._keys[t] = attrgetter(_NAME, *spec)

    # ------------------------------------------------------------------
    # what identifies an event or command

    def _compile(self, t: type) -> Callable[[Any], Any]:
        if self.fields == "full":
            fn: Callable[[Any], Any] = repr
        elif (names := field_names(t)) is None:
            fn = (attrgetter(_NAME) if self.fields == "type"
                  else (lambda o: (type(o).__name__, repr(o))))
        else:
            paths = [n for n in ("stimulus_id",) if n in names]
            if self.fields == "key":
                paths += [n for n in names if n not in HEAVY_FIELDS]
            fn = attrgetter(_NAME, *paths)
            if self.fields == "key" and "spec" in names:
                base = fn

                def fn(o: Any, base: Callable[[Any], Any] = base) -> Any:
                    return base(o) + (getattr(o.spec, "task_id", None),)
        self._keys[t] = fn
        return fn

    def key(self, obj: Any) -> Any:
        """The identifying value of an event, command or message."""
        f = self._keys.get(obj.__class__)
        if f is None:
            f = self._compile(obj.__class__)
        if obj.__class__ is Send and self.fields != "full":
            return ("Send", obj.stimulus_id, obj.to, self.key(obj.msg))
        return f(obj)

    # ------------------------------------------------------------------
    # recording (called by the kernel)

    def handled(self, start: float, address: str, event: Any, finish: float,
                commands: list | None) -> None:
        """A host handled ``event`` at ``start``; its commands took effect at
        ``finish``."""
        keys = self._keys
        rec = self._rec
        f = keys.get(event.__class__)
        if f is None:
            f = self._compile(event.__class__)
        rec.append((start, address, "<", f(event)))
        if commands:
            full = self._full
            for c in commands:
                if c.__class__ is Send and not full:
                    m = c.msg
                    f = keys.get(m.__class__)
                    if f is None:
                        f = self._compile(m.__class__)
                    rec.append((finish, address, ">", "Send", c.to, f(m)))
                else:
                    f = keys.get(c.__class__)
                    if f is None:
                        f = self._compile(c.__class__)
                    rec.append((finish, address, ">", f(c)))
        if len(rec) >= _CHUNK or self._lines_mode:
            self._flush()

    def received(self, t: float, address: str, msg: Any) -> None:
        """A client endpoint received ``msg``."""
        self._add((t, address, "<", self.key(msg)))

    def sent(self, t: float, address: str, to: str, msg: Any) -> None:
        """A client endpoint (or code outside a machine) sent ``msg``."""
        self._add((t, address, ">", "Send", to, self.key(msg)))

    def network(self, what: str, t: float, src: str, dst: str, msgs: list) -> None:
        """The network cut, dropped or duplicated ``msgs`` on ``src -> dst``."""
        for m in msgs:
            self._add((t, src, "x", what, dst, self.key(m)))

    def note(self, t: float, address: str, text: str) -> None:
        """A fault, a crash, a restart: anything else worth hashing."""
        self._add((t, address, "!", text))

    def _add(self, record: tuple) -> None:
        self._rec.append(record)
        if len(self._rec) >= _CHUNK or self._lines_mode:
            self._flush()

    # ------------------------------------------------------------------

    @staticmethod
    def _chunk_bytes(rec: list) -> bytes:
        try:
            return b"P" + pickle.dumps(rec, 4)
        except Exception:
            text = "\n".join(map(repr, rec))
            return b"R" + _ADDR.sub("", text).encode()

    def _flush(self) -> None:
        """Turn new records into lines (lines mode) and hash full chunks."""
        rec = self._rec
        if self._lines_mode:
            for r in rec[self._lined:]:
                ln = repr(r)
                if "0x" in ln:
                    ln = _ADDR.sub("", ln)
                if self.per_address:
                    d = self.stories.get(r[1])
                    if d is None:
                        d = self.stories[r[1]] = deque(maxlen=self.per_address)
                    d.append(ln)
                if self.keep:
                    self.lines.append(ln)
                if self.echo:
                    print(ln)
            self._lined = len(rec)
        if len(rec) >= _CHUNK:
            if self.hashing:
                self._h.update(self._chunk_bytes(rec))
            self._hashed += len(rec)
            self._rec = []
            self._lined = 0

    @property
    def count(self) -> int:
        """Records so far."""
        return self._hashed + len(self._rec)

    def hexdigest(self) -> str:
        """The hash of every record so far (the run's fingerprint)."""
        h = self._h.copy()
        if self._rec:
            h.update(self._chunk_bytes(self._rec))
        return h.hexdigest()

    def story(self, address: str) -> list[str]:
        """The last ``per_address`` lines of ``address``."""
        self._flush()
        return list(self.stories.get(address, ()))

    def find(self, text: str) -> list[str]:
        """Lines (kept, or in stories) that contain ``text``, in time order."""
        self._flush()
        src: Iterable[str]
        if self.keep:
            src = self.lines
        else:
            src = sorted((ln for d in self.stories.values() for ln in d),
                         key=lambda ln: float(ln[1:].split(",", 1)[0]))
        return [ln for ln in src if text in ln]

    def __repr__(self) -> str:
        return f"Trace(fields={self.fields!r}, records={self.count}, hash={self.hexdigest()})"
