"""Clinical text: a tokenizer trained on the task's corpus, a small Transformer encoder, and an
adapter for Hugging Face sequence-classification models.

Inputs of text models are token ids (int64, shape (N, L)) padded with :data:`PAD_ID`. The models
expose ``embed`` and ``forward_embeddings`` so that attacks can work in embedding space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import nn

from medrobust.errors import ParameterError

PAD_ID = 0
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def train_tokenizer(texts: Sequence[str], *, vocab_size: int = 8000) -> Tokenizer:
    """Train a lower-cased WordPiece tokenizer on ``texts`` (use the training split only).

    Training is deterministic for the same texts and vocabulary size.
    """
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return tokenizer


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


class TransformerClassifier(nn.Module):
    """A Transformer encoder (Vaswani et al. 2017) over token ids, mean-pooled, with a linear head.

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
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
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
