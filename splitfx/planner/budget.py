"""Planning to a memory budget: the smallest K whose training step fits, the largest batch that fits.

A step's predicted peak is :meth:`SplitPlan.training_peak_bytes`: the largest block's saved
activations plus parameters, gradients and optimizer state. Neither search assumes the peak falls
monotonically with K or rises with the batch: each keeps a bracket (a value that does not fit, one
that does) and halves it, so the answer fits and its neighbour (K − 1, batch + 1) does not.
"""
from __future__ import annotations

from collections.abc import Callable

from ..base.errors import PlanError
from ..base.sizes import nbytes
from ..recipes.split import Split
from .legality import max_blocks


class _Fits:
    """Whether the split for a value (K, or a batch size) fits the budget; each split made once."""

    def __init__(self, split_for: Callable[[int], Split], budget: int, optimizer: str):
        self.split_for, self.budget, self.optimizer = split_for, budget, optimizer
        self.splits: dict[int, Split] = {}

    def __call__(self, value: int) -> bool:
        if value not in self.splits:
            self.splits[value] = self.split_for(value)
        return self.splits[value].plan.training_peak_bytes(self.optimizer) <= self.budget


def _bisect(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """With ``fits(hi)`` and not ``fits(lo)``: a value v in (lo, hi] with ``fits(v)`` and not ``fits(v-1)``."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def smallest_blocks(split_for: Callable[[int], Split], most: int, budget: int, optimizer: str) -> Split:
    """The split with the fewest blocks (up to ``most``) whose training peak fits ``budget`` bytes."""
    fits = _Fits(split_for, budget, optimizer)
    splits = fits.splits
    if fits(1):
        return splits[1]
    lo, k = 1, 2
    while k < most and not fits(k):
        lo, k = k, min(2 * k, most)
    if not fits(k):
        best = min((s.plan for s in splits.values()), key=lambda p: p.training_peak_bytes(optimizer))
        raise PlanError(
            f"no split of {best.model} fits {nbytes(budget)} with {optimizer}: the smallest predicted training peak "
            f"is {nbytes(best.training_peak_bytes(optimizer))} at K={best.num_blocks} (activations "
            f"{nbytes(best.local_peak_bytes)}, parameters {nbytes(best.param_bytes)}, gradients and optimizer "
            f"state {nbytes(best.training_peak_bytes(optimizer) - best.local_peak_bytes - best.param_bytes)}); "
            "raise the budget, lower the batch, or choose an optimizer with less state.")
    return splits[_bisect(fits, lo, k)]


def largest_batch(split_at: Callable[[int], Split], batch: int, budget: int, optimizer: str) -> Split:
    """The split at the largest batch size whose training peak fits ``budget`` bytes."""
    fits = _Fits(split_at, budget, optimizer)
    splits = fits.splits
    fits(batch)
    start = splits[batch].plan
    # Activations grow about linearly with the batch: start the bracket at that estimate.
    fixed = start.training_peak_bytes(optimizer) - start.local_peak_bytes
    per_sample = max(start.local_peak_bytes / max(batch, 1), 1.0)
    guess = max(1, int((budget - fixed) // per_sample))
    if fits(guess):
        lo, hi = guess, guess + 1
        while fits(hi):
            lo, hi = hi, 2 * hi
    else:
        lo, hi = guess // 2, guess
        while lo >= 1 and not fits(lo):
            lo, hi = lo // 2, lo
        if lo < 1:
            p = splits[hi].plan
            raise PlanError(f"even batch {hi} needs {nbytes(p.training_peak_bytes(optimizer))} at K={p.num_blocks} "
                            f"with {optimizer}, over the budget of {nbytes(budget)}")
    return splits[_bisect(lambda b: not fits(b), lo, hi) - 1]


def most_blocks(ok, cuts: int) -> int:
    """How many blocks a plan can have: legal cuts + 1, and every block with something to train."""
    return min(cuts + 1, max_blocks(ok))
