"""Hit counts from libCacheSim itself (the `libcachesim` Python binding), for tests only.

`libcachesim_hits(policy, ids, capacity)` replays a plain sequence of object ids (every object of
size 1) through one libCacheSim cache of `capacity` objects and returns its hits. The whole stream
goes to the C library as one `oracleGeneral` trace file (the fast path: one call into C, no
per-request Python), whose `next_access_vtime` field gives Belady the future.

Configurations that libCacheSim refuses are refused here, before any C code runs, with the reason
(`refusal`): an S3-FIFO whose small queue would be empty makes libCacheSim abort the whole
process, and one whose small queue holds one object admits nothing at all.

The rules these policies follow, as libCacheSim implements them: docs/policies-libcachesim.md.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np

__all__ = ["POLICIES", "libcachesim_hit_flags", "libcachesim_hits", "refusal"]

POLICIES = ("lru", "fifo", "belady", "s3fifo", "sieve", "arc")
_CLASSES = {"lru": "LRU", "fifo": "FIFO", "belady": "Belady", "s3fifo": "S3FIFO", "sieve": "Sieve", "arc": "ARC"}

# oracleGeneral: per request, packed little-endian: clock_time u32, obj_id u64, obj_size u32,
# next_access_vtime i64 (-1: never again; the reader turns it into INT64_MAX).
_RECORD = np.dtype([("clock_time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access_vtime", "<i8")])
assert _RECORD.itemsize == 24


def refusal(policy: str, capacity: int) -> str | None:
    """Why libCacheSim cannot run `policy` with `capacity` objects of size 1 (None: it can)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
    if capacity < 1:
        return f"a cache of {capacity} objects holds nothing"
    if policy == "s3fifo":
        small = int(capacity * 0.1)  # S3FIFO.c: (int64_t)(cache_size * small_size_ratio)
        if small < 1:
            return (
                f"libCacheSim's S3-FIFO aborts the process below 10 objects "
                f"(small queue floor({capacity} * 0.1) = 0: 'Invalid cache size configuration')"
            )
        if small < 2:
            return (
                f"libCacheSim's S3-FIFO admits nothing below 20 objects (small queue of "
                f"floor({capacity} * 0.1) = 1 object: S3FIFO_insert needs obj_size < small size), 0 hits"
            )
    return None


def _next_access(ids: np.ndarray) -> np.ndarray:
    """For each request, the index of the next request for the same id (-1: none)."""
    nxt = np.full(len(ids), -1, np.int64)
    last: dict[int, int] = {}
    for i in range(len(ids) - 1, -1, -1):
        x = int(ids[i])
        nxt[i] = last.get(x, -1)
        last[x] = i
    return nxt


def libcachesim_hits(policy: str, ids: Sequence[int], capacity: int) -> int:
    """Hits of libCacheSim's `policy` (lru, fifo, belady, s3fifo, sieve, arc; default parameters)
    over `ids` with a cache of `capacity` objects, all of size 1. ValueError when libCacheSim
    refuses the configuration (see `refusal`)."""
    import libcachesim as lcs

    reason = refusal(policy, capacity)
    if reason is not None:
        raise ValueError(reason)
    stream = np.asarray(ids, dtype=np.int64)
    if stream.size == 0:
        return 0
    if stream.min() < 0:
        raise ValueError("ids must be non-negative")
    records = np.zeros(stream.size, _RECORD)
    records["obj_id"] = stream
    records["obj_size"] = 1
    records["next_access_vtime"] = _next_access(stream)
    fd, path = tempfile.mkstemp(suffix=".oracleGeneral.bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(records.tobytes())
        reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE, lcs.ReaderInitParam())
        # hashpower: the default (24) allocates 2^24 buckets per cache (S3-FIFO makes three);
        # the table grows as needed, and its size does not change any policy's decisions.
        cache = getattr(lcs, _CLASSES[policy])(capacity, hashpower=12)
        miss_ratio, _ = cache.process_trace(reader)
    finally:
        os.unlink(path)
    return round(stream.size * (1.0 - miss_ratio))


def libcachesim_hit_flags(policy: str, ids: Sequence[int], capacity: int) -> list[bool]:
    """Request by request, whether libCacheSim's `policy` hits (the slow path, one C call per
    request: for locating the first request where another implementation diverges)."""
    import libcachesim as lcs

    reason = refusal(policy, capacity)
    if reason is not None:
        raise ValueError(reason)
    stream = np.asarray(ids, dtype=np.int64)
    nxt = _next_access(stream)
    cache = getattr(lcs, _CLASSES[policy])(capacity, hashpower=12)
    req = lcs.Request()
    req.obj_size = 1
    flags = []
    for x, n in zip(stream.tolist(), nxt.tolist()):
        req.obj_id = x
        req.next_access_vtime = n if n >= 0 else np.iinfo(np.int64).max
        flags.append(bool(cache.get(req)))
    return flags
