"""Compiled loops of `trace_stats` (numba, cached on disk, nogil so that threads can share the cores).

Pass 1 (`scan_tokens`) walks route rows sorted by (seq_id, pos, layer): a token's rows are then
adjacent and in MoE-layer order, and the next token of its sequence follows directly. It adds the
temporal-locality sums and copies every (this layer, next MoE layer) pair of a token's experts into
per-layer buffers, which the caller appends to one file per layer. Pass 2 (`count_table`, then
`recall_hits`) reads one layer's pairs back: the co-occurrence table of that layer is counted, then
each pair is scored with it, one layer at a time, so the (experts × experts) table stays in cache.

Arrays:
- `seq`, `pos` (n,) int: a row's token; `idx` (n,) int: its position in `moe_layers`;
  `experts` (n, k) int: its experts in rank order (already checked to lie in 0..num_experts-1).
- `buffer` (layers - 1, capacity, 2, k) uint8/uint16: per MoE layer i, pairs of (experts at layer i,
  experts at layer i + 1) of one token; `fill` (layers - 1,) int64: pairs held per layer.
- `pairs` (m, 2, k): one layer's pairs read back, [:, 0] the source experts, [:, 1] the next layer's.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def scan_tokens(
    seq: np.ndarray, pos: np.ndarray, idx: np.ndarray, experts: np.ndarray, num_experts: int, start: int,
    prev: int, final: bool, overlap: np.ndarray, successors: np.ndarray, buffer: np.ndarray, fill: np.ndarray, counts: np.ndarray,
) -> tuple[int, int, bool]:  # fmt: skip
    """Pass 1 over the tokens whose rows begin at `start`; the rows [prev, start) are the token before
    them (prev = -1: none).

    Per token: counts[0] += 1 (tokens), counts[1] += 1 when its seq_id differs from the previous
    token's (sequences); for each layer i where this token and the token before it of its sequence
    (pos - 1, the previous token in this order) both have rows, overlap[i] += |a ∩ b| (a's experts
    found among b's, counted with a's repeats) and successors[i] += 1 per pair of such rows; each
    pair of its rows at layers i and i + 1 goes to buffer[i]. Duplicate rows pair like a join.

    The last token is left alone unless `final` (more of its rows may follow). Stops early at a token
    whose pairs do not fit into the buffer. Returns (the first row not done, the first row of the last
    token done or `prev` when none was, whether it stopped for want of room)."""
    n = seq.shape[0]
    k = experts.shape[1]
    capacity = buffer.shape[1]
    seen = np.zeros(num_experts, np.bool_)
    r = start
    while r < n:
        end = r + 1
        while end < n and seq[end] == seq[r] and pos[end] == pos[r]:
            end += 1
        if end == n and not final:
            break
        if not _room(idx, r, end, capacity, fill):
            return r, prev, True
        counts[0] += 1
        if prev < 0 or seq[prev] != seq[r]:
            counts[1] += 1
        elif pos[prev] + 1 == pos[r]:
            _locality(idx, experts, prev, r, end, overlap, successors, seen)
        # consecutive MoE layers within the token: runs of equal idx, each paired with the next run
        a = r
        while a < end:
            b, c = _next_runs(idx, a, end)
            if b < end and idx[b] == idx[a] + 1:
                layer = idx[a]
                for s in range(a, b):
                    for d in range(b, c):
                        slot = fill[layer]
                        for j in range(k):
                            buffer[layer, slot, 0, j] = experts[s, j]
                            buffer[layer, slot, 1, j] = experts[d, j]
                        fill[layer] = slot + 1
            a = b
        prev = r
        r = end
    return r, prev, False


@njit(inline="always")
def _next_runs(idx, a, end):  # type: ignore[no-untyped-def]
    """Where the run of equal idx starting at row a ends (b), and where the run after it ends (c)."""
    b = a + 1
    while b < end and idx[b] == idx[a]:
        b += 1
    c = b + 1
    while c < end and idx[c] == idx[b]:
        c += 1
    return b, c


@njit(nogil=True, cache=True)
def _room(idx: np.ndarray, r: int, end: int, capacity: int, fill: np.ndarray) -> bool:
    """Whether the buffer has room for the layer pairs of the token in rows [r, end)."""
    a = r
    while a < end:
        b, c = _next_runs(idx, a, end)
        if b < end and idx[b] == idx[a] + 1 and fill[idx[a]] + (b - a) * (c - b) > capacity:
            return False
        a = b
    return True


@njit(nogil=True, cache=True)
def _locality(
    idx: np.ndarray, experts: np.ndarray, prev: int, r: int, end: int, overlap: np.ndarray, successors: np.ndarray,
    seen: np.ndarray,
) -> None:  # fmt: skip
    """Temporal-locality sums of the token in rows [prev, r) against the next one in rows [r, end).

    `seen` (num_experts,) bool, all False: marks the later row's experts while the earlier one's are looked up."""
    k = experts.shape[1]
    i, j = prev, r
    while i < r and j < end:
        if idx[i] < idx[j]:
            i += 1
        elif idx[i] > idx[j]:
            j += 1
        else:
            i_end, j_end = i + 1, j + 1
            while i_end < r and idx[i_end] == idx[i]:
                i_end += 1
            while j_end < end and idx[j_end] == idx[j]:
                j_end += 1
            for b in range(j, j_end):
                for y in range(k):
                    seen[experts[b, y]] = True
                for a in range(i, i_end):
                    found = 0
                    for x in range(k):
                        found += seen[experts[a, x]]
                    overlap[idx[i]] += found
                    successors[idx[i]] += 1
                for y in range(k):
                    seen[experts[b, y]] = False
            i, j = i_end, j_end


@njit(nogil=True, cache=True)
def count_table(pairs: np.ndarray, table: np.ndarray) -> None:
    """table[e, f] += 1 for every source expert e and next-layer expert f of each pair (with repeats)."""
    k = pairs.shape[2]
    for p in range(pairs.shape[0]):
        for i in range(k):
            row = table[pairs[p, 0, i]]
            for j in range(k):
                row[pairs[p, 1, j]] += 1


@njit(nogil=True, cache=True)
def recall_hits(pairs: np.ndarray, table: np.ndarray) -> int:
    """How many of each pair's distinct next-layer experts are among the k best scored, summed over
    the pairs, where expert g scores the sum over the pair's source experts e of table[e, g] (ties:
    the smaller g first, so every expert has a distinct key: its score, then the smaller id)."""
    num_experts = table.shape[1]
    k = pairs.shape[2]
    scores = np.empty(num_experts, table.dtype)
    keys = np.empty(num_experts, np.int64)
    targets = np.empty(8, np.int64)
    hits = 0
    for p in range(pairs.shape[0]):
        if k == 1:
            scores[:] = 0
        else:
            first = table[pairs[p, 0, 0]]
            for g in range(num_experts):
                scores[g] = first[g]
        for i in range(1, k - 1):  # the last source row is added while the keys are made
            row = table[pairs[p, 0, i]]
            for g in range(num_experts):
                scores[g] += row[g]
        last = table[pairs[p, 0, k - 1]]
        for g in range(num_experts):
            keys[g] = np.int64(scores[g] + last[g]) * num_experts + (num_experts - 1 - g)
        j = 0
        while j < k:  # the distinct targets, eight at a time
            wanted = 0
            while j < k and wanted < 8:
                f = pairs[p, 1, j]
                repeated = False
                for jj in range(j):
                    if pairs[p, 1, jj] == f:
                        repeated = True
                if not repeated:
                    targets[wanted] = keys[f]
                    wanted += 1
                j += 1
            for unused in range(wanted, 8):
                targets[unused] = targets[0]
            ahead = _ahead(keys, targets)
            for t in range(wanted):
                if ahead[t] < k:
                    hits += 1
    return hits


@njit(nogil=True, cache=True)
def _ahead(keys: np.ndarray, targets: np.ndarray) -> tuple[int, int, int, int, int, int, int, int]:
    """How many keys exceed each of the 8 targets; eight scalar accumulators so that the loop vectorises."""
    t0, t1, t2, t3 = targets[0], targets[1], targets[2], targets[3]
    t4, t5, t6, t7 = targets[4], targets[5], targets[6], targets[7]
    r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = 0
    for g in range(keys.shape[0]):
        key = keys[g]
        r0 += key > t0
        r1 += key > t1
        r2 += key > t2
        r3 += key > t3
        r4 += key > t4
        r5 += key > t5
        r6 += key > t6
        r7 += key > t7
    return r0, r1, r2, r3, r4, r5, r6, r7
