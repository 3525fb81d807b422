"""Statistics over trials against textbook values and independent reference computations."""

from __future__ import annotations

import inspect
import math
import statistics
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multicomp import pairwise_tukeyhsd
from statsmodels.stats.oneway import anova_oneway
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import DescrStatsW

from medrobust.errors import InputError, ParameterError
from medrobust.stats import (
    NEGLIGIBLE_EFFECT,
    analyze_paired,
    cohens_dz,
    holm,
    mcnemar_test,
    one_way_anova,
    paired_comparison,
    paired_power,
    paired_ttest,
    summarize,
    trials_for_power,
)

# Student's (1908) sleep data, hours of extra sleep for ten patients under two drugs, as in R's
# `sleep`. R: t.test(extra ~ group, data = sleep, paired = TRUE): t = -4.0621, df = 9,
# p-value = 0.002833, mean difference -1.58.
SLEEP_DRUG_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_DRUG_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False)
# Accuracies and rates of trials: multiples of 1/1000, whose differences carry rounding noise.
rates = st.integers(0, 1000).map(lambda k: k / 1000)


def test_summary_of_known_data():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.n == 5
    assert s.mean == pytest.approx(3.0)
    assert s.sd == pytest.approx(math.sqrt(2.5))
    # 3 -+ t(0.975, 4) * sqrt(2.5) / sqrt(5), with t(0.975, 4) = 2.776445 from the t table.
    assert s.ci_low == pytest.approx(3 - 2.776445 * math.sqrt(0.5), abs=1e-5)
    assert s.ci_high == pytest.approx(3 + 2.776445 * math.sqrt(0.5), abs=1e-5)
    assert s.format() == "3.000 ± 1.581 [1.037, 4.963]"
    assert s.format(1) == "3.0 ± 1.6 [1.0, 5.0]"


def test_summary_confidence_level_widens_the_interval():
    values = SLEEP_DRUG_2
    narrow, wide = summarize(values, 0.90), summarize(values, 0.99)
    assert wide.ci_low < narrow.ci_low < narrow.mean < narrow.ci_high < wide.ci_high


@settings(max_examples=50, deadline=None)
@given(st.lists(finite, min_size=2, max_size=30), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_summary_against_reference(values: list[float], confidence: float):
    s = summarize(values, confidence)
    assert s.n == len(values)
    assert s.mean == pytest.approx(statistics.fmean(values), abs=1e-9)
    assert s.sd == pytest.approx(statistics.stdev(values), rel=1e-7, abs=1e-9)
    if s.sd > 1e-6:
        half = sps.t.ppf((1 + confidence) / 2, len(values) - 1) * s.sd / math.sqrt(len(values))
        assert s.ci_low == pytest.approx(s.mean - half, rel=1e-7, abs=1e-7)
        assert s.ci_high == pytest.approx(s.mean + half, rel=1e-7, abs=1e-7)
        low, high = sps.t.interval(confidence, len(values) - 1, loc=s.mean, scale=sps.sem(values))
        assert (s.ci_low, s.ci_high) == pytest.approx((low, high), rel=1e-7, abs=1e-7)


def test_summary_edge_cases():
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.format() == "n/a"
    assert summarize([0.25]).format() == "0.250 (1 trial)"
    one = summarize([0.7])
    assert (one.n, one.mean) == (1, 0.7)
    assert math.isnan(one.sd) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    constant = summarize([0.8, 0.8, 0.8])
    assert (constant.n, constant.mean, constant.sd) == (3, pytest.approx(0.8), 0.0)
    assert constant.ci_low == constant.ci_high == constant.mean
    assert summarize([1.0, math.nan, 3.0]) == summarize([1.0, 3.0])
    assert summarize([math.nan]).n == 0


def test_paired_ttest_on_students_sleep_data():
    result = paired_ttest(SLEEP_DRUG_1, SLEEP_DRUG_2)
    assert result.n == 10
    assert result.mean_difference == pytest.approx(-1.58)
    assert result.t == pytest.approx(-4.0621, abs=5e-5)
    assert result.p == pytest.approx(0.002833, abs=5e-7)
    assert result.format() == "t = -4.06, p = 0.0028"
    swapped = paired_ttest(SLEEP_DRUG_2, SLEEP_DRUG_1)
    assert swapped.t == pytest.approx(-result.t) and swapped.p == pytest.approx(result.p)


def test_paired_ttest_with_two_degrees_of_freedom_in_closed_form():
    """Differences 1, 2, 3: t = 2 / (1 / sqrt(3)); for 2 df, p = 1 - |t| / sqrt(t^2 + 2)."""
    result = paired_ttest([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    t = 2 * math.sqrt(3)
    assert result.t == pytest.approx(t)
    assert result.p == pytest.approx(1 - t / math.sqrt(t * t + 2))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(rates, rates), min_size=2, max_size=25))
def test_paired_ttest_against_scipy(pairs: list[tuple[float, float]]):
    a, b = (np.array(v) for v in zip(*pairs, strict=True))
    result = paired_ttest(list(a), list(b))
    diff = a - b
    assert result.n == len(pairs)
    assert result.mean_difference == pytest.approx(float(diff.mean()), abs=1e-12)
    if math.isnan(result.t):
        # Only differences that are equal up to rounding give no test.
        assert np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max()))
        assert math.isnan(result.p)
    else:
        assert np.ptp(diff) > 1e-6
        reference = sps.ttest_rel(a, b)
        one_sample = sps.ttest_1samp(diff, 0.0)
        assert result.t == pytest.approx(reference.statistic, rel=1e-6)
        assert result.p == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-12)
        assert result.t == pytest.approx(one_sample.statistic, rel=1e-6)
        assert 0.0 <= result.p <= 1.0


