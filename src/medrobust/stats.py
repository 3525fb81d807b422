"""Statistics over independent trials: descriptive summaries, confidence intervals, paired tests.

Formulas come from scipy; this module only shapes their results for the study's tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from medrobust.errors import InputError


@dataclass(frozen=True)
class Summary:
    """Mean, sample SD and t-based 95% confidence interval of values over trials."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float

    def format(self, digits: int = 3) -> str:
        """``mean ± sd [low, high]``; one value has no spread: ``mean (1 trial)``."""
        if self.n == 0:
            return "n/a"
        if self.n == 1:
            return f"{self.mean:.{digits}f} (1 trial)"
        return (
            f"{self.mean:.{digits}f} ± {self.sd:.{digits}f} "
            f"[{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"
        )


def _constant(values: np.ndarray) -> bool:
    """Whether ``values`` are equal up to rounding: differences of accuracies such as 0.9 - 0.8
    and 0.8 - 0.7 differ in the last bit, and a t statistic of them would be rounding noise (scipy
    warns of catastrophic cancellation at the same relative spread)."""
    mean = float(values.mean())
    spread = float(np.abs(values - mean).max())
    return spread <= 10 * float(np.finfo(np.float64).eps) * abs(mean)


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summary of ``values``, NaNs dropped. With one value, SD and CI are NaN; with values that
    are equal up to rounding, the SD is 0 and the CI is the mean."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    n = len(data)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(data.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    sd = float(data.std(ddof=1))
    if sd == 0 or _constant(data):
        return Summary(n, mean, 0.0, mean, mean)
    low, high = sps.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return Summary(n, mean, sd, float(low), float(high))


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``a - b`` over trials."""

    n: int
    mean_difference: float
    t: float
    p: float

    def format(self) -> str:
        """``t = .., p = ..``."""
        if math.isnan(self.p):
            return "n/a"
        return f"t = {self.t:.2f}, p = {self.p:.2g}"


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test (scipy ``ttest_rel``); NaN when n < 2 or all differences equal
    (up to floating-point rounding)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise InputError(
            f"paired_ttest needs two sequences of the same length. Got {x.shape} and {y.shape}."
        )
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    diff = x - y
    mean_diff = float(diff.mean()) if len(diff) else math.nan
    if len(diff) < 2 or _constant(diff) or float(diff.std(ddof=1)) == 0:
        return PairedTest(len(diff), mean_diff, math.nan, math.nan)
    result = sps.ttest_rel(x, y)
    return PairedTest(len(diff), mean_diff, float(result.statistic), float(result.pvalue))
