"""Uncertainty over seeds for the claims a report states: a 95% t interval of a mean or of a (paired)
difference, and an exact seed bootstrap for quantities that are not means (the best lr, the lr-band width).

With two seeds a 95% t interval is wide (t = 12.7): that is the honest size of what two seeds can say.
An interval that spans zero is reported as "within noise".
"""
from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t (0.975 quantile) by degrees of freedom.
_T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
         10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098,
         18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595,
         26: 2.0555, 27: 2.0518, 28: 2.0484, 29: 2.0452, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799}
Z975 = 1.959964
MAX_EXACT_RESAMPLES = 4096  # n seeds give n^n resamples; above this, a fixed-seed random bootstrap


def t975(df: float) -> float:
    """The 0.975 quantile of t with ``df`` degrees of freedom (table; linear in 1/df between entries)."""
    if not df >= 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    if df > keys[-1]:
        lo, hi, tlo, thi = keys[-1], math.inf, _T975[keys[-1]], Z975
    else:
        lo = max(k for k in keys if k < df)
        hi = min(k for k in keys if k > df)
        tlo, thi = _T975[lo], _T975[hi]
    w = (1 / lo - 1 / df) / (1 / lo - (0 if math.isinf(hi) else 1 / hi))
    return tlo + w * (thi - tlo)


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval over ``n`` seeds (``lo``/``hi`` None with one seed)."""

    estimate: float
    lo: float | None
    hi: float | None
    n: int
    method: str  # "t", "paired t", "welch t", "bootstrap", "one seed"

    @property
    def spans_zero(self) -> bool:
        return self.lo is not None and self.hi is not None and self.lo <= 0 <= self.hi

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "n": self.n, "method": self.method,
                "spans_zero": self.spans_zero}


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean of ``values`` with its 95% t interval."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no values")
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return Interval(m, None, None, len(vals), "one seed")
    half = t975(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return Interval(m, m - half, m + half, len(vals), "t")


def difference_interval(a: Mapping[int, float], b: Mapping[int, float]) -> Interval:
    """Mean of ``a`` minus mean of ``b`` (each {seed: value}), 95% interval: paired t over the seeds both
    have when they share at least two (same seed = same init and batches, so pairing removes that
    variance), else Welch's t."""
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        d = mean_interval([a[s] - b[s] for s in common])
        return Interval(d.estimate, d.lo, d.hi, d.n, "paired t")
    xa, xb = list(a.values()), list(b.values())
    if not xa or not xb:
        raise ValueError("both sides need a value")
    est = statistics.fmean(xa) - statistics.fmean(xb)
    n = min(len(xa), len(xb))
    if len(xa) < 2 or len(xb) < 2:
        return Interval(est, None, None, n, "one seed")
    va, vb = statistics.variance(xa) / len(xa), statistics.variance(xb) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(est, est, est, n, "welch t")
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    half = t975(max(1.0, df)) * se
    return Interval(est, est - half, est + half, n, "welch t")


def seed_bootstrap(seeds: Sequence[int], stat: Callable[[Sequence[int]], float | None],
                   rng_seed: int = 0) -> Interval | None:
    """``stat`` over the seeds, with the 2.5..97.5 percentile range of ``stat`` over resamples of the seeds
    (with replacement, the same resample for every lr): every resample when there are at most
    :data:`MAX_EXACT_RESAMPLES`, else that many drawn with a fixed seed. None if ``stat`` is None."""
    seeds = list(seeds)
    est = stat(seeds)
    if est is None:
        return None
    if len(seeds) < 2:
        return Interval(est, None, None, len(seeds), "one seed")
    if len(seeds) ** len(seeds) <= MAX_EXACT_RESAMPLES:
        samples = itertools.product(seeds, repeat=len(seeds))
    else:
        rng = random.Random(rng_seed)
        samples = ([rng.choice(seeds) for _ in seeds] for _ in range(MAX_EXACT_RESAMPLES))
    vals = sorted(v for v in (stat(list(s)) for s in samples) if v is not None)
    if not vals:
        return Interval(est, None, None, len(seeds), "bootstrap")
    lo = vals[math.floor(0.025 * (len(vals) - 1))]  # observed values, not interpolated: a best lr stays a
    hi = vals[math.ceil(0.975 * (len(vals) - 1))]  # grid lr, and the range errs on the wide side
    return Interval(est, lo, hi, len(seeds), "bootstrap")