def test_paired_ttest_edge_cases():
    one = paired_ttest([0.9], [0.8])
    assert one.n == 1 and one.mean_difference == pytest.approx(0.1)
    assert math.isnan(one.t) and math.isnan(one.p) and one.format() == "n/a"
    same = paired_ttest([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert same.mean_difference == 0.0 and math.isnan(same.p)
    shifted = paired_ttest([3.0, 2.0, 1.0], [2.0, 1.0, 0.0])  # zero variance of differences
    assert shifted.mean_difference == 1.0 and math.isnan(shifted.t) and math.isnan(shifted.p)
    # 0.9 - 0.8, 0.8 - 0.7 and 0.7 - 0.6 differ in the last bit: still no variance to test.
    rounded = paired_ttest([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    assert rounded.mean_difference == pytest.approx(0.1) and math.isnan(rounded.t)
    empty = paired_ttest([], [])
    assert empty.n == 0 and math.isnan(empty.mean_difference) and math.isnan(empty.p)
    with_nan = paired_ttest([*SLEEP_DRUG_1, math.nan, 1.0], [*SLEEP_DRUG_2, 2.0, math.nan])
    reference = paired_ttest(SLEEP_DRUG_1, SLEEP_DRUG_2)
    assert (with_nan.n, with_nan.t, with_nan.p) == (10, reference.t, reference.p)
    with pytest.raises(InputError, match=r"paired_ttest needs two sequences of the same length"):
        paired_ttest([1.0, 2.0], [1.0])


# R's `PlantGrowth` (Dobson 1983): dried plant weights under a control and two treatments.
# R: summary(aov(weight ~ group, PlantGrowth)): F = 4.846 on 2 and 27 df, p = 0.01591;
# TukeyHSD: trt1-ctrl diff -0.371 [-1.0622161, 0.3202161] p adj 0.3908711,
# trt2-ctrl 0.494 [-0.1972161, 1.1852161] p adj 0.1979960, trt2-trt1 0.865 [0.1737839, 1.5562161]
# p adj 0.0120064. The same values come from scipy.stats.tukey_hsd and statsmodels below.
PLANT_GROWTH = {
    "ctrl": [4.17, 5.58, 5.18, 6.11, 4.50, 4.61, 5.17, 4.53, 5.33, 5.14],
    "trt1": [4.81, 4.17, 4.41, 3.59, 5.87, 3.83, 6.03, 4.89, 4.32, 4.69],
    "trt2": [6.31, 5.12, 5.54, 5.50, 5.37, 5.29, 4.92, 6.15, 5.80, 5.26],
}


def _agresti_presidential_approval() -> tuple[list[bool], list[bool]]:
    """Agresti (2007), An Introduction to Categorical Data Analysis, table 8.1: approval of the
    president's performance by the same 1600 people in two surveys a month apart: 794 approve
    both times, 150 approve then disapprove, 86 disapprove then approve, 570 disapprove twice.
    McNemar z = 4.17, z^2 = (150 - 86)^2 / (150 + 86) = 17.36 without continuity correction."""
    first = [True] * 794 + [True] * 150 + [False] * 86 + [False] * 570
    second = [True] * 794 + [False] * 150 + [True] * 86 + [False] * 570
    return first, second


# --- paired_comparison -------------------------------------------------------------------------


def test_paired_comparison_on_sleep_data_falls_back_to_wilcoxon():
    """The sleep differences are skewed (Shapiro-Wilk W = 0.8299, p = 0.03334, as R's
    shapiro.test); all nine nonzero differences are negative, so W = 0 and the exact two-sided
    p-value is 2 / 2^9 = 0.00390625 (the zero difference is dropped)."""
    result = paired_comparison(SLEEP_DRUG_1, SLEEP_DRUG_2)
    assert result.n == 10 and result.mean_difference == pytest.approx(-1.58)
    assert result.normality_p == pytest.approx(0.03334, abs=5e-6)
    assert result.normality_held is False
    assert result.test == "wilcoxon"
    assert result.statistic == 0.0
    assert result.p == pytest.approx(2 / 2**9, rel=1e-9)
    assert math.isnan(result.df)
    assert result.format() == "Wilcoxon W = 0, p = 0.0039 (not normal, Shapiro-Wilk p = 0.033)"


def test_paired_comparison_uses_t_test_when_normal():
    """Differences 1, 2, 3 are as normal as three values can be (Shapiro-Wilk W = 1, p = 1):
    the t-test of the closed form above is reported."""
    result = paired_comparison([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert result.test == "paired t" and result.normality_held is True
    assert result.normality_p == pytest.approx(1.0)
    t = 2 * math.sqrt(3)
    assert result.statistic == pytest.approx(t) and result.df == 2
    assert result.p == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert result.format() == "t(2) = 3.46, p = 0.074 (normal, Shapiro-Wilk p = 1)"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(rates, rates), min_size=3, max_size=25))
def test_paired_comparison_against_scipy_and_statsmodels(pairs: list[tuple[float, float]]):
    a, b = (np.array(v) for v in zip(*pairs, strict=True))
    diff = a - b
    result = paired_comparison(list(a), list(b))
    assert result.n == len(pairs)
    assert result.mean_difference == pytest.approx(float(diff.mean()), abs=1e-12)
    if result.test == "none":
        assert np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max()))
        assert math.isnan(result.statistic) and math.isnan(result.p) and result.format() == "n/a"
        return
    shapiro = sps.shapiro(diff).pvalue
    assert result.normality_p == pytest.approx(shapiro, rel=1e-9)
    assert result.normality_held == (shapiro >= 0.05)
    if result.normality_held:
        assert result.test == "paired t"
        t, p, df = DescrStatsW(diff).ttest_mean(0.0)
        assert (result.statistic, result.p, result.df) == pytest.approx((t, p, df), rel=1e-6)
    else:
        assert result.test == "wilcoxon"
        reference = sps.wilcoxon(a, b)
        assert (result.statistic, result.p) == pytest.approx(
            (reference.statistic, reference.pvalue), rel=1e-9
        )
    assert 0.0 <= result.p <= 1.0


def test_paired_comparison_degenerate_and_bad_input():
    same = paired_comparison([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])  # differences equal up to rounding
    assert same.test == "none" and same.mean_difference == pytest.approx(0.1)
    assert math.isnan(same.statistic) and math.isnan(same.p) and math.isnan(same.normality_p)
    assert same.format() == "n/a"
    with pytest.raises(InputError, match=r"'a' and 'b' .* same length. Got 3 and 2 instead"):
        paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(InputError, match=r"at least 3 pairs. Got 2 instead"):
        paired_comparison([1.0, 2.0], [1.0, 3.0])
    with pytest.raises(InputError, match=r"'b' .* finite numbers only. Got 1 NaN"):
        paired_comparison([1.0, 2.0, 3.0], [1.0, math.nan, 3.0])
    with pytest.raises(InputError, match=r"one-dimensional"):
        paired_comparison([[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]])  # type: ignore[list-item]


# --- cohens_dz ---------------------------------------------------------------------------------


def test_cohens_dz_on_sleep_data():
    """dz = -1.58 / 1.229995 = -1.2846; the noncentral-t interval is [-2.1180, -0.4146] (the
    same as R effectsize's cohens_d(Pair(...) ~ 1) prints, -1.28 [-2.12, -0.41])."""
    result = cohens_dz(SLEEP_DRUG_1, SLEEP_DRUG_2)
    assert result.n == 10
    assert result.d == pytest.approx(-1.58 / 1.229995, abs=1e-6)
    assert result.ci_low == pytest.approx(-2.1180, abs=5e-5)
    assert result.ci_high == pytest.approx(-0.4146, abs=5e-5)
    assert result.format() == "dz = -1.28 [-2.12, -0.41]"
    # The bounds are the noncentralities that put the observed t at the 97.5% and 2.5% points.
    t = result.d * math.sqrt(10)
    assert sps.nct.cdf(t, 9, result.ci_low * math.sqrt(10)) == pytest.approx(0.975, abs=1e-9)
    assert sps.nct.cdf(t, 9, result.ci_high * math.sqrt(10)) == pytest.approx(0.025, abs=1e-9)
    swapped = cohens_dz(SLEEP_DRUG_2, SLEEP_DRUG_1)
    assert swapped.d == pytest.approx(-result.d)
    assert (swapped.ci_low, swapped.ci_high) == pytest.approx((-result.ci_high, -result.ci_low))


def test_cohens_dz_interval_approaches_the_normal_approximation():
    """For many pairs the interval nears dz -+ 1.96 sqrt(1/n + dz^2 / (2n)) (Hedges & Olkin)."""
    rng = np.random.default_rng(0)
    diff = rng.normal(0.5, 1.0, 4000)
    result = cohens_dz(list(diff), [0.0] * len(diff))
    half = sps.norm.ppf(0.975) * math.sqrt(1 / 4000 + result.d**2 / 8000)
    assert result.ci_low == pytest.approx(result.d - half, abs=2e-3)
    assert result.ci_high == pytest.approx(result.d + half, abs=2e-3)
    assert cohens_dz(list(diff), [0.0] * 4000, confidence=0.99).ci_low < result.ci_low


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(rates, rates), min_size=2, max_size=25))
def test_cohens_dz_interval_agrees_with_the_t_test(pairs: list[tuple[float, float]]):
    """The interval excludes 0 exactly when the paired t-test rejects at 0.05 (duality)."""
    a, b = (list(v) for v in zip(*pairs, strict=True))
    result, test = cohens_dz(a, b), paired_ttest(a, b)
    if math.isnan(test.p):
        assert math.isnan(result.d) and result.format() == "n/a"
        return
    diff = np.array(a) - np.array(b)
    assert result.d == pytest.approx(float(diff.mean() / diff.std(ddof=1)), rel=1e-9)
    assert result.ci_low <= result.d <= result.ci_high
    if abs(test.p - 0.05) > 1e-6:
        assert (result.ci_low > 0 or result.ci_high < 0) == (test.p < 0.05)


