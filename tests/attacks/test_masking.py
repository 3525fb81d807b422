"""Gradient-masking checks: each symptom is found where it is built in, and not on a plain model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medrobust.attacks.masking import MASKING_CHECKS, masking_checks
from medrobust.models import TransformerClassifier
from medrobust.types import UNBOUNDED
from tests.conftest import Trained


class _Noisy(nn.Module):
    """A model that randomizes its output even in eval mode (as randomized defenses do)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.inner(x)
        return logits + 0.01 * torch.randn_like(logits)


class _Quantized(nn.Module):
    """A model behind a non-differentiable input quantisation: zero input gradients."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.inner(torch.round(x * 4) / 4)
        return logits


class _NoisyText(nn.Module):
    """A text model whose logits are randomized even in eval mode."""

    def __init__(self, inner: TransformerClassifier) -> None:
        super().__init__()
        self.inner = inner
        self.vocab_size, self.pad_id = inner.vocab_size, inner.pad_id

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner.embed(ids)

    def forward_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logits = self.inner.forward_embeddings(embeddings, ids)
        return logits + 0.01 * torch.randn_like(logits)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embeddings(self.embed(ids), ids)


def test_plain_mlp_raises_no_flag(trained: Callable[[str], Trained]) -> None:
    victim = trained("mlp")
    x, y = victim.split("test", 100)
    flags = masking_checks(victim.model, x, y, victim.task.domain)
    assert set(flags) == set(MASKING_CHECKS)
    assert not any(flags.values())
    assert not victim.model.training


def test_randomized_and_quantized_models_are_flagged(trained: Callable[[str], Trained]) -> None:
    victim = trained("mlp")
    x, y = victim.split("test", 100)
    noisy = masking_checks(_Noisy(victim.model).eval(), x, y, UNBOUNDED)
    assert noisy["randomized_output"]
    quantized = masking_checks(_Quantized(victim.model).eval(), x, y, UNBOUNDED)
    assert quantized["vanishing_gradients"] and not quantized["randomized_output"]
    assert quantized["unbounded_attack_fails"]  # the attack sees no gradient to follow


def test_text_model_is_checked_in_embedding_space(trained: Callable[[str], Trained]) -> None:
    victim = trained("transformer")
    x, y = victim.split("test", 50)
    flags = masking_checks(victim.model, x, y, victim.task.domain)
    assert set(flags) == set(MASKING_CHECKS)
    assert not any(flags.values()), flags
    assert isinstance(victim.model, TransformerClassifier)
    noisy = masking_checks(_NoisyText(victim.model).eval(), x, y, victim.task.domain)
    assert noisy["randomized_output"] and not noisy["vanishing_gradients"]
