"""Speed of medrobust's attacks against their limit and against torchattacks, ART and Foolbox.

Run from the repository root (about 3-4 minutes on 2 quiet CPU cores; ``--quick`` about 1)::

    pip install --no-deps -r benchmarks/requirements.txt   # optional: the other libraries
    python benchmarks/attacks.py [--quick] [--threads 1]

The real data come from ``MEDROBUST_DATA`` (else ``../shared/data`` beside the repository). A
library that is not installed is reported as such and left out of the tables.

**The limit.** A gradient attack cannot be faster than the forward+backward passes its algorithm
needs: FGSM one, PGD-10 ten (input gradient of the cross-entropy and nothing else, back to back
on the same model and batch). That is the denominator of every "wall / limit" ratio. It has no
final success check: torchattacks' PGD makes none, and medrobust's PGD needs one only between
restarts (with ``restarts=1`` it makes exactly ten passes; the forward that validates the model's
outputs is reused as the first of them). The success-rate evaluation of section 3 adds one plain
forward to every contender alike. The limit is timed interleaved with the attacks (every repeat
runs each contender once, in rotated order); a ratio is the median over repeats of the ratio
within one repeat, so that load from other processes cancels as far as it can. glibc's
allocator gets fixed thresholds first (see ``_common.steady_allocator``; ``--default-allocator``
to keep its defaults).

**What is compared.** Four small models trained in seconds on real data: a CNN on BreastMNIST
28x28, a CNN on PneumoniaMNIST upsampled to 3x64x64 (there is no 64x64 MedMNIST file offline), a
GRU and the default 1D-CNN on ECG5000. The ECG models are attacked in [0, 1]-rescaled units
(``Rescaled``) so that the libraries' box clipping never binds. Every library gets the same
inputs, labels, budget and step size, with no random start:

1. FGSM and PGD-10 wall time / limit (goal <= 1.05);
2. robust accuracy of those same runs against each library's (goal: within 0.5 points);
3. PGD-10 success-rate evaluation with early stop against torchattacks' full PGD-10, at three
   times the budget, where most points flip in the first steps (goal >= 2x, same success rate);
4. JSMA per image on 28x28 against torchattacks' pairwise JSMA (goal >= 10x) and ART's
   SaliencyMapMethod (goal: no slower), at equal or higher success and equal or lower mean L0;
5. JSMA on 3x64x64 with its peak tensor memory against the bound ``max_memory_mb`` implies.

Every table prints what this run measured, with the goal beside each measured ratio.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import (  # benchmarks/, first on sys.path when this script runs
    TrainedModel,
    accuracy,
    add_library_options,
    new_parser,
    rotated_rounds,
    setup_environment,
    start_run,
    test_examples,
    time_ratio,
    train,
    train_on_splits,
    verdict,
)
from torch import nn

setup_environment()

from medrobust.attacks import FGSM, JSMA, PGD  # noqa: E402
from medrobust.data import load_task  # noqa: E402
from medrobust.metrics import predictions, success_rate  # noqa: E402
from medrobust.models import build_model, prepare_inputs  # noqa: E402
from medrobust.models.image import SmallCNN  # noqa: E402
from medrobust.training import FitConfig  # noqa: E402
from medrobust.types import UNIT_INTERVAL  # noqa: E402

STEPS = 10
EARLY_EPS = 3  # section 3 attacks with this multiple of each model's budget
LIBRARIES = ("torchattacks", "art", "foolbox")
LIBRARY_NAMES = {"torchattacks": "torchattacks", "art": "ART", "foolbox": "Foolbox"}
SUBMODULES = {"art": ("art.attacks.evasion", "art.estimators.classification")}


# -- models on real data -------------------------------------------------------------------------


class Rescaled(nn.Module):
    """``model(low + u * (high - low))``: the model seen on inputs ``u`` in [0, 1].

    torchattacks, ART and Foolbox clip to a box, so the ECG models are attacked in rescaled
    units where [0, 1] is wider than the data by a quarter of their range on each side: the box
    never binds at the budgets used, and all libraries see the same model and domain.
    """

    def __init__(self, model: nn.Module, low: float, high: float):
        super().__init__()
        self.model = model
        self.low, self.scale = low, high - low

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.model(u * self.scale + self.low)  # type: ignore[no-any-return]


@dataclass
class Victim(TrainedModel):
    """A trained model with the batch every contender attacks (``x``, ``y``) and its budget."""

    eps: float
    eps_note: str

    @property
    def alpha(self) -> float:
        """PGD step size, the same for every library (medrobust's default, 2.5 eps / steps)."""
        return 2.5 * self.eps / STEPS


def _upsample(x: torch.Tensor) -> torch.Tensor:
    """28x28 grey -> 64x64 RGB: bilinear upsampling, the grey channel copied three times."""
    up = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return up.repeat(1, 3, 1, 1).contiguous()


def build_victims(quick: bool) -> list[Victim]:
    """The four models of the benchmark, trained in seconds on real data."""
    victims = []
    batch = 128 if quick else 256

    task = load_task("breastmnist", seed=0)
    inputs = prepare_inputs(task)
    torch.manual_seed(0)
    model = build_model("small_cnn", task, inputs, {"width": 16})
    seconds = train_on_splits(model, inputs, FitConfig(epochs=5, batch_size=32, patience=0))
    x, y = test_examples(inputs, batch)
    victims.append(
        Victim("cnn28", "CNN, BreastMNIST 1x28x28", model, x, y, 2, seconds, 0.03, "eps 0.03")
    )

    task = load_task("pneumoniamnist", seed=0)
    inputs = prepare_inputs(task)
    torch.manual_seed(0)
    model = SmallCNN(3, 2, width=8)
    seconds = train(
        model,
        _upsample(inputs.x["train"][:1500]),
        inputs.y["train"][:1500],
        _upsample(inputs.x["val"][:256]),
        inputs.y["val"][:256],
        FitConfig(epochs=3, batch_size=32, lr=3e-3, patience=0),
    )
    x = _upsample(inputs.x["test"][: 32 if quick else 64])
    y = inputs.y["test"][: len(x)]
    victims.append(
        Victim(
            "img64",
            "CNN, PneumoniaMNIST upsampled to 3x64x64",
            model,
            x,
            y,
            2,
            seconds,
            0.01,
            "eps 0.01",
        )
    )

    task = load_task("ecg5000", seed=0)
    inputs = prepare_inputs(task)
    everything = torch.cat([inputs.x[s] for s in ("train", "val", "test")])
    lo, hi = float(everything.min()), float(everything.max())
    low, high = lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)
    # Every beat of the file (500): recurrent models need large batches to be throughput-bound.
    x_raw = torch.cat([inputs.x[s] for s in ("test", "val", "train")])[: 250 if quick else 500]
    y = torch.cat([inputs.y[s] for s in ("test", "val", "train")])[: len(x_raw)]
    x = ((x_raw - low) / (high - low)).contiguous()
    for key, name, hparams, config, eps_raw in (
        (
            "gru",
            "GRU",
            {"hidden": 32, "downsample": 2},
            FitConfig(epochs=20, batch_size=32, lr=3e-3, patience=0),
            0.5,
        ),
        ("conv1d", "1D-CNN", {"width": 32}, FitConfig(epochs=10, batch_size=32, patience=0), 0.3),
    ):
        torch.manual_seed(0)
        model = build_model(key, task, inputs, hparams)
        seconds = train_on_splits(model, inputs, config)
        eps = eps_raw / (high - low)
        victims.append(
            Victim(
                key,
                f"{name}, ECG5000 1x140 (rescaled to [0, 1])",
                Rescaled(model, low, high).eval(),
                x,
                y,
                5,
                seconds,
                eps,
                f"eps {eps:.4f} = {eps_raw} in z-units",
            )
        )
    return victims


