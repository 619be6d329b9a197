"""Validating ``@remote(...)`` and ``.options(...)`` arguments.

Every mistake is reported where it is made (at decoration or at the
``.options`` call), naming the option, the bad value and what is allowed.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

from ..core.specs import ResourceSet

__all__ = ["TASK_OPTIONS", "ACTOR_OPTIONS", "validate", "task_resources", "actor_resources", "exception_names",
           "env_vars_of", "merge_env", "scheduling_for"]

# What a task with ``accelerator_type=X`` takes of its node's
# "accelerator_type:X" resource (Ray's amount).
ACCELERATOR_SLIVER = 0.001

_COMMON = {"num_cpus", "num_gpus", "resources", "memory", "name", "scheduling_strategy", "runtime_env",
           "accelerator_type", "label_selector", "_metadata",
           # Ray's older spelling of PlacementGroupSchedulingStrategy
           "placement_group", "placement_group_bundle_index", "placement_group_capture_child_tasks"}
TASK_OPTIONS = _COMMON | {"num_returns", "max_retries", "retry_exceptions", "max_calls"}
ACTOR_OPTIONS = _COMMON | {"max_restarts", "max_task_retries", "max_concurrency", "namespace", "lifetime",
                           "get_if_exists", "concurrency_groups", "replay", "checkpoint_interval"}
METHOD_OPTIONS = {"num_returns", "name", "max_task_retries", "retry_exceptions", "concurrency_group",
                  "enable_task_events", "tensor_transport"}


def env_vars_of(runtime_env: Any) -> tuple[tuple[str, str], ...]:
    """A ``runtime_env`` as the sorted ``env_vars`` pairs a task carries.

    penumbra supports Ray's ``env_vars`` field only: the other fields
    (``pip``, ``conda``, ``working_dir``, ``py_modules``, ``container`` ...)
    install or ship code per job, which penumbra leaves to whoever installs
    the nodes.

    Raises:
        ValueError: another field, or env_vars that are not a str -> str dict.
    """
    if runtime_env is None:
        return ()
    if not isinstance(runtime_env, Mapping):
        raise TypeError(f"runtime_env must be a dict such as {{'env_vars': {{'NAME': 'value'}}}}, got {runtime_env!r}")
    other = sorted(k for k in runtime_env if k not in ("env_vars", "config"))
    if other:
        raise ValueError(f"runtime_env field(s) {', '.join(map(repr, other))} are not supported by penumbra (only "
                         f"'env_vars' is): install dependencies and code on every node instead")
    env = runtime_env.get("env_vars") or {}
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError(f"runtime_env['env_vars'] must map names to string values, got {env!r}")
    return tuple(sorted(env.items()))


def merge_env(inherited: tuple[tuple[str, str], ...], own: tuple[tuple[str, str], ...] | None) -> tuple[tuple[str, str], ...]:
    """A task's env_vars: its caller's (the job's, or the parent task's, as
    in Ray), overridden name by name by its own ``runtime_env``."""
    if not own:
        return inherited
    if not inherited:
        return own
    return tuple(sorted({**dict(inherited), **dict(own)}.items()))


def _number(name: str, v: Any, *, minimum: float = 0) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v or v < minimum:
        raise ValueError(f"option {name} must be a number >= {minimum:g}, got {v!r}")
    return float(v)


def _int(name: str, v: Any, *, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"option {name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def validate(opts: Mapping[str, Any], allowed: set[str], what: str) -> dict[str, Any]:
    """Check option names and values; returns a normalized copy."""
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise TypeError(
            f"invalid option(s) {', '.join(map(repr, unknown))} for {what}; "
            f"valid options are: {', '.join(sorted(o for o in allowed if not o.startswith('_')))}"
        )
    out = dict(opts)
    for key in ("num_cpus", "num_gpus", "memory"):
        if out.get(key) is not None:
            out[key] = _number(key, out[key])
    if out.get("resources") is not None:
        res = out["resources"]
        if not isinstance(res, Mapping):
            raise TypeError(f"option resources must be a dict of name -> amount, got {type(res).__name__}")
        for k, v in res.items():
            if k in ("CPU", "GPU"):
                raise ValueError(f"use num_cpus/num_gpus instead of resources={{{k!r}: ...}}")
            if not isinstance(k, str) or not k:
                raise TypeError(f"resource names must be non-empty strings, got {k!r}")
            _number(f"resources[{k!r}]", v)
    if "num_returns" in out and out["num_returns"] is not None and out["num_returns"] not in ("streaming", "dynamic"):
        if isinstance(out["num_returns"], str):
            raise ValueError(f"option num_returns must be an integer >= 0, 'streaming' or 'dynamic', "
                             f"got {out['num_returns']!r}")
        out["num_returns"] = _int("num_returns", out["num_returns"], minimum=0)
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        if out.get(key) is not None:
            out[key] = _int(key, out[key], minimum=-1)
    if out.get("max_concurrency") is not None:
        out["max_concurrency"] = _int("max_concurrency", out["max_concurrency"], minimum=1)
    if out.get("checkpoint_interval") is not None:
        out["checkpoint_interval"] = _int("checkpoint_interval", out["checkpoint_interval"], minimum=0)
    if "retry_exceptions" in out and out["retry_exceptions"] is not None:
        r = out["retry_exceptions"]
        if not isinstance(r, bool):
            if not isinstance(r, (list, tuple)) or not all(isinstance(c, type) and issubclass(c, BaseException) for c in r):
                raise TypeError(f"option retry_exceptions must be a bool or a list of exception classes, got {r!r}")
    if out.get("name") is not None and (not isinstance(out["name"], str) or not out["name"]):
        raise TypeError(f"option name must be a non-empty string, got {out['name']!r}")
    if out.get("namespace") is not None and not isinstance(out["namespace"], str):
        raise TypeError(f"option namespace must be a string, got {out['namespace']!r}")
    if out.get("lifetime") not in (None, "detached", "non_detached"):
        raise ValueError(f"option lifetime must be None, 'detached' or 'non_detached', got {out['lifetime']!r}")
    if out.get("scheduling_strategy") is not None or out.get("placement_group") not in (None, "default"):
        _check_strategy(out)
    if "runtime_env" in out:
        out["runtime_env"] = env_vars_of(out["runtime_env"])
    return out


def _base_amounts(opts: Mapping[str, Any]) -> dict[str, float]:
    amounts: dict[str, float] = {}
    if opts.get("num_gpus"):
        amounts["GPU"] = opts["num_gpus"]
    if opts.get("memory"):
        amounts["memory"] = opts["memory"]
    for k, v in (opts.get("resources") or {}).items():
        if v:
            amounts[k] = float(v)
    acc = opts.get("accelerator_type")
    if acc:
        # Ray's rule: a node with accelerators of type X offers the resource
        # "accelerator_type:X"; a request for X takes a sliver of it, so it
        # only fits there (and any number of tasks still fit at once)
        if not isinstance(acc, str):
            raise TypeError(f"option accelerator_type must be a string such as "
                            f"penumbra.util.accelerators.NVIDIA_TESLA_V100, got {acc!r}")
        amounts[f"accelerator_type:{acc}"] = ACCELERATOR_SLIVER
    return amounts


def task_resources(opts: Mapping[str, Any]) -> ResourceSet:
    """A task needs 1 CPU unless it says otherwise."""
    amounts = _base_amounts(opts)
    cpus = opts.get("num_cpus")
    amounts["CPU"] = 1.0 if cpus is None else cpus
    return ResourceSet.from_dict(amounts)


def actor_resources(opts: Mapping[str, Any]) -> tuple[ResourceSet, ResourceSet]:
    """(held for the actor's life, needed to place it).

    Ray's rule: an actor that does not set ``num_cpus`` needs 1 CPU to be
    placed and holds none while it lives; one that sets it holds that many.
    """
    amounts = _base_amounts(opts)
    cpus = opts.get("num_cpus")
    if cpus is not None:
        amounts["CPU"] = cpus
        life = ResourceSet.from_dict(amounts)
        return life, life
    life = ResourceSet.from_dict(amounts)
    return life, life + ResourceSet.of(CPU=1)


def exception_names(classes) -> tuple[str, ...]:
    return tuple(f"{c.__module__}.{c.__qualname__}" for c in classes)


def _check_strategy(out: dict) -> None:
    from ..util.placement_group_handle import PlacementGroupHandle
    from ..util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    st = out.get("scheduling_strategy")
    if st is not None and st not in ("DEFAULT", "SPREAD") and \
            not isinstance(st, (PlacementGroupSchedulingStrategy, NodeAffinitySchedulingStrategy)):
        raise ValueError(f"option scheduling_strategy must be None, 'DEFAULT', 'SPREAD', a "
                         f"PlacementGroupSchedulingStrategy or a NodeAffinitySchedulingStrategy "
                         f"(penumbra.util.scheduling_strategies), got {st!r}")
    pg = out.get("placement_group")
    if pg not in (None, "default"):
        if st is not None:
            raise ValueError("set either scheduling_strategy or placement_group, not both")
        if not isinstance(pg, PlacementGroupHandle):
            raise TypeError(f"option placement_group must be a PlacementGroup, got {type(pg).__name__}")
        idx = out.get("placement_group_bundle_index")
        out["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            pg, -1 if idx is None else idx, out.get("placement_group_capture_child_tasks"))


def scheduling_for(opts: Mapping[str, Any], resources: ResourceSet, current: Any,
                   extra: tuple[ResourceSet, ...] = ()) -> tuple[Any, ResourceSet, tuple[ResourceSet, ...]]:
    """The core's strategy for a task with these options, submitted while
    a task with strategy ``current`` runs (None in a driver), and its
    resource request(s) in the core's terms: a task in a placement group
    asks for the group's resources (``core.placement.bundle_request``).

    Returns (strategy, resources, extra resources renamed alike).

    Raises:
        ValueError: the bundle index is out of range, or no bundle (or not
            the chosen one) can ever fit the request.
    """
    from ..core.placement import InGroup, OnNode, bundle_request

    st = opts.get("scheduling_strategy")
    if st is None or st == "DEFAULT":
        if isinstance(current, InGroup) and current.capture:
            # captured: children go into the parent's group (any bundle)
            inherit = InGroup(current.pg_id, -1, True)
            return inherit, bundle_request(resources, current.pg_id, -1), tuple(bundle_request(r, current.pg_id, -1) for r in extra)
        return None, resources, extra
    if st == "SPREAD":
        return "SPREAD", resources, extra
    if hasattr(st, "soft"):
        return OnNode(st.node_id, st.soft), resources, extra
    pg = st.placement_group
    if pg is None:
        return None, resources, extra  # opted out of the parent's group
    index = st.placement_group_bundle_index
    bundles = pg.bundle_specs
    if not -1 <= index < len(bundles):
        raise ValueError(f"placement_group_bundle_index {index} is out of range: the group has "
                         f"{len(bundles)} bundles (use 0..{len(bundles) - 1}, or -1 for any)")
    need = {k: v for k, v in resources.to_dict().items() if v}
    fits = [i for i, b in enumerate(bundles) if (index < 0 or i == index)
            and all(b.get(k, 0) >= v for k, v in need.items())]
    if not fits:
        where = f"bundle {index} ({bundles[index]})" if index >= 0 else f"any bundle of {bundles}"
        raise ValueError(f"the request {need} cannot fit into {where} of placement group {pg.id}; "
                         f"ask for less (num_cpus=..., num_gpus=...) or create the group with larger bundles")
    strategy = InGroup(pg.id, index, bool(st.placement_group_capture_child_tasks))
    return strategy, bundle_request(resources, pg.id, index), tuple(bundle_request(r, pg.id, index) for r in extra)
