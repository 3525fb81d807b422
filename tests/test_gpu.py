"""CUDA checks: run only where a GPU is present (marker ``gpu``)."""

from __future__ import annotations

import pytest
import torch

from medrobust.attacks import PGD
from medrobust.models import RecurrentClassifier
from medrobust.training import FitConfig, fit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_rnn_attack_backpropagates_in_eval_mode_on_cudnn() -> None:
    """cuDNN RNNs refuse backward in eval mode; the attack must still work and restore the mode."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 50, generator=generator)
    y = (x.mean(dim=(1, 2)) > 0).long()
    model = RecurrentClassifier(1, 2, hidden=16).cuda()
    fit(model, x, y, x, y, config=FitConfig(epochs=3, batch_size=16), seed=0)
    model.train()
    x_adv = PGD(eps=0.5, steps=3)(model, x.cuda(), y.cuda())
    assert model.training
    assert x_adv.is_cuda and x_adv.shape == x.shape
    assert float((x_adv.cpu() - x).abs().max()) <= 0.5 + 1e-6
