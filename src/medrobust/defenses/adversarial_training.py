"""Adversarial training with an adaptive, per-example budget: PGD adversarial training (Madry et
al. 2018) and TRADES (Zhang et al. 2019).

Both defenses train the model on examples crafted against its current weights, through
:func:`medrobust.training.fit` and its ``adversary`` hook. The budget of example ``i`` is
``eps * scale_i``, where the ``policy`` decides the scale:

- ``"fixed"``: 1 for every example (plain Madry et al.);
- ``"class"``: a scale per class. By default the task's positive (disease) class trains against
  the full budget and every other class against half of it: in a medical task a missed
  diagnosis is the costly error, so the disease class gets the full protection, and the smaller
  budget on the other classes costs less clean accuracy than a full one would;
- ``"group"``: a scale per metadata group of the task (e.g. the MIT-BIH record, keyed by
  ``str(group)``), 1 for groups not listed;
- ``"quality"``: a scale per input-quality bin. Quality is estimated per example (the RMS
  contrast, i.e. the standard deviation, of an image; for an ECG the standard deviation of the
  signal over that of its first difference, a signal-to-noise estimate) and binned by the
  quantiles of the training set into ``quality_bins`` bins; the lowest-quality bin trains
  against ``quality_low_scale`` of the budget, the highest against all of it, linearly in
  between. Low-quality inputs (flat, low-contrast images; noisy beats) lie near the decision
  boundary already, so a full budget around them covers points of the other class and trades
  much clean accuracy for little robustness; instance-adaptive adversarial training (Balaji et
  al. 2019) makes the same argument for a per-example budget;
- ``"curriculum"``: the budget grows linearly over the first ``curriculum_epochs`` epochs,
  ``eps * min(1, epoch / curriculum_epochs)`` (curriculum adversarial training, Cai et al.
  2018), through the ``set_epoch`` hook of :func:`~medrobust.training.fit`.

The budgets are exact: the examples of a batch are grouped by their budget, and each group is
attacked by its own attack instance (cached per budget), so every example gets the optimum of
its own ball, not of the largest one clipped. :class:`EpsilonPolicy` computes the budgets;
:meth:`AdversarialTraining.prepare` builds it for a task, so that a study or a test can inspect
the budgets without training.

Validation: :func:`~medrobust.training.fit` keeps the epoch with the lowest loss on adversarial
validation examples crafted by the same adversary (Rice et al. 2020). Those are crafted with the
model in eval mode, and then the curriculum is ignored (the full budget, scaled by the policy):
otherwise the first epochs, attacked with a fraction of the budget, would look the most robust.
Validation examples have no group in :class:`~medrobust.defenses.base.TrainingData`, so under
the ``"group"`` policy they get the default scale 1.

Text (Miyato et al. 2017): token ids cannot be perturbed by gradient steps, so text models train
against an embedding attack (``"embedding_fgsm"`` or ``"embedding_pgd"``) and the loss scores the
adversarial embeddings with ``model.forward_embeddings(x_adv, x)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.attacks import ATTACKS, Attack
from medrobust.attacks.base import text_model
from medrobust.data.task import Task
from medrobust.defenses.base import Defense, TrainingData
from medrobust.errors import InputError, ParameterError, UnknownNameError
from medrobust.training import classification_loss
from medrobust.types import UNBOUNDED, Domain, Modality, Norm
from medrobust.validation import check_number

POLICIES = ("fixed", "class", "group", "quality", "curriculum")
CONTINUOUS = frozenset({Modality.IMAGE, Modality.ECG, Modality.TABULAR})
QUALITY_MODALITIES = frozenset({Modality.IMAGE, Modality.ECG})
# Set by the defense itself; an attack_params entry for them would be silently overridden.
_RESERVED = ("eps", "norm", "domain", "seed")


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars, also inside lists, tuples and dicts, turned into the equal
    Python numbers, so that :meth:`AdversarialTraining.params` is JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def input_quality(x: torch.Tensor, modality: Modality | str) -> torch.Tensor:
    """A per-example estimate of input quality (higher is better).

    Images: the RMS contrast, the standard deviation over all pixels. ECG: a signal-to-noise
    estimate, the standard deviation of the signal over that of its first difference along time
    (a clean beat changes slowly between samples; noise makes successive samples jump).

    Args:
        x: a batch of images (N, C, H, W) or ECG signals (N, C, T).
        modality: ``"image"`` or ``"ecg"``.

    Shape:
        x (N, ...) -> (N,) float64 on the CPU

    Raises:
        ParameterError: another modality.
        InputError: ``x`` is not a floating-point batch with a time axis of at least 2 samples.
    """
    modality = Modality(modality)
    if modality not in QUALITY_MODALITIES:
        raise ParameterError(
            "Input quality is estimated for image and ECG inputs only. "
            f"Got {modality.value!r} instead."
        )
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise InputError(
            "input_quality needs a floating-point batch of shape (N, ...). "
            f"Got {getattr(x, 'shape', type(x).__name__)} instead."
        )
    flat = x.detach().cpu().double().flatten(1)
    if modality is Modality.IMAGE:
        return flat.std(dim=1, correction=0)
    if x.shape[-1] < 2:
        raise InputError(f"ECG quality needs at least 2 samples per signal. Got {x.shape[-1]}.")
    noise = x.detach().cpu().double().diff(dim=-1).flatten(1).std(dim=1, correction=0)
    return flat.std(dim=1, correction=0) / noise.clamp_min(1e-12)


class EpsilonPolicy:
    """The per-example budget ``eps_i = eps * scale_i`` of adaptive adversarial training,
    prepared for one task (see the module docstring for the policies).

    Build it with :meth:`AdversarialTraining.prepare`, which checks the policy against the task
    and computes the quality quantiles from the training inputs.

    Args:
        eps: the full budget.
        policy: one of :data:`POLICIES`.
        modality: the task's modality (the quality estimate depends on it).
        class_scale: the scale of each class (``"class"``).
        group_scale: the scale of each listed group, keyed by ``str(group)`` (``"group"``).
        quality_edges: the ``quality_bins - 1`` increasing quantiles of the training quality;
            bin ``b`` holds the qualities in ``[edge[b - 1], edge[b])`` (``"quality"``).
        quality_scales: the scale of each quality bin, lowest quality first (``"quality"``).
        curriculum_epochs: the epochs over which the budget ramps up (``"curriculum"``).
    """

    def __init__(
        self,
        *,
        eps: float,
        policy: str = "fixed",
        modality: Modality = Modality.TABULAR,
        class_scale: Sequence[float] = (),
        group_scale: Mapping[str, float] | None = None,
        quality_edges: np.ndarray | None = None,
        quality_scales: Sequence[float] = (),
        curriculum_epochs: int = 1,
    ) -> None:
        self.eps = float(eps)
        self.policy = policy
        self.modality = modality
        self.class_scale = tuple(float(s) for s in class_scale)
        self.group_scale = {str(k): float(v) for k, v in (group_scale or {}).items()}
        self.quality_edges = (
            np.asarray(quality_edges, dtype=np.float64) if quality_edges is not None else None
        )
        self.quality_scales = tuple(float(s) for s in quality_scales)
        self.curriculum_epochs = int(curriculum_epochs)
        self.ramp = 1.0  # the curriculum's fraction of the budget; 1 until set_epoch says other

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Start epoch ``epoch`` (1-based) of ``epochs``: the curriculum's ramp is
        ``min(1, epoch / curriculum_epochs)``; other policies ignore it."""
        del epochs
        if self.policy == "curriculum":
            self.ramp = min(1.0, epoch / self.curriculum_epochs)

    def quality_bin(self, x: torch.Tensor) -> torch.Tensor:
        """The quality bin of each input (0 = lowest quality), by the training quantiles.

        Shape:
            x (N, ...) -> (N,) int64
        """
        if self.quality_edges is None:
            raise ParameterError(
                f"Quality bins exist under the 'quality' policy only. This policy is "
                f"{self.policy!r}."
            )
        quality = input_quality(x, self.modality).numpy()
        return torch.from_numpy(np.searchsorted(self.quality_edges, quality, side="right"))

    def scales(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        groups: Sequence[Any] | np.ndarray | None = None,
    ) -> torch.Tensor:
        """The policy's scale of each example (the curriculum's ramp not included).

        Shape:
            x (N, ...), y (N,), groups (N,) or None -> (N,) float64 on the CPU
        """
        n = len(y)
        if self.policy == "class":
            labels = y.detach().cpu().long()
            if n and (int(labels.min()) < 0 or int(labels.max()) >= len(self.class_scale)):
                raise InputError(
                    f"The labels must lie in [0, {len(self.class_scale) - 1}] for the class "
                    f"policy. Got {int(labels.min())}..{int(labels.max())} instead."
                )
            return torch.tensor(self.class_scale, dtype=torch.float64)[labels]
        if self.policy == "group":
            if groups is None or len(groups) != n:
                raise InputError(
                    f"The 'group' policy needs one group per example ({n}). "
                    f"Got {'None' if groups is None else len(groups)} instead."
                )
            # Unknown (None) and unlisted groups train against the full budget.
            values = [1.0 if g is None else self.group_scale.get(str(g), 1.0) for g in groups]
            return torch.tensor(values, dtype=torch.float64)
        if self.policy == "quality":
            table = torch.tensor(self.quality_scales, dtype=torch.float64)
            return table[self.quality_bin(x)]
        return torch.ones(n, dtype=torch.float64)

    def eps_per_example(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        groups: Sequence[Any] | np.ndarray | None = None,
        *,
        ramp: bool = True,
    ) -> torch.Tensor:
        """The budget of each example: ``eps * scale_i``, times the curriculum's ramp where
        ``ramp`` (the adversary drops it for validation).

        Args:
            x: inputs (read by the quality policy only).
            y: labels (read by the class policy only).
            groups: metadata group of each example; ``None`` entries (unknown) get scale 1.
                Needed by the group policy only.
            ramp: apply the curriculum's current fraction of the budget.

        Shape:
            x (N, ...), y (N,), groups (N,) or None -> (N,) float64 on the CPU
        """
        factor = self.ramp if ramp else 1.0
        return self.scales(x, y, groups) * (self.eps * factor)

    def __repr__(self) -> str:
        return f"EpsilonPolicy(eps={self.eps!r}, policy={self.policy!r}, ramp={self.ramp!r})"


