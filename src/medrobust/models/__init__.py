"""Reference architectures (plain ``nn.Module``s) and the registry that builds them for a task.

Every registered model states the modalities and task kinds it serves. ``prepare_inputs`` turns a
task's arrays into the tensors its model eats (text: a tokenizer trained on the training split, or
a Hugging Face model's own tokenizer). Beside the registry, :func:`get_model_spec` resolves the
generic names of models defined outside medrobust (``python:package.module:factory``,
``live:<label>``, ``huggingface:<directory>``; see :mod:`medrobust.models.user`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.data.task import Task
from medrobust.errors import ConfigError
from medrobust.models.ecg import (
    AnomalyDetector,
    Conv1DClassifier,
    ConvAutoencoder,
    RecurrentClassifier,
)
from medrobust.models.image import SmallCNN, SmallResNet
from medrobust.models.tabular import MLP
from medrobust.models.text import (
    HuggingFaceClassifier,
    TransformerClassifier,
    encode,
    lsa_embeddings,
    train_tokenizer,
)
from medrobust.registry import Registry
from medrobust.types import Modality, TaskKind


@dataclass(frozen=True)
class TensorSplits:
    """A task's splits as tensors ready for a model.

    Attributes:
        x: split name -> inputs (float for continuous data, int64 token ids for text).
        y: split name -> int64 labels.
        vocab_size: size of the token vocabulary (text only).
        tokenizer: the ``tokenizers.Tokenizer`` that made the ids (text only), e.g. for
            :func:`~medrobust.models.text.decode` to show original against adversarial text.
    """

    x: Mapping[str, torch.Tensor]
    y: Mapping[str, torch.Tensor]
    vocab_size: int | None = None
    tokenizer: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered architecture.

    Attributes:
        name: registry name.
        modalities: modalities it accepts.
        kinds: task kinds it serves.
        build: ``build(task, inputs, hparams) -> nn.Module``.
        summary: one line for listings.
    """

    name: str
    modalities: frozenset[Modality]
    kinds: frozenset[TaskKind]
    build: Callable[[Task, TensorSplits, dict[str, Any]], nn.Module]
    summary: str


MODELS: Registry[ModelSpec] = Registry("model")


def _num_outputs(task: Task, hparams: dict[str, Any]) -> int:
    outputs = int(hparams.pop("outputs", task.num_classes))
    if outputs != task.num_classes and not (task.num_classes == 2 and outputs == 1):
        raise ConfigError(
            f"The 'outputs' of a model must equal the number of classes ({task.num_classes}), "
            f"or be 1 for a binary task. Got {outputs} instead."
        )
    return outputs


def _channels(task: Task) -> int:
    return int(task.train.x.shape[1])


def _register(
    name: str,
    modalities: set[Modality],
    summary: str,
    build: Callable[[Task, TensorSplits, dict[str, Any]], nn.Module],
    kinds: frozenset[TaskKind] = frozenset({TaskKind.CLASSIFICATION}),
) -> None:
    MODELS.add(name, ModelSpec(name, frozenset(modalities), kinds, build, summary))


_register(
    "small_cnn",
    {Modality.IMAGE},
    "4-layer CNN for 2D images",
    lambda t, s, h: SmallCNN(_channels(t), _num_outputs(t, h), **h),
)
_register(
    "resnet",
    {Modality.IMAGE},
    "small ResNet (3 stages of basic blocks) for 2D images",
    lambda t, s, h: SmallResNet(_channels(t), _num_outputs(t, h), **h),
)
_register(
    "gru",
    {Modality.ECG},
    "bidirectional GRU over beat samples",
    lambda t, s, h: RecurrentClassifier(_channels(t), _num_outputs(t, h), cell="gru", **h),
)
_register(
    "lstm",
    {Modality.ECG},
    "bidirectional LSTM over beat samples",
    lambda t, s, h: RecurrentClassifier(_channels(t), _num_outputs(t, h), cell="lstm", **h),
)
_register(
    "conv1d",
    {Modality.ECG},
    "1D CNN for ECG beats",
    lambda t, s, h: Conv1DClassifier(_channels(t), _num_outputs(t, h), **h),
)
_register(
    "mlp",
    {Modality.TABULAR},
    "multilayer perceptron for standardised features",
    lambda t, s, h: MLP(_channels(t), _num_outputs(t, h), **h),
)
_register(
    "conv_autoencoder",
    {Modality.ECG},
    "1D convolutional autoencoder; detector at a validation-calibrated threshold",
    lambda t, s, h: AnomalyDetector(ConvAutoencoder(_channels(t), **h)),
    kinds=frozenset({TaskKind.ANOMALY_DETECTION}),
)


def _build_transformer(task: Task, splits: TensorSplits, hparams: dict[str, Any]) -> nn.Module:
    for key in ("vocab_size", "tokenizer"):
        hparams.pop(key, None)  # consumed by prepare_inputs
    max_length = int(hparams.pop("max_length", splits.x["train"].shape[1]))
    embedding_init = hparams.pop("embedding_init", "lsa")
    if embedding_init not in ("lsa", "random"):
        raise ConfigError(
            f"The 'embedding_init' of the transformer must be 'lsa' or 'random'. "
            f"Got {embedding_init!r} instead."
        )
    vocab_size = int(splits.vocab_size or 0)
    dim = int(hparams.get("dim", 64))
    initial = None
    if embedding_init == "lsa":
        initial = torch.from_numpy(lsa_embeddings(splits.x["train"].numpy(), vocab_size, dim))
    return TransformerClassifier(
        vocab_size,
        _num_outputs(task, hparams),
        max_length=max_length,
        initial_embeddings=initial,
        **hparams,
    )


