"""Evidence on the near-duplicate hits the cache served, and the error bound it keeps.

A semantic hit is a bet that the cached answer is the one this question would get. A share of
them (``RAG_CACHE_AUDIT_RATE``) is checked after it was served: the pipeline answers the
question afresh in the background and tells the cache whether the two answers agree. The
evidence is kept per collection in the cache's store that never evicts:

- the estimated wrong-hit rate, with its 95% confidence interval (Clopper-Pearson), beside
  the collection's bound (``RAG_CACHE_MAX_WRONG_RATE``), for ``rag cache stats``;
- a decision boundary per cached entry: an entry that served a wrong answer at similarity s
  serves from then on only questions closer than s (the fresh answer is cached too, so the
  two now compete for the margin check);
- a boundary per collection: once the interval lies wholly above the bound, a near
  duplicate must be closer than every hit found wrong there, until the evidence says
  otherwise.

With no evidence (a new collection) nothing changes: the calibrated threshold, margin,
guards and verifier stand, which is the cold start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .stores import Counters

_CONFIDENCE = 0.95


def interval(wrong: int, n: int) -> tuple[float, float]:
    """Two-sided 95% Clopper-Pearson interval for a rate of ``wrong`` in ``n``."""
    if n == 0:
        return 0.0, 1.0
    wrong = min(wrong, n)
    from scipy.stats import beta

    tail = (1 - _CONFIDENCE) / 2
    low = float(beta.ppf(tail, wrong, n - wrong + 1)) if wrong > 0 else 0.0
    high = float(beta.ppf(1 - tail, wrong + 1, n - wrong)) if wrong < n else 1.0
    return low, high


class HitEvidence:
    """Audits of served semantic hits, per collection (``tag``) and per entry (``ref``)."""

    def __init__(self, store: Counters, max_wrong_rate: Callable[[str | None], float]) -> None:
        self._store = store  # must never evict: evidence outlives the entries it is about
        self.max_wrong_rate = max_wrong_rate

    def record(self, tag: str | None, ref: str, similarity: float, agreed: bool, recount: bool = False) -> None:
        """One audited hit: did the fresh answer agree with the cached one it was served?
        ``recount``: a hit counted already, as right, now found wrong (not one more hit)."""
        with self._store.transact():
            n = self._store.incr(f"audit:{tag}:n", 0 if recount else 1)
            wrong = self._store.incr(f"audit:{tag}:wrong", 0 if agreed else 1)
            if wrong > n:  # the hit a recount is about was never counted (its store was away then)
                n = self._store.incr(f"audit:{tag}:n", wrong - n)
            if not agreed:  # the highest wrong similarity wins, whichever replica writes last
                self._store.update(f"audit:{tag}:wrong_max", lambda v: max(v, similarity), -1.0)
                self._store.update(f"floor:{ref}", lambda v: max(v, similarity), -1.0)
            self._set_floor(tag, n, wrong)  # worked out here, read by every lookup

    def entry_floor(self, ref: str) -> float | None:
        """The similarity a question must exceed to be served this entry (None: no evidence)."""
        value = self._store.get(f"floor:{ref}")
        return None if value is None else float(value)

    def _set_floor(self, tag: str | None, n: int, wrong: int) -> float | None:
        """Work out the collection's boundary under its bound now, and store it with that bound."""
        bound = self.max_wrong_rate(tag)
        over = wrong > 0 and interval(wrong, n)[0] > bound
        floor = float(self._store.get(f"audit:{tag}:wrong_max", -1.0)) if over else None
        self._store.set(f"audit:{tag}:floor", [bound, floor])
        return floor

    def collection_floor(self, tag: str | None) -> float | None:
        """When the collection is over its bound with 95% confidence: the similarity a near
        duplicate must exceed there (the closest hit found wrong); otherwise None. Worked out
        again when the bound is not the one it was stored under (RAG_CACHE_MAX_WRONG_RATE changed)."""
        stored = self._store.get(f"audit:{tag}:floor")
        if isinstance(stored, list) and stored[0] == self.max_wrong_rate(tag):
            return None if stored[1] is None else float(stored[1])
        n, wrong = int(self._store.get(f"audit:{tag}:n", 0)), int(self._store.get(f"audit:{tag}:wrong", 0))
        return self._set_floor(tag, n, wrong) if n else None

    def estimate(self, tag: str | None) -> dict[str, Any]:
        """The collection's estimated wrong-hit rate beside its bound, for ``rag cache stats``."""
        n, wrong = int(self._store.get(f"audit:{tag}:n", 0)), int(self._store.get(f"audit:{tag}:wrong", 0))
        target = self.max_wrong_rate(tag)
        low, high = interval(wrong, n)
        if high <= target:
            status = "within the bound (95% confidence)"
        elif (floor := self.collection_floor(tag)) is not None and low > target:
            status = f"over the bound: near duplicates there must now be closer than {floor:.3f}"
        elif low > target:  # an audit on another replica is between its counts and its boundary
            status = "over the bound"
        else:
            status = f"not enough audits to tell: {wrong} wrong in {n}"
        return {
            "max_wrong_rate": target,
            "audited_hits": n,
            "wrong_hits": wrong,
            "estimated_wrong_rate": wrong / n if n else None,
            "interval_95": [round(low, 4), round(high, 4)],
            "status": status,
        }

    def tags(self) -> set[str]:
        """Collections with audits."""
        keys = (str(k) for k in self._store.iterkeys())
        return {k[len("audit:") : -len(":n")] for k in keys if k.startswith("audit:") and k.endswith(":n")}
