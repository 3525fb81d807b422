"""Statistics over independent trials: summaries, paired tests, ANOVA, effect sizes and power.

Formulas come from scipy and statsmodels; this module validates inputs, handles degenerate data
(all differences equal gives NaN statistics rather than a crash) and shapes results into small
frozen dataclasses with a ``format()`` for the study's tables.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import numpy as np
from scipy import optimize
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar  # type: ignore[import-untyped]
from statsmodels.stats.multitest import multipletests  # type: ignore[import-untyped]
from statsmodels.stats.oneway import anova_oneway  # type: ignore[import-untyped]
from statsmodels.stats.power import TTestPower  # type: ignore[import-untyped]
from statsmodels.tools.sm_exceptions import ConvergenceWarning  # type: ignore[import-untyped]

from medrobust.errors import InputError, ParameterError


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


def summarize(
    values: Sequence[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> Summary:
    """Summary of ``values``, NaNs dropped. With one value, SD and CI are NaN; with values that
    are equal up to rounding, the SD is 0 and the CI is the mean.

    ``bounds`` clips the t interval to the range the quantity can take, e.g. ``(0, 1)`` for an
    accuracy or an error rate: with few trials near 0 or 1 the symmetric t interval would leave
    it, and a clinician reading "sensitivity 0.98 [0.95, 1.01]" would rightly distrust the rest.
    """
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
    if bounds is not None:
        low, high = max(float(low), bounds[0]), min(float(high), bounds[1])
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


# ---------------------------------------------------------------------------------------------
# Inferential statistics for the study report: each function validates its input, delegates the
# formula to scipy or statsmodels, and returns a small frozen dataclass with a ``format()``.
# ---------------------------------------------------------------------------------------------

_NORMALITY_ALPHA = 0.05
_EXACT_MCNEMAR_BELOW = 25


def _vector(values: Sequence[float], name: str, caller: str) -> np.ndarray:
    """``values`` as a 1-D float64 array without NaNs or infinities."""
    try:
        data = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(
            f"The '{name}' argument of {caller} must be a sequence of numbers. Got {values!r} "
            "instead."
        ) from error
    if data.ndim != 1:
        raise InputError(
            f"The '{name}' argument of {caller} must be one-dimensional. Got shape {data.shape} "
            "instead."
        )
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(
            f"The '{name}' argument of {caller} must hold finite numbers only. Got {bad} NaN or "
            "infinite value(s) instead."
        )
    return data


def _paired(
    a: Sequence[float], b: Sequence[float], caller: str, minimum: int
) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as finite float arrays of one length, at least ``minimum`` long."""
    x, y = _vector(a, "a", caller), _vector(b, "b", caller)
    if len(x) != len(y):
        raise InputError(
            f"The 'a' and 'b' arguments of {caller} must have the same length. Got {len(x)} and "
            f"{len(y)} instead."
        )
    if len(x) < minimum:
        raise InputError(f"{caller} needs at least {minimum} pairs. Got {len(x)} instead.")
    return x, y


def _probability(value: float, name: str, caller: str) -> float:
    """``value`` checked to lie strictly between 0 and 1."""
    if not (isinstance(value, (int, float)) and 0.0 < float(value) < 1.0):
        raise ParameterError(
            f"The '{name}' parameter of {caller} must be in (0, 1). Got {value!r} instead."
        )
    return float(value)


def _p(p: float) -> str:
    """``p = 0.0039`` with two significant digits; tiny ones as ``p < 1e-16``."""
    if math.isnan(p):
        return "p = n/a"
    return "p < 1e-16" if p < 1e-16 else f"p = {p:.2g}"


