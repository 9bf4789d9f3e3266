"""A replay stream kept in chunks: built once, replayed by every policy and capacity of a run.

The chunks are written to a temporary folder (or kept in memory for a stream that is in memory
already), each in cache space (`CacheSpace`: which cache a request uses, each access's id in it).
Policies that know the future read, per access, the request of its next need in the same cache: a
reverse pass over the chunks on disk computes it with one table of "next seen" per cache, so no
pass ever holds more than one chunk. Memory is the caches' tables plus one chunk, whatever the
length of the trace.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from moetrace.sim.replay import CacheSpace
from moetrace.sim.stream import Stream

KEEP_ACCESSES = 16_000_000
"""Accesses of the chunks kept in memory (about 0.3 GB with their requests); the rest go to disk."""
_STREAM_ARRAYS = ("layer", "offsets", "ids", "unit", "unit_keys")


@dataclass(frozen=True)
class StreamInfo:
    """What a stream is, in totals: what the results report beside the counts."""

    order: str
    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    requests: int
    accesses: int
    tokens: int
    largest: int
    """The largest need-set (capacities below it stream experts on every such request)."""


@dataclass(frozen=True)
class Chunk:
    """A whole number of units (tokens or steps) of the stream, in order."""

    stream: Stream
    """The chunk's requests (offsets from 0; units numbered within the chunk)."""
    first_request: int
    """Index of the chunk's first request in the whole stream."""
    cache_of: np.ndarray
    """(requests,) int64: the cache each request uses."""
    ids: np.ndarray
    """(accesses,) int64: each access's id in its cache."""
    upcoming: np.ndarray | None
    """(accesses,) int64: the request of the access's next need in its cache (requests + 1: never), when
    the chunks were built for policies that know the future."""


class ChunkedStream:
    """Chunks of a stream (pieces from `stream_chunks`, or one whole `Stream`) in cache space."""

    def __init__(self, pieces: Iterable[Stream], pool: bool, *, future: bool, spill: bool = True) -> None:
        """`future`: also compute each access's next need; `spill`: once the chunks kept in memory hold
        KEEP_ACCESSES accesses, write the others to a temporary folder (else keep every chunk in memory)."""
        self.pool = pool
        self.spill = spill
        self.folder: Path | None = None
        self._kept: list[tuple[Stream, np.ndarray | None] | None] = []
        self._kept_accesses = 0
        self._firsts: list[int] = []
        requests = accesses = tokens = largest = 0
        first: Stream | None = None
        try:
            for index, piece in enumerate(pieces):
                if first is None:
                    first = piece
                self._firsts.append(requests)
                self._keep(index, piece)
                requests += piece.requests
                accesses += piece.accesses
                tokens += piece.tokens
                largest = max(largest, int(piece.sizes().max(initial=0)))
            if first is None:
                raise ValueError("a stream needs at least one chunk")
            self.info = StreamInfo(first.order, first.layers, first.num_experts, first.top_k, requests, accesses,
                                   tokens, largest)  # fmt: skip
            self.space = CacheSpace(len(first.layers), first.num_experts, pool)
            if future:
                self._next_needs()
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._firsts)

    def __iter__(self) -> Iterator[Chunk]:
        for index in range(len(self)):
            yield self.chunk(index)

    def chunk(self, index: int) -> Chunk:
        stream, upcoming = self._load(index)
        cache_of, ids = self.layout(stream)
        return Chunk(stream, self._firsts[index], cache_of, ids, upcoming)

    def layout(self, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
        """(cache of each request, cache-space id of each access) of a piece of this stream."""
        return self.space.layout(stream)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> ChunkedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- storage --------------------------------------------------------------------------------

    def _keep(self, index: int, piece: Stream, upcoming: np.ndarray | None = None) -> None:
        if index < len(self._kept):  # the upcoming needs of a chunk kept before
            kept = self._kept[index]
            if kept is not None:
                self._kept[index] = (piece, upcoming)
                return
        elif not self.spill or self._kept_accesses + piece.accesses <= KEEP_ACCESSES:
            self._kept.append((piece, upcoming))
            self._kept_accesses += piece.accesses
            return
        else:
            self._kept.append(None)
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="moetrace-stream-"))
        if upcoming is not None:
            np.save(self.folder / f"upcoming-{index:06d}.npy", upcoming)
            return
        arrays = {name: getattr(piece, name) for name in _STREAM_ARRAYS}
        meta = np.array([piece.num_experts, piece.top_k, piece.tokens], np.int64)
        np.savez(self.folder / f"chunk-{index:06d}.npz", meta=meta, layers=np.array(piece.layers, np.int64), **arrays)
        self._order = piece.order

    def _load(self, index: int) -> tuple[Stream, np.ndarray | None]:
        kept = self._kept[index]
        if kept is not None:
            return kept
        assert self.folder is not None
        with np.load(self.folder / f"chunk-{index:06d}.npz", allow_pickle=False) as saved:
            num_experts, top_k, tokens = (int(v) for v in saved["meta"])
            stream = Stream(**{name: saved[name] for name in _STREAM_ARRAYS}, layers=tuple(int(v) for v in saved["layers"]),
                            num_experts=num_experts, top_k=top_k, tokens=tokens, order=self._order)  # fmt: skip
        upcoming_file = self.folder / f"upcoming-{index:06d}.npy"
        upcoming = np.load(upcoming_file, allow_pickle=False) if upcoming_file.exists() else None
        return stream, upcoming

    def _next_needs(self) -> None:
        """Each access's next need, from a reverse pass over the chunks."""
        never = self.info.requests + 1
        seen = np.full((self.space.caches, self.space.ids), never, np.int64)
        for index in range(len(self) - 1, -1, -1):
            stream, _ = self._load(index)
            cache_of, ids = self.layout(stream)
            upcoming = _next_needs_before(cache_of, stream.offsets, ids, seen, self._firsts[index])
            self._keep(index, stream, upcoming)


@njit(nogil=True, cache=True)
def _next_needs_before(cache_of, offsets, ids, seen, first_request):  # type: ignore[no-untyped-def]
    """For each access of these requests (`first_request` + r), the next request of the same cache that
    needs the same id, given `seen` (caches, ids): the first need after these requests (updated)."""
    upcoming = np.empty(len(ids), np.int64)
    for r in range(len(cache_of) - 1, -1, -1):
        c = cache_of[r]
        for j in range(offsets[r], offsets[r + 1]):
            upcoming[j] = seen[c, ids[j]]
            seen[c, ids[j]] = first_request + r
    return upcoming