class _RowGroups:
    """The metadata group of a training example, found by its content.

    :func:`~medrobust.training.fit` hands the adversary the batch, not the indices of its
    examples, so the group of a row is looked up by a digest of its bytes. Rows that are not
    training examples (validation) have no group (``None``); of identical training rows in
    different groups, the first one's group is kept.
    """

    def __init__(self, x: torch.Tensor, groups: np.ndarray) -> None:
        rows = x.detach().cpu().contiguous().numpy()
        self._groups: dict[bytes, Any] = {}
        for row, group in zip(rows, groups, strict=True):
            self._groups.setdefault(self._key(row), group)

    @staticmethod
    def _key(row: np.ndarray) -> bytes:
        return hashlib.blake2b(row.tobytes(), digest_size=16).digest()

    def __call__(self, x: torch.Tensor) -> list[Any]:
        rows = x.detach().cpu().contiguous().numpy()
        return [self._groups.get(self._key(row)) for row in rows]


class _Seeds:
    """A seed per attack call, drawn from a generator seeded by the fit seed."""

    def __init__(self, seed: int) -> None:
        # A stream of its own: the fit seed itself drives shuffling and dropout.
        state = np.random.SeedSequence([int(seed), 0x6164_76]).generate_state(1)[0]
        self._generator = torch.Generator().manual_seed(int(state))

    def next(self) -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self._generator))


