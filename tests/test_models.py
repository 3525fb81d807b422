"""The model registry and reference architectures, on real tasks of each modality."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models

from medrobust.data import Task
from medrobust.errors import ConfigError, ParameterError, UnknownNameError
from medrobust.metrics import clinical_metrics, predictions, probabilities
from medrobust.models import (
    MODELS,
    AnomalyDetector,
    TensorSplits,
    TransformerClassifier,
    build_model,
    prepare_inputs,
)
from medrobust.models.text import PAD_ID, encode, lsa_embeddings, train_tokenizer
from medrobust.training import FitConfig, fit, predict_logits
from medrobust.types import Modality, TaskKind
from tests.conftest import Trained

# One real task for every (modality, kind) a model can serve.
TASK_FOR = {
    (Modality.IMAGE, TaskKind.CLASSIFICATION): "breastmnist",
    (Modality.ECG, TaskKind.CLASSIFICATION): "ecg5000",
    (Modality.ECG, TaskKind.ANOMALY_DETECTION): "ecg5000_anomaly",
    (Modality.TABULAR, TaskKind.CLASSIFICATION): "wisconsin",
    (Modality.TEXT, TaskKind.CLASSIFICATION): "medical_abstracts",
}
# Hyperparameters that keep the text pipeline small; prepare_inputs and build_model share them.
TEXT_HPARAMS = {"vocab_size": 2000, "max_length": 64}


def served(name: str) -> list[tuple[Modality, TaskKind]]:
    spec = MODELS.get(name)
    return sorted((m, k) for m in spec.modalities for k in spec.kinds)


def hparams_for(task: Task) -> dict[str, Any]:
    return dict(TEXT_HPARAMS) if task.modality is Modality.TEXT else {}


@pytest.fixture(scope="session")
def task_inputs(real_task: Callable[[str], Task]) -> Callable[[str], TensorSplits]:
    """``task_inputs(task_name)``: the task's tensors from ``prepare_inputs``, once per session."""
    cache: dict[str, TensorSplits] = {}

    def get(name: str) -> TensorSplits:
        if name not in cache:
            task = real_task(name)
            cache[name] = prepare_inputs(task, hparams_for(task))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def abstracts(real_task: Callable[[str], Task]) -> Task:
    return real_task("medical_abstracts")


@pytest.fixture(scope="session")
def word_tokenizer(abstracts: Task) -> Tokenizer:
    return train_tokenizer(list(abstracts.train.x), vocab_size=3000)


# -- every registered model --------------------------------------------------------------------


def test_every_model_serves_a_task_we_have():
    for name in MODELS.names():
        assert any(key in TASK_FOR for key in served(name)), name


@pytest.mark.parametrize("name", MODELS.names())
def test_model_maps_task_inputs_to_logits(
    name: str,
    real_task: Callable[[str], Task],
    task_inputs: Callable[[str], TensorSplits],
):
    for modality, kind in served(name):
        task = real_task(TASK_FOR[modality, kind])
        inputs = task_inputs(task.name)
        torch.manual_seed(0)
        model = build_model(name, task, inputs, hparams_for(task))
        x = inputs.x["test"][:6]
        expected = 1 if isinstance(model, AnomalyDetector) else task.num_classes
        for training in (False, True):
            model.train(training)
            logits = model(x)
            assert logits.shape == (6, expected)
            assert logits.dtype == torch.float32
            assert torch.isfinite(logits).all()
        assert (kind is TaskKind.ANOMALY_DETECTION) == isinstance(model, AnomalyDetector)


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n != "transformer"])
def test_continuous_models_have_input_gradients(
    name: str,
    real_task: Callable[[str], Task],
    task_inputs: Callable[[str], TensorSplits],
):
    """Gradient attacks need d(loss)/d(input): finite and not all zero, in eval mode."""
    (modality, kind) = served(name)[0]
    task = real_task(TASK_FOR[modality, kind])
    torch.manual_seed(0)
    model = build_model(name, task, task_inputs(task.name)).eval()
    x = task_inputs(task.name).x["test"][:4].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert grad.shape == x.shape
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_preparing_inputs_keeps_the_splits(
    real_task: Callable[[str], Task], task_inputs: Callable[[str], TensorSplits]
):
    task = real_task("breastmnist")
    inputs = task_inputs("breastmnist")
    for split_name, split in task.splits().items():
        np.testing.assert_array_equal(inputs.x[split_name].numpy(), split.x)
        np.testing.assert_array_equal(inputs.y[split_name].numpy(), split.y)
        assert inputs.x[split_name].dtype == torch.float32
        assert inputs.y[split_name].dtype == torch.int64
    assert inputs.vocab_size is None
    text = task_inputs("medical_abstracts")
    assert text.x["train"].dtype == torch.int64
    assert text.x["train"].shape == (len(real_task("medical_abstracts").train), 64)
    assert text.vocab_size == 2000


