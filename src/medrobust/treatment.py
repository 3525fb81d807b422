"""Treatment plans under attack: insulin dosing on the UVa/Padova type-1 diabetes simulator.

A closed-loop dosing task on ``simglucose`` (Xie 2018), the open implementation of the UVa/Padova
T1D simulator (Man et al. 2014, S2013; its 30 virtual patients ship in the package). Every 3
minutes a controller reads the last ``window`` CGM readings (mg/dL) and a context vector
(insulin on board, announced meal, the patient's basal rate, carbohydrate ratio and correction
factor) and returns an insulin dose in U/min.

- :func:`expert_dose` is the teacher: simglucose's basal-bolus controller (meal bolus with its
  correction term) plus trend-corrected correction insulin net of insulin on board and a
  predictive low-glucose suspend, so that the dose depends on the readings between meals as in a
  closed loop. :func:`basal_bolus_controller` is simglucose's ``BBController`` unchanged, the
  baseline the learned policy is compared with.
- :class:`DosingPolicy` is a small MLP trained by behaviour cloning of the teacher
  (:func:`collect_demonstrations`, :func:`train_policy`); ``adversarial=`` makes it adversarial
  training (PGD on the windows inside the loop, labels from the clean windows).
- :class:`SensorAttack` perturbs the readings the controller sees, never the true glucose:
  FGSM or PGD on the policy's log dose, bounded in mg/dL per reading (L∞) and optionally over the
  window (L2), towards an overdose (hypoglycaemia) or an underdose (hyperglycaemia), clipped to
  the sensor's range. Crafted on a surrogate policy, it is a transfer attack.
- Defenses: :class:`PlausibilityFilter` (rate-of-change and range limits on the CGM stream),
  :class:`ActionSmoothing` (median or mean dose over noisy copies of the window; its adaptive
  attacker crafts on :class:`EOTPolicy`, the expectation over the noise), and adversarial
  training. :class:`Episode` records the seconds each part took, so overheads are measured.
- :func:`glucose_outcomes` gives the clinical outcomes of a BG trace: time in range 70–180
  mg/dL, below 70 and 54, above 180, LBGI/HBGI and the risk index (Kovatchev et al. 1997, 2006),
  and the number of severe hypoglycaemic events (>= 15 min below 54 mg/dL; Battelino et al. 2019).

References:
    Xie J. Simglucose v0.2.1: a Type-1 Diabetes simulator (UVa/Padova 2008) in Python. 2018.
    https://github.com/jxx123/simglucose
    Man CD, Micheletto F, Lv D, Breton M, Kovatchev B, Cobelli C. The UVA/PADOVA Type 1 Diabetes
    Simulator: New Features. J Diabetes Sci Technol 2014;8(1):26-34.
    Kovatchev BP, Cox DJ, Gonder-Frederick LA, Clarke W. Symmetrization of the blood glucose
    measurement scale and its applications. Diabetes Care 1997;20(11):1655-1658.
    Kovatchev BP, Otto E, Cox D, Gonder-Frederick L, Clarke W. Evaluation of a new measure of
    blood glucose variability in diabetes. Diabetes Care 2006;29(11):2433-2438.
    Battelino T, et al. Clinical targets for continuous glucose monitoring data interpretation:
    recommendations from the international consensus on time in range. Diabetes Care
    2019;42(8):1593-1603.
    Dunn TC, Eastman RC, Tamada JA. Rates of glucose change measured by blood glucose meter and
    the GlucoWatch Biographer during day, night, and around mealtimes. Diabetes Care
    2004;27(9):2161-2165.
"""

from __future__ import annotations

import difflib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medrobust.attacks.base import check_finite
from medrobust.errors import ConfigError, InputError, ParameterError

