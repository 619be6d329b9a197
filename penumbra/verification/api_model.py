"""A Hypothesis state machine that drives the public API against a model.

``ApiMachine`` submits tasks (with values and refs as arguments, nested
tasks, tasks that raise), puts values, gets and waits on refs, creates
actors, calls them and kills them, in whatever order Hypothesis chooses, and
checks every answer against a plain-Python model of what Ray's semantics
say it must be.  It runs against whatever runtime is current: the tests run
it on the simulator and, with fewer steps, on the real runtime.

Its remote functions are defined inside ``remote_functions()`` so that
workers need not import this module by path.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, precondition, rule

__all__ = ["ApiMachine", "remote_functions"]

_FUNCS: dict[str, Any] = {}


def remote_functions(ray) -> dict[str, Any]:
    """The remote functions and actor class the machine uses (made once per
    process, with this ``ray`` module)."""
    if _FUNCS:
        return _FUNCS

    @ray.remote
    def add(a, b):
        return a + b

    @ray.remote(max_retries=0)
    def fail(msg):
        raise ValueError(msg)

    @ray.remote
    def fan(n):
        return sum(ray.get([add.remote(i, i) for i in range(n)]))

    @ray.remote
    class Counter:
        def __init__(self, start):
            self.n = start

        def add(self, k):
            self.n += k
            return self.n

    _FUNCS.update(add=add, fail=fail, fan=fan, Counter=Counter)
    return _FUNCS


class ApiMachine(RuleBasedStateMachine):
    """Drive ``penumbra`` (already initialized) and compare with a model."""

    ray: Any = None  # the ``penumbra`` module; set by the test
    timeout = 120.0

    refs = Bundle("refs")
    actors = Bundle("actors")

    def __init__(self) -> None:
        super().__init__()
        self.f = remote_functions(self.ray)
        self.values: dict[Any, Any] = {}  # ref -> expected value, or ("error", type)
        self.counters: dict[Any, Any] = {}  # actor handle -> count, or None if killed
        self.calls_of: dict[Any, list] = {}  # actor handle -> refs of its calls

    # -- making refs -----------------------------------------------------------
    @rule(target=refs, v=st.integers(-1000, 1000))
    def put(self, v):
        ref = self.ray.put(v)
        self.values[ref] = v
        return ref

    @rule(target=refs, a=st.integers(-100, 100), b=st.integers(-100, 100))
    def task_on_values(self, a, b):
        ref = self.f["add"].remote(a, b)
        self.values[ref] = a + b
        return ref

    @rule(target=refs, x=refs, b=st.integers(-100, 100))
    def task_on_a_ref(self, x, b):
        ref = self.f["add"].remote(x, b)
        ex = self.values[x]
        self.values[ref] = ex if _failed(ex) else ex + b  # an error propagates
        return ref

    @rule(target=refs, x=refs, y=refs)
    def task_on_two_refs(self, x, y):
        ref = self.f["add"].remote(x, y)
        ex, ey = self.values[x], self.values[y]
        # the first failed argument's error is the task's
        self.values[ref] = ex if _failed(ex) else (ey if _failed(ey) else ex + ey)
        return ref

    @rule(target=refs)
    def failing_task(self):
        ref = self.f["fail"].remote("planned")
        self.values[ref] = ("error", ValueError)
        return ref

    @rule(target=refs, n=st.integers(0, 4))
    def nested_task(self, n):
        ref = self.f["fan"].remote(n)
        self.values[ref] = sum(2 * i for i in range(n))
        return ref

    # -- reading refs ------------------------------------------------------------
    @rule(ref=refs)
    def get(self, ref):
        self._check(ref, self.timeout)

    def _check(self, ref, timeout):
        """``get(ref)`` answers what the model says."""
        expected = self.values[ref]
        if isinstance(expected, tuple):
            try:
                self.ray.get(ref, timeout=timeout)
            except expected[1] as e:
                assert isinstance(e, self.ray.exceptions.TaskError), type(e)
            else:
                raise AssertionError(f"get({ref}) should have raised {expected[1].__name__}")
        elif isinstance(expected, _ActorDied):
            try:
                self.ray.get(ref, timeout=timeout)
            except self.ray.exceptions.ActorDiedError:
                pass
            else:
                raise AssertionError("a call to a killed actor returned instead of raising ActorDiedError")
        else:
            assert self.ray.get(ref, timeout=timeout) == expected

    @rule(data=st.data())
    def wait_all(self, data):
        if not self.values:
            return
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.values, key=lambda r: r.hex())), min_size=1,
                                    max_size=5, unique=True))
        ready, not_ready = self.ray.wait(chosen, num_returns=len(chosen), timeout=self.timeout)
        assert ready == chosen and not_ready == []

    @rule(data=st.data(), fetch_local=st.booleans())
    def wait_some(self, data, fetch_local):
        """``wait`` for some of the refs, perhaps with a timeout: the answer
        splits the refs in their order, has ``num_returns`` ready unless the
        timeout cut it short, and a ready ref's ``get`` answers what the
        model says."""
        if not self.values:
            return
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.values, key=lambda r: r.hex())), min_size=1,
                                    max_size=6, unique=True))
        k = data.draw(st.integers(1, len(chosen)))
        timeout = data.draw(st.sampled_from([None, 0.0, 0.01]))
        ready, not_ready = self.ray.wait(chosen, num_returns=k, timeout=self.timeout if timeout is None else timeout,
                                         fetch_local=fetch_local)
        assert len(ready) + len(not_ready) == len(chosen) and set(ready) | set(not_ready) == set(chosen)
        assert ready == [r for r in chosen if r in ready] and not_ready == [r for r in chosen if r in not_ready]
        assert len(ready) <= k
        if timeout is None:
            assert len(ready) == k, f"wait(num_returns={k}) with no timeout returned {len(ready)} ready"
        for r in ready:
            self._check(r, self.timeout)

    # -- actors ------------------------------------------------------------------
    @rule(target=actors, start=st.integers(0, 10))
    def create_actor(self, start):
        a = self.f["Counter"].remote(start)
        self.counters[a] = start
        return a

    @rule(target=refs, a=actors, k=st.integers(1, 5))
    def call(self, a, k):
        ref = a.add.remote(k)
        n = self.counters[a]
        if n is None:
            self.values[ref] = _ActorDied()
        else:
            self.counters[a] = n + k
            self.values[ref] = n + k
            self.calls_of.setdefault(a, []).append(ref)
        return ref

    @precondition(lambda self: any(v is not None for v in self.counters.values()))
    @rule(data=st.data())
    def kill(self, data):
        live = sorted((a for a, v in self.counters.items() if v is not None), key=lambda a: a.actor_id.hex())
        a = data.draw(st.sampled_from(live))
        # calls made before the kill must have run (kill does not wait for them)
        pending = self.calls_of.pop(a, [])
        if pending:
            self.ray.wait(pending, num_returns=len(pending), timeout=self.timeout)
        self.ray.kill(a)
        self.counters[a] = None


class _ActorDied:
    """Model value: a call made after its actor was killed."""

    def __repr__(self) -> str:
        return "ActorDied"


def _failed(v: Any) -> bool:
    """Is the model value an error (which a dependent task inherits)?"""
    return isinstance(v, (tuple, _ActorDied))