class PolicyAdversary:
    """The ``adversary`` that :meth:`AdversarialTraining.fit` hands to
    :func:`~medrobust.training.fit`: it groups each batch by the policy's budgets and attacks
    each group with the attack instance of that budget (cached per budget), so every example
    gets the optimum of its own ball.

    Build it with :meth:`AdversarialTraining.adversary`. Batches crafted for a model in training
    mode use the curriculum's current ramp; batches crafted for a model in eval mode (fit's
    validation pass) use the full budget, scaled by the policy. Under the group policy, the
    group of each row is found by its content among the training inputs (fit passes the batch,
    not the indices); other rows get scale 1.

    Shape:
        x (N, ...), y (N,) -> like x (continuous), or (N, L, dim) embeddings (text)
    """

    def __init__(
        self,
        defense: AdversarialTraining,
        policy: EpsilonPolicy,
        domain: Domain,
        text: bool,
        groups: _RowGroups | None,
        seed: int,
    ) -> None:
        self.defense = defense
        self.policy = policy
        self.domain = domain
        self.text = text
        self.groups = groups
        self.seeds = _Seeds(seed)
        self.attacks: dict[float, Attack] = {}

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by fit before each epoch: advances the curriculum."""
        self.policy.set_epoch(epoch, epochs)

    def budgets(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The budget of each example of the batch, as :meth:`__call__` uses it.

        Shape:
            x (N, ...), y (N,) -> (N,) float64 on the CPU
        """
        groups = self.groups(x) if self.groups is not None else None
        # Eval mode is fit's validation pass: the full (policy-scaled) budget, see the module.
        return self.policy.eps_per_example(x, y, groups, ramp=model.training)

    def attack_for(self, eps: float) -> Attack:
        """The cached attack of budget ``eps``, with a fresh seed drawn from the fit seed."""
        if eps not in self.attacks:
            self.attacks[eps] = self.defense._build_attack(eps, self.domain)
        attack = self.attacks[eps]
        attack.seed = self.seeds.next()
        return attack

    def _unperturbed(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.text:
            return x.detach().clone()
        with torch.no_grad():
            return text_model(model, self.defense.name).embed(x).detach()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = self.budgets(model, x, y)
        values, inverse = torch.unique(eps, return_inverse=True)
        out: torch.Tensor | None = None
        for k, value in enumerate(values.tolist()):
            rows = (inverse == k).nonzero().squeeze(1).to(x.device)
            xs, ys = x[rows], y[rows]
            part = (
                self.attack_for(value)(model, xs, ys) if value > 0 else self._unperturbed(model, xs)
            )
            if out is None:
                out = part.new_empty((len(x), *part.shape[1:]))
            out[rows] = part.to(out.dtype)
        if out is None:  # an empty batch
            return self._unperturbed(model, x)
        return out

    def training_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None,
    ) -> torch.Tensor:
        """The classification loss of the adversarial batch; text models score the adversarial
        embeddings with ``forward_embeddings(x_adv, x)`` (Miyato et al. 2017)."""
        if self.text:
            logits = text_model(model, self.defense.name).forward_embeddings(x_adv, x)
        else:
            logits = model(x_adv)
        return classification_loss(logits, y, weight)


