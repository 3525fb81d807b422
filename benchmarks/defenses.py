"""Speed of medrobust's randomized-smoothing certification against its limit and against ART.

Run from the repository root (about 2 minutes on 2 quiet CPU cores; ``--quick`` under 1)::

    pip install --no-deps -r benchmarks/requirements.txt   # optional: ART (and statsmodels)
    python benchmarks/defenses.py [--quick] [--threads 1]

The real data come from ``MEDROBUST_DATA`` (else ``../shared/data`` beside the repository). A
library that is not installed is reported as such and left out of the tables.

**The limit.** CERTIFY (Cohen, Rosenfeld & Kolter 2019) cannot be faster than the base model's
forward passes on its noisy inputs: ``n0 + n`` per example. The "plain forward" does exactly that
work and nothing else, the way :class:`~medrobust.defenses.smoothing.SmoothedClassifier` does it:
the same examples, the same ``n0`` and ``n``, the same batch size, the noise drawn by
``torch.randn`` from one generator seeded per call, scaled by ``sigma`` and added to the example
each row belongs to (gathered as ``x[owners]``, with the row-to-example indices computed per chunk
as ``SmoothedClassifier`` computes them), then the model's forward pass, all under
``torch.inference_mode`` as there; it counts no class and computes no bound. Its throughput is
the denominator of "certify / plain" (examples per second; goal >= 0.9).

**What is compared.** Three small base models, one per modality smoothing applies to, trained
in seconds on real data with :class:`~medrobust.defenses.smoothing.GaussianNoiseAugmentation` at
the noise level they are certified with: a CNN on BreastMNIST 28x28 (sigma 0.25 in pixel units),
a 1D-CNN on ECG5000 (sigma 0.5 in z-units) and the tabular MLP on Wisconsin (sigma 0.5 standard
deviations of each standardised feature). Every round runs the plain forward, medrobust's
``SmoothedClassifier.certify`` and ART's ``PyTorchRandomizedSmoothing.certify`` once each, in
rotated order, on the same examples with the same ``n0`` (ART's ``sample_size``), ``n``,
``alpha``, ``sigma`` (ART's ``scale``) and batch size. The CNN's and the 1D-CNN's rounds each
take the next slice of their examples (many short rounds, every example certified by both
libraries); the MLP's, a fraction of a second long, take all of its examples each time. A ratio
is the median over rounds of the ratio within one round, so that load from other processes
cancels as far as it can; glibc's allocator gets fixed thresholds first
(``_common.steady_allocator``; ``--default-allocator`` keeps its defaults).

1. certify / plain forward throughput (goal >= 0.9);
2. medrobust's certify throughput / ART's (goal >= 1.5), beside the ceiling plain / ART;
3. both libraries' labels, certified accuracy and radii on the same examples: they draw different
   noise, so they agree only statistically; paired tests of the difference (goal |z| <= 3).

Every table prints what this run measured, with the goal beside each measured number.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from _common import (  # benchmarks/, first on sys.path when this script runs
    TrainedModel,
    add_library_options,
    new_parser,
    rotated_rounds,
    setup_environment,
    start_run,
    test_examples,
    throughput_ratio,
    train_on_splits,
    verdict,
)
from torch import nn

setup_environment()

from medrobust.data import load_task  # noqa: E402
from medrobust.defenses.smoothing import (  # noqa: E402
    ABSTAIN,
    GaussianNoiseAugmentation,
    SmoothedClassifier,
    smoothed_certified_accuracy,
)
from medrobust.models import build_model, prepare_inputs  # noqa: E402
from medrobust.training import FitConfig  # noqa: E402

LIBRARIES = ("art",)
LIBRARY_NAMES = {"art": "ART"}
SUBMODULES = {
    # ART's certify imports statsmodels for its Clopper-Pearson bound.
    "art": ("art.estimators.certification.randomized_smoothing", "statsmodels.stats.proportion")
}
Z_LIMIT = 3.0  # section 3: |z| of a paired difference between the two libraries


# -- base models on real data --------------------------------------------------------------------


@dataclass
class Base(TrainedModel):
    """A base classifier trained under Gaussian noise, with the examples it is certified on."""

    sigma: float
    sigma_note: str
    per_round: int  # examples certified in one timed round
    rounds: int  # timed rounds; round r certifies slice r % slices

    @property
    def slices(self) -> int:
        return len(self.x) // self.per_round


def build_bases(quick: bool, rounds: int) -> list[Base]:
    """The three base models of the benchmark, trained in seconds on real data.

    The CNN and the 1D-CNN certify a different slice of their examples in each round (the 1D-CNN
    goes over them twice), so that many short rounds cover many examples; the MLP's rounds take
    a fraction of a second, so each of its rounds certifies all of its examples.
    """
    bases = []
    for key, task_name, arch, hparams, config, sigma, note, size, factor, description in (
        (
            "cnn28",
            "breastmnist",
            "small_cnn",
            {"width": 8},
            FitConfig(epochs=15, batch_size=32, lr=3e-3, patience=0),
            0.25,
            "0.25 (pixels in [0, 1])",
            32 if quick else 192,
            1,
            "CNN, BreastMNIST 1x28x28",
        ),
        (
            "conv1d",
            "ecg5000",
            "conv1d",
            {"width": 16},
            FitConfig(epochs=10, batch_size=32, patience=0),
            0.5,
            "0.5 (z-units)",
            100 if quick else 200,
            2,
            "1D-CNN, ECG5000 1x140",
        ),
        (
            "mlp",
            "wisconsin",
            "mlp",
            {},
            FitConfig(epochs=30, batch_size=32, patience=0),
            0.5,
            "0.5 (standardised)",
            228,  # the whole test and validation splits
            2,
            "MLP, Wisconsin 30 features",
        ),
    ):
        task = load_task(task_name, seed=0)
        inputs = prepare_inputs(task)
        torch.manual_seed(0)
        model = build_model(arch, task, inputs, hparams)
        # Trained under N(0, sigma^2) input noise (Cohen et al., Section 3.3).
        seconds = train_on_splits(GaussianNoiseAugmentation(model, sigma), inputs, config)
        x, y = test_examples(inputs, size)
        if key == "mlp":
            per_round = len(x)
        else:
            per_round = max(1, len(x) // rounds)
            kept = per_round * min(rounds, len(x) // per_round)
            x, y = x[:kept], y[:kept]
        with torch.no_grad():
            classes = int(model(x[:1]).shape[1])  # one logit per class
        bases.append(
            Base(
                key,
                description,
                model,
                x,
                y,
                classes,
                seconds,
                sigma,
                note,
                per_round,
                rounds * factor,
            )
        )
    return bases


# -- the contenders ------------------------------------------------------------------------------


def plain_forward(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    stages: tuple[int, ...],
    batch_size: int,
    seed: int = 0,
) -> Callable[[], None]:
    """The limit: the forward passes CERTIFY needs on its noisy inputs, and nothing else.

    ``stages`` noisy copies of every example (``(n0, n)``), drawn as
    ``SmoothedClassifier._sample`` and ``_counts`` draw them: under ``torch.inference_mode``, one
    generator for all stages seeded per call, chunks of at most ``batch_size`` rows across
    examples, each row's example index computed from a row range made once per stage, the noise
    scaled by ``sigma`` in place and the example behind each row gathered (``x[owners]``) and
    added; then the model's forward pass. It counts no class and computes no bound.
    """
    shape = tuple(x.shape[1:])

    def run() -> None:
        with torch.inference_mode():
            generator = torch.Generator(device=x.device)
            generator.manual_seed(seed)
            for copies in stages:
                total = len(x) * copies
                rows = torch.arange(min(batch_size, total), device=x.device)
                for start in range(0, total, batch_size):
                    size = min(batch_size, total - start)
                    owners = torch.div(rows[:size] + start, copies, rounding_mode="floor")
                    noisy = torch.randn(
                        (size, *shape), generator=generator, device=x.device, dtype=x.dtype
                    )
                    noisy.mul_(sigma).add_(x[owners])
                    model(noisy)

    return run


def art_smoothing(base: Base, n0: int, alpha: float) -> Any:
    """ART's PyTorchRandomizedSmoothing around the same model, sigma, n0 and alpha."""
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    with warnings.catch_warnings(action="ignore"):
        return PyTorchRandomizedSmoothing(
            model=base.model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(base.x.shape[1:]),
            nb_classes=base.classes,
            device_type="cpu",
            sample_size=n0,  # the selection samples (the paper's n0)
            scale=base.sigma,
            alpha=alpha,
        )


