"""Statistics over trials against textbook values and independent reference computations."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from medrobust.errors import InputError
from medrobust.stats import paired_ttest, summarize

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
