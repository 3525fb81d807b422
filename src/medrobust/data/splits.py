"""Seeded, stratified splitting that never fails on rare classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medrobust.errors import ParameterError


def allocate(
    n: int, fractions: Sequence[float], priority: Sequence[int] | None = None
) -> list[int]:
    """How many of ``n`` members of one class go to each split.

    Counts follow ``fractions`` by the largest-remainder method. When ``n`` is at least the
    number of splits, every split gets at least one member (taken from the largest split). When
    it is smaller, the members go one each to the splits in ``priority`` order.

    Args:
        n: number of members of the class.
        fractions: one positive fraction per split; they are normalised to sum to 1.
        priority: split indices in the order they get a member of a class too small to reach
            every split (default: the order of ``fractions``).

    Returns:
        One count per split, summing to ``n``.
    """
    k = len(fractions)
    weights = np.asarray(fractions, dtype=np.float64)
    if k == 0 or np.any(~np.isfinite(weights)) or np.any(weights <= 0):
        raise ParameterError(
            f"The 'fractions' of a split must be positive numbers. Got {list(fractions)} instead."
        )
    order = list(range(k)) if priority is None else list(priority)
    if sorted(order) != list(range(k)):
        raise ParameterError(
            f"The 'priority' of a split must be a permutation of 0..{k - 1}. Got {order} instead."
        )
    counts = [0] * k
    if n < k:
        for index in order[:n]:
            counts[index] += 1
        return counts
    raw = weights / weights.sum() * n
    floors = np.floor(raw).astype(np.int64)
    remainders = raw - floors
    # Ties go to the earlier split in priority order.
    rank = sorted(range(k), key=lambda i: (-remainders[i], order.index(i)))
    for i in rank[: n - int(floors.sum())]:
        floors[i] += 1
    counts = [int(c) for c in floors]
    for i in order:
        while counts[i] == 0:
            donor = max(range(k), key=lambda j: (counts[j], -order.index(j)))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def stratified_split(
    y: np.ndarray,
    fractions: Sequence[float],
    seed: int,
    priority: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Split example indices per class, seeded, so that every split keeps the class mix.

    Unlike scikit-learn's ``train_test_split(stratify=...)``, this never fails on a class with
    one or two members: such members go to the splits in ``priority`` order (see
    :func:`allocate`). A class with at least ``len(fractions)`` members reaches every split.

    Args:
        y: labels, shape (N,).
        fractions: one fraction per split, e.g. ``(0.6, 0.2, 0.2)``.
        seed: seed of the shuffle within each class.
        priority: order in which splits receive members of tiny classes.

    Returns:
        One sorted index array (int64) per split; together they cover ``0..N-1`` once.
    """
    labels = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for split, count in enumerate(allocate(len(members), fractions, priority)):
            parts[split].append(members[start : start + count])
            start += count
    return [
        np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)
        for chunks in parts
    ]


def check_seed(seed: object, where: str = "load_task") -> int:
    """Return ``seed`` as an int if it is a non-negative integer, else raise ParameterError."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
        raise ParameterError(
            f"The 'seed' parameter of {where} must be an integer >= 0. Got {seed!r} instead."
        )
    return int(seed)


def share_indices(
    y: np.ndarray, groups: np.ndarray | None, part: int, of: int, seed: int
) -> np.ndarray:
    """Indices of the ``part``-th (1-based) of ``of`` disjoint shares of a training split, as the
    data of one of ``of`` institutions.

    With ``groups`` (patient ids), whole patients go to one share: patients are shuffled (seeded)
    and each goes to the share with the fewest examples so far, so shares stay near equal in size
    and no patient is in two. Without groups, examples are split per class (stratified).

    Returns:
        Sorted int64 indices; the ``of`` shares for the same inputs and seed cover every index once.
    """
    if not (isinstance(of, int) and isinstance(part, int) and of >= 2 and 1 <= part <= of):
        raise ParameterError(
            f"A training share must be part 1..of of of >= 2 shares. Got part={part!r}, "
            f"of={of!r} instead."
        )
    if groups is None:
        return stratified_split(y, [1.0] * of, seed)[part - 1]
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(names) < of:
        raise ParameterError(
            f"Cannot split {len(names)} patients into {of} disjoint shares; use of <= {len(names)}."
        )
    order = np.random.default_rng(seed).permutation(len(names))
    sizes = [0] * of
    owner = np.empty(len(names), dtype=np.int64)
    for g in order:
        share = min(range(of), key=lambda k: (sizes[k], k))
        owner[g] = share
        sizes[share] += int(counts[g])
    return np.flatnonzero(owner[inverse] == part - 1).astype(np.int64)
