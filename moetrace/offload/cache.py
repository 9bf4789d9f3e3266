"""The live cache's bookkeeping: which expert sits in which device slot, decided exactly as the
replay engine decides (moetrace/sim/reference.py's semantics, with the same policy keys), so that
a live run and a replay of its own trace count the same hits and misses."""

from __future__ import annotations

from dataclasses import dataclass, field

from moetrace.errors import InvalidArgumentError
from moetrace.sim.policies import get_policy

LIVE_POLICIES = ("lru", "fifo", "lfu")


def check_live_policy(policy: str) -> None:
    if policy not in LIVE_POLICIES:
        raise InvalidArgumentError(
            f"a live cache runs {', '.join(LIVE_POLICIES)} (belady needs the future; static is a replay-only "
            f"baseline), got {policy!r}"
        )


@dataclass
class Placement:
    """What a request needs moved: (expert, slot) to load; experts to stream (no slot free)."""

    hits: int = 0
    misses: int = 0
    loads: list[tuple[int, int]] = field(default_factory=list)
    streamed: list[int] = field(default_factory=list)


class SlotCache:
    """`capacity` slots in each of `caches` caches (one per layer, or one pool)."""

    def __init__(self, policy: str, capacity: int, caches: int) -> None:
        check_live_policy(policy)
        self.key = get_policy(policy).key
        self.capacity = capacity
        self.slot_of: list[dict[int, int]] = [{} for _ in range(caches)]
        self.resident: list[list[int]] = [[] for _ in range(caches)]
        self.last_use: list[dict[int, int]] = [{} for _ in range(caches)]
        self.inserted: list[dict[int, int]] = [{} for _ in range(caches)]
        self.needs: list[dict[int, int]] = [{} for _ in range(caches)]
        self.prefetched: list[set[int]] = [set() for _ in range(caches)]
        self.clock = 0
        self.useful_prefetches = 0
        self.wasted_prefetches = 0

    def _rank(self, cache: int, expert: int, ids: int) -> int:
        return int(self.key(self.last_use[cache][expert], self.inserted[cache][expert], self.needs[cache].get(expert, 0),
                            0, expert, ids, 1 << 40))  # fmt: skip

    def _slot(self, cache: int, protected: set[int], ids: int) -> tuple[int, int | None]:
        """(slot, evicted expert) for a new resident; slot −1 when every resident is protected."""
        if len(self.resident[cache]) < self.capacity:
            self.resident[cache].append(-1)
            return len(self.resident[cache]) - 1, None
        candidates = [e for e in self.resident[cache] if e not in protected]
        if not candidates:
            return -1, None
        victim = min(candidates, key=lambda e: self._rank(cache, e, ids))
        slot = self.slot_of[cache].pop(victim)
        if victim in self.prefetched[cache]:
            self.prefetched[cache].discard(victim)
            self.wasted_prefetches += 1
        return slot, victim

    def request(self, cache: int, need: list[int], ids: int) -> Placement:
        """Serve one need-set (ascending, distinct expert ids) of `cache`."""
        placement = Placement()
        slots = self.slot_of[cache]
        for expert in need:
            if expert in slots:
                placement.hits += 1
                if expert in self.prefetched[cache]:
                    self.prefetched[cache].discard(expert)
                    self.useful_prefetches += 1
            else:
                placement.misses += 1
        protected = set(need)
        for expert in need:
            if expert in slots:
                continue
            slot, _ = self._slot(cache, protected, ids)
            if slot < 0:
                placement.streamed.append(expert)
                continue
            self.resident[cache][slot] = expert
            slots[expert] = slot
            self.inserted[cache][expert] = self.clock
            placement.loads.append((expert, slot))
        for expert in need:
            self.last_use[cache][expert] = self.clock
            self.needs[cache][expert] = self.needs[cache].get(expert, 0) + 1
        self.clock += 1
        return placement

    def prefetch(
        self, cache: int, experts: list[int], ids: int, guard: frozenset[int] = frozenset()
    ) -> list[tuple[int, int]]:
        """Load `experts` (best first) ahead; returns the (expert, slot) loads. Issued after the request
        just served, stamped with its time, as the replay engine does; `guard` (in one pool: that
        request's need-set) is not evicted meanwhile."""
        when = self.clock - 1
        protected = set(experts) | guard
        loads = []
        for expert in experts:
            if expert in self.slot_of[cache]:
                continue
            slot, _ = self._slot(cache, protected, ids)
            if slot < 0:
                break
            self.resident[cache][slot] = expert
            self.slot_of[cache][expert] = slot
            self.inserted[cache][expert] = when
            self.last_use[cache][expert] = when
            self.prefetched[cache].add(expert)
            loads.append((expert, slot))
        return loads

    def check(self) -> None:
        """Every slot holds at most one expert and every resident one slot (no leaks)."""
        for cache, slots in enumerate(self.slot_of):
            residents = [e for e in self.resident[cache] if e >= 0]
            assert len(residents) == len(set(residents)) == len(slots) <= self.capacity, "slot bookkeeping broken"
            assert all(self.resident[cache][s] == e for e, s in slots.items()), "slot bookkeeping broken"
