"""lfu: evict the resident needed fewest times so far (counted over the whole stream, not only
while resident); ties: the oldest last use, then the smallest id."""

from moetrace.sim.policies import register_policy


@register_policy("lfu")
def lfu_key(last_use: int, inserted: int, needs: int, upcoming: int, ident: int, n_ids: int, horizon: int) -> int:
    """Fewest needs so far first; ties: oldest last use, then smallest id."""
    return (needs * horizon + last_use) * n_ids + ident