def test_cohens_dz_degenerate_and_bad_input():
    constant = cohens_dz([3.0, 2.0, 1.0], [2.0, 1.0, 0.0])
    assert math.isnan(constant.d) and math.isnan(constant.ci_low) and constant.n == 3
    with pytest.raises(InputError, match=r"at least 2 pairs. Got 1 instead"):
        cohens_dz([1.0], [2.0])
    with pytest.raises(InputError, match=r"same length"):
        cohens_dz([1.0, 2.0], [2.0])
    with pytest.raises(InputError, match=r"'a' .* finite numbers only"):
        cohens_dz([math.nan, 2.0], [2.0, 1.0])
    with pytest.raises(ParameterError, match=r"'confidence' parameter of cohens_dz must be in"):
        cohens_dz([1.0, 2.0], [2.0, 2.5], confidence=95)


# --- one_way_anova -----------------------------------------------------------------------------


def test_one_way_anova_on_plant_growth():
    result = one_way_anova(PLANT_GROWTH)
    assert (result.df_between, result.df_within) == (2, 27)
    assert result.f == pytest.approx(4.846, abs=5e-4)
    assert result.p == pytest.approx(0.01591, abs=5e-6)
    # R: shapiro.test(residuals(aov(weight ~ group))): W = 0.96607, p-value = 0.4379;
    # car::leveneTest(weight ~ group): F(2, 27) = 1.1192, p = 0.3412;
    # oneway.test(weight ~ group): F = 5.181, num df = 2, denom df = 17.128, p-value = 0.01739.
    assert result.normality_p == pytest.approx(0.4379, abs=5e-5)
    assert result.equal_variance_p == pytest.approx(0.3412, abs=5e-5)
    assert result.welch_f == pytest.approx(5.181, abs=5e-4)
    assert result.welch_df_within == pytest.approx(17.128, abs=5e-4)
    assert result.welch_p == pytest.approx(0.01739, abs=5e-6)
    assert result.assumptions_held
    assert result.format() == (
        "F(2, 27) = 4.85, p = 0.016 (residuals normal, Shapiro-Wilk p = 0.44; variances equal, "
        "Levene p = 0.34)"
    )
    expected = {
        ("ctrl", "trt1"): (-0.371, 0.3908711, -1.0622161, 0.3202161),
        ("ctrl", "trt2"): (0.494, 0.1979960, -0.1972161, 1.1852161),
        ("trt1", "trt2"): (0.865, 0.0120064, 0.1737839, 1.5562161),
    }
    assert [(p.group1, p.group2) for p in result.pairs] == list(expected)
    for pair in result.pairs:
        diff, p_adj, low, high = expected[(pair.group1, pair.group2)]
        assert pair.mean_difference == pytest.approx(diff, abs=1e-9)
        assert pair.p_adjusted == pytest.approx(p_adj, abs=5e-7)
        assert (pair.ci_low, pair.ci_high) == pytest.approx((low, high), abs=5e-7)
    assert result.pairs[2].format() == "trt2 - trt1: 0.865 [0.174, 1.556], adjusted p = 0.012"


