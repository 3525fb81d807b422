"""JSMA specifics: the pair it picks on a model with known gradients, and bounded memory."""

from __future__ import annotations

import torch
from torch import nn

from medrobust.attacks import JSMA
from medrobust.metrics import predictions
from medrobust.types import UNIT_INTERVAL


def _linear_model() -> nn.Module:
    """Two logits; raising features 0 and 1 favours class 1 most (and lowers class 0)."""
    model = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, -0.5, 0.0, 2.0], [3.0, 2.0, 0.5, 0.0]]))
    return model


def test_pairwise_jsma_changes_the_most_salient_pair() -> None:
    model = _linear_model()
    x = torch.tensor([[0.0, 0.0, 0.0, 0.2]])
    y = torch.tensor([0])
    x_adv = JSMA(eps=0.5, theta=1.0, domain=UNIT_INTERVAL)(model, x, y, target=torch.tensor([1]))
    assert torch.equal(x_adv, torch.tensor([[1.0, 1.0, 0.0, 0.2]]))
    assert int(predictions(model(x_adv))[0]) == 1


def test_single_feature_variant_changes_one_feature_per_step() -> None:
    model = _linear_model()
    x = torch.tensor([[0.0, 0.0, 0.0, 0.9]])
    attack = JSMA(eps=0.25, theta=1.0, pairwise=False, domain=UNIT_INTERVAL)
    x_adv = attack(model, x, torch.tensor([0]), target=torch.tensor([1]))
    assert torch.equal(x_adv, torch.tensor([[1.0, 0.0, 0.0, 0.9]]))


def test_memory_bound_does_not_change_the_result_on_3x64x64_images() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.rand(4, 3, 64, 64)
    model(x)  # materialise the lazy layer
    y = predictions(model(x))
    results = [
        JSMA(eps=0.002, candidates=512, max_memory_mb=mb, domain=UNIT_INTERVAL)(model, x, y)
        for mb in (1, 256)
    ]
    assert torch.equal(results[0], results[1])
    changed = (results[0] != x).flatten(1).sum(1)
    assert int(changed.max()) <= int(0.002 * 3 * 64 * 64)
