"""The Wisconsin Diagnostic Breast Cancer task (569 tumours, 30 features).

The data ship with scikit-learn (``sklearn.datasets.load_breast_cancer``), so nothing is
downloaded. Labels keep scikit-learn's coding, 0 = malignant and 1 = benign; the positive class is
0 (malignant). The split is 60/20/20 into train/val/test, stratified and seeded. Features are
standardised with the mean and standard deviation (ddof 0) of the training split, which
``Task.metadata`` records; the domain is unbounded.
"""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np

from medrobust.data.splits import check_seed, stratified_split
from medrobust.data.task import Split, Task, TaskSpec
from medrobust.types import UNBOUNDED, Modality, TaskKind

FRACTIONS = (0.6, 0.2, 0.2)
CLASS_NAMES = ("malignant", "benign")
POSITIVE_CLASS = 0


def wisconsin_spec() -> TaskSpec:
    """The TaskSpec of ``wisconsin``."""
    return TaskSpec(
        name="wisconsin",
        modality=Modality.TABULAR,
        kind=TaskKind.CLASSIFICATION,
        files=(),
        load=load_wisconsin,
        resplits=True,
        summary="Wisconsin breast cancer (scikit-learn), 30 features, seeded 60/20/20 split",
    )


def load_wisconsin(seed: int = 0) -> Task:
    """Load the Wisconsin Diagnostic Breast Cancer task.

    Args:
        seed: seed of the stratified 60/20/20 split.
    """
    import sklearn
    from sklearn.datasets import load_breast_cancer

    seed = check_seed(seed)
    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    parts = stratified_split(y, FRACTIONS, seed, priority=(0, 2, 1))
    mean = x[parts[0]].mean(axis=0)
    std = x[parts[0]].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    splits = [Split(x=((x[i] - mean) / std).astype(np.float32), y=y[i]) for i in parts]
    source = resources.files("sklearn.datasets.data").joinpath("breast_cancer.csv")
    return Task(
        name="wisconsin",
        modality=Modality.TABULAR,
        kind=TaskKind.CLASSIFICATION,
        class_names=CLASS_NAMES,
        positive_class=POSITIVE_CLASS,
        domain=UNBOUNDED,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        description=(
            "Wisconsin Diagnostic Breast Cancer (scikit-learn), 30 features standardised with "
            "train statistics."
        ),
        metadata={
            "source_files": [
                {
                    "path": f"sklearn/datasets/data/breast_cancer.csv (scikit-learn "
                    f"{sklearn.__version__})",
                    "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                }
            ],
            "verified": False,
            "split_policy": "60/20/20 train/val/test, stratified, seeded",
            "seed": seed,
            "normalisation": "features standardised with the train split's mean and std (ddof 0)",
            "feature_mean": mean.tolist(),
            "feature_std": std.tolist(),
            "feature_names": [str(n) for n in bunch.feature_names],
            "positive_class_reason": "malignant (scikit-learn's label 0)",
            "class_counts": {
                n: s.class_counts(2) for n, s in zip(("train", "val", "test"), splits, strict=True)
            },
        },
    )
