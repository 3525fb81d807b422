"""Text attacks beyond the shared contract: HotFlip's token rules and budget, original against
adversarial text, embedding PGD against FGSM, and the Hugging Face adapter.

The victim is the contract suite's Transformer on Medical Abstracts (``tests/conftest.py``,
recipe "transformer"), attacked on its first 100 test abstracts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.attacks import ATTACKS, EmbeddingFGSM, EmbeddingPGD, HotFlip
from medrobust.metrics import predictions, success_rate
from medrobust.models import HuggingFaceClassifier
from medrobust.models.text import PAD_ID, SPECIAL_TOKENS, decode, encode, train_tokenizer
from medrobust.training import predict_logits
from medrobust.types import UNIT_INTERVAL, Modality, Norm
from tests.conftest import Trained

SPECIAL_IDS = torch.arange(len(SPECIAL_TOKENS))  # [PAD], [UNK], [CLS], [SEP]


@pytest.fixture
def text_victim(
    trained: Callable[[str], Trained], frozen_check: Callable[[nn.Module], nn.Module]
) -> Trained:
    """The shared Transformer, watched so that no test may change it."""
    victim = trained("transformer")
    frozen_check(victim.model)
    return victim


def abstracts(victim: Trained, limit: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    return victim.split("test", limit)


def real_tokens(x: torch.Tensor) -> torch.Tensor:
    return (~torch.isin(x, SPECIAL_IDS)).sum(dim=1)


def rate(victim: Trained, attack: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    clean = predictions(predict_logits(victim.model, x)).numpy()
    adv = predictions(attack.adversarial_logits(victim.model, x, attack(victim.model, x, y)))
    return success_rate(y.numpy(), clean, adv.numpy())


def test_text_attacks_are_registered_for_text_only():
    for name in ("embedding_fgsm", "embedding_pgd", "hotflip"):
        cls = ATTACKS.get(name)
        assert cls.modalities == {Modality.TEXT} and cls.inputs == "tokens"
    assert EmbeddingPGD.perturbs == "embeddings" and HotFlip.perturbs == "inputs"
    assert HotFlip.norms == (Norm.L0,) and EmbeddingPGD.norms == (Norm.LINF, Norm.L2)
    for name in ("fgsm", "pgd", "jsma"):
        cls = ATTACKS.get(name)
        assert cls.modalities == {Modality.IMAGE, Modality.ECG, Modality.TABULAR}
        assert cls.inputs == "continuous" and cls.perturbs == "inputs"


# -- HotFlip ---------------------------------------------------------------------------------------


def test_hotflip_spends_its_budget_on_real_tokens_once_each(text_victim: Trained):
    """Without early stopping every example changes exactly min(budget, real tokens) positions:
    a position changed twice would count once. Special tokens ([UNK] included) and padding are
    never changed, special ids never inserted, and every id stays in the vocabulary."""
    x, y = abstracts(text_victim, 20)
    special = torch.isin(x, SPECIAL_IDS)
    assert (x == 1).any() and (x == PAD_ID).any()  # [UNK] and padding are really there
    # The plain first-order search likes to come back to a position it changed (its gradient
    # stays large): without the once-only rule some abstracts would show fewer than 8 changes.
    attack = HotFlip(eps=1.0, max_tokens=8, candidates=1, stop_when_adversarial=False)
    x_adv = attack(text_victim.model, x, y)
    changed = (x_adv != x).sum(dim=1)
    assert torch.equal(changed, real_tokens(x).clamp(max=8))
    assert torch.equal(x_adv[special], x[special])
    assert not torch.isin(x_adv[~special], SPECIAL_IDS).any()
    assert int(x_adv.min()) >= 0 and int(x_adv.max()) < text_victim.model.vocab_size
    sizes = attack.perturbation_sizes(text_victim.model, x, x_adv)
    np.testing.assert_array_equal(sizes["tokens_changed"], changed.double().numpy())


def test_hotflip_budget_is_a_fraction_of_the_real_tokens_rounded_down(text_victim: Trained):
    x, y = abstracts(text_victim, 12)
    x = x.clone()
    x[0, 6:] = PAD_ID  # a short text: 5 real tokens at most
    expected = torch.floor(real_tokens(x) * 0.03 + 1e-9).long()
    assert expected[0] == 0 and (expected[1:] >= 2).all()
    attack = HotFlip(eps=0.03, candidates=1, stop_when_adversarial=False)
    assert torch.equal(attack.budget(text_victim.model, x), expected)
    assert torch.equal((attack(text_victim.model, x, y) != x).sum(dim=1), expected)
    capped = HotFlip(eps=0.03, max_tokens=1, candidates=1, stop_when_adversarial=False)
    assert torch.equal((capped(text_victim.model, x, y) != x).sum(dim=1), expected.clamp(max=1))
    nothing = HotFlip(eps=1.0, max_tokens=0)
    assert torch.equal(nothing(text_victim.model, x, y), x)


def test_hotflip_leaves_misclassified_abstracts_alone_and_stops_when_fooled(text_victim: Trained):
    """Early stopping only truncates the greedy search: misclassified abstracts come back
    untouched, and every substitution made with stopping is made, identically, without it."""
    x, y = abstracts(text_victim, 50)
    model = text_victim.model
    wrong = predictions(predict_logits(model, x)) != y
    assert wrong.any() and not wrong.all()
    stop = HotFlip(eps=0.03, candidates=2)(model, x, y)
    full = HotFlip(eps=0.03, candidates=2, stop_when_adversarial=False)(model, x, y)
    assert torch.equal(stop[wrong], x[wrong])
    changed = stop != x
    assert changed.any()
    assert torch.equal(full[changed], stop[changed])
    # Stopping saved work: the search without it spent the whole budget.
    budget = HotFlip(eps=0.03).budget(model, x)
    assert torch.equal((full != x).sum(dim=1), budget)
    assert int(changed.sum()) < int(budget.sum())


def test_hotflip_rescoring_candidates_makes_it_stronger(text_victim: Trained):
    """Re-scoring the first-order candidates with a real forward pass breaks more abstracts than
    the plain first-order choice (measured: 0.41 against 0.59 at 2 % of the tokens)."""
    x, y = abstracts(text_victim)
    plain = rate(text_victim, HotFlip(eps=0.02, candidates=1), x, y)
    rescored = rate(text_victim, HotFlip(eps=0.02, candidates=8), x, y)
    assert plain > 0.2
    assert rescored > plain


def test_hotflip_memory_bound_does_not_change_the_result(text_victim: Trained):
    """A 1 MiB bound scores one abstract at a time (128 x 5000 scores are 2.4 MiB): same flips."""
    x, y = abstracts(text_victim, 16)
    model = text_victim.model
    chunked = HotFlip(eps=0.03, candidates=2, max_memory_mb=1)(model, x, y)
    assert torch.equal(chunked, HotFlip(eps=0.03, candidates=2)(model, x, y))
    assert not torch.equal(chunked, x)


def test_hotflip_targeted_sends_abstracts_to_the_target_class(text_victim: Trained):
    x, y = abstracts(text_victim, 50)
    model = text_victim.model
    target = torch.full_like(y, 2)  # nervous system diseases
    clean = predictions(predict_logits(model, x))
    aimed = clean != target
    x_adv = HotFlip(eps=0.05)(model, x, y, target=target)
    adv = predictions(predict_logits(model, x_adv))
    assert float((adv == target)[aimed].double().mean()) > 0.4  # measured 0.59
    assert torch.equal(x_adv[~aimed], x[~aimed])  # already the target: nothing to do


def test_decode_shows_the_substituted_words(text_victim: Trained):
    x, y = abstracts(text_victim, 10)
    tokenizer = text_victim.inputs.tokenizer
    assert tokenizer is not None and tokenizer.get_vocab_size() == text_victim.inputs.vocab_size
    x_adv = HotFlip(eps=1.0, max_tokens=2, stop_when_adversarial=False)(text_victim.model, x, y)
    original, adversarial = decode(tokenizer, x), decode(tokenizer, x_adv)
    assert len(original) == len(adversarial) == 10
    for row, (before, after) in enumerate(zip(original, adversarial, strict=True)):
        assert "[PAD]" not in before and "[CLS]" not in before
        # Word-level tokens hold no spaces: the texts align word by word and differ exactly
        # where HotFlip substituted a token, by the substituted words.
        old_words, new_words = before.split(" "), after.split(" ")
        assert (
            len(old_words)
            == len(new_words)
            == int(real_tokens(x[row : row + 1])[0]) + int((x[row] == 1).sum())
        )
        differ = [i for i, (a, b) in enumerate(zip(old_words, new_words, strict=True)) if a != b]
        positions = (x_adv[row] != x[row]).nonzero().flatten() - 1  # [CLS] is not shown
        assert differ == positions.tolist() and len(differ) == 2
        assert [new_words[i] for i in differ] == [
            tokenizer.id_to_token(int(x_adv[row, p + 1])) for p in differ
        ]
        # The clean text is the abstract's own words (lower-cased), [UNK] where the vocabulary
        # lacks one.
        source = str(text_victim.task.test.x[row]).lower()
        assert all(word in source for word in old_words if word != "[UNK]")


def test_decode_glues_wordpiece_pieces(text_victim: Trained):
    texts = [str(t) for t in text_victim.task.train.x[:200]]
    tokenizer = train_tokenizer(texts, vocab_size=600, kind="wordpiece")
    ids = encode(tokenizer, ["Methotrexate infusions in relapsed leukemia."], max_length=40)
    assert any(tokenizer.id_to_token(int(i)).startswith("##") for i in ids[0])
    assert decode(tokenizer, torch.from_numpy(ids)) == [
        "methotrexate infusions in relapsed leukemia ."
    ]


# -- embedding attacks -----------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "eps"), [(Norm.LINF, 0.1), (Norm.L2, 5.0)])
def test_embedding_pgd_is_at_least_as_strong_as_fgsm(text_victim: Trained, norm: Norm, eps: float):
    x, y = abstracts(text_victim)
    fgsm = rate(text_victim, EmbeddingFGSM(norm=norm, eps=eps), x, y)
    pgd = rate(text_victim, EmbeddingPGD(norm=norm, eps=eps, steps=10), x, y)
    assert fgsm > 0.2
    assert pgd >= fgsm - 0.02


def test_embedding_attacks_score_and_measure_in_embedding_space(text_victim: Trained):
    x, y = abstracts(text_victim, 16)
    model = text_victim.model
    attack = EmbeddingPGD(norm="l2", eps=3.0, steps=5, stop_when_adversarial=False)
    emb = attack(model, x, y)
    with torch.no_grad():
        clean = model.embed(x)
        torch.testing.assert_close(attack.adversarial_logits(model, x, clean), model(x))
        torch.testing.assert_close(
            attack.adversarial_logits(model, x, emb, batch_size=5),
            model.forward_embeddings(emb, x),
        )
    sizes = attack.perturbation_sizes(model, x, emb)
    delta = (emb - clean).flatten(1).double()
    np.testing.assert_allclose(sizes["l2"], delta.norm(dim=1).numpy(), rtol=1e-6)
    # Without early stopping every abstract ends on the sphere of radius eps, which spans its
    # non-padding positions only.
    np.testing.assert_allclose(sizes["l2"], 3.0, rtol=1e-4)
    padding = x == PAD_ID
    assert torch.equal(emb[padding], clean[padding])
    assert (emb - clean)[~padding].abs().amax(dim=-1).gt(0).all()


def test_embedding_attacks_ignore_the_input_domain(text_victim: Trained):
    """Embeddings are not inputs: a (meaningless) [0, 1] domain does not clip them."""
    x, y = abstracts(text_victim, 8)
    emb = EmbeddingFGSM(eps=0.1, domain=UNIT_INTERVAL)(text_victim.model, x, y)
    assert float(emb.min()) < 0 and float(emb.max()) > 1


# -- a Hugging Face model ------------------------------------------------------------------------


def test_text_attacks_run_on_a_hugging_face_model(
    text_victim: Trained, minilm: tuple[HuggingFaceClassifier, Any]
):
    """The real MiniLM through HuggingFaceClassifier: its own special ids are kept, its
    vocabulary respected, and the embedding attacks work on its input embeddings."""
    model, tokenizer = minilm
    texts = [str(t)[:60] for t in text_victim.task.test.x[:2]]
    ids = torch.tensor(
        tokenizer(texts, padding="max_length", truncation=True, max_length=12)["input_ids"]
    )
    y = text_victim.task.test.y[:2]
    y = torch.as_tensor(y, dtype=torch.int64)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    attack = HotFlip(
        eps=1.0,
        max_tokens=1,
        candidates=1,
        special_ids=tokenizer.all_special_ids,
        stop_when_adversarial=False,
    )
    x_adv = attack(model, ids, y)
    assert torch.equal((x_adv != ids).sum(dim=1), torch.ones(2, dtype=torch.int64))
    assert torch.equal(x_adv[special], ids[special])
    assert int(x_adv.max()) < model.vocab_size == tokenizer.vocab_size
    emb = EmbeddingFGSM(norm="linf", eps=0.01)(model, ids, y)
    assert emb.shape == (2, 12, 384)
    assert attack.adversarial_logits(model, ids, x_adv).shape == (2, 5)