PATIENTS: tuple[str, ...] = tuple(
    f"{group}#{i:03d}" for group in ("adolescent", "adult", "child") for i in range(1, 11)
)
SAMPLE_MINUTES = 3.0  # the Dexcom sensor of simglucose samples every 3 minutes
CGM_RANGE = (39.0, 400.0)  # what a Dexcom reports; beyond it the receiver shows LOW / HIGH
INSULIN_ACTION_MINUTES = 240.0  # duration of insulin action for insulin on board (linear decay)
CONTEXT = ("iob", "meal", "basal", "cr", "cf")  # the context features, in this order
TARGET = 140.0  # mg/dL, BBController's target
_INSTALL = 'The treatment task needs simglucose: pip install "medrobust[treatment]".'


def _simglucose() -> dict[str, Any]:
    """simglucose's classes, imported on first use: its import of gym 0.9.4 and pkg_resources
    warns, and a missing install should fail only for users of this module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from simglucose.actuator.pump import InsulinPump
            from simglucose.controller.basal_bolus_ctrller import BBController
            from simglucose.controller.base import Action
            from simglucose.patient.t1dpatient import T1DPatient
            from simglucose.sensor.cgm import CGMSensor
            from simglucose.simulation.env import T1DSimEnv
            from simglucose.simulation.scenario_gen import RandomScenario
        except ImportError as exc:
            raise ConfigError(_INSTALL) from exc
    return {
        "InsulinPump": InsulinPump,
        "Action": Action,
        "BBController": BBController,
        "T1DPatient": T1DPatient,
        "CGMSensor": CGMSensor,
        "T1DSimEnv": T1DSimEnv,
        "RandomScenario": RandomScenario,
    }


def require_simglucose() -> None:
    """Fail with the install command when simglucose is missing.

    Raises:
        ConfigError: 'The treatment task needs simglucose: pip install "medrobust[treatment]".'
    """
    _simglucose()


def check_patient(name: Any) -> str:
    """``name`` if it is one of simglucose's 30 virtual patients.

    Raises:
        ConfigError: "The 'patient' parameter must be one of adolescent#001..010, adult#001..010,
            child#001..010. Got 'adult#11' instead." with close matches.
    """
    if not isinstance(name, str) or name not in PATIENTS:
        close = difflib.get_close_matches(str(name), PATIENTS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            "The 'patient' parameter must be one of adolescent#001..010, adult#001..010, "
            f"child#001..010. Got {name!r} instead.{hint}"
        )
    return name


def _positive(owner: str, name: str, value: Any) -> Any:
    check_finite(owner, name, value, minimum=0)
    if value <= 0:
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be > 0. Got {value!r} instead."
        )
    return value


@dataclass(frozen=True)
class Therapy:
    """A patient's pump settings: basal rate (U/min), carbohydrate ratio (g/U), correction
    factor (mg/dL per U), from simglucose's patient parameters and Quest table."""

    basal: float
    cr: float
    cf: float


def therapy(patient: str) -> Therapy:
    """The pump settings of ``patient``, as simglucose's BBController computes them."""
    check_patient(patient)
    bb = _simglucose()["BBController"]()
    params = bb.patient_params[bb.patient_params.Name == patient]
    quest = bb.quest[bb.quest.Name == patient]
    basal = float(params.u2ss.values.item()) * float(params.BW.values.item()) / 6000.0
    return Therapy(basal, float(quest.CR.values.item()), float(quest.CF.values.item()))


@dataclass(frozen=True)
class EpisodeConfig:
    """One simulated episode: a virtual patient, its length, the seed of its meal scenario and
    sensor noise, and the number of CGM readings a controller sees.

    Raises:
        ConfigError: an unknown patient.
        ParameterError: ``hours`` <= 0 or not finite, ``window`` < 1, ``seed`` < 0.
    """

    patient: str
    hours: float = 24.0
    seed: int = 0
    window: int = 12

    def __post_init__(self) -> None:
        check_patient(self.patient)
        _positive("EpisodeConfig", "hours", self.hours)
        check_finite("EpisodeConfig", "window", self.window, minimum=1, integer=True)
        check_finite("EpisodeConfig", "seed", self.seed, minimum=0, integer=True)
        if self.steps < 1:
            raise ParameterError(
                "The 'hours' parameter of EpisodeConfig must be at least one 3-minute sample "
                f"(0.05 h). Got {self.hours!r} instead."
            )

    @property
    def steps(self) -> int:
        """Controller steps (3-minute samples)."""
        return round(self.hours * 60.0 / SAMPLE_MINUTES)