def test_one_way_anova_against_statsmodels():
    rng = np.random.default_rng(1)
    groups = {
        "none": list(rng.normal(0.80, 0.05, 6)),
        "adv": list(rng.normal(0.74, 0.05, 9)),  # unequal sizes: Tukey-Kramer
        "smooth": list(rng.normal(0.70, 0.08, 5)),
        "lip": list(rng.normal(0.79, 0.04, 7)),
    }
    result = one_way_anova(groups, confidence=0.9)
    values = np.concatenate([np.asarray(v) for v in groups.values()])
    labels = np.repeat(list(groups), [len(v) for v in groups.values()])
    reference = anova_oneway(values, labels, use_var="equal")
    assert result.f == pytest.approx(reference.statistic, rel=1e-6)
    assert result.p == pytest.approx(reference.pvalue, rel=1e-6)
    assert (result.df_between, result.df_within) == (3, 23)
    tukey = pairwise_tukeyhsd(values, labels, alpha=0.1)
    rows = {
        (str(g1), str(g2)): (float(d), float(p), float(lo), float(hi))
        for g1, g2, d, p, lo, hi in zip(
            tukey.groupsunique[tukey._multicomp.pairindices[0]],
            tukey.groupsunique[tukey._multicomp.pairindices[1]],
            tukey.meandiffs,
            tukey.pvalues,
            tukey.confint[:, 0],
            tukey.confint[:, 1],
            strict=True,
        )
    }
    assert len(result.pairs) == len(rows) == 6
    for pair in result.pairs:
        key, sign = (pair.group1, pair.group2), 1.0
        if key not in rows:  # statsmodels orders each pair alphabetically
            key, sign = (pair.group2, pair.group1), -1.0
        diff, p, low, high = rows[key]
        assert pair.mean_difference == pytest.approx(sign * diff, rel=1e-9)
        assert pair.p_adjusted == pytest.approx(p, rel=1e-5, abs=1e-6)
        bounds = (low, high) if sign > 0 else (-high, -low)
        assert (pair.ci_low, pair.ci_high) == pytest.approx(bounds, rel=1e-6, abs=1e-6)