class AdversarialTraining(Defense):
    """PGD adversarial training (Madry et al. 2018) with an adaptive, per-example budget.

    Each training batch is replaced by adversarial examples crafted against the current weights
    by ``attack`` with budget ``eps * scale_i`` (``policy``, see the module docstring); the kept
    epoch is the one with the lowest adversarial validation loss (Rice et al. 2020). Text models
    train against an embedding attack (Miyato et al. 2017).

    Args:
        eps: the full budget (> 0), in input units (embedding units for text).
        attack: a registered attack: one that crafts continuous inputs (``"pgd"``, ``"fgsm"``)
            for image, ECG and tabular tasks, an embedding attack (``"embedding_pgd"``,
            ``"embedding_fgsm"``) for text.
        norm: the attack's norm (``"linf"`` or ``"l2"``).
        attack_params: further keyword arguments of the attack, e.g.
            ``{"steps": 5, "random_start": True}``; not ``eps``, ``norm``, ``domain`` or
            ``seed``, which the defense sets (the seed of each call is drawn from the fit seed).
            ``stop_when_adversarial`` defaults to ``False``: the inner maximisation of Madry et
            al. keeps ascending the loss on points already misclassified.
        policy: ``"fixed"``, ``"class"``, ``"group"``, ``"quality"`` or ``"curriculum"``.
        class_scale: ``"class"`` policy: the scale of each class (>= 0, one per class); default
            1 for the task's positive class and 0.5 for the others.
        group_scale: ``"group"`` policy (required there): ``str(group) -> scale`` (>= 0);
            groups not listed get 1.
        quality_bins: ``"quality"`` policy: the number of quality bins (>= 2).
        quality_low_scale: ``"quality"`` policy: the scale of the lowest-quality bin, in
            [0, 1]; the highest gets 1, the bins between linearly interpolated values.
        curriculum_epochs: ``"curriculum"`` policy: epochs over which the budget ramps up (>= 1).

    Shape:
        like the model: the defense changes the weights, not the architecture.

    Raises:
        ParameterError: a parameter out of range, an unknown policy, or an attack that is not
            registered or cannot train any of the defense's modalities (at construction); a
            policy or attack that does not suit the task (at :meth:`fit`).
    """

    name = "adversarial_training"
    modalities = frozenset({Modality.IMAGE, Modality.ECG, Modality.TABULAR, Modality.TEXT})
    retrains = True

    def __init__(
        self,
        *,
        eps: float,
        attack: str = "pgd",
        norm: str = "linf",
        attack_params: dict[str, Any] | None = None,
        policy: str = "fixed",
        class_scale: list[float] | None = None,
        group_scale: dict[str, float] | None = None,
        quality_bins: int = 3,
        quality_low_scale: float = 0.5,
        curriculum_epochs: int = 5,
    ) -> None:
        owner = type(self).__name__
        if not _is_number(eps) or not eps > 0:
            raise ParameterError(
                f"The 'eps' parameter of {owner} must be a finite number > 0. Got {eps!r} instead."
            )
        if not isinstance(attack, str):
            raise ParameterError(
                f"The 'attack' parameter of {owner} must be an attack name. Got {attack!r} instead."
            )
        try:
            self._attack_cls = ATTACKS.get(attack)
        except UnknownNameError as exc:
            raise ParameterError(f"The 'attack' parameter of {owner}: {exc}") from exc
        try:
            self._norm = Norm.parse(norm)
        except ParameterError as exc:
            raise ParameterError(
                f"The 'norm' parameter of {owner} must be one of 'linf', 'l2', 'l0'. "
                f"Got {norm!r} instead."
            ) from exc
        if attack_params is not None and (
            not isinstance(attack_params, dict)
            or not all(isinstance(k, str) for k in attack_params)
        ):
            raise ParameterError(
                f"The 'attack_params' parameter of {owner} must be a dict of keyword arguments "
                f"or None. Got {attack_params!r} instead."
            )
        reserved = sorted(set(attack_params or {}) & set(_RESERVED))
        if reserved:
            raise ParameterError(
                f"The 'attack_params' parameter of {owner} must not set {reserved}: the defense "
                f"sets {list(_RESERVED)} itself. Got {attack_params!r} instead."
            )
        if policy not in POLICIES:
            raise ParameterError(
                f"The 'policy' parameter of {owner} must be one of {list(POLICIES)}. "
                f"Got {policy!r} instead."
            )
        self.eps = _plain(eps)
        self.attack = attack
        self.norm = norm
        self.attack_params = _plain(attack_params)
        self.policy = policy
        self.class_scale = _plain(class_scale)
        self.group_scale = _plain(group_scale)
        self.quality_bins = _plain(quality_bins)
        self.quality_low_scale = _plain(quality_low_scale)
        self.curriculum_epochs = _plain(curriculum_epochs)
        self._check_policy_params()
        self._check_attack_kind()
        self._prepared: EpsilonPolicy | None = None
        # Build the attack once per budget the policy can ask for, so that bad attack_params
        # fail here and not an hour into training.
        for scale in sorted(self._possible_scales()):
            if scale > 0:
                self._build_attack(float(eps) * scale, UNBOUNDED)

    # -- validation ----------------------------------------------------------------------------

    def _check_policy_params(self) -> None:
        owner = type(self).__name__
        if self.class_scale is not None:
            if self.policy != "class":
                raise ParameterError(
                    f"The 'class_scale' parameter of {owner} applies to the 'class' policy only. "
                    f"Got it with policy {self.policy!r}."
                )
            ok = (
                isinstance(self.class_scale, list | tuple)
                and len(self.class_scale) > 0
                and all(_is_number(s) and s >= 0 for s in self.class_scale)
            )
            if not ok:
                raise ParameterError(
                    f"The 'class_scale' parameter of {owner} must be a non-empty list of numbers "
                    f">= 0. Got {self.class_scale!r} instead."
                )
        if self.group_scale is not None and self.policy != "group":
            raise ParameterError(
                f"The 'group_scale' parameter of {owner} applies to the 'group' policy only. "
                f"Got it with policy {self.policy!r}."
            )
        if self.policy == "group":
            ok = (
                isinstance(self.group_scale, dict)
                and all(isinstance(k, str) for k in self.group_scale)
                and all(_is_number(s) and s >= 0 for s in self.group_scale.values())
            )
            if not ok:
                raise ParameterError(
                    f"The 'group_scale' parameter of {owner} must be a dict of str(group) -> "
                    f"number >= 0 under the 'group' policy. Got {self.group_scale!r} instead."
                )
        check_number(owner, "quality_bins", self.quality_bins, minimum=2, integer=True)
        check_number(owner, "quality_low_scale", self.quality_low_scale, minimum=0)
        if self.quality_low_scale > 1:
            raise ParameterError(
                f"The 'quality_low_scale' parameter of {owner} must be a number in [0, 1]. "
                f"Got {self.quality_low_scale!r} instead."
            )
        check_number(owner, "curriculum_epochs", self.curriculum_epochs, minimum=1, integer=True)

    def _check_attack_kind(self) -> None:
        """The attack must train at least one of the defense's modalities."""
        if not any(self._attack_suits(m) for m in self.modalities):
            cls = self._attack_cls
            raise ParameterError(
                f"The 'attack' parameter of {type(self).__name__} must name an attack that "
                f"crafts continuous inputs ({self._continuous_hint()}) or, for text, token "
                f"embeddings (embedding_fgsm, embedding_pgd). Got {self.attack!r} instead, "
                f"which takes {cls.inputs} and perturbs {cls.perturbs}."
            )

    def _continuous_hint(self) -> str:
        return "image, ECG and tabular: fgsm, pgd"

    def _attack_suits(self, modality: Modality) -> bool:
        cls = self._attack_cls
        if modality not in cls.modalities:
            return False
        if modality is Modality.TEXT:
            return cls.perturbs == "embeddings"
        return cls.inputs == "continuous" and cls.perturbs == "inputs"

    def _possible_scales(self) -> set[float]:
        """Every scale the policy can give, where it is known before the task is."""
        if self.policy == "class":
            return {float(s) for s in self.class_scale} if self.class_scale else {1.0, 0.5}
        if self.policy == "group" and self.group_scale is not None:
            return {1.0, *(float(s) for s in self.group_scale.values())}
        if self.policy == "quality":
            return set(self._quality_scales())
        if self.policy == "curriculum":
            e = self.curriculum_epochs
            return {min(1.0, k / e) for k in range(1, e + 1)}
        return {1.0}

    def _quality_scales(self) -> tuple[float, ...]:
        low, bins = float(self.quality_low_scale), int(self.quality_bins)
        return tuple(low + (1.0 - low) * b / (bins - 1) for b in range(bins))

    def _attack_kwargs(self) -> dict[str, Any]:
        return {"stop_when_adversarial": False, **(self.attack_params or {})}

    def _build_attack(self, eps: float, domain: Domain) -> Attack:
        """The training attack of budget ``eps`` in ``domain``."""
        owner = type(self).__name__
        try:
            return self._attack_cls(
                norm=self._norm, eps=eps, domain=domain, **self._attack_kwargs()
            )
        except TypeError as exc:
            raise ParameterError(
                f"The 'attack_params' parameter of {owner} must hold keyword arguments of the "
                f"{self.attack!r} attack. Got {self.attack_params!r} instead ({exc})."
            ) from exc

    # -- the policy and training ---------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "attack": self.attack,
            "norm": self.norm,
            "attack_params": self.attack_params,
            "policy": self.policy,
            "class_scale": self.class_scale,
            "group_scale": self.group_scale,
            "quality_bins": self.quality_bins,
            "quality_low_scale": self.quality_low_scale,
            "curriculum_epochs": self.curriculum_epochs,
        }

    def check_task(self, task: Task) -> None:
        """Raise :class:`ParameterError` if the defense, its attack or its policy cannot serve
        ``task`` (the group policy needs the training data too: see :meth:`prepare`)."""
        super().check_task(task)
        owner = type(self).__name__
        if not self._attack_suits(task.modality):
            need = (
                "an embedding attack (embedding_fgsm, embedding_pgd)"
                if task.modality is Modality.TEXT
                else "an attack that crafts continuous inputs"
            )
            raise ParameterError(
                f"The 'attack' parameter of {owner} must be {need} for {task.modality.value} "
                f"task {task.name!r}. Got {self.attack!r} instead."
            )
        if self.policy == "quality" and task.modality not in QUALITY_MODALITIES:
            raise ParameterError(
                f"The 'quality' policy of {owner} estimates input quality for image and ECG "
                f"inputs only. Task {task.name!r} is {task.modality.value}."
            )
        if (
            self.policy == "class"
            and self.class_scale is not None
            and len(self.class_scale) != task.num_classes
        ):
            raise ParameterError(
                f"The 'class_scale' parameter of {owner} must have one scale per class of "
                f"task {task.name!r} ({task.num_classes}). Got {len(self.class_scale)} instead."
            )

    def prepare(self, task: Task, data: TrainingData) -> EpsilonPolicy:
        """Check the policy against ``task`` and build its :class:`EpsilonPolicy` (the quality
        quantiles come from ``data.x_train``). :meth:`fit` calls it; call it yourself to
        inspect the budgets without training.

        Raises:
            ParameterError: the policy or the attack does not suit the task, e.g. the group
                policy on a task without groups, or the quality policy on tabular data.
        """
        self.check_task(task)
        owner = type(self).__name__
        kwargs: dict[str, Any] = {}
        if self.policy == "class":
            if self.class_scale is not None:
                kwargs["class_scale"] = self.class_scale
            else:
                kwargs["class_scale"] = [
                    1.0 if c == task.positive_class else 0.5 for c in range(task.num_classes)
                ]
        elif self.policy == "group":
            if data.groups is None:
                raise ParameterError(
                    f"The 'group' policy of {owner} needs the task's metadata groups. Task "
                    f"{task.name!r} has none in its training data."
                )
            if len(data.groups) != len(data.x_train):
                raise ParameterError(
                    f"The 'group' policy of {owner} needs one group per training example "
                    f"({len(data.x_train)}). Got {len(data.groups)} instead."
                )
            kwargs["group_scale"] = self.group_scale
        elif self.policy == "quality":
            quality = input_quality(data.x_train, task.modality).numpy()
            levels = [b / self.quality_bins for b in range(1, self.quality_bins)]
            kwargs["quality_edges"] = np.quantile(quality, levels)
            kwargs["quality_scales"] = self._quality_scales()
        elif self.policy == "curriculum":
            kwargs["curriculum_epochs"] = self.curriculum_epochs
        self._prepared = EpsilonPolicy(
            eps=float(self.eps), policy=self.policy, modality=task.modality, **kwargs
        )
        return self._prepared

    def eps_per_example(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        groups: Sequence[Any] | np.ndarray | None = None,
    ) -> torch.Tensor:
        """The budget of each example under the policy prepared by the last :meth:`fit` or
        :meth:`prepare` (at its current curriculum epoch): see
        :meth:`EpsilonPolicy.eps_per_example`.

        Shape:
            x (N, ...), y (N,), groups (N,) or None -> (N,) float64 on the CPU
        """
        if self._prepared is None:
            raise ParameterError(
                f"{type(self).__name__}.eps_per_example needs the policy of a task: call fit "
                "or prepare first."
            )
        return self._prepared.eps_per_example(x, y, groups)

    def adversary(self, task: Task, data: TrainingData, *, seed: int) -> PolicyAdversary:
        """The adversary :meth:`fit` trains against: the policy prepared for ``task`` and
        ``data`` (:meth:`prepare`), attack seeds drawn from ``seed``.

        Raises:
            ParameterError: see :meth:`prepare`; also an ``eps`` larger than the task's domain
                allows for L-inf.
        """
        policy = self.prepare(task, data)
        # The task's domain may refuse the budget (an L-inf eps wider than [0, 1]).
        self._build_attack(float(self.eps), task.domain)
        groups = None
        if self.policy == "group" and data.groups is not None:
            groups = _RowGroups(data.x_train, data.groups)
        return self._make_adversary(task, policy, groups, seed)

    def _make_adversary(
        self, task: Task, policy: EpsilonPolicy, groups: _RowGroups | None, seed: int
    ) -> PolicyAdversary:
        return PolicyAdversary(
            self, policy, task.domain, task.modality is Modality.TEXT, groups, seed
        )