def _art_certify(
    estimator: Any, x: np.ndarray, n: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    np.random.seed(0)  # ART draws its noise from numpy's global generator
    with warnings.catch_warnings(action="ignore"):
        labels, radii = estimator.certify(x, n=n, batch_size=batch_size)
    return np.asarray(labels, dtype=np.int64), np.asarray(radii, dtype=np.float64)


def contenders_for(
    base: Base, libs: dict[str, Any], n0: int, n: int, alpha: float, batch_size: int
) -> dict[str, Callable[[torch.Tensor], Callable[[], Any]]]:
    """name -> (examples -> zero-argument call); the calls on a small slice warm up."""
    smoothed = SmoothedClassifier(
        base.model, base.sigma, num_classes=base.classes, batch_size=batch_size
    )
    out: dict[str, Callable[[torch.Tensor], Callable[[], Any]]] = {
        "plain": lambda x: plain_forward(base.model, x, base.sigma, (n0, n), batch_size),
        "medrobust": lambda x: partial(smoothed.certify, x, n0=n0, n=n, alpha=alpha, seed=0),
    }
    if "art" in libs:
        estimator = art_smoothing(base, n0, alpha)
        out["art"] = lambda x: partial(_art_certify, estimator, x.numpy(), n, batch_size)
    return out


# -- timing --------------------------------------------------------------------------------------


def race(
    contenders: dict[str, Callable[[torch.Tensor], Callable[[], Any]]], base: Base
) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Warm each contender up on two examples, then run ``base.rounds`` rounds of all of them
    in rotated order, round r on slice r % slices of the examples. Returns seconds per round and
    each contender's outputs on the slices in order (the first time each slice comes round)."""
    for make in contenders.values():
        make(base.x[:2])()
    p = base.per_round
    calls = [
        {name: make(base.x[i * p : (i + 1) * p]) for name, make in contenders.items()}
        for i in range(base.slices)
    ]
    return rotated_rounds(base.rounds, lambda r: calls[r % base.slices], keep=base.slices)


# -- agreement -----------------------------------------------------------------------------------


def paired_z(a: np.ndarray, b: np.ndarray) -> float:
    """z of the mean paired difference ``a - b`` (0 where every pair is equal)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    spread = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    if spread == 0.0:
        return 0.0 if float(d.mean()) == 0.0 else math.inf
    return float(d.mean()) / (spread / math.sqrt(len(d)))


def mcnemar_z(a: np.ndarray, b: np.ndarray) -> float:
    """McNemar's z for paired yes/no outcomes: (a only - b only) / sqrt(discordant pairs)."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return 0.0 if only_a + only_b == 0 else (only_a - only_b) / math.sqrt(only_a + only_b)


# -- sections ------------------------------------------------------------------------------------


@dataclass
class Measured:
    """A base model's timed rounds (name -> seconds per round) and, per library, the labels and
    radii it certified on the base's examples."""

    base: Base
    times: dict[str, list[float]]
    outputs: dict[str, Any]

    def per_second(self, name: str) -> float:
        """``name``'s examples per second, median over rounds."""
        return self.base.per_round / statistics.median(self.times[name])

    def ratio(self, name: str, reference: str) -> float:
        """``name``'s throughput / ``reference``'s, median over rounds of the ratio within one
        round (:func:`_common.throughput_ratio`)."""
        return throughput_ratio(self.times, name, reference)


def measure(
    bases: list[Base], libs: dict[str, Any], n0: int, n: int, alpha: float, batch_size: int
) -> list[Measured]:
    measured = []
    for base in bases:
        start = time.perf_counter()
        contenders = contenders_for(base, libs, n0, n, alpha, batch_size)
        times, outputs = race(contenders, base)
        certificates = {
            name: (
                np.concatenate([labels for labels, _ in parts]),
                np.concatenate([radii for _, radii in parts]),
            )
            for name, parts in outputs.items()
            if name != "plain"
        }
        measured.append(Measured(base, times, certificates))
        print(
            f"   {base.key}: {base.rounds} rounds of {base.per_round} examples, "
            f"{time.perf_counter() - start:.0f} s"
        )
    return measured


def section_limit(measured: list[Measured], n0: int, n: int, batch_size: int) -> None:
    print(
        f"\n== 1. Certify / plain forward throughput: the same examples, {n0} + {n} noisy "
        f"copies of each, batches of {batch_size} noisy inputs =="
    )
    print(
        "   ex/s: examples per second, median over rounds; ratio: median over rounds of the "
        "ratio within one round (plain forward: noise + forward passes, nothing else)"
    )
    print(
        f"{'model':<8}{'examples':>9}{'rounds':>7}{'per round':>10}{'plain ex/s':>12}"
        f"{'certify ex/s':>14}{'ratio':>8}{'goal':>8}  result"
    )
    for m in measured:
        b, r = m.base, m.ratio("medrobust", "plain")
        print(
            f"{b.key:<8}{len(b.x):>9}{b.rounds:>7}{b.per_round:>10}{m.per_second('plain'):>12.1f}"
            f"{m.per_second('medrobust'):>14.1f}{r:>8.3f}{'>= 0.9':>8}  {verdict(r >= 0.9)}"
        )


def section_art(measured: list[Measured], libs: dict[str, Any]) -> None:
    print(
        "\n== 2. medrobust certify vs ART PyTorchRandomizedSmoothing.certify: same model, "
        "examples, n0 (ART sample_size), n, alpha, sigma (ART scale) and batch size =="
    )
    if "art" not in libs:
        print("   ART not installed: nothing to compare")
        return
    print(
        "   ceiling: plain forward / ART throughput, the most any certify can gain on ART "
        "(it cannot beat the plain forward passes it needs)"
    )
    print(
        f"{'model':<8}{'per round':>10}{'medrobust ex/s':>16}{'ART ex/s':>10}{'speedup':>9}"
        f"{'ceiling':>9}{'goal':>9}  result"
    )
    for m in measured:
        speedup, ceiling = m.ratio("medrobust", "art"), m.ratio("plain", "art")
        print(
            f"{m.base.key:<8}{m.base.per_round:>10}{m.per_second('medrobust'):>16.1f}"
            f"{m.per_second('art'):>10.1f}{speedup:>8.2f}x{ceiling:>8.2f}x{'>= 1.5x':>9}  "
            f"{verdict(speedup >= 1.5)}"
        )


def _summary(labels: np.ndarray, radii: np.ndarray, y: np.ndarray, sigma: float) -> str:
    accuracy = smoothed_certified_accuracy(labels, radii, y, [0.0, sigma])
    abstain = 100.0 * float((labels == ABSTAIN).mean())
    return (
        f"{abstain:>8.1f}%{100 * accuracy[0]:>10.1f}%{100 * accuracy[1]:>12.1f}%"
        f"{float(radii.mean()):>12.3f}"
    )


def section_agreement(measured: list[Measured], libs: dict[str, Any]) -> None:
    print(
        "\n== 3. Certificates on every example (each once): abstentions, certified accuracy at "
        "r = 0 and r = sigma, mean radius (0 where abstaining) =="
    )
    names = ["medrobust", *(["art"] if "art" in libs else [])]
    print(
        f"{'model':<8}{'library':<11}{'clean acc':>10}{'abstain':>9}{'cert r=0':>11}"
        f"{'cert r=sigma':>13}{'mean radius':>12}"
    )
    for m in measured:
        b = m.base
        y = b.y.numpy()
        for name in names:
            labels, radii = m.outputs[name]
            print(
                f"{b.key:<8}{LIBRARY_NAMES.get(name, name):<11}{b.clean_accuracy:>9.1f}%"
                f"{_summary(labels, radii, y, b.sigma)}"
            )
    if "art" not in libs:
        print("   ART not installed: no comparison")
        return
    print(
        "   medrobust vs ART: they draw different noise, so they agree statistically: paired "
        f"tests over the examples, goal |z| <= {Z_LIMIT:g}"
    )
    for m in measured:
        b = m.base
        y = b.y.numpy()
        ours_labels, ours_radii = m.outputs["medrobust"]
        art_labels, art_radii = m.outputs["art"]
        ours_right = (ours_labels == y) & (ours_labels != ABSTAIN)
        art_right = (art_labels == y) & (art_labels != ABSTAIN)
        z_acc = mcnemar_z(ours_right, art_right)
        z_radius = paired_z(ours_radii, art_radii)
        same = int((ours_labels == art_labels).sum())
        gap = float(np.abs(ours_radii - art_radii).mean())
        ok = abs(z_acc) <= Z_LIMIT and abs(z_radius) <= Z_LIMIT
        print(
            f"   {b.key:<7} same label {same}/{len(y)}; certified accuracy "
            f"{100 * (ours_right.mean() - art_right.mean()):+.1f} points (McNemar z {z_acc:+.2f});"
            f" mean radius {float(ours_radii.mean() - art_radii.mean()):+.4f} (paired z "
            f"{z_radius:+.2f}; mean |diff| {gap:.4f})  {verdict(ok)}"
        )


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__.split("\n\n")[0], "fewer examples and rounds (under a minute)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="timed rounds per model (default 12, quick 4; the 1D-CNN and MLP get twice as many)",
    )
    parser.add_argument("--n0", type=int, default=100, help="selection samples (default 100)")
    parser.add_argument("--n", type=int, default=1000, help="estimation samples (default 1000)")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="noisy inputs per forward pass (1000)"
    )
    add_library_options(parser, LIBRARIES, "comma-separated subset of: art")
    args = parser.parse_args(argv)
    for option in ("threads", "rounds", "n0", "n", "batch_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha must be in (0, 1), got {args.alpha}")
    rounds = args.rounds or (4 if args.quick else 12)
    started = time.perf_counter()

    libs = start_run(args, "smoothing", LIBRARY_NAMES, SUBMODULES)
    bases = build_bases(args.quick, rounds)
    print(
        f"\n{'model':<8}{'description':<30}{'train s':>8}{'classes':>8}{'clean acc':>10}"
        "  sigma (trained and certified)"
    )
    for b in bases:
        print(
            f"{b.key:<8}{b.description:<30}{b.train_s:>8.1f}{b.classes:>8}"
            f"{b.clean_accuracy:>9.1f}%  {b.sigma_note}"
        )
    print(
        f"   certify: n0 = {args.n0}, n = {args.n}, alpha = {args.alpha}, batch size "
        f"{args.batch_size}; examples: the test split, then the validation split"
    )
    print(f"   (data and training: {time.perf_counter() - started:.0f} s)")
    print("\ntimed rounds (plain forward, medrobust and ART on the same examples, rotated):")
    measured = measure(bases, libs, args.n0, args.n, args.alpha, args.batch_size)
    section_limit(measured, args.n0, args.n, args.batch_size)
    section_art(measured, libs)
    section_agreement(measured, libs)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