# -- one-logit binary models ---------------------------------------------------------------------


def test_one_logit_binary_model_trains_and_scores(trained: Callable[[str], Trained]):
    one, two = trained("mlp_1logit"), trained("mlp")
    x, y = one.split("test")
    logits = predict_logits(one.model, x)
    assert logits.shape == (len(x), 1)
    probs = probabilities(logits)
    assert probs.shape == (len(x), 2)
    metrics = clinical_metrics(
        y.numpy(),
        predictions(logits).numpy(),
        positive_class=one.task.positive_class,
        num_classes=2,
        scores=probs.numpy(),
    )
    assert metrics.accuracy > 0.9
    assert metrics.auc > 0.95
    assert metrics.sensitivity > 0.85  # malignant (label 0) tumours are found
    two_logits = predict_logits(two.model, x)
    agreement = (predictions(two_logits) == predictions(logits)).float().mean()
    assert agreement > 0.9


def test_one_logit_image_model_trains_with_class_weights(
    real_task: Callable[[str], Task], task_inputs: Callable[[str], TensorSplits]
):
    task, inputs = real_task("breastmnist"), task_inputs("breastmnist")
    torch.manual_seed(0)
    model = build_model("small_cnn", task, inputs, {"width": 8, "outputs": 1})
    config = FitConfig(epochs=4, batch_size=32, patience=0, class_weight="balanced")
    fit(
        model, inputs.x["train"], inputs.y["train"], inputs.x["val"], inputs.y["val"], config=config
    )
    logits = predict_logits(model, inputs.x["test"])
    assert logits.shape == (len(inputs.x["test"]), 1)
    metrics = clinical_metrics(
        inputs.y["test"].numpy(),
        predictions(logits).numpy(),
        positive_class=task.positive_class,
        num_classes=2,
        scores=probabilities(logits).numpy(),
    )
    # 27 % of the test images are malignant: a constant classifier has balanced accuracy 0.5.
    assert metrics.balanced_accuracy > 0.65
    assert metrics.auc > 0.75


# -- configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "task_name", "match"),
    [
        ("small_cnn", "ecg5000", r"The model 'small_cnn' serves \['image'\] \['classification'\]"),
        ("mlp", "breastmnist", r"task 'breastmnist' is image classification"),
        ("gru", "ecg5000_anomaly", r"task 'ecg5000_anomaly' is ecg anomaly_detection"),
        ("conv_autoencoder", "ecg5000", r"serves \['ecg'\] \['anomaly_detection'\]"),
        ("transformer", "wisconsin", r"serves \['text'\]"),
    ],
)
def test_wrong_modality_or_kind_is_a_config_error(
    name: str,
    task_name: str,
    match: str,
    real_task: Callable[[str], Task],
    task_inputs: Callable[[str], TensorSplits],
):
    with pytest.raises(ConfigError, match=match):
        build_model(name, real_task(task_name), task_inputs(task_name))


@pytest.mark.parametrize(
    ("name", "task_name", "hparams", "match"),
    [
        ("small_cnn", "breastmnist", {"widht": 8}, r"unexpected keyword argument 'widht'"),
        ("small_cnn", "breastmnist", {"outputs": 3}, r"must equal the number of classes \(2\)"),
        ("small_cnn", "breastmnist", {"dropout": 2.0}, r"dropout probability"),
        ("small_cnn", "breastmnist", {"width": -2}, r"negative dimension"),
        ("small_cnn", "breastmnist", {"outputs": "two"}, r"Invalid hyperparameters"),
        ("gru", "ecg5000", {"outputs": 1}, r"or be 1 for a binary task\. Got 1 instead"),
        ("gru", "ecg5000", {"cell": "lstm"}, r"multiple values for keyword argument 'cell'"),
        ("mlp", "wisconsin", {"depth": 3}, r"unexpected keyword argument 'depth'"),
        ("conv_autoencoder", "ecg5000_anomaly", {"outputs": 1}, r"unexpected keyword"),
        ("transformer", "medical_abstracts", {"embedding_init": "glove"}, r"'lsa' or 'random'"),
        ("transformer", "medical_abstracts", {"heads": 5}, r"Invalid hyperparameters"),
    ],
)
def test_bad_hparams_are_a_config_error(
    name: str,
    task_name: str,
    hparams: dict[str, Any],
    match: str,
    real_task: Callable[[str], Task],
    task_inputs: Callable[[str], TensorSplits],
):
    with pytest.raises(ConfigError, match=match):
        build_model(name, real_task(task_name), task_inputs(task_name), hparams)


