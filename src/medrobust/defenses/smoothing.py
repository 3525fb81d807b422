"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified adversarial robustness via
randomized smoothing"): training noise, Monte-Carlo prediction and L2 certification in one place.

The smoothed classifier ``g(x) = argmax_c P(f(x + d) = c)``, ``d ~ N(0, sigma^2 I)``, of a base
classifier ``f`` is robust around ``x`` within the L2 radius ``sigma * Phi^-1(pA)``, where ``pA``
is the probability of its top class. :class:`SmoothedClassifier` estimates ``g`` by sampling
(the paper's PREDICT, which abstains when the top two classes cannot be told apart) and certifies
a lower bound of that radius that holds with probability at least ``1 - alpha`` (the paper's
CERTIFY). :class:`GaussianNoiseAugmentation` trains the base classifier under the same noise,
without which ``f`` rarely classifies noisy inputs well enough to certify anything.

``sigma`` must be fixed before the inputs are seen: chosen for the task, the modality or the
data's metadata (for example the scale of standardised features), never computed from the input
being classified. Noise whose level depends on ``x`` makes ``g`` a different function at each
point, and the certificate, which compares ``g`` at ``x`` and at ``x + delta``, no longer holds.

Shape:
    x (N, ...) -> labels (N,) int64 with -1 for abstain; radii (N,) float64
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.stats import beta, binom, norm
from torch import nn

from medrobust.attacks.adaptive import EOT
from medrobust.attacks.base import (
    check_finite_inputs,
    check_forward_input,
    check_logits,
    check_model_dtype,
    check_module,
    check_tensor,
    model_placement,
    run_model,
)
from medrobust.data.task import Task
from medrobust.defenses.base import Defense, check_radii, radius_metric
from medrobust.errors import InputError, ParameterError
from medrobust.metrics import certified_accuracy
from medrobust.types import UNBOUNDED, Modality
from medrobust.validation import check_number

ABSTAIN = -1
"""The label :meth:`SmoothedClassifier.predict` and :meth:`SmoothedClassifier.certify` give
when they abstain."""


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_sigma(owner: str, sigma: Any) -> float:
    ok = isinstance(sigma, int | float | np.floating) and not isinstance(sigma, bool)
    if not ok or not math.isfinite(sigma) or sigma <= 0:
        raise ParameterError(
            f"The 'sigma' parameter of {owner} must be a finite number > 0 (a noise level fixed "
            f"by the task or modality, not by the input). Got {sigma!r} instead."
        )
    return float(sigma)


def _check_alpha(owner: str, alpha: Any) -> float:
    ok = isinstance(alpha, int | float | np.floating) and not isinstance(alpha, bool)
    if not ok or not 0 < alpha < 1:
        raise ParameterError(
            f"The 'alpha' parameter of {owner} must be a number in the open interval (0, 1). "
            f"Got {alpha!r} instead."
        )
    return float(alpha)


def two_sided_binomial_p(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The p-values of ``scipy.stats.binomtest(k, n, 0.5)`` (two-sided), for arrays at once.

    At p = 0.5 the binomial distribution is symmetric, so the exact two-sided p-value is twice
    the smaller tail, capped at 1; this is what ``binomtest`` computes, one point at a time and
    about 200 us each, which would cost more than the forward passes of a small model.
    """
    k, n = np.asarray(k, dtype=np.int64), np.asarray(n, dtype=np.int64)
    tail = binom.cdf(np.minimum(k, n - k), n, 0.5)
    p_values: np.ndarray = np.minimum(1.0, 2.0 * tail)
    return p_values


def _device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


class SmoothedClassifier:
    """The Gaussian-smoothed version of a base classifier, with Monte-Carlo prediction and
    certification (Cohen, Rosenfeld & Kolter 2019).

    The smoothed classifier is random only through its Monte-Carlo estimate; it is not a
    differentiable model and answers with class labels, so an attack on it must estimate it too
    (e.g. PGD through the mean of the base model's probabilities over noise).

    Args:
        model: the base classifier; logits of shape (N, K) with K == ``num_classes``, or one
            logit for a binary task (class 1 when the logit is > 0).
        sigma: the noise standard deviation, > 0. It must come from the task, the modality or
            the data's metadata, never from the input: input-dependent noise breaks the
            certificate.
        num_classes: the number of classes (2 for a one-logit model).
        batch_size: the most noisy inputs passed to the model at once; bounds the memory.
            The noise comes from a generator seeded per call, so the same seed, batch_size and
            device give the same answers.

    Shape:
        x (N, ...) -> labels (N,) int64 (-1: abstain); radii (N,) float64
    """

    # Its predictions are Monte-Carlo estimates: a study must not read gradient-attack failures
    # against it as robustness (the certificate, not an attack, is its robustness claim).
    masks_gradients: ClassVar[bool] = True

    def __init__(
        self, model: nn.Module, sigma: float, *, num_classes: int, batch_size: int = 1000
    ) -> None:
        owner = type(self).__name__
        if not isinstance(model, nn.Module):
            raise ParameterError(
                f"The 'model' parameter of {owner} must be a torch.nn.Module. "
                f"Got {type(model).__name__} instead."
            )
        self.model = model
        self.sigma = _check_sigma(owner, sigma)
        if not _is_int(num_classes) or num_classes < 2:
            raise ParameterError(
                f"The 'num_classes' parameter of {owner} must be an integer >= 2. "
                f"Got {num_classes!r} instead."
            )
        self.num_classes = int(num_classes)
        self.batch_size = int(
            check_number(owner, "batch_size", batch_size, minimum=1, integer=True)
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, sigma={self.sigma!r}, "
            f"num_classes={self.num_classes}, batch_size={self.batch_size})"
        )

    def predict(
        self, x: torch.Tensor, *, n: int = 100, alpha: float = 0.001, seed: int = 0
    ) -> np.ndarray:
        """The paper's PREDICT: the smoothed classifier's label, or -1 where it abstains.

        Counts the base classifier's classes on ``n`` noisy copies of each input and returns the
        top class when a two-sided binomial test (``scipy.stats.binomtest``'s p-value, computed
        for all inputs at once by :func:`two_sided_binomial_p`) rejects that the top two classes
        are equally likely at level ``alpha``; the returned label then differs from ``g(x)``
        with probability at most ``alpha``.

        Shape:
            x (N, ...) -> (N,) int64
        """
        owner = f"{type(self).__name__}.predict"
        n = int(check_number(owner, "n", n, minimum=1, integer=True))
        alpha = _check_alpha(owner, alpha)
        generator_seed = int(check_number(owner, "seed", seed, minimum=0, integer=True))
        counts = self._sample(x, n, generator_seed, owner)[0].numpy()
        order = np.argsort(-counts, axis=1, kind="stable")
        top, second = order[:, 0], order[:, 1]
        rows = np.arange(len(counts))
        n_top, n_second = counts[rows, top], counts[rows, second]
        p_values = two_sided_binomial_p(n_top, n_top + n_second)
        return np.where(p_values <= alpha, top, ABSTAIN).astype(np.int64)

    def certify(
        self,
        x: torch.Tensor,
        *,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The paper's CERTIFY: labels and certified L2 radii, abstaining with -1 and radius 0.

        Picks the top class from ``n0`` noisy copies of each input, counts it in ``n`` fresh
        copies, and takes the one-sided ``1 - alpha`` Clopper-Pearson lower bound ``pA_lower``
        of its probability. Where ``pA_lower > 0.5`` the smoothed classifier returns that label
        on the whole L2 ball of radius ``sigma * Phi^-1(pA_lower)`` around the input, with
        probability at least ``1 - alpha`` over the sampling; elsewhere it abstains.

        Shape:
            x (N, ...) -> labels (N,) int64, radii (N,) float64
        """
        owner = f"{type(self).__name__}.certify"
        n0 = int(check_number(owner, "n0", n0, minimum=1, integer=True))
        n = int(check_number(owner, "n", n, minimum=1, integer=True))
        alpha = _check_alpha(owner, alpha)
        generator_seed = int(check_number(owner, "seed", seed, minimum=0, integer=True))
        # One generator for both stages: the estimation noise is fresh, independent of the
        # selection noise, as the bound requires.
        selection, estimation = self._sample(x, (n0, n), generator_seed, owner)
        top = selection.argmax(dim=1).numpy()
        k = estimation.numpy()[np.arange(len(top)), top]
        # beta.ppf is undefined for k = 0, where the bound is 0 anyway.
        p_lower = np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
        certified = p_lower > 0.5
        labels = np.where(certified, top, ABSTAIN).astype(np.int64)
        radii = np.where(certified, self.sigma * norm.ppf(np.where(certified, p_lower, 0.5)), 0.0)
        return labels, radii.astype(np.float64)

    def _sample(
        self, x: torch.Tensor, num: int | tuple[int, ...], seed: int, owner: str
    ) -> list[torch.Tensor]:
        """Class counts (N, num_classes) of the base model on noisy copies of ``x``, one count
        tensor per entry of ``num``, all from one generator seeded with ``seed``.

        Noise for many copies of many inputs is drawn at once, in chunks of at most
        ``batch_size`` noisy inputs, so the cost is that of the forward passes.
        """
        self._validate(x, owner)
        nums = (num,) if isinstance(num, int) else num
        model = self.model
        device = _device(model)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                x_in = x.detach().to(device)
                generator = torch.Generator(device=device)
                generator.manual_seed(seed)
                return [self._counts(x_in, copies, generator, owner) for copies in nums]
        finally:
            model.train(was_training)

    def _counts(
        self, x: torch.Tensor, copies: int, generator: torch.Generator, owner: str
    ) -> torch.Tensor:
        classes = self.num_classes
        # One flat count per (input, class), filled with index_add_: per chunk only a handful of
        # tensor calls, which matters where the model's forward pass is as cheap as the noise.
        counts = torch.zeros(len(x) * classes, dtype=torch.int64, device=x.device)
        total = len(x) * copies
        rows = torch.arange(min(self.batch_size, total), device=x.device)
        ones = torch.ones(len(rows), dtype=torch.int64, device=x.device)
        for start in range(0, total, self.batch_size):
            size = min(self.batch_size, total - start)
            owners = torch.div(rows[:size] + start, copies, rounding_mode="floor")
            noisy = torch.randn(
                (size, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype
            )
            noisy.mul_(self.sigma).add_(x[owners])
            labels = self._labels(noisy, owner)
            counts.index_add_(0, labels.add_(owners, alpha=classes), ones[:size])
        return counts.view(len(x), classes).cpu()

    def _labels(self, noisy: torch.Tensor, owner: str) -> torch.Tensor:
        logits = check_logits(
            owner,
            run_model(owner, self.model, noisy, what="noisy inputs"),
            len(noisy),
            f"inputs of shape {tuple(noisy.shape)}",
        )
        outputs = logits.shape[1]
        if outputs == 1 and self.num_classes == 2:
            return (logits[:, 0] > 0).long()
        if outputs != self.num_classes:
            raise InputError(
                f"{owner} was built with num_classes={self.num_classes} but the model returns "
                f"{outputs} logit(s); use num_classes=2 for one logit, else num_classes=K."
            )
        return logits.argmax(dim=1)

    def _validate(self, x: torch.Tensor, owner: str) -> None:
        """``x`` must be a non-empty dense floating-point batch (N, ...) in the model's dtype
        (it is not cast), on any device, free of NaN and Inf."""
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{owner} needs a torch tensor x. Got {type(x).__name__}.")
        check_tensor(owner, "x", x)
        if not x.is_floating_point():
            raise InputError(f"{owner} needs floating-point inputs. Got dtype {x.dtype} instead.")
        if x.dim() < 2 or len(x) == 0:
            raise InputError(
                f"{owner} needs a non-empty batch of shape (N, ...). Got shape {tuple(x.shape)}."
            )
        check_model_dtype(owner, x, model_placement(owner, self.model)[1])
        check_finite_inputs(owner, x, UNBOUNDED)


def smoothed_certified_accuracy(
    labels: np.ndarray | torch.Tensor | Sequence[int],
    radii: np.ndarray | torch.Tensor | Sequence[float],
    y: np.ndarray | torch.Tensor | Sequence[int],
    radii_grid: np.ndarray | torch.Tensor | Sequence[float],
) -> np.ndarray:
    """:func:`medrobust.metrics.certified_accuracy` of :meth:`SmoothedClassifier.certify`'s
    output: a point counts if its label is right and its radius >= r; abstentions (label -1)
    count as wrong.

    Shape:
        labels (N,), radii (N,), y (N,), radii_grid (R,) -> (R,) float64
    """
    predicted = np.asarray(torch.as_tensor(labels).detach().cpu())
    truth = np.asarray(torch.as_tensor(y).detach().cpu())
    if predicted.shape != truth.shape:
        raise InputError(
            f"smoothed_certified_accuracy needs labels and y of the same shape. Got "
            f"{predicted.shape} and {truth.shape}."
        )
    correct = (predicted == truth) & (predicted != ABSTAIN)
    return certified_accuracy(radii, correct, radii_grid)


class GaussianNoiseAugmentation(nn.Module):
    """Gaussian data augmentation for randomized smoothing (Cohen et al. 2019, Section 3.3): adds
    ``N(0, sigma^2)`` noise to the inputs in training mode and is the identity in eval mode, so
    that ``fit(GaussianNoiseAugmentation(model, sigma), ...)`` trains ``model`` to classify noisy
    inputs. Smooth the trained ``model`` (not the wrapper) with the same ``sigma``.

    The noise comes from torch's global generator, which ``fit`` seeds, so training stays
    deterministic for a seed.

    Args:
        model: the base classifier to train.
        sigma: the noise standard deviation, > 0 (fixed by the task, not by the input).

    Shape:
        (N, ...) -> (N, K), like ``model``
    """

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.sigma = _check_sigma(type(self).__name__, sigma)
        self.model = check_module(type(self).__name__, model)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = x + self.sigma * torch.randn_like(x)
        out: torch.Tensor = self.model(x)
        return out

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class SoftSmoothing(nn.Module):
    """The soft smoothed classifier (Salman et al. 2019): the mean of the base model's class
    probabilities over ``samples`` Gaussian noise draws, returned as log-probabilities (one logit
    for a one-logit model), so that gradient attacks can target the smoothed classifier itself.
    Its noise stays on in eval mode; seed torch's global generator for repeatable answers.

    Args:
        model: the base classifier.
        sigma: the noise standard deviation (> 0).
        samples: noise draws per input (>= 1).

    Shape:
        like ``model``; the input must be a floating-point batch (N, ...) on the model's device
        and in its dtype (an InputError otherwise; values are not checked); an empty batch gives
        empty logits.
    """

    def __init__(self, model: nn.Module, sigma: float, *, samples: int = 32) -> None:
        super().__init__()
        self.model = check_module(type(self).__name__, model)
        self.sigma = _check_sigma(type(self).__name__, sigma)
        self.samples = int(
            check_number(type(self).__name__, "samples", samples, minimum=1, integer=True)
        )
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_forward_input(owner, x, self.model)
        repeated = x.repeat_interleave(self.samples, dim=0)
        logits = check_logits(
            owner,
            run_model(owner, self.model, repeated + self.sigma * torch.randn_like(repeated)),
            len(repeated),
            f"inputs of shape {tuple(repeated.shape)}",
        )
        if logits.shape[1] == 1:
            p = torch.sigmoid(logits).view(len(x), self.samples).mean(dim=1).clamp(1e-7, 1 - 1e-7)
            return torch.logit(p)[:, None]
        # Explicit sizes: an empty batch has no size to infer for a -1.
        probs = logits.softmax(dim=1).view(len(x), self.samples, logits.shape[1]).mean(dim=1)
        return probs.clamp_min(1e-12).log()

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, samples={self.samples}"


class RandomizedSmoothing(Defense):
    """Randomized smoothing as a defense (Cohen, Rosenfeld & Kolter 2019): the base model trains
    under Gaussian noise; at inference the soft smoothed classifier (:class:`SoftSmoothing`)
    answers and is attacked, and :class:`SmoothedClassifier` certifies L2 radii.

    Its answers are Monte-Carlo estimates, so a study attacks it also with EOT (the expectation
    over its noise). ``sigma`` is a parameter of the task or modality (a study sets it per
    modality), never computed from the input: input-dependent noise breaks the certificate.

    Args:
        sigma: noise standard deviation in input units (> 0).
        samples: noise draws per prediction of the soft smoothed classifier (>= 1).
        n0, n, alpha: CERTIFY's selection and estimation samples and its error probability.
        radii: the L2 radii at which certified accuracy is reported.
        eot_samples: passes the adaptive (EOT) attacker averages per gradient.
        batch_size: noisy inputs per forward pass when certifying.

    Shape:
        like the model
    """

    name = "randomized_smoothing"
    modalities = frozenset({Modality.IMAGE, Modality.ECG, Modality.TABULAR})
    adaptive_attack = "eot"

    def __init__(
        self,
        *,
        sigma: float,
        samples: int = 32,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        radii: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
        eot_samples: int = 4,
        batch_size: int = 2000,
    ) -> None:
        owner = type(self).__name__
        self.sigma = _check_sigma(owner, sigma)
        for name, value in (
            ("samples", samples),
            ("n0", n0),
            ("n", n),
            ("eot_samples", eot_samples),
            ("batch_size", batch_size),
        ):
            check_number(owner, name, value, minimum=1, integer=True)
        self.samples, self.n0, self.n = int(samples), int(n0), int(n)
        self.eot_samples, self.batch_size = int(eot_samples), int(batch_size)
        self.alpha = _check_alpha(owner, alpha)
        self.radii = check_radii(owner, radii)

    def params(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma,
            "samples": self.samples,
            "n0": self.n0,
            "n": self.n,
            "alpha": self.alpha,
            "radii": list(self.radii),
            "eot_samples": self.eot_samples,
            "batch_size": self.batch_size,
        }

    def training_module(self, model: nn.Module) -> nn.Module:
        """The base model under the certificate's noise (Gaussian data augmentation)."""
        return GaussianNoiseAugmentation(model, self.sigma)

    def wrap(self, model: nn.Module, task: Task) -> nn.Module:
        self._check_wrap(model, task)
        return SoftSmoothing(model, self.sigma, samples=self.samples).eval()

    def adaptive(self, wrapped: nn.Module) -> nn.Module:
        return EOT(super().adaptive(wrapped), samples=self.eot_samples)

    def certify(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, *, seed: int
    ) -> dict[str, float]:
        seed = self._check_certify(model, task, x, y, seed)
        smoothed = SmoothedClassifier(
            model, self.sigma, num_classes=task.num_classes, batch_size=self.batch_size
        )
        labels, radii = smoothed.certify(x, n0=self.n0, n=self.n, alpha=self.alpha, seed=seed)
        accuracy = smoothed_certified_accuracy(labels, radii, y, self.radii)
        return {
            **{radius_metric(r): float(a) for r, a in zip(self.radii, accuracy, strict=True)},
            "certified_abstain_rate": float((labels == ABSTAIN).mean()),
            "certified_mean_radius": float(radii.mean()),
        }