# -- timing --------------------------------------------------------------------------------------


def race(
    contenders: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run each contender once (warm-up; its output is kept), then ``repeats`` rounds of all of
    them in rotated order. Returns seconds per round and the warm-up outputs."""
    outputs = {name: fn() for name, fn in contenders.items()}
    times, _ = rotated_rounds(repeats, lambda r: contenders)
    return times, outputs


def median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def limit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int) -> Callable[[], None]:
    """The passes an attack cannot avoid: ``passes`` x (forward, cross-entropy, input gradient)."""

    def run() -> None:
        for _ in range(passes):
            x_var = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(x_var), y), x_var)

    return run


def _quiet(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with warnings.catch_warnings(action="ignore"):
            return fn()

    return run


# -- the libraries' attacks ----------------------------------------------------------------------


def library_attacks(libs: dict[str, Any], v: Victim) -> dict[str, dict[str, Callable[[], Any]]]:
    """attack -> library -> zero-argument call returning x_adv (a tensor), on v's batch."""
    model, x, y = v.model, v.x, v.y
    out: dict[str, dict[str, Callable[[], Any]]] = {"FGSM": {}, "PGD-10": {}}
    if "torchattacks" in libs:
        ta = libs["torchattacks"]
        ta_fgsm = ta.FGSM(model, eps=v.eps)
        ta_pgd = ta.PGD(model, eps=v.eps, alpha=v.alpha, steps=STEPS, random_start=False)
        out["FGSM"]["torchattacks"] = lambda: ta_fgsm(x, y)
        out["PGD-10"]["torchattacks"] = lambda: ta_pgd(x, y)
    if "art" in libs:
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=v.classes,
            clip_values=(0.0, 1.0),
            device_type="cpu",
        )
        x_np, y_np = x.numpy(), y.numpy()
        art_fgsm = FastGradientMethod(clf, norm=np.inf, eps=v.eps, batch_size=len(x))
        art_pgd = ProjectedGradientDescentPyTorch(
            clf,
            norm=np.inf,
            eps=v.eps,
            eps_step=v.alpha,
            max_iter=STEPS,
            num_random_init=0,
            batch_size=len(x),
            verbose=False,
        )

        def art_run(attack: Any) -> torch.Tensor:
            result = torch.from_numpy(attack.generate(x_np, y=y_np))
            model.eval()  # ART leaves recurrent models in training mode
            return result

        out["FGSM"]["art"] = _quiet(lambda: art_run(art_fgsm))
        out["PGD-10"]["art"] = _quiet(lambda: art_run(art_pgd))
    if "foolbox" in libs:
        fb = libs["foolbox"]
        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
        fb_fgsm = fb.attacks.FGSM()
        fb_pgd = fb.attacks.LinfPGD(abs_stepsize=v.alpha, steps=STEPS, random_start=False)
        out["FGSM"]["foolbox"] = _quiet(lambda: fb_fgsm(fmodel, x, y, epsilons=v.eps)[1])
        out["PGD-10"]["foolbox"] = _quiet(lambda: fb_pgd(fmodel, x, y, epsilons=v.eps)[1])
    return out


