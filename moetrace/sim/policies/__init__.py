"""Eviction policies: one module each, one registry.

A policy is a ranking of a cache's residents: the engine evicts the resident (not needed by the
current request) with the smallest key. A key is computed from the resident's state, all int64:
last use and insertion (request indices), needs so far, next need (request index; `horizon` when
never), its id and the size of the id space. Adding a policy is one module with one decorated key
function and one golden test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moetrace.errors import InvalidArgumentError


@dataclass(frozen=True)
class Policy:
    name: str
    key: Any
    """A numba-compiled key(last_use, inserted, needs, upcoming, ident, n_ids, horizon) -> int64."""
    doc: str
    needs_future: bool = False
    """Belady: the engine must know each access's next need."""


POLICIES: dict[str, Policy] = {}


def register_policy(name: str, needs_future: bool = False) -> Callable[[Callable[..., int]], Callable[..., int]]:
    def decorator(key: Callable[..., int]) -> Callable[..., int]:
        from numba import njit

        POLICIES[name] = Policy(name, njit(inline="always", cache=True)(key), (key.__doc__ or "").strip(), needs_future)
        return key

    return decorator


def get_policy(name: str) -> Policy:
    _load()
    if name not in POLICIES:
        raise InvalidArgumentError(f"unknown policy {name!r}; known: {', '.join(policy_names())}")
    return POLICIES[name]


def policy_names() -> list[str]:
    """Demand policies, then `static`, then the prefetching forms (`base+predictor`)."""
    _load()
    usual = ("lru", "fifo", "lfu", "belady")
    ordered = sorted(POLICIES, key=lambda name: usual.index(name) if name in usual else len(usual))
    return [*ordered, "static", "lru+markov", "lru+mlp", "lru+pregate", "lru+oracle"]


def _load() -> None:
    from moetrace.sim.policies import belady, fifo, lfu, lru  # noqa: F401  (registration)
