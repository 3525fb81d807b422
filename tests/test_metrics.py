"""Clean and adversarial metrics against hand-computed confusion matrices and scikit-learn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    recall_score,
    roc_auc_score,
)

from medrobust.metrics import (
    clinical_metrics,
    perturbation_norms,
    predictions,
    probabilities,
    success_rate,
    target_success_rate,
)

# Binary labels with TP = 3, FN = 1, TN = 4, FP = 2 when class 1 is positive.
Y_BINARY = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PRED_BINARY = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1])


def test_binary_metrics_with_positive_class_one():
    m = clinical_metrics(Y_BINARY, PRED_BINARY, positive_class=1, num_classes=2)
    assert m.n == 10
    assert m.accuracy == pytest.approx(7 / 10)
    assert m.sensitivity == pytest.approx(3 / 4)
    assert m.specificity == pytest.approx(4 / 6)
    assert m.fnr == pytest.approx(1 / 4)
    assert m.fpr == pytest.approx(2 / 6)
    assert m.balanced_accuracy == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert math.isnan(m.auc)  # no scores given


def test_binary_metrics_with_positive_class_zero():
    """BreastMNIST's label 0 is malignant: sensitivity is the recall of class 0."""
    m = clinical_metrics(Y_BINARY, PRED_BINARY, positive_class=0, num_classes=2)
    assert m.sensitivity == pytest.approx(4 / 6)  # malignant found: 4 of 6
    assert m.specificity == pytest.approx(3 / 4)
    assert m.fnr == pytest.approx(2 / 6)  # malignant missed
    assert m.fpr == pytest.approx(1 / 4)
    assert m.accuracy == pytest.approx(7 / 10)
    assert m.balanced_accuracy == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m.sensitivity == recall_score(Y_BINARY, PRED_BINARY, pos_label=0)
    assert m.specificity == recall_score(Y_BINARY, PRED_BINARY, pos_label=1)


def test_multiclass_metrics_one_class_against_the_rest():
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 2, 1, 1, 0, 2, 2, 1, 0])
    m = clinical_metrics(y, pred, positive_class=2, num_classes=3)
    assert m.accuracy == pytest.approx(5 / 10)
    assert m.balanced_accuracy == pytest.approx((1 / 3 + 2 / 3 + 2 / 4) / 3)
    assert m.sensitivity == pytest.approx(2 / 4)
    assert m.specificity == pytest.approx(5 / 6)  # one of six non-2 examples was called 2
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred))


def test_metrics_when_classes_are_missing():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 2])
    m = clinical_metrics(y, pred, positive_class=2, num_classes=3)
    assert math.isnan(m.sensitivity) and math.isnan(m.fnr)  # no example of the positive class
    assert m.specificity == pytest.approx(3 / 4)
    assert m.balanced_accuracy == pytest.approx((1 / 2 + 1 / 2) / 2)  # over present classes
    empty = clinical_metrics(np.array([], dtype=int), np.array([], dtype=int), positive_class=0,
                             num_classes=2, scores=np.zeros((0, 2)))  # fmt: skip
    assert empty.n == 0
    assert all(math.isnan(v) for k, v in empty.as_dict().items() if k != "n")