def _check_window(window: Any, owner: str) -> np.ndarray:
    array = np.asarray(window, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise InputError(
            f"The CGM window given to {owner} must be a non-empty 1-D array of finite readings "
            f"(mg/dL). Got {np.asarray(window).tolist()!r} instead."
        )
    return array


def expert_dose(window: np.ndarray, context: np.ndarray) -> float:
    """The teacher's insulin dose (U/min) for a CGM window and a context (see ``CONTEXT``).

    simglucose's basal-bolus rule for meals (bolus = carbs / CR, plus (G - 140) / CF when
    G > 150), and between meals correction insulin of (G30 - 140) / CF - IOB units spread over an
    hour, where G30 = G + 30 min x the slope of the last 15 minutes (trend-adjusted, as bolus
    calculators with trend arrows do); basal is suspended while G30 < 80 mg/dL (predictive
    low-glucose suspend).
    """
    w = _check_window(window, "expert_dose")
    iob, meal, basal, cr, cf = (float(v) for v in context)
    glucose = float(w[-1])
    k = min(5, w.size - 1)
    slope = float(w[-1] - w[-1 - k]) / (k * SAMPLE_MINUTES) if k else 0.0
    predicted = glucose + 30.0 * slope
    if meal > 0:
        bolus = meal * SAMPLE_MINUTES / cr + (glucose > 150) * (glucose - TARGET) / cf
        return max(0.0, basal + float(bolus) / SAMPLE_MINUTES)
    if predicted < 80.0:
        return 0.0
    return basal + max(0.0, (predicted - TARGET) / cf - iob) / 60.0


# A dosing controller: (CGM window in mg/dL, context) -> dose in U/min. It may have a reset()
# method, called at the start of each episode.
Controller = Callable[[np.ndarray, np.ndarray], float]


def basal_bolus_controller(patient: str) -> Controller:
    """simglucose's ``BBController`` for ``patient`` (it reads the last reading and the meal)."""
    check_patient(patient)
    bb = _simglucose()["BBController"]()

    def control(window: np.ndarray, context: np.ndarray) -> float:
        action = bb._bb_policy(patient, float(context[1]), float(window[-1]), SAMPLE_MINUTES)
        return float(action.basal + action.bolus)

    return control


class DosingPolicy(nn.Module):
    """A small MLP dosing policy: (window (N, W) mg/dL, context (N, 5)) -> dose (N,) U/min.

    Inputs are normalised inside (readings centred at 140 mg/dL and scaled by 50; the therapy
    settings on a log scale), and the dose is ``basal x softplus(z)`` so that it is >= 0 and its
    scale follows the patient's basal rate.

    Shape:
        window (N, W), context (N, 5) -> (N,).
    """

    def __init__(self, window: int = 12, *, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        check_finite("DosingPolicy", "window", window, minimum=1, integer=True)
        check_finite("DosingPolicy", "hidden", hidden, minimum=1, integer=True)
        check_finite("DosingPolicy", "depth", depth, minimum=1, integer=True)
        self.window = window
        layers: list[nn.Module] = []
        width = window + (window - 1) + len(CONTEXT)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def log_ratio(self, window: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """log1p(dose / basal): the scale the policy is trained and attacked on."""
        level = (window - TARGET) / 50.0
        trend = (window[:, 1:] - window[:, :-1]) / 10.0
        iob, meal, basal, cr, cf = context.unbind(1)
        ctx = torch.stack(
            [
                iob,
                meal / 10.0,
                torch.log(basal * 100.0),
                torch.log(cr / 10.0),
                torch.log(cf / 30.0),
            ],
            dim=1,
        )
        z = self.net(torch.cat([level, trend, ctx], dim=1)).squeeze(1)
        return torch.log1p(nn.functional.softplus(z))

    def forward(self, window: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return torch.expm1(self.log_ratio(window, context)) * context[:, 2]


@dataclass(frozen=True)
class ActionSmoothing:
    """Randomized smoothing of the action: the median (or mean) dose over ``samples`` copies of
    the window with Gaussian noise of ``sigma`` mg/dL (clipped to the sensor range). It
    randomizes, so it masks gradients (``masks_gradients = True``): attack it with EOT too."""

    sigma: float = 10.0
    samples: int = 16
    reduce: Literal["median", "mean"] = "median"
    seed: int = 0
    masks_gradients = True

    def __post_init__(self) -> None:
        check_finite("ActionSmoothing", "sigma", self.sigma, minimum=0)
        check_finite("ActionSmoothing", "samples", self.samples, minimum=1, integer=True)
        check_finite("ActionSmoothing", "seed", self.seed, minimum=0, integer=True)
        if self.reduce not in ("median", "mean"):
            raise ConfigError(
                "The 'reduce' parameter of ActionSmoothing must be 'median' or 'mean'. "
                f"Got {self.reduce!r} instead."
            )


class EOTPolicy(nn.Module):
    """The adaptive attacker's view of a smoothed controller: the policy's log1p(dose / basal)
    averaged over ``samples`` draws of :class:`ActionSmoothing`'s noise (expectation over
    transformation, Athalye et al. 2018), so that a gradient attack aims at what the smoothed
    controller does on average rather than at one noise draw. The draws are seeded.

    Shape:
        window (N, W), context (N, 5) -> (N,).
    """

    def __init__(
        self, policy: DosingPolicy, smoothing: ActionSmoothing, *, samples: int = 8, seed: int = 0
    ) -> None:
        super().__init__()
        check_finite("EOTPolicy", "samples", samples, minimum=1, integer=True)
        check_finite("EOTPolicy", "seed", seed, minimum=0, integer=True)
        self.policy = policy
        self.sigma = float(smoothing.sigma)
        self.samples = samples
        self._generator = torch.Generator().manual_seed(seed)

    def log_ratio(self, window: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The mean log dose ratio over the noise draws."""
        n, w = window.shape
        noise = torch.randn((self.samples, n, w), generator=self._generator) * self.sigma
        noisy = (window[None] + noise).clamp(*CGM_RANGE).reshape(self.samples * n, w)
        ratios = self.policy.log_ratio(noisy, context.repeat(self.samples, 1))
        return ratios.reshape(self.samples, n).mean(0)

    def forward(self, window: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return torch.expm1(self.log_ratio(window, context)) * context[:, 2]


AttackedPolicy = DosingPolicy | EOTPolicy
"""What a sensor attack computes its gradient on: a policy, or its smoothed expectation."""


class PolicyController:
    """A :class:`DosingPolicy` as a :class:`Controller`, optionally with action smoothing."""

    def __init__(self, policy: DosingPolicy, smoothing: ActionSmoothing | None = None) -> None:
        self.policy = policy
        self.smoothing = smoothing
        self.reset()

    def reset(self) -> None:
        """Restart the smoothing noise (called at the start of each episode)."""
        seed = self.smoothing.seed if self.smoothing else 0
        self._generator = torch.Generator().manual_seed(seed)

    def __call__(self, window: np.ndarray, context: np.ndarray) -> float:
        w = torch.as_tensor(_check_window(window, "PolicyController"), dtype=torch.float32)[None]
        c = torch.as_tensor(np.asarray(context, dtype=np.float64), dtype=torch.float32)[None]
        self.policy.eval()
        with torch.no_grad():
            if self.smoothing is None:
                return float(self.policy(w, c)[0])
            s = self.smoothing
            noise = torch.randn((s.samples, w.shape[1]), generator=self._generator) * s.sigma
            noisy = (w + noise).clamp(*CGM_RANGE)
            doses = self.policy(noisy, c.expand(s.samples, -1))
            return float(doses.median() if s.reduce == "median" else doses.mean())


@dataclass(frozen=True)
class SensorAttack:
    """A gradient attack on the CGM window a dosing policy sees.

    FGSM (``steps=0``) or PGD with ``steps`` iterations of size ``step_size`` (default
    ``2.5 eps / steps``) on the policy's log1p(dose / basal), ascending for ``"overdose"`` and
    descending for ``"underdose"``; the perturbation is at most ``eps`` mg/dL per reading (L∞),
    at most ``window_l2`` mg/dL over the window when given, and the readings stay in the sensor
    range. At every step of an episode the attacker rewrites the whole window the controller
    receives (a man-in-the-middle between sensor and controller; CGM apps backfill history).

    Shape:
        window (N, W), context (N, 5) -> (N, W).
    """

    eps: float
    direction: Literal["overdose", "underdose"] = "overdose"
    steps: int = 10
    step_size: float | None = None
    window_l2: float | None = None

    def __post_init__(self) -> None:
        check_finite("SensorAttack", "eps", self.eps, minimum=0)
        check_finite("SensorAttack", "steps", self.steps, minimum=0, integer=True)
        if self.step_size is not None:
            _positive("SensorAttack", "step_size", self.step_size)
        if self.window_l2 is not None:
            check_finite("SensorAttack", "window_l2", self.window_l2, minimum=0)
        if self.direction not in ("overdose", "underdose"):
            raise ConfigError(
                "The 'direction' parameter of SensorAttack must be 'overdose' or 'underdose'. "
                f"Got {self.direction!r} instead."
            )

    def _project(self, clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        delta = (adv - clean).clamp(-self.eps, self.eps)
        if self.window_l2 is not None:
            norm = delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
            delta = delta * (self.window_l2 / norm).clamp(max=1.0)
        return (clean + delta).clamp(*CGM_RANGE)

    def perturb(
        self, policy: AttackedPolicy, window: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """The attacked windows; ``window`` is not mutated and the policy's mode is restored."""
        if window.ndim != 2 or not torch.isfinite(window).all():
            raise InputError(
                "The window given to SensorAttack must be a finite (N, W) tensor. "
                f"Got shape {tuple(window.shape)} instead."
            )
        sign = 1.0 if self.direction == "overdose" else -1.0
        steps = max(self.steps, 1)
        size = self.eps if self.steps == 0 else (self.step_size or 2.5 * self.eps / steps)
        training = policy.training
        policy.eval()
        clean = window.detach()
        adv = clean.clone()
        try:
            for _ in range(steps):
                adv.requires_grad_(True)
                objective = sign * policy.log_ratio(adv, context).sum()
                (grad,) = torch.autograd.grad(objective, adv)
                step = (
                    grad.sign()
                    if self.window_l2 is None
                    else grad
                    / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    * math.sqrt(clean.shape[1])
                )
                adv = self._project(clean, adv.detach() + size * step)
        finally:
            policy.train(training)
        return adv.detach()


@dataclass(frozen=True)
class SensorBias:
    """A constant offset of ``eps`` mg/dL on every reading (a miscalibrated or tampered sensor):
    up for ``"overdose"``, down for ``"underdose"``, clipped to the sensor range. It needs no
    gradient and it is the adaptive attack on :class:`PlausibilityFilter`: the filter's rate
    limit only delays an offset (by ``eps / (max_rate x 3 min)`` samples), it cannot remove it.

    Shape:
        window (N, W), context (N, 5) -> (N, W).
    """

    eps: float
    direction: Literal["overdose", "underdose"] = "overdose"

    def __post_init__(self) -> None:
        check_finite("SensorBias", "eps", self.eps, minimum=0)
        if self.direction not in ("overdose", "underdose"):
            raise ConfigError(
                "The 'direction' parameter of SensorBias must be 'overdose' or 'underdose'. "
                f"Got {self.direction!r} instead."
            )

    def perturb(
        self, policy: AttackedPolicy, window: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """The biased windows (``policy`` and ``context`` are not read)."""
        del policy, context
        sign = 1.0 if self.direction == "overdose" else -1.0
        return (window.detach() + sign * self.eps).clamp(*CGM_RANGE)


@dataclass(frozen=True)
class PlausibilityFilter:
    """A physiological plausibility filter on the CGM stream, applied before the controller.

    It keeps its own record of accepted readings: each new reading is clipped to the sensor
    range and to the last accepted reading ± ``max_rate`` x 3 min; the controller sees the last
    ``window`` accepted readings. Blood glucose rarely changes faster than 3–4 mg/dL/min (Dunn et
    al. 2004), hence the default 4 mg/dL/min (±12 mg/dL per 3-minute sample). It bounds how fast
    an attacker can move what the controller sees, not the size of a slow drift (<= eps).
    """

    max_rate: float = 4.0

    def __post_init__(self) -> None:
        _positive("PlausibilityFilter", "max_rate", self.max_rate)

    def accept(self, history: list[float], window: np.ndarray) -> np.ndarray:
        """Append the newest reading of ``window`` to ``history`` (filtered) and return the
        filtered window; with an empty history, the whole window is filtered forwards."""
        limit = self.max_rate * SAMPLE_MINUTES
        incoming = np.clip(window, *CGM_RANGE)
        new = list(incoming) if not history else [float(incoming[-1])]
        for reading in new:
            last = history[-1] if history else float(reading)
            history.append(float(np.clip(reading, last - limit, last + limit)))
        recent = np.asarray(history[-window.size :], dtype=np.float64)
        return np.concatenate([np.full(window.size - recent.size, recent[0]), recent])


@dataclass
class Episode:
    """What one episode recorded: per-step true BG, true CGM, the newest reading the controller
    saw, the dose (U/min) and the carbohydrates (g/min), the true windows and contexts the
    controller was given before any attack, and the seconds spent attacking, filtering and in
    the controller. When the simulator stops early (BG outside 10–600 mg/dL), the last BG is
    held for the remaining steps and the other traces stay 0 there."""

    config: EpisodeConfig
    bg: np.ndarray
    cgm: np.ndarray
    seen: np.ndarray
    dose: np.ndarray
    meal: np.ndarray
    attack_seconds: float = 0.0
    filter_seconds: float = 0.0
    controller_seconds: float = 0.0
    windows: list[np.ndarray] = field(default_factory=list, repr=False)
    contexts: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def simulated_steps(self) -> int:
        """Steps simulated before the simulator stopped (all of them if it did not): the
        readings of the steps after are unset (0), as no reading is ever below the sensor's
        39 mg/dL."""
        unset = np.flatnonzero(self.seen == 0)
        return int(unset[0]) if unset.size else int(self.seen.size)

    def outcomes(self) -> GlucoseOutcomes:
        """The clinical outcomes of the true BG trace."""
        return glucose_outcomes(self.bg, SAMPLE_MINUTES)


def run_episode(
    config: EpisodeConfig,
    controller: Controller,
    *,
    attack: SensorAttack | SensorBias | None = None,
    surrogate: AttackedPolicy | None = None,
    sensor_filter: PlausibilityFilter | None = None,
) -> Episode:
    """Simulate ``config`` with ``controller`` in the loop, deterministically for its seed.

    The attack (crafted on ``surrogate``: another policy for a transfer attack, or an
    :class:`EOTPolicy` for an adaptive one; else on the controller's own policy) perturbs the
    window the controller receives; the filter, if any, then cleans it. Insulin on board is
    computed from the delivered doses above basal, which the attacker does not touch.

    Raises:
        ConfigError: an attack without a differentiable policy to craft it on.
    """
    attacked = surrogate or getattr(controller, "policy", None)
    if attack is not None and not isinstance(attacked, DosingPolicy | EOTPolicy):
        raise ConfigError(
            "The 'surrogate' parameter of run_episode must be a DosingPolicy or EOTPolicy when the "
            f"controller has none to attack. Got {surrogate!r} instead."
        )
    sg = _simglucose()
    settings = therapy(config.patient)
    if hasattr(controller, "reset"):
        controller.reset()
    n = config.steps
    episode = Episode(config, np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n))
    filtered: list[float] = []
    excess: list[float] = []  # units above basal delivered per step, for insulin on board
    decay = 1.0 - SAMPLE_MINUTES * np.arange(1, 1 + INSULIN_ACTION_MINUTES / SAMPLE_MINUTES) / (
        INSULIN_ACTION_MINUTES
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = sg["T1DSimEnv"](
            sg["T1DPatient"].withName(config.patient),
            sg["CGMSensor"].withName("Dexcom", seed=config.seed),
            sg["InsulinPump"].withName("Insulet"),
            sg["RandomScenario"](start_time=datetime(2018, 1, 1, 0, 0, 0), seed=config.seed),
        )
        step = env.reset()
        readings = [float(step.observation.CGM)] * config.window
        meal = 0.0
        for t in range(config.steps):
            window = np.clip(np.asarray(readings[-config.window :]), *CGM_RANGE)
            recent = excess[::-1][: decay.size]
            iob = float(np.dot(recent, decay[: len(recent)]))
            context = np.array([iob, meal, settings.basal, settings.cr, settings.cf])
            episode.windows.append(window)
            episode.contexts.append(context)
            seen = window
            if attack is not None and isinstance(attacked, DosingPolicy | EOTPolicy):
                start = time.perf_counter()
                w = torch.as_tensor(window, dtype=torch.float32)[None]
                c = torch.as_tensor(context, dtype=torch.float32)[None]
                seen = attack.perturb(attacked, w, c)[0].double().numpy()
                episode.attack_seconds += time.perf_counter() - start
            if sensor_filter is not None:
                start = time.perf_counter()
                seen = sensor_filter.accept(filtered, seen)
                episode.filter_seconds += time.perf_counter() - start
            start = time.perf_counter()
            dose = max(0.0, float(controller(seen, context)))
            episode.controller_seconds += time.perf_counter() - start
            step = env.step(sg["Action"](basal=dose, bolus=0.0))
            delivered = float(env.insulin_hist[-1])
            excess.append((delivered - settings.basal) * SAMPLE_MINUTES)
            readings.append(float(step.observation.CGM))
            meal = float(step.info["meal"])
            episode.bg[t], episode.cgm[t], episode.seen[t] = step.info["bg"], readings[-1], seen[-1]
            episode.dose[t], episode.meal[t] = delivered, meal
            if step.done:  # BG left [10, 600] mg/dL: the simulator stops; keep the last value
                episode.bg[t:] = episode.bg[t]
                break
    return episode


@dataclass(frozen=True)
class GlucoseOutcomes:
    """Clinical outcomes of a BG trace (fractions of time; indices per Kovatchev et al.)."""

    tir: float  # 70-180 mg/dL inclusive
    tbr70: float  # < 70
    tbr54: float  # < 54
    tar180: float  # > 180
    lbgi: float
    hbgi: float
    risk_index: float
    severe_hypo_events: int  # runs of >= 15 minutes below 54 mg/dL
    mean_bg: float


def glucose_outcomes(
    bg: Sequence[float] | np.ndarray, sample_minutes: float = 3.0
) -> GlucoseOutcomes:
    """Time in ranges, LBGI/HBGI/risk index and severe hypoglycaemic events of a BG trace.

    f(BG) = 1.509 (ln(BG)^1.084 - 5.381), r = 10 f^2; LBGI is the mean over all readings of r
    where f < 0 (else 0), HBGI likewise where f > 0 (Kovatchev et al. 1997, 2006); the risk
    index is LBGI + HBGI. A severe event is a run of readings below 54 mg/dL lasting >= 15
    minutes (Battelino et al. 2019's level-2 hypoglycaemia).

    Raises:
        InputError: an empty trace, or values that are not finite and > 0.
        ParameterError: ``sample_minutes`` <= 0.
    """
    _positive("glucose_outcomes", "sample_minutes", sample_minutes)
    trace = np.asarray(bg, dtype=np.float64)
    if trace.ndim != 1 or trace.size == 0 or not np.isfinite(trace).all() or (trace <= 0).any():
        raise InputError(
            "The BG trace given to glucose_outcomes must be a non-empty 1-D array of finite "
            f"values > 0 (mg/dL). Got {_describe(bg)} instead."
        )
    f = 1.509 * (np.log(trace) ** 1.084 - 5.381)
    risk = 10.0 * f**2
    lbgi = float(np.where(f < 0, risk, 0.0).mean())
    hbgi = float(np.where(f > 0, risk, 0.0).mean())
    events, run = 0, 0
    needed = math.ceil(15.0 / sample_minutes - 1e-9)
    for low in trace < 54:
        run = run + 1 if low else 0
        events += run == needed
    return GlucoseOutcomes(
        tir=float(((trace >= 70) & (trace <= 180)).mean()),
        tbr70=float((trace < 70).mean()),
        tbr54=float((trace < 54).mean()),
        tar180=float((trace > 180).mean()),
        lbgi=lbgi,
        hbgi=hbgi,
        risk_index=lbgi + hbgi,
        severe_hypo_events=int(events),
        mean_bg=float(trace.mean()),
    )


def _describe(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Demonstrations:
    """(window, context, dose) triples of a teacher, as float32 tensors."""

    windows: torch.Tensor
    contexts: torch.Tensor
    doses: torch.Tensor


def collect_demonstrations(
    patients: Sequence[str],
    seeds: Sequence[int],
    *,
    hours: float = 24.0,
    window: int = 12,
    teacher: Callable[[np.ndarray, np.ndarray], float] = expert_dose,
) -> Demonstrations:
    """Run ``teacher`` on every patient x seed and record what it saw and dosed."""
    if not patients or not seeds:
        raise ConfigError(
            "The 'patients' and 'seeds' parameters of collect_demonstrations must be non-empty. "
            f"Got {list(patients)!r} and {list(seeds)!r} instead."
        )
    ws, cs, ds = [], [], []
    for patient in patients:
        for seed in seeds:
            episode = run_episode(EpisodeConfig(patient, hours, seed, window), teacher)
            ws += episode.windows
            cs += episode.contexts
            ds += [teacher(w, c) for w, c in zip(episode.windows, episode.contexts, strict=True)]
    return Demonstrations(_float32(ws), _float32(cs), _float32(ds))


def _float32(values: Sequence[Any]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.float32)


def train_policy(
    demos: Demonstrations,
    *,
    hidden: int = 64,
    depth: int = 2,
    epochs: int = 60,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    adversarial: SensorAttack | None = None,
) -> DosingPolicy:
    """Behaviour cloning: fit a :class:`DosingPolicy` to the teacher's doses with the squared
    error of log1p(dose / basal), Adam, seeded. With ``adversarial`` (an overdose or underdose
    attack; both directions are used, alternating batches), every batch is half clean and half
    PGD-perturbed windows labelled with the teacher's dose on the clean window (adversarial
    training in the manner of Madry et al. 2018)."""
    check_finite("train_policy", "epochs", epochs, minimum=1, integer=True)
    check_finite("train_policy", "batch_size", batch_size, minimum=1, integer=True)
    _positive("train_policy", "lr", lr)
    if demos.windows.shape[0] == 0:
        raise InputError("The demonstrations given to train_policy must be non-empty. Got 0.")
    torch.manual_seed(seed)
    policy = DosingPolicy(demos.windows.shape[1], hidden=hidden, depth=depth)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    target = torch.log1p(demos.doses / demos.contexts[:, 2])
    generator = torch.Generator().manual_seed(seed)
    n = demos.windows.shape[0]
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i, start in enumerate(range(0, n, batch_size)):
            idx = order[start : start + batch_size]
            w, c, y = demos.windows[idx], demos.contexts[idx], target[idx]
            if adversarial is not None:
                direction: Literal["overdose", "underdose"] = (
                    "overdose" if (epoch + i) % 2 == 0 else "underdose"
                )
                attack = SensorAttack(
                    eps=adversarial.eps,
                    direction=direction,
                    steps=adversarial.steps,
                    window_l2=adversarial.window_l2,
                )
                half = w.shape[0] // 2
                w = torch.cat([w[:half], attack.perturb(policy, w[half:], c[half:])])
            policy.train()
            loss = nn.functional.mse_loss(policy.log_ratio(w, c), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    policy.eval()
    return policy
