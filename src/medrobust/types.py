"""Small value types shared by every part of medrobust."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from medrobust.errors import ParameterError


class Modality(StrEnum):
    """The kind of input a task feeds its model."""

    IMAGE = "image"
    ECG = "ecg"
    TEXT = "text"
    TABULAR = "tabular"


class TaskKind(StrEnum):
    """What the model is asked to do."""

    CLASSIFICATION = "classification"
    ANOMALY_DETECTION = "anomaly_detection"


class Norm(StrEnum):
    """The norm that bounds a perturbation."""

    LINF = "linf"
    L2 = "l2"
    L0 = "l0"

    @classmethod
    def parse(cls, value: str | Norm) -> Norm:
        """Return the norm named by ``value`` ('linf', 'l2', 'l0'; 'inf' is accepted for linf)."""
        if isinstance(value, Norm):
            return value
        text = str(value).lower().replace("_", "").replace("-", "")
        aliases = {"linf": cls.LINF, "inf": cls.LINF, "l2": cls.L2, "2": cls.L2, "l0": cls.L0}
        if text not in aliases:
            raise ParameterError(
                f"The 'norm' must be one of 'linf', 'l2', 'l0'. Got {value!r} instead."
            )
        return aliases[text]


@dataclass(frozen=True)
class Domain:
    """The valid range of input values: images live in [0, 1], standardised data is unbounded."""

    low: float = -math.inf
    high: float = math.inf

    def __post_init__(self) -> None:
        if math.isnan(self.low) or math.isnan(self.high) or not self.low < self.high:
            raise ParameterError(
                f"A Domain needs low < high. Got low={self.low}, high={self.high} instead."
            )

    @property
    def bounded(self) -> bool:
        """Whether both ends are finite."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def width(self) -> float:
        """high - low (inf when unbounded)."""
        return self.high - self.low


UNBOUNDED = Domain()
UNIT_INTERVAL = Domain(0.0, 1.0)


@dataclass(frozen=True)
class ThreatModel:
    """An attacker's budget: a norm, a radius eps and the input domain to stay inside."""

    norm: Norm
    eps: float
    domain: Domain = UNBOUNDED

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm.parse(self.norm))
        if not isinstance(self.eps, int | float) or math.isnan(self.eps) or self.eps < 0:
            raise ParameterError(f"The 'eps' of a ThreatModel must be >= 0. Got {self.eps!r}.")
        if self.norm is Norm.L0 and self.eps > 1:
            raise ParameterError(
                "The 'eps' of an L0 ThreatModel is the largest fraction of features changed and "
                f"must be <= 1. Got {self.eps} instead."
            )
        if self.norm is Norm.LINF and self.domain.bounded and self.eps > self.domain.width:
            raise ParameterError(
                f"The 'eps' of an L-inf ThreatModel must be <= the domain width "
                f"{self.domain.width}. Got {self.eps} instead."
            )