def test_one_way_anova_degenerate_and_bad_input():
    constant = one_way_anova({"a": [0.9, 0.9], "b": [0.7, 0.7, 0.7]})
    assert math.isnan(constant.f) and math.isnan(constant.p)
    assert constant.format() == "F(1, 3) = n/a"
    assert constant.pairs[0].mean_difference == pytest.approx(-0.2)
    assert math.isnan(constant.pairs[0].p_adjusted)
    with pytest.raises(InputError, match=r"at least 2 groups. Got 1 instead"):
        one_way_anova({"a": [1.0, 2.0]})
    with pytest.raises(InputError, match=r"at least 2 values. Got 1 in group 'b' instead"):
        one_way_anova({"a": [1.0, 2.0], "b": [1.0]})
    with pytest.raises(InputError, match=r"groups\['b'\].* finite numbers only"):
        one_way_anova({"a": [1.0, 2.0], "b": [1.0, math.nan]})
    with pytest.raises(ParameterError, match=r"'confidence' parameter of one_way_anova"):
        one_way_anova(PLANT_GROWTH, confidence=1.0)


# --- power -------------------------------------------------------------------------------------


def _power_by_noncentral_t(d: float, n: int, alpha: float) -> float:
    """Two-sided power of a one-sample t-test from scipy's noncentral t, the second reference."""
    df, nc = n - 1, d * math.sqrt(n)
    critical = sps.t.ppf(1 - alpha / 2, df)
    # P(T <= -c | nc) = P(T >= c | -nc); scipy's nct.cdf gives NaN deep in the lower tail.
    return float(sps.nct.sf(critical, df, nc) + sps.nct.sf(critical, df, -nc))


