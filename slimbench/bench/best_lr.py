"""The best-lr rule and the lr band, written once: used by the sweep summary, the report, the regression
gate and the experiments.

* **best lr**: the lr with the lowest mean final loss over seeds, among lrs where no seed diverged (a
  diverged seed, or one without a final loss, disqualifies its lr). Ties go to the smaller lr.
* **lr band** (robustness): the contiguous range of grid lrs around the best lr whose mean loss is within
  ``within`` (a fraction, default 5%) of the best and where no seed diverged; its width is ``hi / lo``
  (1.0: only the best lr qualifies). A wider band means a less lr-sensitive optimizer.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

WITHIN = 0.05


def _ok(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def lr_means(losses: Mapping[float, Sequence[float | None]]) -> dict[float, float | None]:
    """{lr: mean final loss over seeds}, None where a seed has no finite loss (diverged: disqualified)."""
    return {lr: (sum(v) / len(v) if v and all(_ok(x) for x in v) else None) for lr, v in losses.items()}


def best_lr(means: Mapping[float, float | None]) -> float | None:
    """The lr of the lowest mean (None entries are disqualified lrs); None if no lr qualifies."""
    ok = sorted(lr for lr, m in means.items() if m is not None)
    return min(ok, key=lambda lr: means[lr]) if ok else None


def lr_band(means: Mapping[float, float | None], within: float = WITHIN) -> tuple[float, float] | None:
    """(lo, hi): the contiguous qualifying lrs around the best (see the module docstring); None if none."""
    best = best_lr(means)
    if best is None:
        return None
    lrs = sorted(means)
    limit = means[best] + within * abs(means[best])
    good = [means[lr] is not None and means[lr] <= limit for lr in lrs]
    a = b = lrs.index(best)
    while a > 0 and good[a - 1]:
        a -= 1
    while b < len(lrs) - 1 and good[b + 1]:
        b += 1
    return lrs[a], lrs[b]


def lr_width(means: Mapping[float, float | None], within: float = WITHIN) -> float | None:
    """hi / lo of :func:`lr_band`; None if no lr qualifies."""
    band = lr_band(means, within)
    return band[1] / band[0] if band and band[0] else None
