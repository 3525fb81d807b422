"""medrobust: adversarial robustness of medical AI, with statistics and clinical error rates.

The public API, in the order of a study::

    task = medrobust.load_task("breastmnist")              # data, splits, positive class
    inputs = medrobust.prepare_inputs(task)                 # tensors for the model
    model = medrobust.build_model("small_cnn", task, inputs)
    medrobust.fit(model, inputs.x["train"], inputs.y["train"], inputs.x["val"], inputs.y["val"])
    attack = medrobust.PGD(norm="linf", eps=4 / 255, domain=task.domain)
    x_adv = attack(model, inputs.x["test"], inputs.y["test"])

Or audit a model of your own, with a study's store and report::

    store = medrobust.audit("mypkg.nets:make_cnn", checkpoint="cnn.pt", task="breastmnist")
"""

from __future__ import annotations

from medrobust.attacks import ATTACKS, FGSM, PGD, Attack
from medrobust.auditing import audit
from medrobust.data import TASKS, Split, Task, load_task
from medrobust.defenses import DEFENSES, Defense
from medrobust.errors import (
    ChecksumError,
    ConfigError,
    CorruptDataError,
    DataError,
    DataNotFoundError,
    GroupFailedError,
    InputError,
    MedrobustError,
    ParameterError,
    StoreError,
    UnknownNameError,
)
from medrobust.metrics import ClinicalMetrics, clinical_metrics, predictions, success_rate
from medrobust.models import MODELS, build_model, prepare_inputs
from medrobust.stats import (
    analyze_paired,
    cohens_dz,
    holm,
    mcnemar_test,
    one_way_anova,
    paired_comparison,
    paired_power,
    paired_ttest,
    summarize,
    trials_for_power,
)
from medrobust.study import ResultStore, StudySpec, load_spec, run_study, write_report
from medrobust.training import FitConfig, fit, load_checkpoint, predict_logits, save_checkpoint
from medrobust.types import Domain, Modality, Norm, TaskKind, ThreatModel

__version__ = "0.1.0"

__all__ = [
    "ATTACKS",
    "DEFENSES",
    "FGSM",
    "MODELS",
    "PGD",
    "TASKS",
    "Attack",
    "ChecksumError",
    "ClinicalMetrics",
    "ConfigError",
    "CorruptDataError",
    "DataError",
    "DataNotFoundError",
    "Defense",
    "Domain",
    "FitConfig",
    "GroupFailedError",
    "InputError",
    "MedrobustError",
    "Modality",
    "Norm",
    "ParameterError",
    "ResultStore",
    "Split",
    "StoreError",
    "StudySpec",
    "Task",
    "TaskKind",
    "ThreatModel",
    "UnknownNameError",
    "__version__",
    "analyze_paired",
    "audit",
    "build_model",
    "clinical_metrics",
    "cohens_dz",
    "fit",
    "holm",
    "load_checkpoint",
    "load_spec",
    "load_task",
    "mcnemar_test",
    "one_way_anova",
    "paired_comparison",
    "paired_power",
    "paired_ttest",
    "predict_logits",
    "predictions",
    "prepare_inputs",
    "run_study",
    "save_checkpoint",
    "success_rate",
    "summarize",
    "trials_for_power",
    "write_report",
]