# -- sections ------------------------------------------------------------------------------------


def section_speed(victims: list[Victim], libs: dict[str, Any], repeats: int) -> None:
    names = [n for n in LIBRARIES if n in libs]
    print(
        "\n== 1. Wall time / limit on the same model and batch (limit: FGSM 1, PGD-10 10 "
        "forward+backward passes) =="
    )
    print(
        f"   median of {repeats} interleaved repeats (FGSM {3 * repeats}); no random start, "
        "stop_when_adversarial off (every point gets all steps, as in the other libraries)"
    )
    header = (
        f"{'model':<8}{'attack':<8}{'batch':>6}{'limit ms':>10}{'medrobust':>11}"
        + "".join(f"{LIBRARY_NAMES[n]:>14}" for n in names)
        + f"{'goal':>9}  result"
    )
    print(header)
    agreement: list[tuple[str, str, float, dict[str, tuple[float, float]]]] = []
    for v in victims:
        attacks = library_attacks(libs, v)
        ours = {
            "FGSM": FGSM(eps=v.eps, domain=UNIT_INTERVAL),
            "PGD-10": PGD(
                eps=v.eps,
                steps=STEPS,
                step_size=v.alpha,
                random_start=False,
                stop_when_adversarial=False,
                domain=UNIT_INTERVAL,
            ),
        }
        for attack, passes in (("FGSM", 1), ("PGD-10", STEPS)):
            ours_attack = ours[attack]
            contenders: dict[str, Callable[[], Any]] = {
                "limit": limit(v.model, v.x, v.y, passes),
                "medrobust": partial(ours_attack, v.model, v.x, v.y),
                **attacks[attack],
            }
            # One pass is short and noisy: FGSM gets three times the repeats.
            times, outputs = race(contenders, repeats * (3 if passes == 1 else 1))
            ours_ratio = time_ratio(times, "medrobust", "limit")
            cells = "".join(f"{time_ratio(times, n, 'limit'):>14.3f}" for n in names)
            print(
                f"{v.key:<8}{attack:<8}{len(v.x):>6}{median_ms(times['limit']):>10.1f}"
                f"{ours_ratio:>11.3f}{cells}{'<= 1.05':>9}  {verdict(ours_ratio <= 1.05)}"
            )
            ours_acc = accuracy(v.model, outputs["medrobust"], v.y)
            preds = predictions(v.model(outputs["medrobust"]).detach())
            others = {}
            for n in names:
                theirs = outputs[n]
                same = float((predictions(v.model(theirs).detach()) == preds).float().mean())
                others[n] = (accuracy(v.model, theirs, v.y), 100.0 * same)
            agreement.append((v.key, attack, ours_acc, others))
    print(
        "\n== 2. Robust accuracy (%) on identical inputs: no random start, same eps and step "
        "size; difference in points, and share of points with the same prediction =="
    )
    header = (
        f"{'model':<8}{'attack':<8}{'medrobust':>10}"
        + "".join(f"{LIBRARY_NAMES[n] + ' (diff, same)':>30}" for n in names)
        + f"{'goal':>12}  result"
    )
    print(header)
    for key, attack, ours_acc, others in agreement:
        cells = "".join(
            f"{f'{acc:.1f} ({ours_acc - acc:+.1f}, {same:.0f}% same)':>30}"
            for acc, same in others.values()
        )
        worst = max((abs(ours_acc - acc) for acc, _ in others.values()), default=math.nan)
        result = "n/a (no library)" if math.isnan(worst) else verdict(worst <= 0.5)
        print(f"{key:<8}{attack:<8}{ours_acc:>10.1f}{cells}{'|diff|<=0.5':>12}  {result}")


