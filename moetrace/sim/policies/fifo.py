"""fifo: evict the resident inserted first; ties: the smallest id."""

from moetrace.sim.policies import register_policy


@register_policy("fifo")
def fifo_key(last_use: int, inserted: int, needs: int, upcoming: int, ident: int, n_ids: int, horizon: int) -> int:
    """Earliest insertion first; ties: smallest id."""
    return inserted * n_ids + ident