def test_paired_power_matches_gpower_example():
    """G*Power, t tests - means: difference from constant (one sample case), d = 0.5, alpha =
    0.05 two-tailed, power 0.8: total sample size 34, actual power 0.8077775."""
    result = paired_power(0.5, 34)
    assert result.power == pytest.approx(0.8077775, abs=5e-8)
    assert result.format() == "power = 0.81 (dz = 0.5, n = 34, alpha = 0.05)"
    needed = trials_for_power(0.5)
    assert needed == result
    assert paired_power(-0.5, 34).power == pytest.approx(result.power)


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.05, 3.0),
    st.integers(2, 200),
    st.sampled_from([0.01, 0.05, 0.1]),
)
def test_paired_power_against_noncentral_t(d: float, n: int, alpha: float):
    result = paired_power(d, n, alpha)
    assert result.power == pytest.approx(_power_by_noncentral_t(d, n, alpha), abs=1e-6)
    reference = TTestPower().power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided")
    if not math.isnan(reference):  # NaN from scipy's nct.cdf deep in a tail, e.g. d=2, n=14
        assert result.power == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize(
    ("d", "power", "alpha"),
    [
        (0.2, 0.8, 0.05),
        (0.5, 0.9, 0.05),
        (1.0, 0.8, 0.05),
        (2.0, 0.95, 0.01),
        (-0.3, 0.8, 0.05),
        (5.0, 0.5, 0.1),  # statsmodels' solver fails to converge here
        (5.0, 0.99, 0.001),
        (0.02, 0.99, 0.001),
    ],
)
def test_trials_for_power_is_the_smallest_sufficient_n(d: float, power: float, alpha: float):
    result = trials_for_power(d, power, alpha)
    assert result.power >= power and (result.effect_size, result.alpha) == (d, alpha)
    assert result.power == pytest.approx(_power_by_noncentral_t(d, result.n, alpha), abs=1e-6)
    assert result.n == 2 or _power_by_noncentral_t(d, result.n - 1, alpha) < power


def test_power_bad_parameters():
    with pytest.raises(ParameterError, match=r"'n' parameter of paired_power must be an integer"):
        paired_power(0.5, 1)
    with pytest.raises(ParameterError, match=r"'n' parameter"):
        paired_power(0.5, 10.5)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"'d' parameter of paired_power must be a finite"):
        paired_power(math.nan, 10)
    with pytest.raises(ParameterError, match=r"'alpha' parameter of paired_power must be in"):
        paired_power(0.5, 10, alpha=0.0)
    with pytest.raises(ParameterError, match=r"'d' parameter of trials_for_power .* nonzero"):
        trials_for_power(0.0)
    with pytest.raises(ParameterError, match=r"'power' parameter of trials_for_power"):
        trials_for_power(0.5, power=80)


# --- mcnemar_test ------------------------------------------------------------------------------


def test_mcnemar_on_agresti_presidential_approval():
    first, second = _agresti_presidential_approval()
    result = mcnemar_test(first, second, correction=False)
    assert (result.n, result.both_correct, result.only_a, result.only_b, result.neither) == (
        1600,
        794,
        150,
        86,
        570,
    )
    assert result.exact is False
    assert result.statistic == pytest.approx(64**2 / 236, rel=1e-12)  # 17.3559
    assert result.p == pytest.approx(sps.chi2.sf(64**2 / 236, 1), rel=1e-9)
    assert result.format() == "McNemar chi2 = 17.36, p = 3.1e-05"
    corrected = mcnemar_test(first, second)
    assert corrected.statistic == pytest.approx(63**2 / 236, rel=1e-12)  # Edwards: (|b-c| - 1)^2
    exact = mcnemar_test(first, second, exact=True)
    assert exact.exact and exact.statistic == 86
    assert exact.p == pytest.approx(sps.binomtest(86, 236, 0.5).pvalue, rel=1e-9)