@dataclass(frozen=True)
class PairedComparison:
    """A paired comparison of ``a - b`` whose test was chosen by a normality check.

    Attributes:
        n: Number of pairs.
        mean_difference: Mean of ``a - b``.
        test: ``"paired t"`` (Student's paired t-test), ``"wilcoxon"`` (Wilcoxon signed-rank
            test) or ``"none"`` when all differences are equal and nothing can be tested.
        statistic: The t statistic (sign of the mean difference), or Wilcoxon's ``min(W+, W-)``.
        p: Two-sided p-value of the reported test.
        df: Degrees of freedom of the t-test (``n - 1``); NaN for the Wilcoxon test.
        normality_p: Shapiro-Wilk p-value of the differences; NaN when degenerate.
        normality_held: Whether Shapiro-Wilk did not reject normality at 0.05.
    """

    n: int
    mean_difference: float
    test: Literal["paired t", "wilcoxon", "none"]
    statistic: float
    p: float
    df: float
    normality_p: float
    normality_held: bool

    def format(self) -> str:
        """``t(9) = -4.06, p = 0.0028 (Shapiro-Wilk p = 0.42)`` or the Wilcoxon equivalent."""
        if self.test == "none":
            return "n/a"
        if self.test == "paired t":
            head = f"t({self.df:.0f}) = {self.statistic:.2f}"
        else:
            head = f"Wilcoxon W = {self.statistic:g}"
        held = "normal" if self.normality_held else "not normal"
        return f"{head}, {_p(self.p)} ({held}, Shapiro-Wilk {_p(self.normality_p)})"


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> PairedComparison:
    """Paired test of ``a - b`` that falls back to Wilcoxon when the differences are not normal.

    The paired t-test assumes the differences are independent draws from a normal distribution.
    That is checked with the Shapiro-Wilk test (``scipy.stats.shapiro``) on the differences; when
    it rejects normality at 0.05 the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, default
    two-sided, zero differences dropped, exact or permutation distribution for small ``n``) is
    reported instead, which assumes only a distribution of differences symmetric about its
    median. With few pairs Shapiro-Wilk has little power, so "normality held" means "was not
    rejected". Choosing the test from the same data slightly inflates the type I error.

    Args:
        a: Values of the first condition, one per trial.
        b: Values of the second condition, paired with ``a``.

    Returns:
        The test used, its statistic and p-value, and the normality check. When all differences
        are equal (up to rounding) no test is possible: ``test`` is ``"none"`` and the statistics
        are NaN.

    Raises:
        InputError: If the lengths differ, there are fewer than 3 pairs, or a value is NaN or
            infinite.
    """
    x, y = _paired(a, b, "paired_comparison", 3)
    diff = x - y
    n, mean_diff = len(diff), float(diff.mean())
    if _constant(diff) or float(diff.std(ddof=1)) == 0:
        return PairedComparison(n, mean_diff, "none", math.nan, math.nan, math.nan, math.nan, False)
    normality_p = float(sps.shapiro(diff).pvalue)
    if normality_p >= _NORMALITY_ALPHA:
        t = sps.ttest_rel(x, y)
        return PairedComparison(
            n,
            mean_diff,
            "paired t",
            float(t.statistic),
            float(t.pvalue),
            n - 1.0,
            normality_p,
            True,
        )
    w = sps.wilcoxon(x, y)
    return PairedComparison(
        n, mean_diff, "wilcoxon", float(w.statistic), float(w.pvalue), math.nan, normality_p, False
    )


@dataclass(frozen=True)
class EffectSize:
    """A standardized paired effect size with its confidence interval.

    Attributes:
        n: Number of pairs.
        d: Cohen's d_z, the mean of the differences over their sample SD.
        ci_low: Lower bound of the confidence interval.
        ci_high: Upper bound of the confidence interval.
        confidence: Confidence level of the interval.
    """

    n: int
    d: float
    ci_low: float
    ci_high: float
    confidence: float

    def format(self, digits: int = 2) -> str:
        """``dz = -1.28 [-2.12, -0.41]``."""
        if math.isnan(self.d):
            return "n/a"
        return f"dz = {self.d:.{digits}f} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"


