"""Clinical text: a tokenizer trained on the task's corpus, a small Transformer encoder, and an
adapter for Hugging Face sequence-classification models.

Inputs of text models are token ids (int64, shape (N, L)) padded with :data:`PAD_ID`. The models
expose ``embed`` and ``forward_embeddings`` so that attacks can work in embedding space.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from scipy import sparse
from sklearn.utils.extmath import randomized_svd
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import nn

from medrobust.errors import ParameterError

PAD_ID = 0
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


TOKENIZERS = ("wordlevel", "wordpiece")


@runtime_checkable
class TextModel(Protocol):
    """What text attacks need of a model: its vocabulary, its padding id and the embedding path.

    :class:`TransformerClassifier` and :class:`HuggingFaceClassifier` implement it.
    """

    @property
    def vocab_size(self) -> int:
        """Number of token ids; valid ids are ``0 .. vocab_size - 1``."""
        ...

    @property
    def pad_id(self) -> int:
        """The padding id; padded positions are masked out."""
        ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``ids``, shape (N, L, dim)."""
        ...

    def forward_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits from (possibly perturbed) embeddings; ``ids`` gives the padding mask."""
        ...


def train_tokenizer(
    texts: Sequence[str], *, vocab_size: int = 10000, kind: str = "wordlevel"
) -> Tokenizer:
    """Train a lower-cased tokenizer on ``texts`` (use the training split only).

    ``wordlevel`` keeps whole words seen at least twice (others become [UNK]); ``wordpiece``
    splits rare words into sub-word pieces. Training is deterministic for the same texts.
    """
    if kind not in TOKENIZERS:
        raise ParameterError(f"The tokenizer kind must be one of {TOKENIZERS}. Got {kind!r}.")
    trainer: trainers.Trainer
    if kind == "wordlevel":
        tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
        )
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return tokenizer


def lsa_embeddings(ids: np.ndarray, vocab_size: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """Token vectors from a truncated SVD of the corpus' TF-IDF matrix (latent semantic
    analysis, Deerwester et al. 1990), scaled to unit standard deviation.

    A Transformer trained from scratch on a few thousand abstracts overfits before it learns which
    words are related; starting its embeddings from the co-occurrence structure of the same
    training texts gives it that knowledge without any outside data.

    Shape:
        ids (N, L) int64 -> (vocab_size, dim) float32; the padding row is zero.
    """
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    counts = sparse.csr_matrix(
        (np.ones(ids.size), (rows, ids.reshape(-1))), shape=(len(ids), vocab_size)
    )
    counts.sum_duplicates()
    counts.data = np.log1p(counts.data)
    document_frequency = np.bincount(counts.indices, minlength=vocab_size)
    idf = np.log((1 + len(ids)) / (1 + document_frequency)) + 1
    idf[PAD_ID] = 0.0
    tfidf = sparse.csr_matrix(counts.multiply(idf[None, :]))
    lengths = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel()) + 1e-12
    tfidf = sparse.csr_matrix(tfidf.multiply(1.0 / lengths[:, None]))
    k = min(dim, min(tfidf.shape) - 1)
    u, s, _ = randomized_svd(tfidf.T.tocsr(), n_components=k, random_state=seed)
    vectors = np.zeros((vocab_size, dim))
    vectors[:, :k] = u * np.sqrt(s)
    vectors /= vectors.std() + 1e-12
    vectors[PAD_ID] = 0.0
    return vectors.astype(np.float32)


def encode(tokenizer: Tokenizer, texts: Sequence[str], *, max_length: int = 256) -> np.ndarray:
    """Token ids of ``texts``: [CLS] + tokens, truncated to ``max_length`` and padded with 0.

    Shape:
        N strings -> (N, max_length) int64
    """
    cls_id = tokenizer.token_to_id("[CLS]")
    if cls_id is None:
        raise ParameterError("The tokenizer has no [CLS] token; train it with train_tokenizer.")
    ids = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch(list(texts))):
        tokens: list[int] = [cls_id, *encoding.ids][:max_length]
        ids[row, : len(tokens)] = tokens
    return ids


def special_token_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """Ids of ``tokenizer``'s special tokens: its added tokens marked special (a Hugging Face
    tokenizer's [PAD], [UNK], [CLS], [SEP], [MASK], ``<s>``, ...) and any of
    :data:`SPECIAL_TOKENS` in its vocabulary, sorted."""
    ids = {int(i) for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    for token in SPECIAL_TOKENS:
        found = tokenizer.token_to_id(token)
        if found is not None:
            ids.add(int(found))
    return tuple(sorted(ids))


_RESERVED = re.compile(r"^\[unused\d+\]$|^<unused\d+>$")


def protected_token_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """Ids a token substitution must never change or insert: :func:`special_token_ids` and the
    reserved placeholders of BERT-style vocabularies (``[unused0]``, ...), which stand for no
    word. For a tokenizer of :func:`train_tokenizer`, the ids of :data:`SPECIAL_TOKENS`."""
    reserved = {i for token, i in tokenizer.get_vocab().items() if _RESERVED.match(token)}
    return tuple(sorted(set(special_token_ids(tokenizer)) | reserved))


def _unk_id(tokenizer: Tokenizer) -> int | None:
    token = getattr(tokenizer.model, "unk_token", None)
    found = tokenizer.token_to_id(token) if isinstance(token, str) else None
    return tokenizer.token_to_id("[UNK]") if found is None else found


def decode(tokenizer: Tokenizer, ids: torch.Tensor | np.ndarray) -> list[str]:
    """The text of each row of token ids, for showing original against adversarial inputs.

    Special tokens ([PAD], [CLS], [SEP], and the other special tokens of a Hugging Face
    tokenizer) are dropped; the unknown token ([UNK]) is kept, so that the text shows where the
    tokenizer lost a word. A tokenizer with a decoder (a Hugging Face tokenizer's) joins the
    tokens its way; otherwise WordPiece continuation pieces (``##``) are glued to the piece
    before. Text is lower-cased where the tokenizer normalised it so.

    Shape:
        (N, L) int -> N strings
    """
    rows = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if rows.ndim != 2:
        raise ParameterError(f"decode needs token ids of shape (N, L). Got shape {rows.shape}.")
    hidden = set(special_token_ids(tokenizer)) - {_unk_id(tokenizer)}
    if tokenizer.id_to_token(PAD_ID) is None:
        hidden.add(PAD_ID)
    texts = []
    for row in rows:
        kept = [int(i) for i in row if int(i) not in hidden]
        if tokenizer.decoder is not None:
            texts.append(tokenizer.decode(kept, skip_special_tokens=False))
            continue
        tokens = [tokenizer.id_to_token(i) for i in kept]
        texts.append(" ".join(t if t is not None else "[UNK]" for t in tokens).replace(" ##", ""))
    return texts


class TransformerClassifier(nn.Module):
    """A Transformer encoder (Vaswani et al. 2017) over token ids, mean-pooled, with a linear head.

    Args:
        vocab_size: number of token ids.
        num_outputs: number of logits.
        max_length: longest sequence.
        dim, heads, layers, dropout: encoder size.
        initial_embeddings: optional (vocab_size, dim) start for the token embeddings, e.g.
            :func:`lsa_embeddings` of the training split.

    Shape:
        (N, L) int64 -> (N, num_outputs)
    """

    def __init__(
        self,
        vocab_size: int,
        num_outputs: int,
        *,
        max_length: int = 256,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
        initial_embeddings: torch.Tensor | None = None,
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        if initial_embeddings is not None:
            if tuple(initial_embeddings.shape) != (vocab_size, dim):
                raise ParameterError(
                    f"initial_embeddings must have shape ({vocab_size}, {dim}). "
                    f"Got {tuple(initial_embeddings.shape)} instead."
                )
            with torch.no_grad():
                # embed() multiplies by sqrt(dim); this keeps the effective scale at 1.
                self.token_embedding.weight.copy_(initial_embeddings / math.sqrt(dim))
        self.position_embedding = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_outputs)
        self.scale = math.sqrt(dim)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (rows of the embedding table)."""
        return int(self.token_embedding.num_embeddings)

    @property
    def pad_id(self) -> int:
        """The padding id, :data:`PAD_ID`."""
        return PAD_ID

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, shape (N, L, dim)."""
        return self.token_embedding(ids) * self.scale  # type: ignore[no-any-return]

    def forward_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits from (possibly perturbed) embeddings; ``ids`` gives the padding mask."""
        padding = ids == PAD_ID
        length = embeddings.shape[1]
        hidden = self.encoder(
            self.dropout(embeddings + self.position_embedding[:, :length]),
            src_key_padding_mask=padding,
        )
        keep = (~padding).unsqueeze(-1).to(hidden.dtype)
        pooled = (self.norm(hidden) * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.head(self.dropout(pooled))  # type: ignore[no-any-return]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embeddings(self.embed(ids), ids)


class HuggingFaceClassifier(nn.Module):
    """Adapter that makes a Hugging Face ``*ForSequenceClassification`` model take padded ids.

    Args:
        model: a ``transformers`` model whose forward accepts ``input_ids`` and
            ``attention_mask`` (or ``inputs_embeds``) and returns an object with ``logits``.
        pad_id: the padding id of its tokenizer.

    Shape:
        (N, L) int64 -> (N, num_labels)
    """

    def __init__(self, model: nn.Module, *, pad_id: int = 0):
        super().__init__()
        self.model = model
        self.pad_id = pad_id

    @property
    def vocab_size(self) -> int:
        """Number of token ids (rows of the wrapped model's input embedding table)."""
        layer: Any = self.model.get_input_embeddings()  # type: ignore[operator]
        return int(layer.num_embeddings)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of the wrapped model, shape (N, L, dim)."""
        layer: Any = self.model.get_input_embeddings()  # type: ignore[operator]
        return layer(ids)  # type: ignore[no-any-return]

    def forward_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits from (possibly perturbed) input embeddings."""
        mask = (ids != self.pad_id).long()
        return self.model(inputs_embeds=embeddings, attention_mask=mask).logits  # type: ignore[no-any-return]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        return self.model(input_ids=ids, attention_mask=mask).logits  # type: ignore[no-any-return]
