"""lru: evict the resident used longest ago; ties: the smallest id."""

from moetrace.sim.policies import register_policy


@register_policy("lru")
def lru_key(last_use: int, inserted: int, needs: int, upcoming: int, ident: int, n_ids: int, horizon: int) -> int:
    """Oldest last use first; ties: smallest id."""
    return last_use * n_ids + ident
