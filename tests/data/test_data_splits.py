"""Stratified splitting: exact cover, determinism, rare classes."""

from __future__ import annotations

import numpy as np
import pytest

from medrobust.data.splits import allocate, check_seed, stratified_split
from medrobust.errors import ParameterError

FRACTIONS = (0.6, 0.2, 0.2)
PRIORITY = (0, 2, 1)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, [0, 0, 0]), (1, [1, 0, 0]), (2, [1, 0, 1]), (3, [1, 1, 1]), (10, [6, 2, 2])],
)
def test_allocate_small_classes(n: int, expected: list[int]):
    assert allocate(n, FRACTIONS, PRIORITY) == expected


@pytest.mark.parametrize("n", range(3, 200, 7))
def test_allocate_sums_and_reaches_every_split(n: int):
    counts = allocate(n, FRACTIONS, PRIORITY)
    assert sum(counts) == n
    assert min(counts) >= 1
    assert all(abs(c - f * n) <= 1 for c, f in zip(counts, FRACTIONS, strict=True))


@pytest.mark.parametrize(
    ("fractions", "priority"), [((0.5, -0.5), None), ((), None), ((0.5, 0.5), (0, 0))]
)
def test_allocate_rejects_bad_arguments(fractions: tuple[float, ...], priority):
    with pytest.raises(ParameterError):
        allocate(5, fractions, priority)


def test_stratified_split_covers_every_index_once():
    y = np.array([0] * 50 + [1] * 9 + [2] * 2 + [3])
    parts = stratified_split(y, FRACTIONS, seed=4, priority=PRIORITY)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(y)))
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)
    train, val, test = (np.bincount(y[p], minlength=4).tolist() for p in parts)
    assert train == [30, 5, 1, 1] and val == [10, 2, 0, 0] and test == [10, 2, 1, 0]


def test_stratified_split_is_seeded():
    y = np.repeat(np.arange(4), 25)
    a = stratified_split(y, FRACTIONS, seed=1)
    b = stratified_split(y, FRACTIONS, seed=1)
    c = stratified_split(y, FRACTIONS, seed=2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


@pytest.mark.parametrize("seed", [0, 7, np.int64(3)])
def test_check_seed_accepts_integers(seed: int):
    assert check_seed(seed) == int(seed)
