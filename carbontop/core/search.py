"""Which batch size to run next.

The automatic plan doubles the batch size from 1 until a point does not fit, then bisects between
the largest size that ran and the smallest that did not, so the boundary is found in about
2 x log2(boundary) points. An explicit list runs in order and skips sizes above a failure (they
cannot fit either).
"""

from __future__ import annotations

from collections.abc import Sequence


class BatchPlanner:
    def __init__(self, explicit: Sequence[int] | None = None, *, max_batch: int = 1024) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.explicit = sorted(set(explicit)) if explicit else None
        self.max_batch = max_batch
        self.largest_ok: int | None = None
        self.smallest_failed: int | None = None
        self.tried: list[int] = []
        self._results: dict[int, bool] = {}

    @property
    def auto(self) -> bool:
        return self.explicit is None

    def next(self) -> int | None:
        """The next batch size to run, or None when the plan is complete."""
        if self.explicit is not None:
            for size in self.explicit:
                if size in self._results:
                    continue
                if self.smallest_failed is not None and size >= self.smallest_failed:
                    continue
                return size
            return None
        if self.smallest_failed is None:
            # doubling phase
            if self.largest_ok is None:
                return 1
            if self.largest_ok >= self.max_batch:
                return None
            return min(self.largest_ok * 2, self.max_batch)
        # bisection phase
        low = self.largest_ok or 0
        if self.smallest_failed - low <= 1:
            return None
        return (low + self.smallest_failed) // 2

    def report(self, batch_size: int, fits: bool) -> None:
        """Record whether `batch_size` ran (True) or hit the memory boundary (False)."""
        self.tried.append(batch_size)
        self._results[batch_size] = fits
        if fits:
            if self.largest_ok is None or batch_size > self.largest_ok:
                self.largest_ok = batch_size
        elif self.smallest_failed is None or batch_size < self.smallest_failed:
            self.smallest_failed = batch_size

    def planned(self) -> tuple[int, ...]:
        """Sizes known ahead (for the sweep pane): the list, or the doubling ladder still ahead."""
        if self.explicit is not None:
            return tuple(s for s in self.explicit if s not in self._results)
        if self.smallest_failed is not None:
            nxt = self.next()
            return (nxt,) if nxt is not None else ()
        ladder, size = [], (self.largest_ok or 0)
        size = 1 if size == 0 else size * 2
        while size <= self.max_batch:
            ladder.append(size)
            if size == self.max_batch:
                break
            size = min(size * 2, self.max_batch)
        return tuple(ladder)

    def describe(self) -> str:
        if self.explicit is not None:
            return "batch sizes " + ", ".join(map(str, self.explicit))
        if self.smallest_failed is None:
            return f"doubling from 1 (up to {self.max_batch}) until a batch does not fit"
        low = self.largest_ok if self.largest_ok is not None else 0
        if self.smallest_failed - low <= 1:
            if self.largest_ok is None:
                return "even batch size 1 does not fit"
            return f"boundary found: {self.largest_ok} fits, {self.smallest_failed} does not"
        return f"bisecting between {low} (fits) and {self.smallest_failed} (does not)"