def test_mcnemar_exact_when_few_discordant():
    """3 examples right only under a, 12 only under b: exact two-sided binomial p =
    2 * P(X <= 3), X ~ Bin(15, 1/2) = 2 * (1 + 15 + 105 + 455) / 2^15 = 0.03515625."""
    a = [True] * 20 + [True] * 3 + [False] * 12 + [False] * 5
    b = [True] * 20 + [False] * 3 + [True] * 12 + [False] * 5
    result = mcnemar_test(a, b)
    assert result.exact and (result.only_a, result.only_b) == (3, 12)
    assert result.p == pytest.approx(2 * 576 / 2**15, rel=1e-12)
    assert result.format() == "McNemar exact (3 vs 12), p = 0.035"
    as_ints = mcnemar_test([int(v) for v in a], np.array(b))
    assert as_ints == result
    lopsided = mcnemar_test([True] * 1000, [False] * 1000)
    assert lopsided.format() == "McNemar chi2 = 998.00, p < 1e-16"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=120))
def test_mcnemar_against_statsmodels(pairs: list[tuple[bool, bool]]):
    a, b = (list(v) for v in zip(*pairs, strict=True))
    result = mcnemar_test(a, b)
    assert result.n == len(pairs)
    assert result.both_correct + result.only_a + result.only_b + result.neither == len(pairs)
    discordant = result.only_a + result.only_b
    assert result.exact == (discordant < 25)
    if discordant == 0:
        assert math.isnan(result.p) and result.format() == "n/a"
        return
    table = [[result.both_correct, result.only_a], [result.only_b, result.neither]]
    reference = mcnemar(table, exact=result.exact, correction=True)
    assert result.p == pytest.approx(reference.pvalue, rel=1e-9)
    if result.exact:
        binomial = sps.binomtest(min(result.only_a, result.only_b), discordant, 0.5).pvalue
        assert result.p == pytest.approx(binomial, rel=1e-6)


def test_mcnemar_bad_input():
    with pytest.raises(InputError, match=r"same length. Got 2 and 1 instead"):
        mcnemar_test([True, False], [True])
    with pytest.raises(InputError, match=r"at least 1 example. Got 0 instead"):
        mcnemar_test([], [])
    with pytest.raises(InputError, match=r"booleans or 0/1 only. Got \[0.5\]"):
        mcnemar_test([0.5, 1.0], [1, 0])  # type: ignore[list-item]
    with pytest.raises(InputError, match=r"'correct_b' .* finite numbers only"):
        mcnemar_test([1, 0], [1, math.nan])  # type: ignore[list-item]


# --- holm --------------------------------------------------------------------------------------


def test_holm_by_hand():
    """Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 give 0.02, 0.03, 0.06, 0.04; made
    monotone, 0.02, 0.03, 0.06, 0.06; back in the order given below."""
    result = holm([0.01, 0.04, 0.03, 0.005])
    assert result.adjusted == pytest.approx((0.03, 0.06, 0.06, 0.02))
    assert result.reject == (True, False, False, True)
    assert result.p_values == (0.01, 0.04, 0.03, 0.005)
    assert result.format() == "0.01 -> 0.03*, 0.04 -> 0.06, 0.03 -> 0.06, 0.005 -> 0.02*"
    assert holm([0.4, 0.6]).adjusted == pytest.approx((0.8, 0.8))  # capped at 1 after max
    assert holm([0.9, 0.8]).adjusted == (1.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20),
    st.sampled_from([0.01, 0.05, 0.1]),
)
def test_holm_against_step_down_definition(p_values: list[float], alpha: float):
    result = holm(p_values, alpha)
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    expected, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        expected[i] = running
    assert result.adjusted == pytest.approx(expected, abs=1e-12)
    # Rejections stop at the first sorted p-value above alpha / (m - rank).
    rejected, stopped = [False] * m, False
    for rank, i in enumerate(order):
        stopped = stopped or p_values[i] > alpha / (m - rank)
        rejected[i] = not stopped
    boundary = any(abs(p_values[i] - alpha / (m - r)) < 1e-12 for r, i in enumerate(order))
    if not boundary:
        assert list(result.reject) == rejected


def test_holm_bad_input():
    with pytest.raises(InputError, match=r"at least 1 p-value. Got 0 instead"):
        holm([])
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]. Got \[1.5\]"):
        holm([0.01, 1.5])
    with pytest.raises(InputError, match=r"finite numbers only"):
        holm([0.01, math.nan])
    with pytest.raises(ParameterError, match=r"'alpha' parameter of holm"):
        holm([0.01], alpha=-0.05)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(rates, min_size=2, max_size=8), min_size=2, max_size=5))
