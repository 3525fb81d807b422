"""The insulin-dosing task on the UVa/Padova simulator: outcome metrics, episodes, behaviour
cloning, sensor attacks and defenses (issue 8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("simglucose")

from medrobust.errors import ConfigError, InputError, ParameterError
from medrobust.treatment import (
    ActionSmoothing,
    DosingPolicy,
    EOTPolicy,
    EpisodeConfig,
    PlausibilityFilter,
    PolicyController,
    SensorAttack,
    SensorBias,
    basal_bolus_controller,
    collect_demonstrations,
    expert_dose,
    glucose_outcomes,
    run_episode,
    therapy,
    train_policy,
)
from tests import fuzz

PATIENTS = ("adolescent#001", "adult#001", "child#001")
HOURS = 12.0


def kovatchev_risk(bg: float) -> float:
    f = 1.509 * (math.log(bg) ** 1.084 - 5.381)
    return 10 * f * f


@pytest.fixture(scope="module")
def policy() -> DosingPolicy:
    demos = collect_demonstrations(PATIENTS, [0], hours=HOURS)
    return train_policy(demos, epochs=60, seed=0)


# -- outcome metrics on hand-made traces --------------------------------------------------------


def test_outcomes_of_a_hand_made_trace() -> None:
    trace = [100, 150, 180, 70, 69, 60, 53, 50, 40, 45, 200, 250]
    out = glucose_outcomes(trace, sample_minutes=3)
    assert out.tir == pytest.approx(4 / 12)
    assert out.tbr70 == pytest.approx(6 / 12)
    assert out.tbr54 == pytest.approx(4 / 12)
    assert out.tar180 == pytest.approx(2 / 12)
    assert out.tir + out.tbr70 + out.tar180 == pytest.approx(1.0)
    low = [kovatchev_risk(v) if v < 112.5 else 0.0 for v in trace]
    high = [kovatchev_risk(v) if v > 112.5 else 0.0 for v in trace]
    assert out.lbgi == pytest.approx(sum(low) / 12)
    assert out.hbgi == pytest.approx(sum(high) / 12)
    assert out.risk_index == pytest.approx(out.lbgi + out.hbgi)
    assert out.severe_hypo_events == 0  # 53, 50, 40, 45: 4 samples of 3 min, 12 < 15 minutes
    assert out.mean_bg == pytest.approx(np.mean(trace))


def test_severe_events_need_15_minutes_below_54() -> None:
    # runs below 54 of 4, 5 and 7 samples (3 min each): only the last two last >= 15 minutes
    trace = [100] + [50] * 4 + [100] + [50] * 5 + [100] + [40] * 7 + [100]
    assert glucose_outcomes(trace, 3).severe_hypo_events == 2
    assert glucose_outcomes(trace, 5).severe_hypo_events == 3  # 3 samples of 5 min suffice
    assert glucose_outcomes([112.5175] * 3).risk_index == pytest.approx(0, abs=1e-6)


def test_lbgi_matches_simglucose_on_one_reading() -> None:
    from simglucose.analysis.risk import risk_index

    for bg in (40.0, 90.0, 300.0):
        lbgi, hbgi, _ = risk_index([bg], 1)
        out = glucose_outcomes([bg])
        assert (out.lbgi, out.hbgi) == pytest.approx((lbgi, hbgi))


# -- episodes and the learned policy ------------------------------------------------------------


def test_episode_is_deterministic_for_a_seed() -> None:
    config = EpisodeConfig("adult#002", hours=2, seed=3)
    a, b = run_episode(config, expert_dose), run_episode(config, expert_dose)
    np.testing.assert_array_equal(a.bg, b.bg)
    np.testing.assert_array_equal(a.dose, b.dose)
    assert a.bg.shape == (40,)
    c = run_episode(EpisodeConfig("adult#002", hours=2, seed=4), expert_dose)
    assert not np.array_equal(a.cgm, c.cgm)  # another seed, other sensor noise


def test_clean_policy_time_in_range_beside_basal_bolus(policy: DosingPolicy) -> None:
    rows = []
    for patient in PATIENTS:
        config = EpisodeConfig(patient, hours=HOURS, seed=1)  # a scenario unseen in training
        learned = run_episode(config, PolicyController(policy)).outcomes()
        bb = run_episode(config, basal_bolus_controller(patient)).outcomes()
        rows.append((patient, learned.tir, bb.tir, learned.tbr70, bb.tbr70))
        line = (
            f"{patient:15s} TIR policy {learned.tir:.3f} vs BBController {bb.tir:.3f}; "
            f"TBR<70 {learned.tbr70:.3f} vs {bb.tbr70:.3f}"
        )
        print(line)  # noqa: T201
        fuzz.note(f"treatment: clean time in range, {HOURS:g} h, seed 1", line)
    policy_tir = np.mean([r[1] for r in rows])
    bb_tir = np.mean([r[2] for r in rows])
    assert policy_tir >= bb_tir - 0.15, rows  # the clone is a usable controller


def test_bounded_overdose_attack_drives_hypoglycaemia_and_filter_limits_it(
    policy: DosingPolicy,
) -> None:
    config = EpisodeConfig("adult#001", hours=HOURS, seed=1)
    controller = PolicyController(policy)
    clean = run_episode(config, controller)
    attack = SensorAttack(eps=30.0, direction="overdose", steps=10)
    attacked = run_episode(config, controller, attack=attack)
    filtered = run_episode(config, controller, attack=attack, sensor_filter=PlausibilityFilter())
    true = np.array([w[-1] for w in attacked.windows])
    assert np.abs(attacked.seen[: true.size] - true).max() <= 30 + 1e-3
    c, a, f = clean.outcomes(), attacked.outcomes(), filtered.outcomes()
    for name, o in (("clean", c), ("PGD overdose eps 30", a), ("+ plausibility filter", f)):
        line = f"adult#001 {name:22s} TIR {o.tir:.3f} TBR<70 {o.tbr70:.3f} TBR<54 {o.tbr54:.3f}"
        print(line)  # noqa: T201
        fuzz.note("treatment: sensor attack, adult#001, 12 h, seed 1", line)
    assert a.tbr70 >= c.tbr70 + 0.2 and a.tir <= c.tir - 0.2
    assert f.tbr70 < a.tbr70 - 0.2  # the rate limit blunts the trend the attack fakes
    assert filtered.filter_seconds > 0 and attacked.attack_seconds > 0


def test_underdose_and_transfer_attacks(policy: DosingPolicy) -> None:
    config = EpisodeConfig("child#001", hours=6, seed=2)
    controller = PolicyController(policy)
    clean = run_episode(config, controller)
    under = run_episode(config, controller, attack=SensorAttack(eps=30, direction="underdose"))
    assert under.dose.sum() < 0.8 * clean.dose.sum()
    surrogate = train_policy(
        collect_demonstrations(["adult#002"], [5], hours=6), hidden=32, epochs=30, seed=1
    )
    transfer = run_episode(
        config, controller, attack=SensorAttack(eps=30, steps=0), surrogate=surrogate
    )
    assert transfer.dose.sum() > 1.2 * clean.dose.sum()


def test_smoothing_and_adversarial_training_run_with_measured_overhead(
    policy: DosingPolicy,
) -> None:
    config = EpisodeConfig("adult#001", hours=2, seed=1)
    plain = run_episode(config, PolicyController(policy))
    smooth = PolicyController(policy, ActionSmoothing(sigma=10, samples=16))
    a, b = run_episode(config, smooth), run_episode(config, smooth)
    np.testing.assert_array_equal(a.dose, b.dose)  # seeded noise
    assert a.controller_seconds > 0 and plain.controller_seconds > 0
    demos = collect_demonstrations(["adult#001"], [0], hours=2)
    robust = train_policy(demos, epochs=5, adversarial=SensorAttack(eps=20, steps=3))
    w, c = demos.windows[:64], demos.contexts[:64]
    attack = SensorAttack(eps=20, steps=10)
    before = torch.as_tensor(robust(w, c))
    assert torch.isfinite(robust(attack.perturb(robust, w, c), c)).all()
    assert (before >= 0).all()


# -- bad input ----------------------------------------------------------------------------------


def test_bad_inputs_raise_documented_errors() -> None:
    with pytest.raises(ConfigError, match=r"'patient' parameter.*Did you mean .*'adult#001'"):
        EpisodeConfig("adult#01")
    with pytest.raises(ConfigError, match="'patient'"):
        therapy("dog#001")
    with pytest.raises(ParameterError, match=r"'hours' parameter of EpisodeConfig must be > 0"):
        EpisodeConfig("adult#001", hours=0)
    with pytest.raises(ParameterError, match="'hours'"):
        EpisodeConfig("adult#001", hours=math.inf)
    with pytest.raises(ParameterError, match="'hours'"):
        EpisodeConfig("adult#001", hours=0.01)
    with pytest.raises(ParameterError, match="'window' parameter of EpisodeConfig must be"):
        EpisodeConfig("adult#001", window=0)
    with pytest.raises(ParameterError, match=r"'eps' parameter of SensorAttack must be .*-1"):
        SensorAttack(eps=-1)
    with pytest.raises(ParameterError, match="'eps'"):
        SensorAttack(eps=math.nan)
    with pytest.raises(ConfigError, match="'direction'"):
        SensorAttack(eps=1, direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="'sigma'"):
        ActionSmoothing(sigma=-1)
    with pytest.raises(ParameterError, match="'max_rate'"):
        PlausibilityFilter(max_rate=0)
    with pytest.raises(InputError, match="BG trace"):
        glucose_outcomes([])
    with pytest.raises(InputError, match="BG trace"):
        glucose_outcomes([100, math.nan])
    with pytest.raises(InputError, match="BG trace"):
        glucose_outcomes([100, -5])
    with pytest.raises(InputError, match="CGM window"):
        expert_dose(np.array([100, math.inf]), np.zeros(5))
    with pytest.raises(InputError, match="finite"):
        SensorAttack(eps=1).perturb(
            DosingPolicy(2), torch.tensor([[1.0, math.nan]]), torch.ones(1, 5)
        )
    with pytest.raises(ConfigError, match="'surrogate'"):
        run_episode(EpisodeConfig("adult#001", hours=1), expert_dose, attack=SensorAttack(eps=1))


def test_the_plausibility_filter_limits_the_rate_of_a_sensor_attack_not_its_size(
    policy: DosingPolicy,
) -> None:
    """At 30 mg/dL the filter protects (test above); at 90 mg/dL a gradient-free constant bias
    and PGD both get through it: the rate limit only delays an offset."""
    config = EpisodeConfig("adult#001", hours=HOURS, seed=1)
    controller = PolicyController(policy)
    guarded = PlausibilityFilter()
    clean = run_episode(config, controller).outcomes()
    pgd = run_episode(config, controller, attack=SensorAttack(90.0), sensor_filter=guarded)
    bias = run_episode(config, controller, attack=SensorBias(90.0), sensor_filter=guarded)
    assert clean.tbr70 == 0.0
    assert bias.outcomes().tbr70 > 0.2 and pgd.outcomes().tbr70 > 0.2
    window = torch.tensor([[100.0, 120.0, 380.0]])
    biased = SensorBias(90.0).perturb(policy, window, torch.zeros(1, 5))
    assert biased.tolist() == [[190.0, 210.0, 400.0]]  # clipped to the sensor's range
    fuzz.note(
        "treatment: sensor attacks through the plausibility filter, adult#001, 12 h, seed 1",
        f"clean TBR<70 {clean.tbr70:.3f}; filtered PGD eps 90 {pgd.outcomes().tbr70:.3f}; "
        f"filtered constant bias +90 mg/dL {bias.outcomes().tbr70:.3f}",
    )


def test_glucose_trace_figure_shows_an_attacked_episode_beside_its_clean_twin(
    policy: DosingPolicy,
) -> None:
    from medrobust.study.treatment_figures import glucose_trace_figure

    config = EpisodeConfig("child#001", hours=6.0, seed=2)
    controller = PolicyController(policy)
    clean = run_episode(config, controller)
    attacked = run_episode(config, controller, attack=SensorAttack(30.0))
    figure = glucose_trace_figure(clean, attacked, attack="PGD overdose eps=30 mg/dL")
    assert figure.png.startswith(b"\x89PNG") and len(figure.png) > 20_000
    assert figure.name == "glucose_trace_child_001_pgd_overdose_eps_30_mg_dl"
    other = run_episode(EpisodeConfig("child#001", hours=6.0, seed=3), controller)
    with pytest.raises(InputError, match="same patient, seed and length"):
        glucose_trace_figure(clean, other, attack="none")


def test_the_adaptive_attacker_crafts_on_the_expected_smoothed_dose(policy: DosingPolicy) -> None:
    window = torch.linspace(120, 180, 12)[None].repeat(3, 1)
    context = torch.tensor([[0.0, 0.0, 0.02, 10.0, 40.0]]).repeat(3, 1)
    exact = EOTPolicy(policy, ActionSmoothing(sigma=0.0), samples=4)
    assert torch.allclose(exact.log_ratio(window, context), policy.log_ratio(window, context))
    noisy = EOTPolicy(policy, ActionSmoothing(sigma=15.0), samples=64, seed=1)
    ratio = noisy.log_ratio(window, context)
    assert ratio.shape == (3,) and not torch.allclose(ratio, policy.log_ratio(window, context))
    # Its gradient exists, so PGD runs on it within the budget.
    attacked = SensorAttack(eps=20.0, steps=5).perturb(noisy, window, context)
    assert (attacked - window).abs().max() <= 20.0 + 1e-4
    assert (noisy.log_ratio(attacked, context) > noisy.log_ratio(window, context)).all()
    with pytest.raises(ParameterError, match="'samples' parameter of EOTPolicy"):
        EOTPolicy(policy, ActionSmoothing(), samples=0)
