"""Attacks on clinical text: FGSM and PGD in embedding space, and HotFlip token substitution.

Gradients cannot move token ids, so the field's NLP robustness studies attack text models in one of
two ways, and this module has both:

- in **embedding space** (:class:`EmbeddingFGSM`, :class:`EmbeddingPGD`), as adversarial training
  for text does (Miyato et al. 2017): the token embeddings are perturbed inside an L-inf or L2
  ball. The result need not be the embedding of any word, so this measures a worst case of the
  model's geometry, an upper bound on what editing the text can do, and its output is a tensor
  of embeddings that only ``model.forward_embeddings`` can score;
- on the **tokens themselves** (:class:`HotFlip`, Ebrahimi et al. 2018): whole tokens are
  replaced by other vocabulary tokens chosen by a first-order estimate of the loss, under a
  budget of changed tokens, which gives real text whose changes a clinician can read
  (:func:`medrobust.models.text.decode`).

All three take the int64 ids of :func:`medrobust.models.prepare_inputs` and a model that implements
:class:`~medrobust.models.text.TextModel` (:class:`~medrobust.models.text.TransformerClassifier`,
:class:`~medrobust.models.text.HuggingFaceClassifier`).

Units of the embedding budget: eps is measured in the units of ``model.embed(ids)``.
``TransformerClassifier.embed`` multiplies its table by sqrt(dim), and its LSA initialisation
scales the vectors to unit standard deviation, so an entry is about 1 in size: an L-inf eps of
0.1 moves each coordinate by a tenth of a typical entry, and two different words lie about
sqrt(2 * dim) apart in L2 (8 for dim 32). The L2 norm is taken per example over the whole
(L, dim) perturbation of its non-padding positions; padding positions are never perturbed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.attacks.base import Attack, check_finite, project, text_model
from medrobust.attacks.gradient import (
    IterativeSettings,
    _adversarial,
    _expand,
    _objective,
    _step_direction,
)
from medrobust.errors import ParameterError
from medrobust.metrics import perturbation_norms
from medrobust.models.text import SPECIAL_TOKENS, TextModel
from medrobust.training import per_example_loss
from medrobust.types import Modality, Norm, ThreatModel
from medrobust.validation import check_number

# train_tokenizer gives the special tokens the first ids, in the order of SPECIAL_TOKENS.
DEFAULT_SPECIAL_IDS = tuple(range(len(SPECIAL_TOKENS)))


def _per_example_objective(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor:
    """Per-example loss to ascend (the summands of ``gradient._objective``), shape (N,)."""
    loss = per_example_loss(logits, target if target is not None else y)
    return -loss if target is not None else loss


class _EmbeddingAttack(Attack):
    """Shared parts of the embedding-space attacks: the ball around ``model.embed(x)`` with the
    padding positions held fixed, scoring by ``forward_embeddings`` and sizes in embedding units.
    """

    modalities = frozenset({Modality.TEXT})
    inputs = "tokens"
    perturbs = "embeddings"

    @property
    def _ball(self) -> ThreatModel:
        # Embeddings are unbounded whatever the task's domain says about its raw inputs.
        return ThreatModel(self.threat.norm, self.threat.eps)

    def _keep(self, model: TextModel, ids: torch.Tensor) -> torch.Tensor:
        """Which positions may move: (N, L, 1) bool, False at padding."""
        return (ids != model.pad_id).unsqueeze(-1)

    def _to_ball(
        self, embeddings: torch.Tensor, clean: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        delta = torch.where(keep, embeddings - clean, torch.zeros_like(clean))
        return project(clean + delta, clean, self._ball)

    def _project(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        text = text_model(model, type(self).__name__)
        return self._to_ball(x_adv, text.embed(x), self._keep(text, x))

    def adversarial_logits(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, *, batch_size: int = 512
    ) -> torch.Tensor:
        """``model.forward_embeddings(x_adv, x)`` in eval mode without gradients, batched.

        Shape:
            x (N, L) int64 ids, x_adv (N, L, dim) embeddings -> (N, K) on the CPU
        """
        text = text_model(model, type(self).__name__)
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            with torch.no_grad():
                outputs = [
                    text.forward_embeddings(
                        x_adv[i : i + batch_size].to(device), x[i : i + batch_size].to(device)
                    ).cpu()
                    for i in range(0, len(x), batch_size)
                ]
        finally:
            model.train(was_training)
        return torch.cat(outputs) if outputs else torch.empty(0)

    def perturbation_sizes(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor
    ) -> dict[str, np.ndarray]:
        """L-inf, L2 and L0 of ``x_adv - model.embed(x)`` per example (embedding units)."""
        text = text_model(model, type(self).__name__)
        device = next(model.parameters()).device
        with torch.no_grad():
            clean = text.embed(x.to(device))
        return perturbation_norms(clean, x_adv.to(device))


class EmbeddingFGSM(_EmbeddingAttack):
    """FGSM (Goodfellow et al. 2015) on the token embeddings of a text model, as in adversarial
    training for text (Miyato et al. 2017): one step of size eps along the sign (L-inf) or the
    normalised gradient (L2) of the loss with respect to ``model.embed(x)``.

    Args:
        **kwargs: norm ("linf" or "l2"), eps (in embedding units, see the module docstring),
            domain (kept for a uniform interface; embeddings are not clipped), seed (unused:
            the attack is deterministic), stop_when_adversarial (no effect for one step).

    Shape:
        x (N, L) int64 ids -> (N, L, dim) float embeddings; padding positions are unperturbed.
    """

    name = "embedding_fgsm"

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        text = text_model(model, type(self).__name__)
        clean = text.embed(x).detach()
        keep = self._keep(text, x)
        var = clean.clone().requires_grad_(True)
        grad = torch.autograd.grad(_objective(text.forward_embeddings(var, x), y, target), var)[0]
        grad = torch.where(keep, grad, torch.zeros_like(grad))
        return clean + self.eps * _step_direction(grad, self.threat.norm)


class EmbeddingPGD(_EmbeddingAttack, IterativeSettings):
    """PGD (Madry et al. 2018) on the token embeddings of a text model, L-inf or L2, with an
    optional random start and restarts; the embedding-space attack of the NLP robustness studies
    (e.g. Zhu et al. 2020, FreeLB). Points that are already adversarial stop being perturbed
    when ``stop_when_adversarial`` is on.

    Args:
        steps, step_size, random_start, restarts, loss: see
            :class:`~medrobust.attacks.gradient.IterativeSettings`; the step size is in embedding
            units, and a random start covers the non-padding positions.
        **kwargs: norm ("linf" or "l2"), eps (in embedding units, see the module docstring),
            domain (kept for a uniform interface; embeddings are not clipped),
            stop_when_adversarial, seed (see :class:`~medrobust.attacks.base.Attack`).

    Shape:
        x (N, L) int64 ids -> (N, L, dim) float embeddings; padding positions are unperturbed.
    """

    name = "embedding_pgd"

    def __init__(
        self,
        *,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._set_iterative(type(self).__name__, steps, step_size, random_start, restarts, loss)

    def params(self) -> dict[str, Any]:
        return {**super().params(), **self._iterative_params()}

    def _random_start(
        self, clean: torch.Tensor, keep: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """A uniform point of the ball around ``clean`` in the non-padding coordinates."""
        mask = keep.to(clean.dtype)
        if self.threat.norm is Norm.LINF:
            noise = torch.rand(clean.shape, generator=generator, device=clean.device)
            return self._to_ball(clean + (2 * noise.to(clean.dtype) - 1) * self.eps, clean, keep)
        direction = torch.randn(clean.shape, generator=generator, device=clean.device)
        direction = direction.to(clean.dtype) * mask
        direction = direction / _expand(direction.flatten(1).norm(dim=1).clamp_min(1e-12), clean)
        dims = (mask.flatten(1).sum(dim=1) * clean.shape[-1]).clamp_min(1.0)
        radius = torch.rand(len(clean), generator=generator, device=clean.device)
        radius = radius.to(clean.dtype).pow(1.0 / dims) * self.eps
        return self._to_ball(clean + direction * _expand(radius, clean), clean, keep)

    def _run(
        self,
        model: TextModel,
        ids: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One restart; returns the adversarial embeddings and which of them fool the model."""
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        with torch.no_grad():
            clean = model.embed(ids)
        keep = self._keep(model, ids)
        emb = self._random_start(clean, keep, generator) if self.random_start else clean.clone()
        done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        for _ in range(self.steps):
            active = (~done).nonzero().squeeze(1)
            if len(active) == 0:
                break
            var = emb[active].clone().requires_grad_(True)
            logits = model.forward_embeddings(var, ids[active])
            t_active = target[active] if target is not None else None
            if self.stop_when_adversarial:
                fooled = _adversarial(logits.detach(), y[active], t_active)
                done[active[fooled]] = True
            grad = torch.autograd.grad(self._loss_to_ascend(logits, y[active], t_active), var)[0]
            grad = torch.where(keep[active], grad, torch.zeros_like(grad))
            moved = self._to_ball(
                var.detach() + step * _step_direction(grad, self.threat.norm),
                clean[active],
                keep[active],
            )
            emb[active] = torch.where(_expand(done[active], moved), emb[active], moved)
        with torch.no_grad():
            fooled = _adversarial(model.forward_embeddings(emb, ids), y, target)
        return emb, fooled

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        text = text_model(model, type(self).__name__)
        generator = torch.Generator(device=x.device)
        generator.manual_seed(self.seed)
        best, fooled = self._run(text, x, y, target, generator)
        for _ in range(self.restarts - 1):
            todo = (~fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            t_todo = target[todo] if target is not None else None
            candidate, hit = self._run(text, x[todo], y[todo], t_todo, generator)
            best[todo] = torch.where(_expand(hit, candidate), candidate, best[todo])
            fooled[todo] = hit
        return best


class HotFlip(Attack):
    """HotFlip token substitution (Ebrahimi et al. 2018), the word-level variant with a
    JSMA-style greedy search under an L0 budget of changed tokens.

    Replacing the token at position i by vocabulary token v changes the loss by about
    ``(E[v] - E[x_i]) · g_i``, where E is the model's (scaled) embedding table and g_i the loss
    gradient with respect to the embedding at position i. Each step scores every (position,
    token) pair of every active example from one forward and backward pass, takes the
    ``candidates`` best pairs, re-scores them with a real forward pass (the first-order estimate
    is rough for whole-token jumps) and applies the best one. An example stops once it is
    adversarial (``stop_when_adversarial``), once its budget is spent or when no admissible pair
    is left.

    What may change: every position whose id is not a special id (``special_ids``, which always
    include the model's ``pad_id``) and that was not changed before; each position changes at
    most once. Special ids are never inserted, and replacements are real vocabulary ids in
    ``[0, vocab_size)``. [UNK] counts as special: an [UNK] position stands for a word the
    tokenizer lost, which a substitution could not show as an edit of the original text, and
    inserting [UNK] would stand for no particular word.

    Budget: ``eps`` is the largest fraction of an example's real tokens (non-special,
    non-padding) that may change, rounded down (an L0 ThreatModel's eps, as for JSMA); eps = 0
    changes nothing, and a text too short for the fraction to reach one token is left as it is.
    ``max_tokens`` additionally caps the count, so ``eps=1.0, max_tokens=k`` allows exactly up
    to k changed tokens per example.

    Args:
        candidates: (position, token) pairs per example and step re-scored with a real forward
            pass; 1 is the plain first-order HotFlip (one forward and backward pass per step).
        max_tokens: optional cap on the number of changed tokens per example.
        special_ids: ids never changed and never inserted; default the ids of
            ``SPECIAL_TOKENS`` ([PAD], [UNK], [CLS], [SEP] = 0..3) that ``train_tokenizer``
            assigns. For a Hugging Face tokenizer pass ``tokenizer.all_special_ids``.
        max_memory_mb: bound on the memory of the (position, token) scores; examples are
            scored in chunks whose (chunk, L, vocab_size) float scores fit in it (one example at
            a time where even one does not).
        **kwargs: eps (fraction of real tokens, in [0, 1]), norm (only "l0"), domain (kept for a
            uniform interface; ids are checked against the vocabulary), stop_when_adversarial,
            seed (unused: the search is deterministic).

    Shape:
        x (N, L) int64 ids -> (N, L) int64 ids
    """

    name = "hotflip"
    norms = (Norm.L0,)
    modalities = frozenset({Modality.TEXT})
    inputs = "tokens"

    def __init__(
        self,
        *,
        candidates: int = 8,
        max_tokens: int | None = None,
        special_ids: Sequence[int] = DEFAULT_SPECIAL_IDS,
        max_memory_mb: float = 256.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("norm", Norm.L0)
        super().__init__(**kwargs)
        check_number("HotFlip", "candidates", candidates, minimum=1, integer=True)
        if max_tokens is not None:
            check_number("HotFlip", "max_tokens", max_tokens, minimum=0, integer=True)
        check_finite("HotFlip", "max_memory_mb", max_memory_mb, minimum=1)
        if (
            isinstance(special_ids, str | bytes)
            or not isinstance(special_ids, Sequence)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in special_ids)
            or any(i < 0 for i in special_ids)
        ):
            raise ParameterError(
                "The 'special_ids' parameter of HotFlip must be a sequence of integers >= 0. "
                f"Got {special_ids!r} instead."
            )
        self.candidates = int(candidates)
        self.max_tokens = int(max_tokens) if max_tokens is not None else None
        self.special_ids = tuple(sorted(set(special_ids)))
        self.max_memory_mb = float(max_memory_mb)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "candidates": self.candidates,
            "max_tokens": self.max_tokens,
            "special_ids": list(self.special_ids),
            "max_memory_mb": self.max_memory_mb,
        }

    def _protected_ids(self, model: TextModel, device: torch.device) -> torch.Tensor:
        """(vocab_size,) bool: ids never changed and never inserted."""
        protected = torch.zeros(model.vocab_size, dtype=torch.bool, device=device)
        ids = [i for i in (*self.special_ids, model.pad_id) if 0 <= i < model.vocab_size]
        protected[torch.tensor(ids, dtype=torch.long, device=device)] = True
        return protected

    def budget(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Largest number of tokens this attack may change in each example of ``x``.

        Shape:
            x (N, L) int64 ids -> (N,) int64
        """
        text = text_model(model, type(self).__name__)
        protected = self._protected_ids(text, x.device)
        real = (~protected[x.clamp(0, text.vocab_size - 1)]).sum(dim=1)
        allowed = torch.floor(real.double() * self.eps + 1e-9).long()
        if self.max_tokens is not None:
            allowed = allowed.clamp(max=self.max_tokens)
        return allowed

    def _project(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """The ids as searched: the budget, the special ids and the vocabulary are enforced by
        the search itself, and there is no ball to project token ids onto."""
        del model, x
        return x_adv

    def perturbation_sizes(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor
    ) -> dict[str, np.ndarray]:
        """``tokens_changed`` (= ``l0``) per example; L-inf and L2 are NaN for token ids."""
        del model
        changed = (x_adv.detach().cpu() != x.detach().cpu()).sum(dim=1).double().numpy()
        nan = np.full(len(changed), math.nan)
        return {"linf": nan, "l2": nan.copy(), "l0": changed, "tokens_changed": changed.copy()}

    def _first_order(
        self,
        grad: torch.Tensor,
        emb: torch.Tensor,
        ids: torch.Tensor,
        free: torch.Tensor,
        table: torch.Tensor,
        protected: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``candidates`` best (position, token) pairs per example by the first-order gain
        ``(E[v] - E[x_i]) · g_i``, in chunks of examples that keep the (b, L, V) scores within
        ``max_memory_mb``. Returns positions, tokens and whether each pair is admissible."""
        length, vocab = ids.shape[1], table.shape[0]
        k = min(self.candidates, length * vocab)
        # The scores are the one (b, L, V) tensor; it is masked in place.
        chunk = max(1, int(self.max_memory_mb * 2**20 // (grad.element_size() * length * vocab)))
        positions, tokens, valid = [], [], []
        for i in range(0, len(ids), chunk):
            g, e = grad[i : i + chunk], emb[i : i + chunk]
            scores = g @ table.T  # (b, L, V)
            scores.sub_((g * e).sum(dim=-1, keepdim=True))
            scores.masked_fill_(~free[i : i + chunk, :, None], -math.inf)
            scores.masked_fill_(protected[None, None, :], -math.inf)
            scores.scatter_(2, ids[i : i + chunk, :, None], -math.inf)  # no change is no flip
            best, flat = scores.flatten(1).topk(k, dim=1)
            positions.append(flat // vocab)
            tokens.append(flat % vocab)
            valid.append(torch.isfinite(best))
        return torch.cat(positions), torch.cat(tokens), torch.cat(valid)

    def _perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        text = text_model(model, type(self).__name__)
        device = x.device
        protected = self._protected_ids(text, device)
        with torch.no_grad():
            table = text.embed(torch.arange(text.vocab_size, device=device)[None])[0]
        ids = x.clone()
        free = ~protected[ids]
        budget = self.budget(model, x)
        changed = torch.zeros(len(ids), dtype=torch.long, device=device)
        done = budget == 0
        rows = torch.arange(len(ids), device=device)
        for _ in range(int(budget.max())):
            active = (~done).nonzero().squeeze(1)
            if len(active) == 0:
                break
            current = ids[active]
            emb = text.embed(current).detach().requires_grad_(True)
            logits = text.forward_embeddings(emb, current)
            t_active = target[active] if target is not None else None
            grad = torch.autograd.grad(_objective(logits, y[active], t_active), emb)[0]
            go = torch.ones(len(active), dtype=torch.bool, device=device)
            if self.stop_when_adversarial:
                go = ~_adversarial(logits.detach(), y[active], t_active)
            positions, tokens, valid = self._first_order(
                grad, emb.detach(), current, free[active], table, protected
            )
            choice = torch.zeros(len(active), dtype=torch.long, device=device)
            if positions.shape[1] > 1:
                choice = self._rescore(text, current, positions, tokens, valid, y[active], t_active)
            local = rows[: len(active)]
            position, token = positions[local, choice], tokens[local, choice]
            go &= valid[local, choice]
            move = active[go]
            ids[move, position[go]] = token[go]
            free[move, position[go]] = False
            changed[move] += 1
            done[active[~go]] = True
            done |= changed >= budget
        return ids

    def _rescore(
        self,
        model: TextModel,
        current: torch.Tensor,
        positions: torch.Tensor,
        tokens: torch.Tensor,
        valid: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        """Index of the candidate with the highest real objective, per example, shape (B,)."""
        rows = torch.arange(len(current), device=current.device)
        scores = torch.full(positions.shape, -math.inf, device=current.device)
        with torch.no_grad():
            for j in range(positions.shape[1]):
                variant = current.clone()
                variant[rows, positions[:, j]] = tokens[:, j]
                logits = model.forward_embeddings(model.embed(variant), variant)
                objective = _per_example_objective(logits, y, target).to(scores.dtype)
                scores[:, j] = torch.where(valid[:, j], objective, -math.inf)
        return scores.argmax(dim=1)
