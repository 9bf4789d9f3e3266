"""belady: evict the resident whose next need in this cache is farthest away (never needed again
first); ties: the smallest id. The optimal demand policy: an upper bound for every other one."""

from moetrace.sim.policies import register_policy


@register_policy("belady", needs_future=True)
def belady_key(last_use: int, inserted: int, needs: int, upcoming: int, ident: int, n_ids: int, horizon: int) -> int:
    """Farthest next need first (never = ∞); ties: smallest id."""
    return (horizon - upcoming) * n_ids + ident