def test_one_way_anova_f_against_scipy_and_statsmodels(samples: list[list[float]]):
    groups = {f"g{i}": values for i, values in enumerate(samples)}
    result = one_way_anova(groups)
    assert len(result.pairs) == len(samples) * (len(samples) - 1) // 2
    if math.isnan(result.f):
        assert all(np.ptp(values) == 0 for values in samples)
        return
    values = np.concatenate([np.asarray(v) for v in samples])
    labels = np.repeat(list(groups), [len(v) for v in samples])
    reference = anova_oneway(values, labels, use_var="equal")
    assert result.f == pytest.approx(reference.statistic, rel=1e-6, abs=1e-9)
    assert result.p == pytest.approx(reference.pvalue, rel=1e-6, abs=1e-12)
    welch_in_scipy = "equal_var" in inspect.signature(sps.f_oneway).parameters  # scipy >= 1.15
    if welch_in_scipy and all(np.ptp(values) > 0 for values in samples):
        welch = sps.f_oneway(*samples, equal_var=False)
        assert result.welch_f == pytest.approx(welch.statistic, rel=1e-6)
        assert result.welch_p == pytest.approx(welch.pvalue, rel=1e-6, abs=1e-12)
    with warnings.catch_warnings():  # a group without spread leaves Levene's W undefined
        warnings.simplefilter("ignore", RuntimeWarning)
        levene = sps.levene(*samples, center="median").pvalue
    if not math.isnan(levene):
        assert result.equal_variance_p == pytest.approx(levene, rel=1e-9)
    for pair in result.pairs:
        means = np.mean(groups[pair.group2]) - np.mean(groups[pair.group1])
        assert pair.mean_difference == pytest.approx(means, abs=1e-12)
        assert 0.0 <= pair.p_adjusted <= 1.0 and pair.ci_low <= pair.ci_high


# --- bounded summaries and the combined paired analysis -----------------------------------------


def test_summary_of_rates_keeps_its_interval_inside_the_bounds():
    near_one = [1.0, 1.0, 0.98, 1.0, 0.96]
    free, bounded = summarize(near_one), summarize(near_one, bounds=(0.0, 1.0))
    assert free.ci_high > 1.0  # the t interval leaves [0, 1]
    assert bounded.ci_high == 1.0 and bounded.ci_low == free.ci_low
    assert (bounded.n, bounded.mean, bounded.sd) == (free.n, free.mean, free.sd)


def test_analyze_paired_on_sleep_data_combines_the_reference_results():
    result = analyze_paired(SLEEP_DRUG_1, SLEEP_DRUG_2)
    assert result.comparison == paired_comparison(SLEEP_DRUG_1, SLEEP_DRUG_2)
    assert result.effect == cohens_dz(SLEEP_DRUG_1, SLEEP_DRUG_2)
    assert result.p == pytest.approx(2 / 2**9)  # Wilcoxon: the differences are not normal
    d = result.effect.d
    assert result.power is not None and result.power.n == 10
    # statsmodels as the second implementation of post-hoc power and of the trials needed
    assert result.power.power == pytest.approx(
        TTestPower().power(effect_size=abs(d), nobs=10, alpha=0.05), abs=1e-6
    )
    assert result.needed is not None
    solved = TTestPower().solve_power(effect_size=abs(d), power=0.8, alpha=0.05)
    assert result.needed.n == math.ceil(solved)


def test_analyze_paired_degrades_with_few_trials_and_drops_nan_pairs():
    two = analyze_paired([0.8, 0.7], [0.9, 0.85])
    assert two.n == 2 and two.comparison is None and math.isnan(two.p)
    assert two.effect is not None and two.power is not None  # d_z needs only 2 pairs
    one = analyze_paired([0.8, math.nan, 0.7], [0.9, 0.5, math.nan])
    assert one.n == 1 and one.effect is None and one.power is None and one.needed is None
    tiny = analyze_paired([2.0, 1.0, 2.0, 1.0, 1.01], [1.0, 2.0, 1.0, 2.0, 1.0])  # d_z = 0.002
    assert tiny.effect is not None and abs(tiny.effect.d) < NEGLIGIBLE_EFFECT
    assert tiny.needed is None  # no meaningful trial count for a negligible effect
    with pytest.raises(InputError, match="same length"):
        analyze_paired([1.0, 2.0], [1.0])
