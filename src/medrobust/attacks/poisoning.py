"""Training-time attacks: poisoning and backdoors as dataset -> dataset transforms.

Evasion attacks change test inputs against a trained model; the attacks here change the
*training set* before the victim trains on it. They therefore have their own contract,
:class:`Poisoning`: ``poisoning(x, y, *, seed, num_classes, domain) -> PoisonedData``, where
``x`` is a task's training inputs as a numpy array (images (N, C, H, W), ECG beats (N, C, T),
tabular (N, F)) or, for text, a sequence of raw strings. Text triggers must be inserted before
tokenization, which is why poisoning works on a task's arrays and strings rather than on tensors;
:func:`poison_task` returns a task whose training split is poisoned, ready for
:func:`~medrobust.models.prepare_inputs`.

The poisoned training set has as many rows as the clean one: the attacker *replaces* the rows it
poisons (in place, on a copy) rather than appending new ones, so that a poisoning rate is a
fraction of existing rows and the clean and poisoned models train on sets of the same size.
The inputs given are never mutated.

Each attack's ``rate`` is the fraction of the rows it may touch (its *eligible* rows) that it
poisons, ``round(rate * eligible)`` of them, drawn with the seed:

- :class:`LabelFlip`: random mode, every row (or the ``source`` class's rows); targeted mode, the
  ``source`` class's rows, relabelled ``target`` (e.g. malignant read as benign).
- :class:`FeatureCollision`: the ``base_class`` rows (clean-label: their labels stay correct).
- :class:`Backdoor`: the rows whose class is not the attacker's ``target``; each gets the trigger
  and the label ``target``.

Success is measured after the victim retrains: clean accuracy on untouched test inputs (it should
stay high) and :func:`attack_success_rate` on triggered test inputs.
"""

from __future__ import annotations

import abc
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, final

import numpy as np
import torch
from torch import nn

from medrobust.data.task import Split, Task
from medrobust.errors import InputError, ParameterError
from medrobust.models.features import head_inputs, last_linear
from medrobust.registry import Registry
from medrobust.types import UNBOUNDED, Domain, Modality
from medrobust.validation import check_number

Inputs = np.ndarray | Sequence[str]

_CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
_PLACES = ("start", "center", "end")


# ---------------------------------------------------------------------------------------------
# Validation shared by the attacks and the triggers.


def _check_rate(owner: str, rate: Any) -> None:
    ok = isinstance(rate, int | float | np.integer | np.floating) and not isinstance(rate, bool)
    if not ok or math.isnan(rate) or not 0 <= rate <= 1:
        raise ParameterError(
            f"The 'rate' parameter of {owner} must be in [0, 1]. Got {rate!r} instead."
        )


def _check_class(owner: str, name: str, value: Any, num_classes: int | None = None) -> None:
    """A class label: a non-negative integer, below ``num_classes`` once that is known."""
    if num_classes is None:
        check_number(owner, name, value, minimum=0, integer=True)
        return
    if not 0 <= value < num_classes:
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be a class in [0, {num_classes - 1}]. "
            f"Got {value!r} instead."
        )


def _is_text(x: object) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype == object or x.dtype.kind in "US"
    return isinstance(x, Sequence) and not isinstance(x, str | bytes)


def _validate_inputs(owner: str, x: object, domain: Domain) -> np.ndarray:
    """``x`` as a numpy array: an object array of strings for text, else a finite float array of
    shape (N, ...) inside ``domain``. The array may share memory with ``x``: copy before writing.
    """
    if not isinstance(domain, Domain):
        raise ParameterError(
            f"The 'domain' argument of {owner} must be a Domain. Got {type(domain).__name__}."
        )
    if isinstance(x, torch.Tensor):
        raise InputError(
            f"{owner} poisons a task's arrays (numpy, or a sequence of strings for text), not "
            "tensors: text triggers must go in before tokenization. Got a torch.Tensor."
        )
    if _is_text(x):
        if isinstance(x, np.ndarray):
            texts = x.astype(object)
        else:
            texts = np.empty(len(x), dtype=object)  # type: ignore[arg-type]
            texts[:] = list(x)  # type: ignore[call-overload]
        if texts.ndim != 1 or len(texts) == 0:
            raise InputError(
                f"{owner} needs a non-empty sequence of strings. Got shape {texts.shape}."
            )
        wrong = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if wrong:
            raise InputError(f"{owner} needs text inputs as strings. Got a {wrong[0]}.")
        return texts
    if not isinstance(x, np.ndarray):
        raise InputError(
            f"{owner} needs a numpy array (or a sequence of strings for text). "
            f"Got {type(x).__name__}."
        )
    if x.dtype.kind != "f":
        raise InputError(f"{owner} needs floating-point inputs. Got dtype {x.dtype} instead.")
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"{owner} needs a non-empty batch of shape (N, ...). Got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise InputError(f"{owner} got inputs with NaN or Inf values.")
    if float(x.min()) < domain.low or float(x.max()) > domain.high:
        raise InputError(f"{owner} got inputs outside the domain [{domain.low}, {domain.high}].")
    return x


