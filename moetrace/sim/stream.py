"""The access stream of a replay: one need-set per request, in replay order.

`step` order: one request per (step, MoE layer), step-major, layer-minor; its need-set is the
unique experts the step's tokens need at that layer. `token` order: sequence by sequence, position
by position, one request per (token, layer) with that token's experts (decode at batch size 1, and
the way to replay prefill-only traces). Need-sets are sorted ascending: missing experts are
inserted in ascending id order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moetrace.errors import InvalidArgumentError, TraceFormatError
from moetrace.trace.reader import Trace, token_index

ORDERS = ("step", "token")


@dataclass(frozen=True)
class Stream:
    """Requests in replay order, as flat arrays."""

    layer: np.ndarray
    """(R,) int64: position of the request's layer in `layers` (0 … L−1)."""
    offsets: np.ndarray
    """(R+1,) int64: request r needs ids[offsets[r]:offsets[r+1]]."""
    ids: np.ndarray
    """(A,) int64: expert ids, ascending within each request."""
    unit: np.ndarray
    """(R,) int64: the step (step order) or token (token order) each request belongs to."""
    unit_keys: np.ndarray
    """(units, 3) int64: (step, seq_id, pos) of each token (token order); (step, −1, −1) of each step."""
    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    tokens: int
    """Tokens behind the stream (for time per token)."""
    order: str

    @property
    def requests(self) -> int:
        return len(self.layer)

    @property
    def accesses(self) -> int:
        return len(self.ids)

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def build_stream(trace: Trace, order: str = "step", phase: str | None = None) -> Stream:
    """The replay stream of a trace's routes."""
    if order not in ORDERS:
        raise InvalidArgumentError(f"--order must be one of {', '.join(ORDERS)}, got {order!r}")
    if not trace.has_routes:
        raise TraceFormatError(f"trace {trace.path} has no routes (only load); a replay needs routes")
    routes = trace.routes_arrays(["seq_id", "pos", "step", "phase", "layer", "experts"])
    if phase is not None:
        keep = routes["phase"] == phase
        routes = {name: values[keep] for name, values in routes.items()}
    if len(routes["step"]) == 0:
        raise TraceFormatError(f"trace {trace.path} has no routes{f' in phase {phase}' if phase else ''}")
    model = trace.meta.model
    layer_pos = np.full(max(model.moe_layers) + 1, -1, np.int64)
    layer_pos[list(model.moe_layers)] = np.arange(len(model.moe_layers))
    layer = layer_pos[routes["layer"]]
    experts = routes["experts"].astype(np.int64)
    keys, token = token_index(routes["step"], routes["seq_id"], routes["pos"])
    if order == "token":
        row_order = np.lexsort((layer, routes["pos"], routes["seq_id"]))
        ordered = np.sort(experts[row_order], axis=1)
        unit = token[row_order]
        return Stream(
            layer=layer[row_order], offsets=np.arange(len(row_order) + 1) * model.top_k, ids=ordered.reshape(-1),
            unit=unit, unit_keys=keys, layers=model.moe_layers, num_experts=model.num_experts, top_k=model.top_k,
            tokens=len(keys), order=order,
        )  # fmt: skip
    # step order: unique experts per (step, layer)
    num_experts = model.num_experts
    request_key = routes["step"].astype(np.int64) * len(model.moe_layers) + layer
    pairs = np.unique(np.repeat(request_key, experts.shape[1]) * num_experts + experts.reshape(-1))
    request, ids = np.divmod(pairs, num_experts)
    requests, first = np.unique(request, return_index=True)
    offsets = np.append(first, len(ids)).astype(np.int64)
    steps = np.unique(routes["step"]).astype(np.int64)
    step_of_request = requests // len(model.moe_layers)
    return Stream(
        layer=requests % len(model.moe_layers), offsets=offsets, ids=ids, unit=np.searchsorted(steps, step_of_request),
        unit_keys=np.stack([steps, np.full_like(steps, -1), np.full_like(steps, -1)], axis=1),
        layers=model.moe_layers, num_experts=num_experts, top_k=model.top_k, tokens=len(keys), order=order,
    )  # fmt: skip
