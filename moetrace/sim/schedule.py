"""Token scheduling (ExpertFlow-style): which tokens share a batch decides how many experts the
batch activates per layer, and so what an expert cache sees.

Model: in each round (one decoding step of a server, here one position) every active sequence
contributes one token; the round's tokens are cut into batches of `batch_size`, each batch one
forward pass whose need-set at a layer is the union of its tokens' experts. `arrival` batches the
tokens in sequence order; `grouped` first orders them by their route at the first MoE layer
(the route prediction available once that layer has run), so that tokens going the same way
share a batch.
"""

from __future__ import annotations

import numpy as np

from moetrace.errors import InvalidArgumentError
from moetrace.sim.stream import Stream

SCHEDULES = ("arrival", "grouped")


def scheduled_stream(stream: Stream, batch_size: int, schedule: str) -> Stream:
    """The stream of batched forwards of a token-order stream under `schedule`."""
    if stream.order != "token":
        raise InvalidArgumentError("token scheduling regroups tokens: replay the trace with --order token")
    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be at least 1, got {batch_size}")
    if schedule not in SCHEDULES:
        raise InvalidArgumentError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    keys = stream.unit_keys  # (tokens, 3): step, seq_id, pos
    layers, experts, k = len(stream.layers), stream.num_experts, stream.top_k
    first_layer = np.flatnonzero(stream.layer == 0)
    route = np.full((len(keys), k), -1, np.int64)
    route[stream.unit[first_layer]] = stream.ids[stream.offsets[first_layer][:, None] + np.arange(k)]
    sequence = keys[:, 0] * (keys[:, 1].max() + 1) + keys[:, 1]
    position = keys[:, 2]
    if schedule == "arrival":
        order = np.lexsort((sequence, position))
    else:
        order = np.lexsort((sequence, *route.T[::-1], position))
    # the rank of each token within its round, in schedule order -> its batch in that round
    sorted_position = position[order]
    round_start = np.searchsorted(sorted_position, sorted_position, side="left")
    batch_in_round = (np.arange(len(order)) - round_start) // batch_size
    forward = np.empty(len(keys), np.int64)
    span = int(batch_in_round.max()) + 1
    forward[order] = sorted_position * span + batch_in_round
    request_of_access = np.repeat(np.arange(stream.requests), stream.sizes())
    pairs = np.unique(
        (forward[stream.unit[request_of_access]] * layers + stream.layer[request_of_access]) * experts + stream.ids
    )
    request, ids = np.divmod(pairs, experts)
    requests, first = np.unique(request, return_index=True)
    forwards = np.unique(requests // layers)
    return Stream(
        layer=requests % layers, offsets=np.append(first, len(ids)).astype(np.int64), ids=ids,
        unit=np.searchsorted(forwards, requests // layers),
        unit_keys=np.stack([forwards, np.full(len(forwards), -1), np.full(len(forwards), -1)], axis=1),
        layers=stream.layers, num_experts=experts, top_k=k, tokens=stream.tokens, order="step",
    )  # fmt: skip