def test_unknown_model_name_suggests_close_matches(
    real_task: Callable[[str], Task], task_inputs: Callable[[str], TensorSplits]
):
    with pytest.raises(UnknownNameError, match=r"Unknown model 'small_cmn'\. Did you mean"):
        build_model("small_cmn", real_task("breastmnist"), task_inputs("breastmnist"))


# -- text: tokenizer, encoding, LSA embeddings, Transformer --------------------------------------


def test_tokenizer_training_and_encoding_are_deterministic(abstracts: Task, word_tokenizer):
    again = train_tokenizer(list(abstracts.train.x), vocab_size=3000)
    assert again.get_vocab() == word_tokenizer.get_vocab()
    texts = list(abstracts.test.x[:20])
    np.testing.assert_array_equal(
        encode(word_tokenizer, texts, max_length=96), encode(again, texts, max_length=96)
    )


@pytest.mark.parametrize("kind", ["wordlevel", "wordpiece"])
def test_encoding_layout(abstracts: Task, kind: str):
    tokenizer = train_tokenizer(list(abstracts.train.x), vocab_size=3000, kind=kind)
    vocab_size = tokenizer.get_vocab_size()
    assert vocab_size <= 3000
    assert tokenizer.token_to_id("[PAD]") == PAD_ID == 0
    cls_id = tokenizer.token_to_id("[CLS]")
    texts = [*abstracts.test.x[:30], "Fever.", ""]
    ids = encode(tokenizer, texts, max_length=48)
    assert ids.shape == (len(texts), 48)
    assert ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < vocab_size
    assert (ids[:, 0] == cls_id).all()
    for row in ids:
        length = int((row != PAD_ID).sum())
        assert (row[:length] != PAD_ID).all() and (row[length:] == PAD_ID).all()
    lengths = (ids != PAD_ID).sum(axis=1)
    assert (lengths[:30] == 48).all()  # abstracts are long: truncated to max_length
    assert lengths[30] == 3 if kind == "wordlevel" else lengths[30] >= 3  # [CLS] fever .
    assert lengths[31] == 1  # only [CLS]
    # BertNormalizer lower-cases, so the case of a word does not change its id.
    np.testing.assert_array_equal(
        encode(tokenizer, ["FEVER and Cough"]), encode(tokenizer, ["fever and cough"])
    )


def test_wordpiece_splits_unseen_words_where_wordlevel_gives_unk(abstracts: Task, word_tokenizer):
    pieces = train_tokenizer(list(abstracts.train.x), vocab_size=3000, kind="wordpiece")
    word = "cardiohepatomegalitis"
    unk = word_tokenizer.token_to_id("[UNK]")
    assert encode(word_tokenizer, [word], max_length=8)[0, :3].tolist() == [
        word_tokenizer.token_to_id("[CLS]"),
        unk,
        PAD_ID,
    ]
    split = encode(pieces, [word], max_length=16)[0]
    body = split[1 : int((split != PAD_ID).sum())]
    assert len(body) > 1
    assert pieces.token_to_id("[UNK]") not in body.tolist()


def test_tokenizer_errors(abstracts: Task):
    with pytest.raises(ParameterError, match=r"The tokenizer kind must be one of"):
        train_tokenizer(list(abstracts.train.x[:10]), kind="bpe")
    bare = Tokenizer(models.WordLevel({"[UNK]": 0, "fever": 1}, unk_token="[UNK]"))
    with pytest.raises(ParameterError, match=r"has no \[CLS\] token"):
        encode(bare, ["fever"])