# -- TRADES ------------------------------------------------------------------------------------


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log class probabilities; a one-logit binary model z gives (1 - sigmoid z, sigmoid z)."""
    if logits.shape[1] == 1:
        return torch.cat(
            [nn.functional.logsigmoid(-logits), nn.functional.logsigmoid(logits)], dim=1
        )
    return torch.log_softmax(logits, dim=1)


def trades_kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p(x) || p(x_adv))`` averaged over the batch ("batchmean"), TRADES' robust term.

    Shape:
        (N, K), (N, K) -> scalar
    """
    log_p = _log_probs(clean_logits)
    return (log_p.exp() * (log_p - _log_probs(adv_logits))).sum() / max(len(clean_logits), 1)


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


class _TradesAdversary(PolicyAdversary):
    """The inner maximisation of TRADES: PGD on ``KL(p(x) || p(x_adv))`` in each example's own
    ball. The ball is per example in the arithmetic (the projection clamps each example to its
    own eps), so one pass serves a batch of mixed budgets exactly."""

    def __init__(self, defense: TRADES, *args: Any) -> None:
        super().__init__(defense, *args)
        self.trades = defense

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        if self.trades._norm is Norm.LINF:
            delta = torch.maximum(torch.minimum(delta, eps), -eps)
        else:
            norms = _per_example(delta.flatten(1).norm(dim=1).clamp_min(1e-12), x)
            delta = delta * (eps / norms).clamp(max=1.0)
        out = x + delta
        low, high = self.domain.low, self.domain.high
        if math.isfinite(low) or math.isfinite(high):
            out = out.clamp(
                min=low if math.isfinite(low) else None, max=high if math.isfinite(high) else None
            )
        return out

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = _per_example(self.budgets(model, x, y), x)
        steps = self.trades._steps
        size = self.trades._step_size
        step = (
            _per_example(torch.full((len(x),), size), x) if size is not None else 2.5 * eps / steps
        )
        generator = torch.Generator().manual_seed(self.seeds.next())
        x = x.detach()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                log_p = _log_probs(model(x))
            p = log_p.exp()
            start = 0.001 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x_adv = self._project(x + start.to(x.device), x, eps)
            # cuDNN RNNs cannot backpropagate in eval mode; the native kernels can.
            with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
                for _ in range(steps):
                    var = x_adv.detach().requires_grad_(True)
                    kl = (p * (log_p - _log_probs(model(var)))).sum()
                    grad = torch.autograd.grad(kl, var)[0]
                    if self.trades._norm is Norm.LINF:
                        direction = grad.sign()
                    else:
                        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                        direction = grad / _per_example(norms, grad)
                    x_adv = self._project(var.detach() + step * direction, x, eps)
        finally:
            model.train(was_training)
        return x_adv.detach()

    def training_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None,
    ) -> torch.Tensor:
        """``CE(f(x), y) + beta * KL(p(x) || p(x_adv))`` (the class weights apply to the CE)."""
        clean = model(x)
        robust = trades_kl(clean, model(x_adv))
        return classification_loss(clean, y, weight) + self.trades.beta * robust


