"""Compiled loops of `trace_stats` over batches of packed route rows (numba, cached on disk).

A row's experts arrive packed into unsigned 64-bit words (`bits` bits per expert, `per_word`
experts per word, rank order from the low bits), so DuckDB joins and streams a few integers per
row instead of a list. Every kernel checks the expert ids it unpacks and returns -1 on one outside
0..num_experts-1 instead of writing out of bounds.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _unpack(words: np.ndarray, row: int, k: int, bits: int, per_word: int, out: np.ndarray) -> None:
    mask = np.uint64((1 << bits) - 1)
    for i in range(k):
        shift = np.uint64((i % per_word) * bits)
        out[i] = np.int64((words[row, i // per_word] >> shift) & mask)


@njit(nogil=True, cache=True)
def overlap_sums(
    layer: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, bits: int, per_word: int, sums: np.ndarray
) -> int:
    """Add |a_i ∩ b_i| (a's experts found in b's, counted with a's repeats) to sums[layer_i]."""
    x = np.empty(k, np.int64)
    y = np.empty(k, np.int64)
    for r in range(layer.shape[0]):
        _unpack(a, r, k, bits, per_word, x)
        _unpack(b, r, k, bits, per_word, y)
        found = 0
        for i in range(k):
            for j in range(k):
                if x[i] == y[j]:
                    found += 1
                    break
        sums[layer[r]] += found
    return 0


@njit(nogil=True, cache=True)
def count_pairs(
    order: np.ndarray, layer: np.ndarray, src: np.ndarray, dst: np.ndarray, k: int, bits: int, per_word: int,
    table: np.ndarray,
) -> int:  # fmt: skip
    """table[layer, e, f] += 1 for every expert e of a row's src and f of its dst (rows taken in `order`)."""
    num_experts = table.shape[1]
    x = np.empty(k, np.int64)
    y = np.empty(k, np.int64)
    for o in range(order.shape[0]):
        r = order[o]
        _unpack(src, r, k, bits, per_word, x)
        _unpack(dst, r, k, bits, per_word, y)
        for i in range(k):
            if x[i] >= num_experts or y[i] >= num_experts:
                return -1
        block = table[layer[r]]
        for i in range(k):
            row = block[x[i]]
            for j in range(k):
                row[y[j]] += 1
    return 0


@njit(nogil=True, cache=True)
def recall_hits(
    order: np.ndarray, layer: np.ndarray, src: np.ndarray, dst: np.ndarray, k: int, bits: int, per_word: int,
    table: np.ndarray, hits: np.ndarray,
) -> int:  # fmt: skip
    """Add to hits[layer] how many of a row's distinct dst experts are among the k best scored, where
    expert g scores the sum over the row's src experts e of table[layer, e, g] (ties: smaller g first)."""
    num_experts = table.shape[1]
    x = np.empty(k, np.int64)
    y = np.empty(k, np.int64)
    scores = np.empty(num_experts, table.dtype)
    keys = np.empty(num_experts, np.int64)
    targets = np.empty(k, np.int64)
    for o in range(order.shape[0]):
        r = order[o]
        _unpack(src, r, k, bits, per_word, x)
        _unpack(dst, r, k, bits, per_word, y)
        for i in range(k):
            if x[i] >= num_experts or y[i] >= num_experts:
                return -1
        block = table[layer[r]]
        scores[:] = 0
        for i in range(k):
            row = block[x[i]]
            for g in range(num_experts):
                scores[g] += row[g]
        for g in range(num_experts):  # one distinct key per expert: its score, then the smaller id first
            keys[g] = np.int64(scores[g]) * num_experts + (num_experts - 1 - g)
        wanted = 0  # the row's distinct dst experts' keys
        for j in range(k):
            repeated = False
            for jj in range(j):
                if y[jj] == y[j]:
                    repeated = True
            if not repeated:
                targets[wanted] = keys[y[j]]
                wanted += 1
        found = 0
        for start in range(0, wanted, 8):
            found += _among_best(keys, targets, start, min(wanted, start + 8), k)
        hits[layer[r]] += found
    return 0


@njit(nogil=True, cache=True)
def _among_best(keys: np.ndarray, targets: np.ndarray, start: int, stop: int, k: int) -> int:
    """How many of targets[start:stop] (at most 8) have fewer than k keys above them.

    Eight scalar accumulators (unused ones compared against the largest int64, which nothing
    exceeds) so that the loop over the keys vectorises."""
    top = np.iinfo(np.int64).max
    t0 = targets[start]
    t1 = targets[start + 1] if start + 1 < stop else top
    t2 = targets[start + 2] if start + 2 < stop else top
    t3 = targets[start + 3] if start + 3 < stop else top
    t4 = targets[start + 4] if start + 4 < stop else top
    t5 = targets[start + 5] if start + 5 < stop else top
    t6 = targets[start + 6] if start + 6 < stop else top
    t7 = targets[start + 7] if start + 7 < stop else top
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
    ranks = (r0, r1, r2, r3, r4, r5, r6, r7)
    found = 0
    for j in range(stop - start):
        if ranks[j] < k:
            found += 1
    return found
