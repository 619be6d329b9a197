"""A trace of a simulation: compact lines, a running hash, per-address stories.

Theory of operation
-------------------
The kernel reports to its ``Trace`` every event a machine handles (``<``),
every command it emits (``>``), every message a client endpoint sends or
receives, every message the network cuts, drops or duplicates (``x``), and
every fault and crash/restart (``!``).  Each becomes one line::

    0.000125 node:3 < SubmitTask t=ab12cd34 client='driver:0'
    0.000133 node:3 > Send t=ab12cd34 to='head' ForwardTask(reason='overloaded' ...)

i.e. time (``repr`` of the float), address, direction, type name, the
stimulus id (``t=``, omitted when empty) and a few *key fields*.

The lines feed a running BLAKE2b hash.  The same seed and configuration must
give the same hash on every run, in every process: that is the simulator's
determinism check (``hexdigest()``; ``SimKernel.summary()`` prints it).  A
differing hash means the run diverged; keep lines (``keep=True``) or
per-address stories in two runs and diff them to find where.

What goes into a line is configurable (``fields``):

* ``"type"``: type name and stimulus id only (cheapest);
* ``"key"`` (default): plus every field except heavy ones (specs, ops,
  snapshots, results, payloads...): a ``spec`` is shown as its task id, a
  ``Send``'s message as its type and key fields;
* ``"full"``: the whole ``repr`` (slow for large messages);
* ``key_fields={Type: ("a", "b") or callable(obj) -> str}`` overrides per
  type.

Reprs that contain memory addresses (``<object at 0x...>``) would make the
hash differ between runs; they are scrubbed, but machines should prefer
values with stable reprs in messages and timer keys.

``per_address=N`` keeps the last N lines of each address in memory
(``story(address)``, ``find(text)``), for "what happened to X" debugging;
``echo=True`` prints every line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import deque
from typing import Any, Callable, Iterable, Mapping

__all__ = ["Trace", "HEAVY_FIELDS"]

# Fields left out of "key" lines: big, nested or not identifying.
HEAVY_FIELDS = frozenset({
    "stimulus_id", "spec", "op", "query", "result", "snapshot", "dedup", "value",
    "configs", "config", "load", "entry", "replay", "outputs", "objects", "error",
    "nodes", "resources", "payload", "data", "args", "request", "msg",
})

_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")
_FLUSH_EVERY = 4096


def _spec_key(spec: Any) -> str:
    tid = getattr(spec, "task_id", None)
    if tid is None:
        return repr(spec)
    short = getattr(tid, "short", None)
    return short() if short is not None else repr(tid)


class Trace:
    """Records a simulation as lines, hashes them, and keeps stories.

    Args:
        fields: ``"type"``, ``"key"`` or ``"full"`` (see the module doc).
        key_fields: per-type override: a tuple of field names or a callable
            returning the text after the type name.
        hash: feed lines into the running hash (default True).
        per_address: keep the last N lines per address (0: none).
        keep: keep every line in ``self.lines`` (memory grows with the run).
        echo: print every line as it is recorded.
        digest_size: BLAKE2b digest size in bytes.
    """

    def __init__(
        self,
        *,
        fields: str = "key",
        key_fields: Mapping[type, Iterable[str] | Callable[[Any], str]] | None = None,
        hash: bool = True,
        per_address: int = 0,
        keep: bool = False,
        echo: bool = False,
        digest_size: int = 16,
    ):
        if fields not in ("type", "key", "full"):
            raise ValueError(f"fields must be 'type', 'key' or 'full', got {fields!r}")
        self.fields = fields
        self.hashing = hash
        self.per_address = int(per_address)
        self.keep = keep
        self.echo = echo
        self._h = hashlib.blake2b(digest_size=digest_size)
        self._buf: list[str] = []
        self.count = 0
        self.lines: list[str] = []
        self.stories: dict[str, deque] = {}
        self._fmt: dict[type, Callable[[Any], str]] = {}
        for t, spec in (key_fields or {}).items():
            if callable(spec):
                self._fmt[t] = self._wrap_callable(t, spec)
            else:
                self._fmt[t] = self._compile_names(t, tuple(spec))

    # ------------------------------------------------------------------
    # formatting

    @staticmethod
    def _wrap_callable(t: type, fn: Callable[[Any], str]) -> Callable[[Any], str]:
        name = t.__name__

        def fmt(obj: Any) -> str:
            sid = obj.stimulus_id if hasattr(obj, "stimulus_id") else ""
            return f"{name} t={sid} {fn(obj)}" if sid else f"{name} {fn(obj)}"
        return fmt

    def _compile_names(self, t: type, names: tuple[str, ...]) -> Callable[[Any], str]:
        tname = t.__name__
        parts: list[tuple[str, int]] = []
        for n in names:
            kind = 2 if n == "msg" else 1 if n == "spec" else 0
            parts.append((n, kind))
        has_sid = dataclasses.is_dataclass(t) and any(
            f.name == "stimulus_id" for f in dataclasses.fields(t))
        fmt_of = self._format

        def fmt(obj: Any) -> str:
            out = [tname]
            if has_sid and obj.stimulus_id:
                out.append("t=" + obj.stimulus_id)
            for n, kind in parts:
                v = getattr(obj, n)
                if kind == 2:
                    out.append(fmt_of(v))
                elif kind == 1:
                    out.append(f"{n}={_spec_key(v)}")
                elif v.__class__ is str:
                    out.append(f"{n}={v!r}")
                else:
                    out.append(f"{n}={v!r}")
            return " ".join(out)
        return fmt

    def _compile(self, t: type) -> Callable[[Any], str]:
        if self.fields == "full":
            fmt: Callable[[Any], str] = repr
        elif not dataclasses.is_dataclass(t):
            fmt = (lambda obj, _n=t.__name__: _n) if self.fields == "type" else repr
        elif self.fields == "type":
            fmt = self._compile_names(t, ())
        else:
            names = tuple(f.name for f in dataclasses.fields(t)
                          if f.name not in HEAVY_FIELDS)
            fnames = {f.name for f in dataclasses.fields(t)}
            extra = tuple(n for n in ("spec", "msg") if n in fnames)
            fmt = self._compile_names(t, names + extra)
        self._fmt[t] = fmt
        return fmt

    def _format(self, obj: Any) -> str:
        f = self._fmt.get(obj.__class__)
        if f is None:
            f = self._compile(obj.__class__)
        s = f(obj)
        if "0x" in s:
            s = _ADDR.sub("", s)
        return s

    # ------------------------------------------------------------------
    # recording (called by the kernel)

    def _add(self, address: str, line: str) -> None:
        self.count += 1
        if self.hashing:
            buf = self._buf
            buf.append(line)
            if len(buf) >= _FLUSH_EVERY:
                self._flush()
        if self.per_address:
            d = self.stories.get(address)
            if d is None:
                d = self.stories[address] = deque(maxlen=self.per_address)
            d.append(line)
        if self.keep:
            self.lines.append(line)
        if self.echo:
            print(line)

    def handled(self, start: float, address: str, event: Any, finish: float,
                commands: list | None) -> None:
        """A host handled ``event`` at ``start``; its commands took effect at
        ``finish``."""
        fmt = self._format
        self._add(address, f"{start!r} {address} < {fmt(event)}")
        if commands:
            for c in commands:
                self._add(address, f"{finish!r} {address} > {fmt(c)}")

    def received(self, t: float, address: str, msg: Any) -> None:
        """A client endpoint received ``msg``."""
        self._add(address, f"{t!r} {address} < {self._format(msg)}")

    def sent(self, t: float, address: str, to: str, msg: Any) -> None:
        """A client endpoint (or external code) sent ``msg`` to ``to``."""
        self._add(address, f"{t!r} {address} > Send to={to!r} {self._format(msg)}")

    def network(self, what: str, t: float, src: str, dst: str, msgs: list) -> None:
        """The network cut, dropped or duplicated ``msgs`` on ``src -> dst``."""
        fmt = self._format
        for m in msgs:
            self._add(src, f"{t!r} {src} x {what} to={dst!r} {fmt(m)}")

    def note(self, t: float, address: str, text: str) -> None:
        """A fault, a crash, a restart: anything else worth hashing."""
        self._add(address, f"{t!r} {address} ! {text}")

    # ------------------------------------------------------------------
    # reading

    def _flush(self) -> None:
        if self._buf:
            self._h.update(("\n".join(self._buf) + "\n").encode())
            self._buf.clear()

    def hexdigest(self) -> str:
        """The hash of every line so far (the run's fingerprint)."""
        self._flush()
        return self._h.copy().hexdigest()

    def story(self, address: str) -> list[str]:
        """The last ``per_address`` lines of ``address``."""
        return list(self.stories.get(address, ()))

    def find(self, text: str) -> list[str]:
        """Lines (kept or in stories) that contain ``text``, in time order."""
        src: Iterable[str]
        if self.keep:
            src = self.lines
        else:
            src = sorted((ln for d in self.stories.values() for ln in d),
                         key=lambda ln: float(ln.split(" ", 1)[0]))
        return [ln for ln in src if text in ln]

    def __repr__(self) -> str:
        return f"Trace(fields={self.fields!r}, lines={self.count}, hash={self.hexdigest()})"