def test_lsa_embeddings_shape_determinism_and_meaning(abstracts: Task, word_tokenizer):
    ids = encode(word_tokenizer, list(abstracts.train.x), max_length=128)
    vocab_size = word_tokenizer.get_vocab_size()
    vectors = lsa_embeddings(ids, vocab_size, 32)
    assert vectors.shape == (vocab_size, 32)
    assert vectors.dtype == np.float32
    assert not vectors[PAD_ID].any()
    assert vectors.std() == pytest.approx(1.0, abs=0.01)
    np.testing.assert_array_equal(vectors, lsa_embeddings(ids, vocab_size, 32))

    def similarity(a: str, b: str) -> float:
        va, vb = (vectors[word_tokenizer.token_to_id(w)] for w in (a, b))
        return float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb))

    # Words of one disease area share documents; LSA must place them closer than across areas.
    assert similarity("myocardial", "coronary") > similarity("myocardial", "carcinoma") + 0.3
    assert similarity("seizures", "epilepsy") > similarity("seizures", "carcinoma") + 0.3
    assert similarity("liver", "hepatic") > similarity("liver", "seizures") + 0.3


def test_lsa_embeddings_with_fewer_documents_than_dimensions(word_tokenizer):
    ids = encode(
        word_tokenizer, ["fever and cough", "chest pain", "liver biopsy", "a b"], max_length=8
    )
    vectors = lsa_embeddings(ids, word_tokenizer.get_vocab_size(), 16)
    assert vectors.shape == (word_tokenizer.get_vocab_size(), 16)
    assert not vectors[:, 3:].any()  # rank <= min(documents, words) - 1 = 3
    assert vectors[:, :3].any()


def transformer_for(
    task: Task, inputs: TensorSplits, **hparams: Any
) -> tuple[TransformerClassifier, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("transformer", task, inputs, {**TEXT_HPARAMS, **hparams})
    assert isinstance(model, TransformerClassifier)
    return model.eval(), inputs.x["test"][:5]


def test_transformer_embedding_path_and_padding(
    abstracts: Task, task_inputs: Callable[[str], TensorSplits]
):
    model, ids = transformer_for(abstracts, task_inputs("medical_abstracts"))
    with torch.no_grad():
        logits = model(ids)
        torch.testing.assert_close(model.forward_embeddings(model.embed(ids), ids), logits)
        # Padding is masked: a short text scores the same however much padding follows it.
        short = torch.zeros(2, 64, dtype=torch.int64)
        short[:, :10] = ids[0, :10]
        torch.testing.assert_close(model(short[:, :10])[0], model(short)[0])
        torch.testing.assert_close(model(short[:, :20])[0], model(short)[1])


def test_transformer_starts_from_lsa_embeddings(
    abstracts: Task, task_inputs: Callable[[str], TensorSplits]
):
    inputs = task_inputs("medical_abstracts")
    lsa, _ = transformer_for(abstracts, inputs)
    random, _ = transformer_for(abstracts, inputs, embedding_init="random")
    vocab_size = int(inputs.vocab_size or 0)
    expected = lsa_embeddings(inputs.x["train"].numpy(), vocab_size, 64)
    with torch.no_grad():
        ids = torch.arange(vocab_size)
        torch.testing.assert_close(lsa.embed(ids), torch.from_numpy(expected))
        assert not torch.allclose(random.embed(ids), torch.from_numpy(expected), atol=0.1)


def test_transformer_rejects_wrongly_shaped_initial_embeddings():
    with pytest.raises(ParameterError, match=r"initial_embeddings must have shape \(100, 16\)"):
        TransformerClassifier(100, 5, dim=16, heads=2, initial_embeddings=torch.zeros(100, 8))


# -- a real Hugging Face model ------------------------------------------------------------------


def test_hugging_face_classifier_on_real_abstracts(minilm, abstracts: Task):
    model, tokenizer = minilm
    texts = [str(t) for t in abstracts.test.x[:4]]
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=64)
    ids = torch.tensor(batch["input_ids"])
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (4, 5)
        assert torch.isfinite(logits).all()
        embeddings = model.embed(ids)
        assert embeddings.shape == (4, 64, 384)
        torch.testing.assert_close(model.forward_embeddings(embeddings, ids), logits)
        # The attention mask comes from pad_id: padding does not change a short text's logits.
        short = tokenizer(["Myocardial infarction in young adults."], return_tensors="pt")
        padded = tokenizer(
            ["Myocardial infarction in young adults."], padding="max_length", max_length=32
        )
        torch.testing.assert_close(
            model(short["input_ids"]), model(torch.tensor(padded["input_ids"])), atol=1e-5, rtol=0
        )