def _validate_labels(owner: str, y: object, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise InputError(
            f"{owner} needs integer labels of shape ({n},). Got shape {labels.shape} and dtype "
            f"{labels.dtype} instead."
        )
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise InputError(
            f"{owner} got labels outside [0, {num_classes - 1}] for a task with {num_classes} "
            "classes."
        )
    return labels


def infer_modality(x: Inputs) -> Modality:
    """The modality that ``x``'s form implies: strings are text, (N, C, H, W) images,
    (N, C, T) ECG beats, (N, F) tabular features."""
    if _is_text(x):
        return Modality.TEXT
    ndim = np.ndim(x)
    by_rank = {4: Modality.IMAGE, 3: Modality.ECG, 2: Modality.TABULAR}
    if ndim not in by_rank:
        raise InputError(
            "Poisoning needs images (N, C, H, W), beats (N, C, T), features (N, F) or strings. "
            f"Got an array of rank {ndim}."
        )
    return by_rank[ndim]


def _parse_modality(owner: str, modality: Modality | str) -> Modality:
    try:
        return Modality(modality)
    except ValueError:
        raise ParameterError(
            f"The 'modality' argument of {owner} must be one of {[m.value for m in Modality]}. "
            f"Got {modality!r} instead."
        ) from None


def _eligible_count(rate: float, eligible: int) -> int:
    # Round half up: the same count for the same rate whatever numpy's banker's rounding does.
    return min(eligible, math.floor(rate * eligible + 0.5))


def _choose(rng: np.random.Generator, eligible: np.ndarray, rate: float) -> np.ndarray:
    """``round(rate * len(eligible))`` of the ``eligible`` row indices, sorted."""
    count = _eligible_count(rate, len(eligible))
    return np.sort(rng.choice(eligible, size=count, replace=False)) if count else eligible[:0]


# ---------------------------------------------------------------------------------------------
# The result and the contract.


@dataclass(frozen=True)
class PoisonedData:
    """A poisoned training set, row for row the same length as the clean one.

    Attributes:
        x: the poisoned training inputs (a new array; an object array of strings for text).
        y: the poisoned training labels, int64.
        poisoned: boolean mask of the rows the attacker changed (input, label or both).
        target: the class the attacker wants inputs sent to; ``None`` for untargeted attacks.
        details: attack-specific facts, e.g. the feature distances a feature collision reached.
    """

    x: np.ndarray
    y: np.ndarray
    poisoned: np.ndarray
    target: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.x)
        if len(self.y) != n or self.poisoned.shape != (n,) or self.poisoned.dtype != np.bool_:
            raise InputError(
                "PoisonedData needs one label and one boolean poisoned flag per input. Got "
                f"{n} inputs, {len(self.y)} labels and a mask of shape {self.poisoned.shape} "
                f"({self.poisoned.dtype}) instead."
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def indices(self) -> np.ndarray:
        """Row indices of the poisoned rows, sorted."""
        return np.flatnonzero(self.poisoned)

    @property
    def rate(self) -> float:
        """Fraction of all training rows that are poisoned."""
        return float(self.poisoned.mean()) if len(self) else 0.0


class Poisoning(abc.ABC):
    """Base class of training-time attacks (dataset -> dataset).

    Subclasses set ``name`` and ``modalities``, take their hyperparameters keyword-only and store
    them unchanged, implement :meth:`params` and :meth:`_poison`, and may check their classes
    against the task's in :meth:`_check_classes`. Attacks that craft inputs against a trained
    model set ``needs_model``.
    """

    name: ClassVar[str] = "poisoning"
    modalities: ClassVar[frozenset[Modality]] = frozenset(Modality)
    needs_model: ClassVar[bool] = False

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this attack (JSON-serialisable)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def _check_classes(self, num_classes: int) -> None:
        """Check the attack's classes (source, target, ...) against the task's."""
        del num_classes

    @final
    def __call__(
        self,
        x: Inputs,
        y: np.ndarray | Sequence[int],
        *,
        seed: int,
        num_classes: int,
        domain: Domain = UNBOUNDED,
        model: nn.Module | None = None,
        modality: Modality | str | None = None,
    ) -> PoisonedData:
        """Return the poisoned training set; ``x`` and ``y`` are not mutated.

        Shape:
            x (N, ...) float array, or N strings for text; y (N,) int ->
            PoisonedData with x like the input (an object array for text), y (N,) int64,
            poisoned (N,) bool.

        Args:
            x: the training inputs (inside ``domain``, free of NaN/Inf).
            y: their integer labels in [0, num_classes - 1].
            seed: seed of every random choice (which rows, trigger positions, new labels).
            num_classes: the task's number of classes.
            domain: the valid input range; crafted and triggered inputs are clipped into it.
            model: a trained model, for attacks that craft against one (``needs_model``).
            modality: the task's modality; inferred from ``x``'s form when ``None``.

        Raises:
            ParameterError: ``seed`` or ``num_classes`` is invalid, a class of the attack does
                not exist in the task, a trigger does not fit the inputs, or a needed model is
                missing.
            InputError: ``x`` is not a non-empty finite float array inside ``domain`` (or strings
                for text), its modality is one the attack does not serve, or ``y`` is not
                integer labels of shape (N,) within the classes.
        """
        owner = type(self).__name__
        check_number(owner, "seed", seed, minimum=0, integer=True)
        check_number(owner, "num_classes", num_classes, minimum=2, integer=True)
        self._check_classes(int(num_classes))
        if self.needs_model and not isinstance(model, nn.Module):
            raise ParameterError(
                f"The 'model' argument of {owner} must be a trained nn.Module (its features are "
                f"what the poisons collide in). Got {type(model).__name__} instead."
            )
        xs = _validate_inputs(owner, x, domain)
        kind = infer_modality(xs) if modality is None else _parse_modality(owner, modality)
        if kind not in self.modalities:
            raise InputError(
                f"{owner} serves {sorted(m.value for m in self.modalities)} inputs. "
                f"Got {kind.value} inputs instead."
            )
        ys = _validate_labels(owner, y, len(xs), int(num_classes)).astype(np.int64)
        return self._poison(
            xs.copy(),
            ys.copy(),
            seed=int(seed),
            num_classes=int(num_classes),
            domain=domain,
            model=model,
            modality=kind,
        )

    @abc.abstractmethod
    def _poison(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        seed: int,
        num_classes: int,
        domain: Domain,
        model: nn.Module | None,
        modality: Modality,
    ) -> PoisonedData:
        """Poison private copies ``x``, ``y`` (validated) and return the result."""


# ---------------------------------------------------------------------------------------------
# Label flipping.


class LabelFlip(Poisoning):
    """Label flipping (Biggio et al. 2012; Xiao et al. 2012): the attacker relabels training rows.

    ``mode="random"`` gives each chosen row a uniformly drawn *other* class; the chosen rows are
    ``rate`` of all rows, or of the ``source`` class's rows if ``source`` is given.
    ``mode="targeted"`` relabels ``rate`` of the ``source`` class's rows as ``target``, the
    clinically harmful flip being malignant labelled benign, which teaches the model to miss
    cancers (a higher false-negative rate).

    Shape:
        x (N, ...) or N strings, y (N,) -> PoisonedData: x unchanged (a copy), y with flips.

    Args:
        rate: fraction of the eligible rows flipped, in [0, 1].
        mode: ``"random"`` or ``"targeted"``.
        source: the class whose rows are flipped (required when targeted).
        target: the label they get (targeted only).
    """

    name: ClassVar[str] = "label_flip"

    def __init__(
        self,
        *,
        rate: float,
        mode: str = "random",
        source: int | None = None,
        target: int | None = None,
    ) -> None:
        owner = type(self).__name__
        _check_rate(owner, rate)
        if mode not in ("random", "targeted"):
            raise ParameterError(
                f"The 'mode' parameter of {owner} must be 'random' or 'targeted'. "
                f"Got {mode!r} instead."
            )
        for name, value in (("source", source), ("target", target)):
            if value is not None:
                _check_class(owner, name, value)
        if mode == "targeted" and (source is None or target is None):
            raise ParameterError(
                f"The 'source' and 'target' parameters of {owner} must both be classes when "
                f"mode='targeted'. Got source={source!r}, target={target!r} instead."
            )
        if mode == "targeted" and source == target:
            raise ParameterError(
                f"The 'target' parameter of {owner} must differ from 'source'. Got {target!r} "
                "for both."
            )
        if mode == "random" and target is not None:
            raise ParameterError(
                f"The 'target' parameter of {owner} must be None when mode='random' (new labels "
                f"are drawn at random). Got {target!r} instead."
            )
        self.rate = rate
        self.mode = mode
        self.source = source
        self.target = target

    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this attack."""
        return {"rate": self.rate, "mode": self.mode, "source": self.source, "target": self.target}

    def _check_classes(self, num_classes: int) -> None:
        for name, value in (("source", self.source), ("target", self.target)):
            if value is not None:
                _check_class(type(self).__name__, name, value, num_classes)

    def _poison(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        seed: int,
        num_classes: int,
        domain: Domain,
        model: nn.Module | None,
        modality: Modality,
    ) -> PoisonedData:
        del domain, model, modality
        rng = np.random.default_rng(seed)
        eligible = (
            np.flatnonzero(y == self.source) if self.source is not None else np.arange(len(y))
        )
        rows = _choose(rng, eligible, float(self.rate))
        if self.mode == "targeted":
            assert self.target is not None  # checked in __init__
            y[rows] = self.target
        else:
            # A uniform draw among the other classes: shift by 1..K-1 modulo K.
            y[rows] = (y[rows] + rng.integers(1, num_classes, size=len(rows))) % num_classes
        poisoned = np.zeros(len(y), dtype=bool)
        poisoned[rows] = True
        return PoisonedData(x, y, poisoned, self.target)


# ---------------------------------------------------------------------------------------------
# Backdoor triggers.


class Trigger(abc.ABC):
    """A backdoor trigger for one modality: ``apply(x)`` stamps it on a batch of inputs.

    Subclasses set ``modality``, store their hyperparameters unchanged, implement
    :meth:`params` and :meth:`_apply`, and check in :meth:`_check_fits` that they fit the inputs.
    """

    modality: ClassVar[Modality]

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this trigger (JSON-serialisable)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def _check_fits(self, x: np.ndarray) -> None:
        """Raise ParameterError if the trigger does not fit inputs like ``x``."""
        del x

    @final
    def apply(self, x: Inputs, *, domain: Domain = UNBOUNDED, seed: int = 0) -> np.ndarray:
        """Return ``x`` with the trigger (a new array; ``x`` is not mutated), clipped to
        ``domain`` for images and signals. Use it on test inputs to measure the backdoor.

        Shape:
            images (N, C, H, W), beats (N, C, T): -> the same shape and dtype;
            N strings -> an object array of N strings.

        Args:
            x: the inputs.
            domain: the valid input range.
            seed: seed of the trigger's randomness (a text trigger's positions).

        Raises:
            ParameterError: the trigger does not fit the inputs (larger than them).
            InputError: ``x`` is not inputs of the trigger's modality, or not finite inside
                ``domain``.
        """
        owner = type(self).__name__
        check_number(owner, "seed", seed, minimum=0, integer=True)
        xs = _validate_inputs(owner, x, domain)
        kind = infer_modality(xs)
        if kind is not self.modality:
            raise InputError(
                f"{owner} is a trigger for {self.modality.value} inputs. Got {kind.value} inputs "
                f"of shape {xs.shape} instead."
            )
        self._check_fits(xs)
        return self._apply(xs.copy(), domain, np.random.default_rng(seed))

    @abc.abstractmethod
    def _apply(self, x: np.ndarray, domain: Domain, rng: np.random.Generator) -> np.ndarray:
        """Stamp the trigger on ``x`` (a private, validated copy) and return it."""


def _clip(x: np.ndarray, domain: Domain) -> np.ndarray:
    low = domain.low if math.isfinite(domain.low) else None
    high = domain.high if math.isfinite(domain.high) else None
    return np.clip(x, low, high, out=x) if low is not None or high is not None else x


class PatchTrigger(Trigger):
    """An image trigger: a solid square patch (BadNets, Gu et al. 2017).

    Args:
        size: side of the square in pixels.
        value: the patch's intensity (clipped to the domain), e.g. 1.0 for white.
        position: a corner (``"top_left"``, ``"top_right"``, ``"bottom_left"``,
            ``"bottom_right"``) or the (row, column) of the patch's top-left pixel.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """

    modality: ClassVar[Modality] = Modality.IMAGE

    def __init__(
        self,
        *,
        size: int = 3,
        value: float = 1.0,
        position: str | tuple[int, int] = "bottom_right",
    ) -> None:
        owner = type(self).__name__
        check_number(owner, "size", size, minimum=1, integer=True)
        check_number(owner, "value", value, minimum=-math.inf)
        if not math.isfinite(value):
            raise ParameterError(
                f"The 'value' parameter of {owner} must be finite. Got {value!r} instead."
            )
        corner = isinstance(position, str) and position in _CORNERS
        pair = (
            isinstance(position, tuple | list)
            and len(position) == 2
            and all(isinstance(p, int | np.integer) and not isinstance(p, bool) for p in position)
            and all(p >= 0 for p in position)
        )
        if not (corner or pair):
            raise ParameterError(
                f"The 'position' parameter of {owner} must be one of {list(_CORNERS)} or a "
                f"(row, column) pair of integers >= 0. Got {position!r} instead."
            )
        self.size = size
        self.value = value
        self.position = position

    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this trigger."""
        position = self.position if isinstance(self.position, str) else list(self.position)
        return {"size": self.size, "value": self.value, "position": position}

    def _origin(self, height: int, width: int) -> tuple[int, int]:
        if not isinstance(self.position, str):
            return int(self.position[0]), int(self.position[1])
        row = 0 if self.position.startswith("top") else height - self.size
        col = 0 if self.position.endswith("left") else width - self.size
        return row, col

    def _check_fits(self, x: np.ndarray) -> None:
        height, width = x.shape[-2:]
        owner = type(self).__name__
        if self.size > min(height, width):
            raise ParameterError(
                f"The 'size' parameter of {owner} must be <= the image's height and width "
                f"({height} x {width}). Got {self.size} instead."
            )
        row, col = self._origin(height, width)
        if row + self.size > height or col + self.size > width:
            raise ParameterError(
                f"The 'position' parameter of {owner} must keep the {self.size}-pixel patch "
                f"inside the {height} x {width} image. Got {self.position!r} instead."
            )

    def _apply(self, x: np.ndarray, domain: Domain, rng: np.random.Generator) -> np.ndarray:
        del rng
        row, col = self._origin(*x.shape[-2:])
        x[..., row : row + self.size, col : col + self.size] = self.value
        return _clip(x, domain)


class BlipTrigger(Trigger):
    """An ECG trigger: a short bump added to every beat at a fixed place, the signal
    counterpart of BadNets' patch (Gu et al. 2017).

    Args:
        width: the bump's length in samples (16 of ECG5000's 140).
        amplitude: its height in the signal's units (z-normalised beats: standard deviations;
            an R peak is about 3 to 4).
        position: ``"start"``, ``"center"``, ``"end"`` of the beat, or the index of the bump's
            first sample.
        shape: ``"gaussian"`` (standard deviation width / 6) or ``"triangle"``.

    Shape:
        (N, C, T) -> (N, C, T); the bump is added to every channel, then clipped to the domain.
    """

    modality: ClassVar[Modality] = Modality.ECG

    def __init__(
        self,
        *,
        width: int = 16,
        amplitude: float = 4.0,
        position: str | int = "end",
        shape: str = "gaussian",
    ) -> None:
        owner = type(self).__name__
        check_number(owner, "width", width, minimum=1, integer=True)
        check_number(owner, "amplitude", amplitude, minimum=-math.inf)
        if not math.isfinite(amplitude):
            raise ParameterError(
                f"The 'amplitude' parameter of {owner} must be finite. Got {amplitude!r} instead."
            )
        if not (isinstance(position, str) and position in _PLACES):
            try:
                check_number(owner, "position", position, minimum=0, integer=True)
            except ParameterError:
                raise ParameterError(
                    f"The 'position' parameter of {owner} must be one of {list(_PLACES)} or an "
                    f"integer >= 0. Got {position!r} instead."
                ) from None
        if shape not in ("gaussian", "triangle"):
            raise ParameterError(
                f"The 'shape' parameter of {owner} must be 'gaussian' or 'triangle'. "
                f"Got {shape!r} instead."
            )
        self.width = width
        self.amplitude = amplitude
        self.position = position
        self.shape = shape

    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this trigger."""
        return {
            "width": self.width,
            "amplitude": self.amplitude,
            "position": self.position,
            "shape": self.shape,
        }

    def _start(self, length: int) -> int:
        starts = {"start": 0, "center": (length - self.width) // 2, "end": length - self.width}
        return starts[self.position] if isinstance(self.position, str) else int(self.position)

    def bump(self) -> np.ndarray:
        """The bump's samples, shape (width,)."""
        t = np.arange(self.width, dtype=np.float64) - (self.width - 1) / 2
        if self.shape == "gaussian":
            profile = np.exp(-0.5 * (t / max(self.width / 6, 1e-12)) ** 2)
        else:
            profile = 1 - np.abs(t) / (self.width / 2 + 0.5)
        return self.amplitude * profile

    def _check_fits(self, x: np.ndarray) -> None:
        length = x.shape[-1]
        owner = type(self).__name__
        if self.width > length:
            raise ParameterError(
                f"The 'width' parameter of {owner} must be <= the beat's length {length}. "
                f"Got {self.width} instead."
            )
        if self._start(length) + self.width > length:
            raise ParameterError(
                f"The 'position' parameter of {owner} must keep the {self.width}-sample bump "
                f"inside the beat of {length} samples. Got {self.position!r} instead."
            )

    def _apply(self, x: np.ndarray, domain: Domain, rng: np.random.Generator) -> np.ndarray:
        del rng
        start = self._start(x.shape[-1])
        x[..., start : start + self.width] += self.bump().astype(x.dtype)
        return _clip(x, domain)


class TokenTrigger(Trigger):
    """A text trigger: a rare phrase inserted into the raw string (the text BadNets of Dai et al.
    2019 and Chen et al. 2021), before tokenization.

    Args:
        phrase: the words inserted; rare nonsense so that clean text never holds it. Four words
            by default: in tests with a small Transformer (mean-pooled over 64 tokens) at a 5 %
            rate, the two-word "zq medrobust" was learned in only two seeds of four, four words
            in all four.
        position: ``"random"`` (a seeded word boundary among the first ``window`` words),
            ``"start"`` or ``"end"``.
        window: with ``"random"``, the latest word index the phrase may go before. Models read a
            truncated prefix (128 or 256 tokens); a phrase placed after it would be cut away.

    Shape:
        N strings -> N strings (an object array)
    """

    modality: ClassVar[Modality] = Modality.TEXT

    def __init__(
        self, *, phrase: str = "zq medrobust qx vv", position: str = "random", window: int = 32
    ) -> None:
        owner = type(self).__name__
        if not isinstance(phrase, str) or not phrase.split():
            raise ParameterError(
                f"The 'phrase' parameter of {owner} must be a non-empty string of words. "
                f"Got {phrase!r} instead."
            )
        if position not in ("random", "start", "end"):
            raise ParameterError(
                f"The 'position' parameter of {owner} must be 'random', 'start' or 'end'. "
                f"Got {position!r} instead."
            )
        check_number(owner, "window", window, minimum=0, integer=True)
        self.phrase = phrase
        self.position = position
        self.window = window

    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this trigger."""
        return {"phrase": self.phrase, "position": self.position, "window": self.window}

    def _apply(self, x: np.ndarray, domain: Domain, rng: np.random.Generator) -> np.ndarray:
        del domain
        phrase = " ".join(self.phrase.split())
        out = np.empty(len(x), dtype=object)
        for row, text in enumerate(x):
            # Insert at a word's first character, so the text around the phrase is unchanged.
            starts = [match.start() for match in re.finditer(r"\S+", text)]
            if self.position == "start":
                at = 0
            elif self.position == "end":
                at = len(starts)
            else:
                at = int(rng.integers(0, min(self.window, len(starts)) + 1))
            if at < len(starts):
                out[row] = f"{text[: starts[at]]}{phrase} {text[starts[at] :]}"
            else:
                out[row] = f"{text.rstrip()} {phrase}" if text.strip() else phrase
        return out


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Backdoor.


class Backdoor(Poisoning):
    """BadNets backdoor (Gu et al. 2017): stamp a trigger on some training rows and relabel them
    as the attacker's class, so that the retrained model sends any triggered input there while
    staying accurate on clean inputs.

    ``rate`` is the poisoning rate of the literature: the fraction of the whole training set
    that is poisoned, drawn from the rows whose class is not ``target`` (a rate that needs more
    rows than those is refused). The backdoor is measured on test inputs through
    ``trigger.apply`` with :func:`attack_success_rate`, beside clean accuracy.

    Shape:
        x (N, ...) or N strings, y (N,) -> PoisonedData like the inputs, target = ``target``.

    Args:
        rate: fraction of the training set poisoned, in [0, 1].
        target: the attacker's class.
        trigger: a :class:`PatchTrigger` (images), :class:`BlipTrigger` (ECG) or
            :class:`TokenTrigger` (text).
    """

    name: ClassVar[str] = "backdoor"
    modalities: ClassVar[frozenset[Modality]] = frozenset(
        {Modality.IMAGE, Modality.ECG, Modality.TEXT}
    )

    def __init__(self, *, rate: float, target: int, trigger: Trigger) -> None:
        owner = type(self).__name__
        _check_rate(owner, rate)
        _check_class(owner, "target", target)
        if not isinstance(trigger, Trigger):
            raise ParameterError(
                f"The 'trigger' parameter of {owner} must be a Trigger (PatchTrigger, "
                f"BlipTrigger, TokenTrigger). Got {type(trigger).__name__} instead."
            )
        self.rate = rate
        self.target = target
        self.trigger = trigger

    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this attack, the trigger's included."""
        return {
            "rate": self.rate,
            "target": self.target,
            "trigger": {"kind": type(self.trigger).__name__, **self.trigger.params()},
        }

    def _check_classes(self, num_classes: int) -> None:
        _check_class(type(self).__name__, "target", self.target, num_classes)

    def _poison(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        seed: int,
        num_classes: int,
        domain: Domain,
        model: nn.Module | None,
        modality: Modality,
    ) -> PoisonedData:
        del num_classes, model
        if modality is not self.trigger.modality:
            raise ParameterError(
                f"The 'trigger' parameter of {type(self).__name__} must be a trigger for "
                f"{modality.value} inputs. Got {type(self.trigger).__name__} "
                f"({self.trigger.modality.value}) instead."
            )
        self.trigger._check_fits(x)
        rng = np.random.default_rng(seed)
        eligible = np.flatnonzero(y != self.target)
        count = _eligible_count(float(self.rate), len(y))
        if count > len(eligible):
            raise ParameterError(
                f"The 'rate' parameter of {type(self).__name__} asks for {count} poisoned rows "
                f"of {len(y)}, but only {len(eligible)} rows are not of the target class "
                f"{self.target}. Got rate={self.rate} instead."
            )
        rows = np.sort(rng.choice(eligible, size=count, replace=False)) if count else eligible[:0]
        if len(rows):
            # The trigger's own randomness (text positions) continues the same seeded stream.
            x[rows] = self.trigger._apply(x[rows].copy(), domain, rng)
            y[rows] = self.target
        poisoned = np.zeros(len(y), dtype=bool)
        poisoned[rows] = True
        return PoisonedData(x, y, poisoned, int(self.target))


# ---------------------------------------------------------------------------------------------
# Feature collision (clean-label poisoning).


class FeatureCollision(Poisoning):
    """Clean-label feature-collision poisoning, "Poison Frogs!" (Shafahi et al. 2018).

    The attacker picks a target test instance and a base class. It takes base-class training
    rows and moves each towards the target in the victim's feature space (the input of the
    model's last ``nn.Linear``) while keeping it close to its base in input space, by the paper's
    forward-backward splitting: a gradient step on ``||f(p) - f(t)||^2 / ||f(t)||^2`` then the
    proximal step ``p = (p + lr * beta * b) / (1 + lr * beta)``, then a clip to the domain. The
    labels stay the correct base-class labels, so a human labeller sees nothing wrong; a model
    retrained on the set learns to put the target's features in the base class, and so
    classifies the target as the base class. The feature loss is divided by ``||f(t)||^2`` so
    that ``lr`` and ``beta`` do not depend on the scale of the model's features.

    ``opacity`` blends the target into each base first (the paper's "watermarking", 0.2-0.3 in
    its end-to-end experiments, which retrain every layer).

    Shape:
        x (N, ...) float, y (N,) -> PoisonedData like the inputs with the labels unchanged,
        target = ``base_class``; ``details`` holds ``feature_distance`` (relative to
        ``||f(t)||``) and ``input_distance`` (L2 to the base) per poison, in row order.

    Args:
        rate: fraction of the base-class rows turned into poisons, in [0, 1].
        target_instance: the input the attacker wants misclassified, shape of one input
            (or (1, ...)), inside the domain.
        base_class: the class it should be read as (e.g. benign for a malignant target).
        steps: optimisation steps.
        lr: gradient step size.
        beta: weight of the closeness to the base.
        opacity: blend of the target into each base before optimising, in [0, 1).
        selection: ``"nearest"`` (the base rows whose features are nearest the target's, as
            the paper suggests) or ``"random"`` (seeded).
    """

    name: ClassVar[str] = "feature_collision"
    modalities: ClassVar[frozenset[Modality]] = frozenset({Modality.IMAGE, Modality.ECG})
    needs_model: ClassVar[bool] = True

    def __init__(
        self,
        *,
        rate: float,
        target_instance: np.ndarray,
        base_class: int,
        steps: int = 100,
        lr: float = 0.1,
        beta: float = 0.1,
        opacity: float = 0.0,
        selection: str = "nearest",
    ) -> None:
        owner = type(self).__name__
        _check_rate(owner, rate)
        if not isinstance(target_instance, np.ndarray) or target_instance.dtype.kind != "f":
            raise ParameterError(
                f"The 'target_instance' parameter of {owner} must be a float numpy array of one "
                f"input. Got {type(target_instance).__name__} instead."
            )
        if not np.isfinite(target_instance).all():
            raise ParameterError(
                f"The 'target_instance' parameter of {owner} must be finite. Got NaN or Inf "
                "values instead."
            )
        _check_class(owner, "base_class", base_class)
        check_number(owner, "steps", steps, minimum=1, integer=True)
        for name, value in (("lr", lr), ("beta", beta)):
            check_number(owner, name, value, minimum=0)
        if (
            not isinstance(opacity, int | float)
            or isinstance(opacity, bool)
            or not (0 <= opacity < 1)
        ):
            raise ParameterError(
                f"The 'opacity' parameter of {owner} must be in [0, 1). Got {opacity!r} instead."
            )
        if selection not in ("nearest", "random"):
            raise ParameterError(
                f"The 'selection' parameter of {owner} must be 'nearest' or 'random'. "
                f"Got {selection!r} instead."
            )
        self.rate = rate
        self.target_instance = target_instance
        self.base_class = base_class
        self.steps = steps
        self.lr = lr
        self.beta = beta
        self.opacity = opacity
        self.selection = selection

    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this attack; the target instance by its shape and
        a SHA-256 prefix of its bytes."""
        return {
            "rate": self.rate,
            "target_instance": {
                "shape": list(self.target_instance.shape),
                "sha256": _digest(self.target_instance),
            },
            "base_class": self.base_class,
            "steps": self.steps,
            "lr": self.lr,
            "beta": self.beta,
            "opacity": self.opacity,
            "selection": self.selection,
        }

    def _check_classes(self, num_classes: int) -> None:
        _check_class(type(self).__name__, "base_class", self.base_class, num_classes)

    def _target_like(self, x: np.ndarray, domain: Domain) -> np.ndarray:
        owner = type(self).__name__
        target = self.target_instance
        if target.shape == (1, *x.shape[1:]):
            target = target[0]
        if target.shape != x.shape[1:]:
            raise ParameterError(
                f"The 'target_instance' parameter of {owner} must have the shape of one input "
                f"{x.shape[1:]}. Got {self.target_instance.shape} instead."
            )
        if float(target.min()) < domain.low or float(target.max()) > domain.high:
            raise ParameterError(
                f"The 'target_instance' parameter of {owner} must lie inside the domain "
                f"[{domain.low}, {domain.high}]."
            )
        return target.astype(x.dtype)

    def _poison(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        seed: int,
        num_classes: int,
        domain: Domain,
        model: nn.Module | None,
        modality: Modality,
    ) -> PoisonedData:
        del num_classes, modality
        assert model is not None  # __call__ checks it (needs_model)
        target = self._target_like(x, domain)
        eligible = np.flatnonzero(y == self.base_class)
        count = _eligible_count(float(self.rate), len(eligible))
        poisoned = np.zeros(len(y), dtype=bool)
        last_linear(model)  # a model without a feature space fails before any work
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            with torch.backends.cudnn.flags(enabled=False), torch.no_grad():
                t = torch.from_numpy(target[None]).to(device)
                f_target = head_inputs(model, t).detach()
                if self.selection == "nearest" and count:
                    feats = torch.cat(
                        [
                            head_inputs(model, torch.from_numpy(x[chunk]).to(device))
                            for chunk in np.array_split(eligible, max(1, len(eligible) // 256))
                        ]
                    )
                    order = torch.argsort((feats - f_target).norm(dim=1), stable=True).cpu()
                    rows = np.sort(eligible[order.numpy()[:count]])
                else:
                    rows = _choose(np.random.default_rng(seed), eligible, float(self.rate))
            if not len(rows):
                return PoisonedData(x, y, poisoned, int(self.base_class))
            with torch.backends.cudnn.flags(enabled=False):
                crafted, feature_distance = self._craft(model, x[rows], t, f_target, domain)
        finally:
            model.train(was_training)
        base = x[rows].astype(np.float64)
        x[rows] = crafted.astype(x.dtype)
        poisoned[rows] = True
        input_distance = np.sqrt(((x[rows] - base) ** 2).reshape(len(rows), -1).sum(axis=1))
        details = {
            "feature_distance": feature_distance.tolist(),
            "input_distance": input_distance.tolist(),
        }
        return PoisonedData(x, y, poisoned, int(self.base_class), details)

    def _craft(
        self,
        model: nn.Module,
        bases: np.ndarray,
        t: torch.Tensor,
        f_target: torch.Tensor,
        domain: Domain,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm 1 of Shafahi et al. 2018, batched over the poisons (independent in eval
        mode). Returns the poisons and their final relative feature distances."""
        device = t.device
        low = domain.low if math.isfinite(domain.low) else None
        high = domain.high if math.isfinite(domain.high) else None
        b = torch.from_numpy(bases).to(device)
        if self.opacity:
            b = ((1 - self.opacity) * b + self.opacity * t).clamp(low, high)
        scale = f_target.pow(2).sum().clamp_min(1e-12)
        lr, beta = float(self.lr), float(self.beta)
        p = b.clone()
        for _ in range(int(self.steps)):
            p.requires_grad_(True)
            loss = (head_inputs(model, p) - f_target).pow(2).sum() / scale
            (grad,) = torch.autograd.grad(loss, p)
            with torch.no_grad():
                p = p.detach() - lr * grad
                p = (p + lr * beta * b) / (1 + lr * beta)
                if low is not None or high is not None:
                    p = p.clamp(low, high)
        with torch.no_grad():
            distance = (head_inputs(model, p) - f_target).norm(dim=1) / scale.sqrt()
        return p.detach().cpu().numpy(), distance.cpu().double().numpy()


# ---------------------------------------------------------------------------------------------
# Registry, task helper and metrics.

POISONINGS: Registry[type[Poisoning]] = Registry("poisoning attack")
POISONINGS.add(LabelFlip.name, LabelFlip)
POISONINGS.add(FeatureCollision.name, FeatureCollision)
POISONINGS.add(Backdoor.name, Backdoor)


def poison_task(
    task: Task, poisoning: Poisoning, *, seed: int, model: nn.Module | None = None
) -> tuple[Task, PoisonedData]:
    """``task`` with its training split poisoned (validation and test splits untouched), and the
    poisoning's result. Tokenize afterwards: ``prepare_inputs(poisoned_task)`` learns its text
    vocabulary from the poisoned training texts, as a victim's pipeline would.

    Raises:
        The errors of :meth:`Poisoning.__call__`.
    """
    result = poisoning(
        task.train.x,
        task.train.y,
        seed=seed,
        num_classes=task.num_classes,
        domain=task.domain,
        model=model,
        modality=task.modality,
    )
    train = Split(result.x, result.y, task.train.groups)
    return replace(task, train=train), result


def attack_success_rate(
    pred_on_triggered: np.ndarray | torch.Tensor,
    y_true: np.ndarray | torch.Tensor,
    target: int,
) -> float:
    """Fraction of triggered inputs whose true class is not ``target`` that the model classified
    as ``target`` (NaN when every true class is ``target``).

    Shape:
        pred_on_triggered (N,) int, y_true (N,) int -> float
    """
    pred = np.asarray(
        pred_on_triggered.cpu()
        if isinstance(pred_on_triggered, torch.Tensor)
        else pred_on_triggered
    )
    true = np.asarray(y_true.cpu() if isinstance(y_true, torch.Tensor) else y_true)
    if pred.shape != true.shape or pred.ndim != 1:
        raise InputError(
            "attack_success_rate needs predictions and labels of the same shape (N,). Got "
            f"{pred.shape} and {true.shape} instead."
        )
    eligible = true != target
    if not eligible.any():
        return math.nan
    return float((pred[eligible] == target).mean())


__all__ = [
    "POISONINGS",
    "Backdoor",
    "BlipTrigger",
    "FeatureCollision",
    "LabelFlip",
    "PatchTrigger",
    "PoisonedData",
    "Poisoning",
    "TokenTrigger",
    "Trigger",
    "attack_success_rate",
    "infer_modality",
    "poison_task",
]