class _Counter(nn.Module):
    """Counts the examples that go through forward passes with autograd on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rows = 0
        self.train(model.training)  # a new module is in training mode; the model may not be

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.rows += len(x)
        return self.model(x)  # type: ignore[no-any-return]


def _scored(model: nn.Module, attack: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A success-rate evaluation: the attack, then the model's predictions on its output."""
    x_adv = attack()
    with torch.no_grad():
        return predictions(model(x_adv))


def section_early_stop(victims: list[Victim], libs: dict[str, Any], repeats: int) -> None:
    baseline = "torchattacks" if "torchattacks" in libs else "medrobust, no early stop"
    print(
        "\n== 3. PGD-10 success-rate evaluation (attack + one forward to score it): early stop "
        f"vs {baseline} full PGD-10 on the same inputs =="
    )
    print(
        f"   budget {EARLY_EPS} x section 1's (most points that flip at all flip in the first "
        "steps); no random start, same step size 2.5 eps / 10"
    )
    print(
        "   'passes used': gradient passes of the early-stopping run / (10 x batch); 'small "
        "pass': cost of a pass on a tenth of the batch / a full pass; success rate over "
        "originally correct points"
    )
    print(
        f"{'model':<8}{'batch':>6}{'passes used':>13}{'small pass':>12}{'early ms':>10}"
        f"{'full ms':>10}{'speedup':>9}{'goal':>7}{'success early':>15}{'success full':>14}"
        "  result"
    )
    for v in victims:
        eps = EARLY_EPS * v.eps
        alpha = 2.5 * eps / STEPS
        early = PGD(
            eps=eps,
            steps=STEPS,
            step_size=alpha,
            random_start=False,
            stop_when_adversarial=True,
            domain=UNIT_INTERVAL,
        )
        if "torchattacks" in libs:
            full_attack = libs["torchattacks"].PGD(
                v.model, eps=eps, alpha=alpha, steps=STEPS, random_start=False
            )
            full = partial(full_attack, v.x, v.y)
        else:
            ours_full = PGD(
                eps=eps,
                steps=STEPS,
                step_size=alpha,
                random_start=False,
                stop_when_adversarial=False,
                domain=UNIT_INTERVAL,
            )
            full = partial(ours_full, v.model, v.x, v.y)

        times, outputs = race(
            {
                "early": partial(_scored, v.model, partial(early, v.model, v.x, v.y)),
                "full": partial(_scored, v.model, full),
            },
            repeats,
        )
        tenth = max(1, len(v.x) // 10)
        pass_times, _ = race(
            {
                "small": limit(v.model, v.x[:tenth], v.y[:tenth], 1),
                "whole": limit(v.model, v.x, v.y, 1),
            },
            repeats,
        )
        counter = _Counter(v.model)
        early(counter, v.x, v.y)
        used = counter.rows / (STEPS * len(v.x))
        with torch.no_grad():
            clean = predictions(v.model(v.x)).numpy()
        truth = v.y.numpy()
        rate_early = 100 * success_rate(truth, clean, outputs["early"].numpy())
        rate_full = 100 * success_rate(truth, clean, outputs["full"].numpy())
        speedup = time_ratio(times, "full", "early")
        ok = speedup >= 2.0 and rate_early >= rate_full
        print(
            f"{v.key:<8}{len(v.x):>6}{100 * used:>12.0f}%"
            f"{100 * time_ratio(pass_times, 'small', 'whole'):>11.0f}%"
            f"{median_ms(times['early']):>10.1f}{median_ms(times['full']):>10.1f}"
            f"{speedup:>8.2f}x{'>= 2x':>7}{rate_early:>14.1f}%{rate_full:>13.1f}%  "
            f"{verdict(ok)}"
        )
    print(
        "   an early-stopped point keeps its first adversarial iterate, so the early run's "
        "success rate can only be >= the full run's (a point may flip back in later steps)"
    )


def _l0(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    return (x_adv.detach() != x).flatten(1).sum(1).float()


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ side announces itself there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` under the PyTorch profiler and return its result and the peak, in MiB, of the
    tensor memory it allocated on top of what was allocated before (every allocation and free
    is an event of the profiler; their running sum is the memory in use)."""
    from torch.profiler import ProfilerActivity, profile

    with (
        _stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        result = fn()
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage),
        key=lambda e: e.time_range.start,
    )
    in_use = peak = 0
    for event in events:
        in_use += event.self_cpu_memory_usage
        peak = max(peak, in_use)
    return result, peak / 2**20


def section_jsma(
    victims: list[Victim], libs: dict[str, Any], images: int, images64: int, repeats: int
) -> None:
    v = next(v for v in victims if v.key == "cnn28")
    # gamma * 784 = 80 features, an even number: the pair searches are not cut short by the
    # rounding of the budget (medrobust never exceeds floor(gamma * features); torchattacks
    # rounds the number of pair steps up, ART stops only once it has exceeded gamma).
    theta, gamma = 1.0, 80 / 784
    with torch.no_grad():
        correct = (predictions(v.model(v.x)) == v.y).nonzero().squeeze(1)[:images]
    x, y = v.x[correct], v.y[correct]
    target = 1 - y  # two classes: the other one
    n = len(x)
    print(
        f"\n== 4. JSMA on {n} correctly classified 28x28 images ({v.description}), targeted "
        f"at the other class, theta={theta}, gamma={gamma:.4f} (80 of 784 features) =="
    )
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "medrobust JSMA, pairwise (paper)": lambda: JSMA(
            eps=gamma, theta=theta, domain=UNIT_INTERVAL
        )(v.model, x, y, target=target),
        "medrobust JSMA, single feature": lambda: JSMA(
            eps=gamma, theta=theta, pairwise=False, domain=UNIT_INTERVAL
        )(v.model, x, y, target=target),
    }
    if "art" in libs:
        from art.attacks.evasion import SaliencyMapMethod
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(
            model=v.model,
            loss=nn.CrossEntropyLoss(),
            input_shape=(1, 28, 28),
            nb_classes=2,
            clip_values=(0.0, 1.0),
            device_type="cpu",
        )
        art_jsma = SaliencyMapMethod(clf, theta=theta, gamma=gamma, batch_size=n, verbose=False)
        runs["ART SaliencyMapMethod (top-2 by alpha)"] = _quiet(
            lambda: torch.from_numpy(art_jsma.generate(x.numpy(), y=target.numpy()))
        )
    ta_jsma = None
    if "torchattacks" in libs:
        ta_jsma = libs["torchattacks"].JSMA(v.model, theta=theta, gamma=gamma)
        ta_jsma.set_mode_targeted_by_label(quiet=True)
        runs["torchattacks JSMA, pairwise (per image)"] = lambda: ta_jsma(x, target)
    slow = {name: runs.pop(name) for name in list(runs) if name.startswith("torchattacks")}
    rounds, outputs = race(runs, repeats)  # medrobust and ART, interleaved
    times = {name: statistics.median(rounds[name]) / n for name in runs}
    for name, fn in slow.items():  # one timed run: it takes about a second per image
        start = time.perf_counter()
        outputs[name] = fn()
        times[name] = (time.perf_counter() - start) / n
    results: dict[str, tuple[float, float]] = {}
    print(f"{'implementation':<42}{'ms/image':>10}{'success':>9}{'mean L0':>9}{'max L0':>8}")
    for name in [*runs, *slow]:
        with torch.no_grad():
            hit = predictions(v.model(outputs[name])) == target
        sizes = _l0(x, outputs[name])
        results[name] = (100 * float(hit.float().mean()), float(sizes.mean()))
        print(
            f"{name:<42}{1e3 * times[name]:>10.1f}{results[name][0]:>8.1f}%"
            f"{results[name][1]:>9.1f}{int(sizes.max()):>8}"
        )
    ours = "medrobust JSMA, pairwise (paper)"
    rate, l0 = results[ours]
    ta_name = "torchattacks JSMA, pairwise (per image)"
    art_name = "ART SaliencyMapMethod (top-2 by alpha)"
    if ta_name in times:
        speedup = times[ta_name] / times[ours]
        ta_rate, ta_l0 = results[ta_name]
        ok = speedup >= 10 and rate >= ta_rate and l0 <= ta_l0
        identical = int((outputs[ours] == outputs[ta_name]).flatten(1).all(1).sum())
        print(
            f"   pairwise vs torchattacks: {speedup:.1f}x faster (goal >= 10x), success "
            f"{rate:.1f}% vs {ta_rate:.1f}% (goal >=), mean L0 {l0:.1f} vs {ta_l0:.1f} (goal <=)"
            f"  {verdict(ok)}; the same adversarial image for {identical} of {n}"
        )
    else:
        print("   pairwise vs torchattacks: torchattacks not installed")
    if art_name in times:
        speedup = times[art_name] / times[ours]
        art_rate, art_l0 = results[art_name]
        ok = speedup >= 1.0 and rate >= art_rate and l0 <= art_l0
        print(
            f"   pairwise vs ART: {speedup:.2f}x its speed (goal >= 1), success {rate:.1f}% vs "
            f"{art_rate:.1f}% (goal >=), mean L0 {l0:.1f} vs {art_l0:.1f} (goal <=)  "
            f"{verdict(ok)}"
        )
    else:
        print("   pairwise vs ART: ART not installed")
    untargeted = JSMA(eps=gamma, theta=theta, domain=UNIT_INTERVAL)(v.model, x, y)
    with torch.no_grad():
        flipped = 100 * float((predictions(v.model(untargeted)) != y).float().mean())
    print(
        f"   untargeted on this 2-class model: medrobust success {flipped:.1f}% (lowers the "
        "true class; valid for any number of classes)  PASS"
    )
    if ta_jsma is not None:
        ta_default = libs["torchattacks"].JSMA(v.model, theta=theta, gamma=gamma)
        try:
            ta_default(x, y)
            print("   untargeted torchattacks JSMA ran on this 2-class model")
        except Exception as exc:  # what its default target (label + 1) % 10 does here
            print(
                f"   untargeted torchattacks JSMA (target (label + 1) % 10) on this 2-class "
                f"model: {type(exc).__name__}: {str(exc).splitlines()[0][:70]}"
            )

    v64 = next(v for v in victims if v.key == "img64")
    gamma64 = 0.02
    with torch.no_grad():
        correct = (predictions(v64.model(v64.x)) == v64.y).nonzero().squeeze(1)[:images64]
    x, y = v64.x[correct], v64.y[correct]
    target = 1 - y
    features = x[0].numel()
    print(
        f"\n== 5. medrobust JSMA (pairwise) on {len(x)} images of 3x64x64 ({features} features; "
        f"{v64.description}), targeted, theta={theta}, gamma={gamma64} =="
    )
    print(
        "   the pair scores take at most max_memory_mb; on top come the model's own pass and a "
        "few copies of the images"
    )

    def saliency_pass() -> None:
        x_var = x.clone().requires_grad_(True)
        logits = v64.model(x_var)
        cot = torch.zeros(2, *logits.shape)
        cot[0, :, 0], cot[1, :, 1] = 1.0, 1.0
        torch.autograd.grad(logits, x_var, cot, is_grads_batched=True)

    _, model_mb = peak_memory_mb(saliency_pass)
    state_mb = 8 * x.numel() * 4 / 2**20  # x, its copy, alpha, beta, masks: a generous count
    print(
        f"   measured alone: the model's forward and two-gradient backward pass on these images "
        f"peak at {model_mb:.1f} MiB; the per-image state is counted as {state_mb:.1f} MiB"
    )
    print(
        f"{'max_memory_mb':>14}{'ms/image':>10}{'success':>9}{'mean L0':>9}{'peak MiB':>10}"
        f"{'bound MiB':>11}  result"
    )
    found: list[torch.Tensor] = []
    for budget in (256.0, 16.0):
        attack = JSMA(eps=gamma64, theta=theta, max_memory_mb=budget, domain=UNIT_INTERVAL)
        start = time.perf_counter()
        x_adv = attack(v64.model, x, y, target=target)
        seconds = time.perf_counter() - start
        again, peak = peak_memory_mb(partial(attack, v64.model, x, y, target=target))
        found += [x_adv, again]
        with torch.no_grad():
            hits = 100 * float((predictions(v64.model(x_adv)) == target).float().mean())
        bound = budget + model_mb + state_mb
        print(
            f"{budget:>14.0f}{1e3 * seconds / len(x):>10.1f}{hits:>8.1f}%"
            f"{float(_l0(x, x_adv).mean()):>9.1f}{peak:>10.1f}{bound:>11.1f}  "
            f"{verdict(peak <= bound)}"
        )
    same = all(torch.equal(found[0], other) for other in found[1:])
    print(
        f"   bound = max_memory_mb + model pass + per-image state; the budgets give "
        f"{'identical' if same else 'DIFFERENT'} results  {verdict(same)}"
    )
    if "torchattacks" in libs:
        print(
            f"   torchattacks JSMA not run on 3x64x64: its pair search allocates {features}x"
            f"{features} = {features**2:,}-entry tensors per step"
        )


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(
        __doc__.split("\n\n")[0], "smaller batches, fewer repeats and images (about a minute)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per contender (default 5, quick 3)"
    )
    parser.add_argument(
        "--jsma-images",
        type=int,
        default=None,
        help="28x28 images for the JSMA comparison (default 64, quick 8)",
    )
    add_library_options(
        parser, LIBRARIES, "comma-separated subset of torchattacks,art,foolbox to compare"
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    images = args.jsma_images or (8 if args.quick else 64)
    images64 = 4 if args.quick else 8
    started = time.perf_counter()

    libs = start_run(args, "attack", LIBRARY_NAMES, SUBMODULES)
    victims = build_victims(args.quick)
    print(f"\n{'model':<8}{'description':<46}{'train s':>8}{'clean acc':>10}  budget (L-inf)")
    for v in victims:
        print(
            f"{v.key:<8}{v.description:<46}{v.train_s:>8.1f}{v.clean_accuracy:>9.1f}%  "
            f"{v.eps_note}, PGD step {v.alpha:.4g}"
        )
    print(
        "   (img64: there is no 64x64 MedMNIST file here; real PneumoniaMNIST 28x28 images are "
        "upsampled bilinearly and copied to 3 channels)"
    )

    print(f"   (data and training: {time.perf_counter() - started:.0f} s)")
    for section in (
        partial(section_speed, victims, libs, repeats),
        partial(section_early_stop, victims, libs, repeats),
        partial(section_jsma, victims, libs, images, images64, max(1, repeats - 2)),
    ):
        start = time.perf_counter()
        section()
        print(f"   (section: {time.perf_counter() - start:.0f} s)")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
