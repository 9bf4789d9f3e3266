"""Eviction policies: one file each, one registry, the single source of policy names.

A policy is a class in its own module under this package, registered with `@register_policy`. Its
rule is stated once, as hooks over its state (a tuple of numpy arrays, one row per cache), in the
subset of Python that numba compiles. The plain-Python reference cache (`moetrace/sim/reference.py`,
the spec) runs the hooks as Python; the compiled engine (`moetrace/sim/engine.py`) compiles the same
hooks into its loop; the live cache of `run --offload` is the reference cache.

How a cache calls the hooks, for request r of cache c with need-set N (ascending ids; every expert
of N is *guarded*: never a victim while r is served):

- for each x of N, ascending:
  - x resident (a hit): `hit(state, c, x, r, next_need)`;
  - x not resident (a miss): `miss(state, c, x, r)` says whether to keep x (False: x is loaded for
    this request only, it *streams*). A kept x takes a free slot or, when the cache is full, the
    slot of a victim: a resident not guarded (none when every resident is guarded: x streams),
    then `evict(state, c, victim)`; then `insert(state, c, x, r, next_need, True)`.
- a prefetch of x into cache c after request r is a kept miss without `miss`:
  `insert(state, c, x, r, never, False)` (`demand` False; its next need unknown).

A policy names its victim in one of two ways:

- `key(state, c, x)`: a rank, unique per expert (fold the id in to break ties); the victim is the
  unguarded resident with the smallest key. A key may change only when its own expert is touched
  (hit, insert), so the engine keeps it beside the slot and finds the victim with one scan;
- `victim(state, c, x, guarded, residents, count)`: the policy walks its own structures (queues,
  clocks, ghost lists) and returns a resident not guarded, or −1.

`next_need` is the request index of x's next need in cache c (`never` = requests + 1) for policies
that know the future (`knows = "future"`), else 0. `guarded` is a bool array (caches, ids);
`residents[:count]` are cache c's residents. A policy that `knows = "warmup"` gets, in `state`,
each expert's needs in the first share of the stream.

A policy class sets `name` and its docstring (first line: the rule, shown by `--help`), defines
`state(n_caches, n_ids, capacity, warm)` (plain Python), `key` or `victim`, and any of `hit`,
`miss`, `evict`, `insert` (the others do nothing). Adding a policy is one module here plus one
golden test.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from moetrace.errors import InvalidArgumentError

HOOKS = ("hit", "miss", "key", "victim", "evict", "insert")
ALL = "all"
"""`--policy all`: every registered policy that the given inputs allow."""


@njit(inline="always")
def _hit(state, c, x, r, next_need):  # type: ignore[no-untyped-def]
    pass


@njit(inline="always")
def _miss(state, c, x, r):  # type: ignore[no-untyped-def]
    return True


@njit(inline="always")
def _evict(state, c, x):  # type: ignore[no-untyped-def]
    pass


@njit(inline="always")
def _insert(state, c, x, r, next_need, demand):  # type: ignore[no-untyped-def]
    pass


@njit(inline="always")
def _key(state, c, x):  # type: ignore[no-untyped-def]
    return 0


@njit(inline="always")
def _victim(state, c, x, guarded, residents, count):  # type: ignore[no-untyped-def]
    return -1


_DEFAULT_HOOKS = {"hit": _hit, "miss": _miss, "key": _key, "victim": _victim, "evict": _evict, "insert": _insert}


def kernel_hooks(name: str) -> tuple[Any, ...]:
    """What the replay kernel compiles in for policy `name`: its hooks in HOOKS order, whether it is
    ranked (a key per resident) and whether it knows the future (reads each access's next need)."""
    policy = get_policy(name)
    return (*(policy.hooks[hook] for hook in HOOKS), policy.ranked, policy.knows == "future")


def default_hooks() -> tuple[Any, ...]:
    """The do-nothing hooks in HOOKS order, ranked, not knowing the future: the kernel template's."""
    return (*(_DEFAULT_HOOKS[hook] for hook in HOOKS), True, False)


@dataclass(frozen=True)
class Policy:
    """A registered eviction policy: its rule as compiled hooks, and what it needs to run."""

    name: str
    doc: str
    """The rule in one line (the class docstring's first line)."""
    state: Callable[[int, int, int, np.ndarray | None], tuple[np.ndarray, ...]]
    """state(n_caches, n_ids, capacity, warm) -> the policy's arrays (plain Python)."""
    hooks: dict[str, Any]
    """name -> numba dispatcher, for each of HOOKS (defaults where the class defines none)."""
    knows: str | None = None
    """None (online), "future" (next need of each access: a bound) or "warmup" (needs in a first share)."""
    ranked: bool = False
    """The victim is the unguarded resident with the smallest `key` (else the policy's `victim` hook)."""

    @property
    def bound(self) -> bool:
        """Knows the future: an upper bound to compare with, not a policy to deploy."""
        return self.knows == "future"

    @property
    def live(self) -> bool:
        """Can run in `run --offload` (it needs nothing but what has happened)."""
        return self.knows is None

    @property
    def needs(self) -> str:
        """What it needs beyond what has happened, in words ('' for an online policy)."""
        return {None: "", "future": "it knows the future", "warmup": "it learns from the stream it replays"}[self.knows]

    @property
    def prefetchable(self) -> bool:
        """Can be combined with a prefetch source (`name+source`)."""
        return self.knows is None

    def hook(self, name: str, compiled: bool = True) -> Any:
        """The hook `name`: the numba dispatcher, or its plain-Python function."""
        dispatcher = self.hooks[name]
        return dispatcher if compiled else dispatcher.py_func


POLICIES: dict[str, Policy] = {}


def register_policy(cls: type) -> type:
    """Class decorator: compile the class's hooks and register it under `cls.name`."""
    hooks = {}
    for hook in HOOKS:
        function = cls.__dict__.get(hook)
        if function is None:
            hooks[hook] = _DEFAULT_HOOKS[hook]
        else:
            hooks[hook] = njit(inline="always")(function.__func__ if isinstance(function, staticmethod) else function)
    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    state = cls.__dict__["state"]
    state = state.__func__ if isinstance(state, staticmethod) else state
    name = cls.name  # type: ignore[attr-defined]
    ranked = "key" in cls.__dict__
    if ranked == ("victim" in cls.__dict__):
        raise TypeError(f"policy {name} must define exactly one of key and victim")
    POLICIES[name] = Policy(name, doc, state, hooks, getattr(cls, "knows", None), ranked)
    return cls


def _load() -> None:
    """Import every module of this package once (each registers its policy)."""
    if POLICIES:
        return
    import moetrace.sim.policies as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def registered() -> list[Policy]:
    """Every policy: online ones first, then warm-up baselines, then bounds; by name within each."""
    _load()
    kinds = {None: 0, "warmup": 1, "future": 2}
    return sorted(POLICIES.values(), key=lambda p: (kinds[p.knows], p.name))


def get_policy(name: str) -> Policy:
    _load()
    if name not in POLICIES:
        raise InvalidArgumentError(f"unknown policy {name!r}; known: {', '.join(p.name for p in registered())}")
    return POLICIES[name]


def prefetch_sources() -> list[str]:
    """What a policy can prefetch from: `oracle` (the trace's own next layer: a bound) and every path
    predictor."""
    from moetrace.predict.paths import path_method_names

    return ["oracle", *path_method_names()]


@dataclass(frozen=True)
class PolicySpec:
    """A `--policy` value parsed: `lru`, or `lru+markov` (demand policy + prefetch source)."""

    text: str
    policy: Policy
    source: str | None = None

    @property
    def bound(self) -> bool:
        return self.policy.bound or self.source == "oracle"

    @property
    def live(self) -> bool:
        return self.policy.live and self.source != "oracle"

    @property
    def needs_predictor(self) -> bool:
        """The source is a path predictor fitted by `predict path --save`."""
        if self.source in (None, "oracle"):
            return False
        from moetrace.predict.paths import PATH_PREDICTORS

        return PATH_PREDICTORS[self.source].needs_fit


def parse_policy(text: str) -> PolicySpec:
    """`lru` -> (lru, None); `lru+markov` -> (lru, markov); one error line for anything else."""
    base, plus, source = text.strip().partition("+")
    policy = get_policy(base)
    if not plus:
        return PolicySpec(text, policy)
    sources = prefetch_sources()
    if source not in sources:
        raise InvalidArgumentError(f"unknown prefetch source {source!r} in {text!r}; known: {', '.join(sources)}")
    if not policy.prefetchable:
        usable = ", ".join(p.name for p in registered() if p.prefetchable)
        raise InvalidArgumentError(f"{base} takes no prefetch source ({policy.needs}); prefetching takes {usable}")
    return PolicySpec(text, policy, source)


def parse_live_policy(text: str) -> PolicySpec:
    """A policy `run --offload` can run: it needs nothing but what has happened."""
    spec = parse_policy(text)
    if not spec.live:
        live = ", ".join(p.name for p in registered() if p.live)
        why = "it prefetches from the future" if spec.policy.live else spec.policy.needs
        raise InvalidArgumentError(
            f"a live cache cannot run {text!r} ({why}); it runs {live}, each optionally +pregate or +METHOD "
            "of a saved path predictor"
        )
    return spec


def policy_names() -> list[str]:
    """What `--policy` accepts: every policy, the prefetching forms `lru+source`, and `all`."""
    return [p.name for p in registered()] + [f"lru+{s}" for s in prefetch_sources()] + [ALL]


def policy_help() -> str:
    """One line per policy for `--help`."""
    lines = [f"{p.name}: {p.doc}" for p in registered()]
    lines.append(
        f"POLICY+SOURCE prefetches the next layer's experts (any online policy; source: {', '.join(prefetch_sources())})"
    )
    lines.append(f"{ALL}: every policy the inputs allow (bounds marked)")
    return "\n".join(lines)