def _noncentrality(t: float, df: float, probability: float) -> float:
    """The noncentrality ``nc`` with ``P(T <= t) = probability`` for ``T ~ nct(df, nc)``.

    The CDF falls as ``nc`` grows, so a root is bracketed by widening a window around ``t`` of
    a few standard errors of ``t`` (about ``sqrt(1 + t^2 / (2 df))``).
    """

    def gap(nc: float) -> float:
        cdf = float(sps.nct.cdf(t, df, nc))
        if math.isnan(cdf):  # scipy's nct gives NaN far out in a tail, where the CDF is 0 or 1
            cdf = 0.0 if nc > t else 1.0
        return cdf - probability

    width = 4.0 * math.sqrt(1.0 + t * t / (2.0 * df))
    low, high = t - width, t + width
    while gap(low) < 0:
        low -= width
    while gap(high) > 0:
        high += width
    return float(optimize.brentq(gap, low, high, xtol=1e-12))


def cohens_dz(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> EffectSize:
    """Cohen's d_z of paired data, ``mean(a - b) / sd(a - b)``, with an exact confidence interval.

    The interval inverts the noncentral t distribution (Steiger & Fouladi, 1997; Cumming &
    Finch, 2001): with ``t = d_z * sqrt(n)`` and ``n - 1`` degrees of freedom, the bounds are the
    noncentrality parameters under which the observed ``t`` sits at the upper and lower
    ``(1 - confidence) / 2`` tails, divided by ``sqrt(n)``. It is exact when the differences are
    independent and normal, and is not symmetric about d_z.

    Args:
        a: Values of the first condition, one per trial.
        b: Values of the second condition, paired with ``a``.
        confidence: Confidence level of the interval, in (0, 1).

    Returns:
        The effect size and its interval. When all differences are equal (up to rounding) the SD
        is 0 and ``d``, ``ci_low`` and ``ci_high`` are NaN.

    Raises:
        InputError: If the lengths differ, there are fewer than 2 pairs, or a value is NaN or
            infinite.
        ParameterError: If ``confidence`` is not in (0, 1).
    """
    level = _probability(confidence, "confidence", "cohens_dz")
    x, y = _paired(a, b, "cohens_dz", 2)
    diff = x - y
    n = len(diff)
    sd = float(diff.std(ddof=1))
    if _constant(diff) or sd == 0:
        return EffectSize(n, math.nan, math.nan, math.nan, level)
    d = float(diff.mean()) / sd
    t, df, tail = d * math.sqrt(n), n - 1.0, (1 - level) / 2
    low = _noncentrality(t, df, 1 - tail) / math.sqrt(n)
    high = _noncentrality(t, df, tail) / math.sqrt(n)
    return EffectSize(n, d, low, high, level)


@dataclass(frozen=True)
class TukeyPair:
    """One Tukey HSD comparison, ``mean(group2) - mean(group1)`` as in R's ``group2-group1``.

    Attributes:
        group1: Name of the group subtracted.
        group2: Name of the other group.
        mean_difference: ``mean(group2) - mean(group1)``.
        p_adjusted: p-value adjusted for all pairwise comparisons (studentized range).
        ci_low: Lower bound of the simultaneous confidence interval of the difference.
        ci_high: Upper bound of the simultaneous confidence interval.
    """

    group1: str
    group2: str
    mean_difference: float
    p_adjusted: float
    ci_low: float
    ci_high: float

    def format(self, digits: int = 3) -> str:
        """``trt2 - trt1: 0.865 [0.174, 1.556], adjusted p = 0.012``."""
        return (
            f"{self.group2} - {self.group1}: {self.mean_difference:.{digits}f} "
            f"[{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}], "
            f"adjusted {_p(self.p_adjusted)}"
        )


@dataclass(frozen=True)
class Anova:
    """A one-way ANOVA with Tukey HSD post-hoc comparisons.

    Attributes:
        f: The F statistic.
        df_between: Degrees of freedom between groups (groups - 1).
        df_within: Degrees of freedom within groups (values - groups).
        p: p-value of F.
        pairs: Tukey HSD comparison of each pair of groups, in the order of the mapping.
        confidence: Family-wise confidence level of the Tukey intervals.
        normality_p: Shapiro-Wilk p-value of the residuals (values minus their group mean).
        equal_variance_p: Levene's test (Brown-Forsythe, median-centred) of equal variances.
        welch_f: Welch's F, which does not assume equal variances.
        welch_df_within: Its (fractional) denominator degrees of freedom.
        welch_p: Its p-value.
    """

    f: float
    df_between: int
    df_within: int
    p: float
    pairs: tuple[TukeyPair, ...]
    confidence: float
    normality_p: float = math.nan
    equal_variance_p: float = math.nan
    welch_f: float = math.nan
    welch_df_within: float = math.nan
    welch_p: float = math.nan

    @property
    def assumptions_held(self) -> bool:
        """Whether neither normality of the residuals nor equal variances was rejected."""
        return not (self.normality_p < _NORMALITY_ALPHA or self.equal_variance_p < _NORMALITY_ALPHA)

    def format(self) -> str:
        """``F(2, 27) = 4.85, p = 0.016 (residuals normal, Shapiro-Wilk p = 0.44; variances
        equal, Levene p = 0.34)``; where Levene rejects, Welch's F follows."""
        if math.isnan(self.f):
            return f"F({self.df_between}, {self.df_within}) = n/a"
        text = f"F({self.df_between}, {self.df_within}) = {self.f:.2f}, {_p(self.p)}"
        if math.isnan(self.normality_p):
            return text
        normal = "normal" if self.normality_p >= _NORMALITY_ALPHA else "not normal"
        equal = "equal" if not self.equal_variance_p < _NORMALITY_ALPHA else "unequal"
        text += (
            f" (residuals {normal}, Shapiro-Wilk {_p(self.normality_p)}; variances {equal}, "
            f"Levene {_p(self.equal_variance_p)})"
        )
        if equal == "unequal" and not math.isnan(self.welch_f):
            text += (
                f"; Welch F({self.df_between}, {self.welch_df_within:.1f}) = "
                f"{self.welch_f:.2f}, {_p(self.welch_p)}"
            )
        return text


def one_way_anova(groups: Mapping[str, Sequence[float]], confidence: float = 0.95) -> Anova:
    """One-way ANOVA (``scipy.stats.f_oneway``) and Tukey HSD (``scipy.stats.tukey_hsd``).

    Both assume independent observations, normal within each group, with equal variances
    across groups. The result reports whether the data kept those assumptions: Shapiro-Wilk on
    the residuals, Levene's test (median-centred) of equal variances, and Welch's F
    (statsmodels ``anova_oneway``) to read instead of F where the variances differ. Tukey's HSD
    (Tukey-Kramer for unequal sizes) controls the family-wise error rate over all pairwise
    comparisons and gives simultaneous confidence intervals.

    Args:
        groups: Values of each condition by name; at least 2 groups of at least 2 values each.
        confidence: Family-wise confidence level of the Tukey intervals, in (0, 1).

    Returns:
        The F test and the pairwise comparisons. When every group is constant (no variance
        within groups, up to rounding), ``f``, ``p`` and the pairs' p-values and intervals are
        NaN; the mean differences are still given.

    Raises:
        InputError: If there are fewer than 2 groups, a group has fewer than 2 values, or a
            value is NaN or infinite.
        ParameterError: If ``confidence`` is not in (0, 1).
    """
    level = _probability(confidence, "confidence", "one_way_anova")
    if len(groups) < 2:
        raise InputError(f"one_way_anova needs at least 2 groups. Got {len(groups)} instead.")
    names = [str(name) for name in groups]
    data = [
        _vector(values, f"groups[{name!r}]", "one_way_anova") for name, values in groups.items()
    ]
    for name, values in zip(names, data, strict=True):
        if len(values) < 2:
            raise InputError(
                f"Each group of one_way_anova must have at least 2 values. Got {len(values)} in "
                f"group {name!r} instead."
            )
    df_between, df_within = len(data) - 1, sum(len(v) for v in data) - len(data)
    means = [float(v.mean()) for v in data]
    if all(_constant(v) or float(v.std()) == 0 for v in data):
        pairs = tuple(
            TukeyPair(names[i], names[j], means[j] - means[i], math.nan, math.nan, math.nan)
            for i, j in combinations(range(len(data)), 2)
        )
        return Anova(math.nan, df_between, df_within, math.nan, pairs, level)
    anova = sps.f_oneway(*data)
    tukey = sps.tukey_hsd(*data)
    interval = tukey.confidence_interval(confidence_level=level)
    # scipy's statistic[i, j] is mean_i - mean_j; the pair reports mean_j - mean_i.
    pairs = tuple(
        TukeyPair(
            names[i],
            names[j],
            float(tukey.statistic[j, i]),
            float(tukey.pvalue[j, i]),
            float(interval.low[j, i]),
            float(interval.high[j, i]),
        )
        for i, j in combinations(range(len(data)), 2)
    )
    residuals = np.concatenate([v - v.mean() for v in data])
    normality_p = float(sps.shapiro(residuals).pvalue) if len(residuals) >= 3 else math.nan
    with warnings.catch_warnings():  # groups with zero spread make Levene's statistic undefined
        warnings.simplefilter("ignore", RuntimeWarning)
        levene_p = float(sps.levene(*data, center="median").pvalue)
        welch = anova_oneway(data, use_var="unequal", welch_correction=True)
    return Anova(
        float(anova.statistic),
        df_between,
        df_within,
        float(anova.pvalue),
        pairs,
        level,
        normality_p,
        levene_p,
        float(welch.statistic),
        float(welch.df_denom),
        float(welch.pvalue),
    )


@dataclass(frozen=True)
class PowerAnalysis:
    """Power of a two-sided paired t-test (a one-sample t-test of the differences).

    Attributes:
        effect_size: Cohen's d_z assumed.
        n: Number of pairs.
        alpha: Significance level.
        power: Probability of rejecting the null hypothesis at ``alpha`` when the true effect
            is ``effect_size``.
    """

    effect_size: float
    n: int
    alpha: float
    power: float

    def format(self) -> str:
        """``power = 0.81 (dz = 0.5, n = 34, alpha = 0.05)``."""
        return (
            f"power = {self.power:.2f} (dz = {self.effect_size:g}, n = {self.n}, "
            f"alpha = {self.alpha:g})"
        )


def _effect(d: float, caller: str, nonzero: bool) -> float:
    """``d`` checked to be a finite number (and not 0 when ``nonzero``)."""
    if not (isinstance(d, (int, float)) and math.isfinite(d)) or (nonzero and d == 0):
        need = "a finite nonzero number" if nonzero else "a finite number"
        raise ParameterError(f"The 'd' parameter of {caller} must be {need}. Got {d!r} instead.")
    return float(d)


def paired_power(d: float, n: int, alpha: float = 0.05) -> PowerAnalysis:
    """Power of a two-sided paired t-test with ``n`` pairs (statsmodels ``TTestPower``).

    Uses the noncentral t distribution with noncentrality ``d * sqrt(n)`` and ``n - 1`` degrees
    of freedom; it assumes independent, normal differences. Computed post hoc from an observed
    effect size, power is a function of the observed p-value and says nothing new about the
    data; it is meant for planning how many trials a study needs.

    Args:
        d: Cohen's d_z (mean difference over the SD of differences); the sign does not matter.
        n: Number of pairs, at least 2.
        alpha: Two-sided significance level, in (0, 1).

    Returns:
        The power analysis.

    Raises:
        ParameterError: If ``d`` is not finite, ``n`` is not an integer >= 2, or ``alpha`` is
            not in (0, 1).
    """
    effect = _effect(d, "paired_power", nonzero=False)
    level = _probability(alpha, "alpha", "paired_power")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ParameterError(
            f"The 'n' parameter of paired_power must be an integer >= 2. Got {n!r} instead."
        )
    power = float(
        TTestPower().power(effect_size=effect, nobs=int(n), alpha=level, alternative="two-sided")
    )
    if math.isnan(power):
        # statsmodels sums both rejection tails with scipy's nct.cdf, which gives NaN deep in the
        # lower tail (e.g. d = 2, n = 14, alpha = 0.01); nct.sf of the mirrored tail does not.
        df, nc = n - 1, effect * math.sqrt(n)
        critical = float(sps.t.isf(level / 2, df))
        power = float(sps.nct.sf(critical, df, nc) + sps.nct.sf(critical, df, -nc))
    return PowerAnalysis(effect, int(n), level, power)


def trials_for_power(d: float, power: float = 0.8, alpha: float = 0.05) -> PowerAnalysis:
    """Fewest pairs for a two-sided paired t-test to reach ``power`` (statsmodels ``TTestPower``).

    Same assumptions as :func:`paired_power`. statsmodels solves for a real sample size, which
    is rounded up to the smallest integer whose power is at least ``power`` (found by a search
    over integers when the solver does not converge, as for very large effects); the power
    reported is the power at that integer.

    Args:
        d: Cohen's d_z to detect; nonzero; the sign does not matter.
        power: Power wanted, in (0, 1).
        alpha: Two-sided significance level, in (0, 1).

    Returns:
        The power analysis at the number of pairs needed.

    Raises:
        ParameterError: If ``d`` is zero or not finite, or ``power`` or ``alpha`` is not in
            (0, 1).
    """
    effect = _effect(d, "trials_for_power", nonzero=True)
    wanted = _probability(power, "power", "trials_for_power")
    level = _probability(alpha, "alpha", "trials_for_power")
    smallest = paired_power(effect, 2, level)
    if smallest.power >= wanted:
        return smallest
    with warnings.catch_warnings():
        # A solver that fails to converge returns NaN, handled below by a search of its own.
        warnings.simplefilter("ignore", ConvergenceWarning)
        solved = float(
            np.asarray(
                TTestPower().solve_power(
                    effect_size=abs(effect), power=wanted, alpha=level, alternative="two-sided"
                )
            ).item()
        )
    if math.isfinite(solved) and solved > 2:
        n = math.ceil(solved)
    else:
        low, high = 2, 4  # power rises with n: bisect between a failing and a sufficient n
        while paired_power(effect, high, level).power < wanted:
            low, high = high, 2 * high
        while high - low > 1:
            middle = (low + high) // 2
            if paired_power(effect, middle, level).power < wanted:
                low = middle
            else:
                high = middle
        n = high
    # The solver's root is rounded up; the two loops make n the smallest sufficient integer.
    while paired_power(effect, n, level).power < wanted:
        n += 1
    while n > 2 and paired_power(effect, n - 1, level).power >= wanted:
        n -= 1
    return paired_power(effect, n, level)


@dataclass(frozen=True)
class McNemarTest:
    """McNemar's test of two conditions scored on the same examples.

    Attributes:
        n: Number of examples.
        both_correct: Examples both conditions got right.
        only_a: Examples only condition ``a`` got right.
        only_b: Examples only condition ``b`` got right.
        neither: Examples both got wrong.
        statistic: The chi-square statistic, or for the exact test the smaller discordant count.
        p: Two-sided p-value.
        exact: Whether the exact binomial test was used.
    """

    n: int
    both_correct: int
    only_a: int
    only_b: int
    neither: int
    statistic: float
    p: float
    exact: bool

    def format(self) -> str:
        """``McNemar chi2 = 17.36, p = 3.1e-05`` or ``McNemar exact (3 vs 12), p = 0.035``."""
        if math.isnan(self.p):
            return "n/a"
        if self.exact:
            return f"McNemar exact ({self.only_a} vs {self.only_b}), {_p(self.p)}"
        return f"McNemar chi2 = {self.statistic:.2f}, {_p(self.p)}"


def _booleans(values: Sequence[bool], name: str) -> np.ndarray:
    """``values`` as a 1-D boolean array; only booleans, 0 and 1 are accepted."""
    data = _vector(values, name, "mcnemar_test")
    if not np.isin(data, (0.0, 1.0)).all():
        raise InputError(
            f"The '{name}' argument of mcnemar_test must hold booleans or 0/1 only. Got "
            f"{sorted(set(data.tolist()) - {0.0, 1.0})[:3]} instead."
        )
    return data.astype(bool)


def mcnemar_test(
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
    *,
    exact: bool | None = None,
    correction: bool = True,
) -> McNemarTest:
    """McNemar's test of whether two conditions differ in accuracy on the same examples.

    Only the discordant examples (right under one condition and wrong under the other) carry
    evidence. The test assumes the examples are independent; it compares the conditions on this
    test set, not over training runs. Computed by statsmodels ``mcnemar``.

    Args:
        correct_a: Whether condition ``a`` classified each example correctly.
        correct_b: The same for condition ``b``, example by example.
        exact: Use the exact binomial test; by default exact when fewer than 25 examples are
            discordant, where the chi-square approximation is poor.
        correction: Apply Edwards' continuity correction to the chi-square statistic.

    Returns:
        The 2 x 2 counts and the test. With no discordant examples there is nothing to test:
        ``statistic`` and ``p`` are NaN.

    Raises:
        InputError: If the lengths differ, there are no examples, or a value is not a boolean
            or 0/1.
    """
    a, b = _booleans(correct_a, "correct_a"), _booleans(correct_b, "correct_b")
    if len(a) != len(b):
        raise InputError(
            f"The 'correct_a' and 'correct_b' arguments of mcnemar_test must have the same "
            f"length. Got {len(a)} and {len(b)} instead."
        )
    if len(a) == 0:
        raise InputError("mcnemar_test needs at least 1 example. Got 0 instead.")
    both, only_a = int((a & b).sum()), int((a & ~b).sum())
    only_b, neither = int((~a & b).sum()), int((~a & ~b).sum())
    discordant = only_a + only_b
    use_exact = discordant < _EXACT_MCNEMAR_BELOW if exact is None else bool(exact)
    if discordant == 0:
        return McNemarTest(len(a), both, only_a, only_b, neither, math.nan, math.nan, use_exact)
    result = mcnemar([[both, only_a], [only_b, neither]], exact=use_exact, correction=correction)
    return McNemarTest(
        len(a),
        both,
        only_a,
        only_b,
        neither,
        float(result.statistic),
        float(result.pvalue),
        use_exact,
    )


@dataclass(frozen=True)
class HolmCorrection:
    """Holm's step-down correction of a family of p-values.

    Attributes:
        p_values: The p-values given, in their order.
        adjusted: Holm-adjusted p-values, in the same order.
        reject: Whether each null hypothesis is rejected at family-wise level ``alpha``.
        alpha: Family-wise error rate.
    """

    p_values: tuple[float, ...]
    adjusted: tuple[float, ...]
    reject: tuple[bool, ...]
    alpha: float

    def format(self) -> str:
        """``0.01 -> 0.03*, 0.04 -> 0.06``; a star marks a rejection."""
        return ", ".join(
            f"{p:.2g} -> {q:.2g}{'*' if r else ''}"
            for p, q, r in zip(self.p_values, self.adjusted, self.reject, strict=True)
        )


def holm(p_values: Sequence[float], alpha: float = 0.05) -> HolmCorrection:
    """Holm (1979) correction of ``p_values`` (statsmodels ``multipletests``, method ``holm``).

    Controls the family-wise error rate under any dependence between the tests, and is
    uniformly more powerful than Bonferroni.

    Args:
        p_values: The p-values of one family of tests.
        alpha: Family-wise error rate, in (0, 1).

    Returns:
        The adjusted p-values and rejections, in the order given.

    Raises:
        InputError: If there are no p-values, or one is NaN or outside [0, 1].
        ParameterError: If ``alpha`` is not in (0, 1).
    """
    level = _probability(alpha, "alpha", "holm")
    data = _vector(p_values, "p_values", "holm")
    if len(data) == 0:
        raise InputError("holm needs at least 1 p-value. Got 0 instead.")
    if ((data < 0) | (data > 1)).any():
        raise InputError(
            f"The 'p_values' argument of holm must lie in [0, 1]. Got "
            f"{data[(data < 0) | (data > 1)].tolist()[:3]} instead."
        )
    reject, adjusted, _, _ = multipletests(data, alpha=level, method="holm")
    return HolmCorrection(
        tuple(float(p) for p in data),
        tuple(float(q) for q in adjusted),
        tuple(bool(r) for r in reject),
        level,
    )


@dataclass(frozen=True)
class PairedAnalysis:
    """Everything the report states about one paired comparison over trials.

    Attributes:
        n: Number of complete pairs.
        mean_difference: Mean of ``a - b``.
        comparison: The paired test chosen by the Shapiro-Wilk check (None with fewer than 3
            pairs, where neither normality nor a rank test can be assessed).
        effect: Cohen's d_z with its exact CI (None with fewer than 2 pairs).
        power: Post-hoc power at the observed d_z and ``n`` (None when d_z is undefined).
        needed: The fewest trials for power 0.8 at the observed d_z (None when d_z is
            undefined or below ``NEGLIGIBLE_EFFECT`` in size).
    """

    n: int
    mean_difference: float
    comparison: PairedComparison | None
    effect: EffectSize | None
    power: PowerAnalysis | None
    needed: PowerAnalysis | None

    @property
    def p(self) -> float:
        """The p-value of the test reported, NaN when none was possible."""
        return self.comparison.p if self.comparison is not None else math.nan


NEGLIGIBLE_EFFECT = 0.01  # |d_z| below which no number of trials for power is reported


def analyze_paired(
    a: Sequence[float], b: Sequence[float], alpha: float = 0.05, power: float = 0.8
) -> PairedAnalysis:
    """Paired test (Shapiro-Wilk, then t or Wilcoxon), d_z with CI, post-hoc power and the
    trials needed for ``power``, for ``a - b`` over trials; pairs with a NaN are dropped.

    Each part is computed where the data allow it and left ``None`` where they do not (too few
    pairs, all differences equal), so a study with one or two trials still gets its report.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise InputError(
            f"analyze_paired needs two 1-D sequences of the same length. Got {x.shape} and "
            f"{y.shape} instead."
        )
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    mean = float((x - y).mean()) if n else math.nan
    comparison = paired_comparison(x.tolist(), y.tolist()) if n >= 3 else None
    effect = cohens_dz(x.tolist(), y.tolist()) if n >= 2 else None
    post_hoc = needed = None
    if effect is not None and math.isfinite(effect.d):
        post_hoc = paired_power(effect.d, n, alpha)
        if abs(effect.d) >= NEGLIGIBLE_EFFECT:  # below it, tens of thousands of trials
            needed = trials_for_power(effect.d, power, alpha)
    return PairedAnalysis(n, mean, comparison, effect, post_hoc, needed)