_register(
    "transformer",
    {Modality.TEXT},
    "Transformer encoder over corpus-trained token ids",
    _build_transformer,
)


def get_model_spec(name: str) -> ModelSpec:
    """The spec of model ``name``: a registered architecture or a generic user-model name
    (``python:package.module:factory``, ``python:path/to/file.py:factory``, ``live:<label>``),
    which serves classification of any modality, or ``huggingface:<directory>``, a saved
    Hugging Face sequence classifier, which serves text classification.

    Raises:
        UnknownNameError: the name is neither registered nor generic.
    """
    from medrobust.models import user  # local: user builds what this module's specs describe

    if not user.is_user_model(name):
        return MODELS.get(name)
    if user.is_huggingface_model(name):
        return ModelSpec(
            name,
            frozenset({Modality.TEXT}),
            frozenset({TaskKind.CLASSIFICATION}),
            lambda t, s, h: user.build_huggingface_model(name, t, h),
            "a Hugging Face sequence-classification model",
        )
    return ModelSpec(
        name,
        frozenset(Modality),
        frozenset({TaskKind.CLASSIFICATION}),
        lambda t, s, h: user.build_user_model(name, h),
        "a model defined outside medrobust",
    )


def model_spec_for(name: str, task: Task) -> ModelSpec:
    """The spec of model ``name``, checked to fit ``task``'s modality and kind."""
    spec = get_model_spec(name)
    if task.modality not in spec.modalities or task.kind not in spec.kinds:
        raise ConfigError(
            f"The model {name!r} serves {sorted(m.value for m in spec.modalities)} "
            f"{sorted(k.value for k in spec.kinds)} tasks; task {task.name!r} is "
            f"{task.modality.value} {task.kind.value}."
        )
    return spec


def prepare_inputs(task: Task, hparams: Mapping[str, Any] | None = None) -> TensorSplits:
    """Turn the task's arrays into tensors.

    Text is tokenized with a vocabulary trained on the training split alone (``vocab_size``,
    ``tokenizer`` and ``max_length`` from ``hparams``), or, where ``hparams`` has
    ``hf_tokenizer`` (set for ``huggingface:`` models), with that Hugging Face tokenizer, so that
    the ids are the model's own (``max_length`` default 128; see
    :func:`medrobust.models.user.hf_encode`); ``vocab_size`` is then the model's.
    """
    from medrobust.models import user  # local: user builds what this module's specs describe

    hparams = dict(hparams or {})
    splits = task.splits()
    y = {name: torch.as_tensor(split.y, dtype=torch.int64) for name, split in splits.items()}
    if task.modality is Modality.TEXT and hparams.get("hf_tokenizer") is not None:
        ids, vocab_size, backend = user.hf_encode(
            {name: list(split.x) for name, split in splits.items()}, hparams
        )
        x = {name: torch.from_numpy(array) for name, array in ids.items()}
        return TensorSplits(x, y, vocab_size=vocab_size, tokenizer=backend)
    if task.modality is Modality.TEXT:
        tokenizer = train_tokenizer(
            list(task.train.x),
            vocab_size=int(hparams.get("vocab_size", 10000)),
            kind=str(hparams.get("tokenizer", "wordlevel")),
        )
        max_length = int(hparams.get("max_length", 256))
        x = {
            name: torch.from_numpy(encode(tokenizer, list(split.x), max_length=max_length))
            for name, split in splits.items()
        }
        return TensorSplits(x, y, vocab_size=tokenizer.get_vocab_size(), tokenizer=tokenizer)
    x = {
        name: torch.from_numpy(np.ascontiguousarray(split.x, dtype=np.float32))
        for name, split in splits.items()
    }
    return TensorSplits(x, y)


def build_model(
    name: str, task: Task, inputs: TensorSplits, hparams: Mapping[str, Any] | None = None
) -> nn.Module:
    """Build model ``name`` for ``task``; ``hparams`` are keyword arguments of its class.

    Two hyperparameters are reserved for a trained model's weights: ``checkpoint``, a state dict
    file loaded into the built model (``weights_only=True``), and ``checkpoint_sha256``, the
    file's SHA-256, checked first (see :func:`medrobust.models.user.read_state_dict`).
    """
    from medrobust.models import user  # local: user builds what this module's specs describe

    spec = model_spec_for(name, task)
    params = dict(hparams or {})
    checkpoint = params.pop("checkpoint", None)
    sha256 = params.pop("checkpoint_sha256", None)
    try:
        model = spec.build(task, inputs, params)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        # Unknown keywords (TypeError), out-of-range values such as dropout=2 (ValueError),
        # impossible sizes such as width=-2 (RuntimeError) and a dim that the heads do not divide
        # (PyTorch asserts it) are all configuration mistakes.
        raise ConfigError(f"Invalid hyperparameters for model {name!r}: {exc}") from exc
    if checkpoint is not None:
        user.load_weights(model, checkpoint, sha256, name)
    return model


__all__ = [
    "MLP",
    "MODELS",
    "AnomalyDetector",
    "Conv1DClassifier",
    "ConvAutoencoder",
    "HuggingFaceClassifier",
    "ModelSpec",
    "RecurrentClassifier",
    "SmallCNN",
    "SmallResNet",
    "TensorSplits",
    "TransformerClassifier",
    "build_model",
    "get_model_spec",
    "model_spec_for",
    "prepare_inputs",
]