class TRADES(AdversarialTraining):
    """TRADES (Zhang et al. 2019): the loss of the clean examples plus ``beta`` times the KL
    divergence between the model's predictions on clean and adversarial examples, which trades
    clean accuracy for robustness explicitly (larger ``beta``: more robust, less accurate).

    The inner maximisation is PGD on ``KL(p(x) || p(x_adv))`` from a small random start
    (``0.001 * N(0, 1)``, as in the paper), projected onto the norm ball and into the task's
    domain; training minimises ``CE(f(x), y) + beta * KL(p(x) || p(x_adv))`` (the class weights
    of the fit config apply to the cross-entropy). A one-logit binary model's sigmoid gives the
    two class probabilities. The adaptive budgets of :class:`AdversarialTraining` apply: each
    example is projected onto its own ball.

    Args:
        beta: weight of the robust (KL) term, > 0.
        attack: ``"pgd"`` only (the KL ascent is built in).
        attack_params: ``steps`` (default 5) and ``step_size`` (default ``2.5 * eps / steps``,
            per example); nothing else.
        **kwargs: eps, norm, policy and the policy's parameters (see
            :class:`AdversarialTraining`).

    Shape:
        like the model: the defense changes the weights, not the architecture.
    """

    name = "trades"
    modalities = frozenset({Modality.IMAGE, Modality.ECG, Modality.TABULAR})

    def __init__(self, *, beta: float = 6.0, **kwargs: Any) -> None:
        owner = type(self).__name__
        if not _is_number(beta) or not beta > 0:
            raise ParameterError(
                f"The 'beta' parameter of {owner} must be a finite number > 0. "
                f"Got {beta!r} instead."
            )
        attack = kwargs.get("attack", "pgd")
        if attack != "pgd":
            raise ParameterError(
                f"The 'attack' parameter of {owner} must be 'pgd' (its KL ascent is built in). "
                f"Got {attack!r} instead."
            )
        params = kwargs.get("attack_params") or {}
        if isinstance(params, dict):
            extra = sorted(set(params) - {"steps", "step_size"})
            if extra:
                raise ParameterError(
                    f"The 'attack_params' parameter of {owner} takes 'steps' and 'step_size' "
                    f"only. Got {extra} instead."
                )
        self.beta: float = _plain(beta)
        super().__init__(**kwargs)
        if self._norm not in (Norm.LINF, Norm.L2):
            raise ParameterError(
                f"The 'norm' parameter of {owner} must be one of ['linf', 'l2']. "
                f"Got {self.norm!r} instead."
            )
        self._steps = int((self.attack_params or {}).get("steps", 5))
        step_size = (self.attack_params or {}).get("step_size")
        self._step_size = float(step_size) if step_size is not None else None

    def _attack_kwargs(self) -> dict[str, Any]:
        # The PGD built at construction only validates steps and step_size.
        return {"steps": 5, **(self.attack_params or {})}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "beta": self.beta}

    def _make_adversary(
        self, task: Task, policy: EpsilonPolicy, groups: _RowGroups | None, seed: int
    ) -> PolicyAdversary:
        return _TradesAdversary(self, policy, task.domain, False, groups, seed)