def test_auc_binary_and_multiclass():
    y = np.array([0, 0, 1, 1])
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    for positive in (0, 1):  # the AUC does not depend on which class is called positive
        m = clinical_metrics(y, scores.argmax(1), positive_class=positive, num_classes=2,
                             scores=scores)  # fmt: skip
        assert m.auc == pytest.approx(0.75)
    generator = np.random.default_rng(0)
    y3 = np.repeat([0, 1, 2], 10)
    scores3 = generator.dirichlet(np.ones(3), size=30) + np.eye(3)[y3] * 0.3
    scores3 /= scores3.sum(1, keepdims=True)
    m3 = clinical_metrics(y3, scores3.argmax(1), positive_class=0, num_classes=3, scores=scores3)
    assert m3.auc == pytest.approx(roc_auc_score(y3, scores3, multi_class="ovr"))
    absent = clinical_metrics(y3[:20], scores3[:20].argmax(1), positive_class=0, num_classes=3,
                              scores=scores3[:20])  # fmt: skip
    assert math.isnan(absent.auc)


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(2, 4),
    data=st.data(),
)
def test_clinical_metrics_agree_with_scikit_learn(num_classes: int, data: st.DataObject):
    n = data.draw(st.integers(1, 40))
    labels = st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)
    y, pred = np.array(data.draw(labels)), np.array(data.draw(labels))
    positive = data.draw(st.integers(0, num_classes - 1))
    m = clinical_metrics(y, pred, positive_class=positive, num_classes=num_classes)
    assert m.accuracy == pytest.approx(accuracy_score(y, pred))
    with warnings.catch_warnings():
        # scikit-learn warns, then drops predicted classes that are absent from y: our definition.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        # ... and asks for the labels when y and pred hold one class; the score is still right.
        warnings.filterwarnings("ignore", message="A single label was found")
        assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred))
    expected_sens = recall_score(y == positive, pred == positive, zero_division=np.nan)
    expected_spec = recall_score(y != positive, pred != positive, zero_division=np.nan)
    assert m.sensitivity == pytest.approx(expected_sens, nan_ok=True)
    assert m.specificity == pytest.approx(expected_spec, nan_ok=True)
    assert m.fnr == pytest.approx(1 - expected_sens, nan_ok=True)
    assert m.fpr == pytest.approx(1 - expected_spec, nan_ok=True)
    if num_classes == 2 and len(set(y)) == 2:
        assert m.sensitivity == pytest.approx(recall_score(y, pred, pos_label=positive))


# -- logits to predictions and probabilities -------------------------------------------------


def test_one_logit_matches_two_logits():
    z = torch.tensor([[-3.0], [-0.1], [0.0], [0.2], [5.0]])
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert predictions(z).tolist() == [0, 0, 0, 1, 1]
    assert torch.equal(predictions(z), predictions(two))
    assert predictions(z).dtype == torch.int64
    torch.testing.assert_close(probabilities(z), probabilities(two))
    torch.testing.assert_close(probabilities(z)[:, 1], torch.sigmoid(z[:, 0]))
    torch.testing.assert_close(probabilities(z).sum(1), torch.ones(5))


def test_multiclass_predictions_and_probabilities():
    logits = torch.tensor([[1.0, 2.0, 0.5], [3.0, -1.0, 0.0]])
    assert predictions(logits).tolist() == [1, 0]
    probs = probabilities(logits)
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    torch.testing.assert_close(probs, torch.softmax(logits, 1))


# -- attack metrics ----------------------------------------------------------------------------


def test_success_rate_counts_only_originally_correct_examples():
    y = np.array([0, 1, 1, 0, 2])
    clean = np.array([0, 1, 0, 0, 1])  # examples 0, 1, 3 correct
    adv = np.array([1, 1, 1, 2, 2])  # 0 and 3 broken; 2 and 4 were wrong, fixed by chance
    assert success_rate(y, clean, adv) == pytest.approx(2 / 3)
    assert success_rate(y, clean, clean) == 0.0
    assert math.isnan(success_rate(np.array([0, 1]), np.array([1, 0]), np.array([0, 1])))
    assert math.isnan(success_rate(np.array([]), np.array([]), np.array([])))


def test_perturbation_norms():
    x = torch.zeros(3, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0, 0, 0] = torch.tensor([3.0, -4.0])
    x_adv[1, 0, 1, 1] = 0.5
    norms = perturbation_norms(x, x_adv.requires_grad_(True))
    np.testing.assert_allclose(norms["linf"], [4.0, 0.5, 0.0])
    np.testing.assert_allclose(norms["l2"], [5.0, 0.5, 0.0])
    np.testing.assert_array_equal(norms["l0"], [2, 1, 0])
    assert all(v.dtype == np.float64 and v.shape == (3,) for v in norms.values())


def test_target_success_rate_counts_originally_correct_examples_sent_to_their_target() -> None:
    y = np.array([0, 0, 0, 1])
    clean = np.array([0, 0, 1, 1])  # the third example was already wrong: it does not count
    adv = np.array([1, 0, 1, 0])
    target = np.array([1, 1, 1, 0])
    assert target_success_rate(y, clean, adv, target) == pytest.approx(2 / 3)
    assert math.isnan(target_success_rate(y, 1 - y, adv, target))
