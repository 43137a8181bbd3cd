"""A small encoder-decoder Transformer language model and the WikiText-2 data set, for demos.

:class:`WikiText2` reads ``<data_dir>/wikitext-2.txt`` when it exists; otherwise it generates a
corpus (Zipf-distributed words, the same every time), so demos and tests run without a network.

Example::

    from fulmen.demos import LightningTransformer, WikiText2

    data = WikiText2(block_size=35)
    model = LightningTransformer(vocab_size=data.vocab_size)
    fulmen.Trainer(max_steps=20).fit(model, DataLoader(data, batch_size=16))
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from fulmen.module import LightningModule

__all__ = ["Dictionary", "LightningTransformer", "PositionalEncoding", "Transformer", "WikiText2", "tokenize"]


class Transformer(nn.Module):
    """Embedding, positional encoding, ``nn.Transformer`` and a linear decoder to log-probabilities.

    ``forward(inputs, target)`` takes token ids of shape ``(batch, time)`` and returns log-probabilities
    of shape ``(batch * time, vocab_size)``; the decoder sees only earlier target positions.

    Example::

        model = Transformer(vocab_size=100)
        out = model(torch.randint(0, 100, (2, 8)), torch.randint(0, 100, (2, 8)))   # (16, 100)
    """

    def __init__(self, vocab_size: int = 33278, ninp: int = 200, nhead: int = 2, nhid: int = 200,
                 nlayers: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.embedding = nn.Embedding(vocab_size, ninp)
        self.transformer = nn.Transformer(d_model=ninp, nhead=nhead, num_encoder_layers=nlayers,
                                          num_decoder_layers=nlayers, dim_feedforward=nhid, dropout=dropout,
                                          batch_first=True)
        self.decoder = nn.Linear(ninp, vocab_size)
        self.ninp = ninp
        self.vocab_size = vocab_size

    @staticmethod
    def generate_square_subsequent_mask(size: int) -> Tensor:
        """``-inf`` above the diagonal, 0 elsewhere: position i attends to positions <= i."""
        return torch.full((size, size), float("-inf")).triu(diagonal=1)

    def forward(self, inputs: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            mask = self.generate_square_subsequent_mask(target.size(1)).to(inputs.device)
        scale = math.sqrt(self.ninp)
        src = self.pos_encoder(self.embedding(inputs) * scale)
        tgt = self.pos_encoder(self.embedding(target) * scale)
        out = self.decoder(self.transformer(src, tgt, tgt_mask=mask))
        return F.log_softmax(out, dim=-1).view(-1, self.vocab_size)


class PositionalEncoding(nn.Module):
    """Adds sinusoidal position codes to ``(batch, time, dim)`` embeddings, then dropout."""

    def __init__(self, dim: int, dropout: float = 0.1, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.dim = dim
        self.max_len = max_len
        position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
        freq = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(position * freq)
        pe[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
        self.register_buffer("pe", pe.unsqueeze(0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[:, : x.size(1)])


class Dictionary:
    """Words to ids and back, ids given in order of first appearance."""

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add_word(self, word: str) -> int:
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


def tokenize(path: str | os.PathLike) -> tuple[Tensor, Dictionary]:
    """The text file at ``path`` as one tensor of word ids (``<eos>`` ends each line), and its dictionary.

    Example::

        ids, dictionary = tokenize("data/wikitext-2.txt")
    """
    dictionary = Dictionary()
    ids: list[int] = []
    with open(path, encoding="utf8") as f:
        for line in f:
            ids.extend(dictionary.add_word(w) for w in [*line.split(), "<eos>"])
    return torch.tensor(ids, dtype=torch.int64), dictionary


def _generated_corpus(num_tokens: int = 100_000, vocab: int = 2_000, seed: int = 0) -> tuple[Tensor, Dictionary]:
    """A corpus with WikiText's shape: Zipf-distributed words, lines of 5 to 30 words, the same each time."""
    gen = torch.Generator().manual_seed(seed)  # its own generator: the global RNG is left alone
    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float)
    words = torch.multinomial(weights, num_tokens, replacement=True, generator=gen)
    dictionary = Dictionary()
    eos = dictionary.add_word("<eos>")
    for i in range(vocab):
        dictionary.add_word(f"w{i}")
    ids = words + 1  # word i has id i + 1, after <eos>
    lengths = torch.randint(5, 31, (num_tokens // 5,), generator=gen).cumsum(0)
    ids[lengths[lengths < num_tokens]] = eos
    return ids, dictionary


class WikiText2(Dataset):
    """Blocks of ``block_size`` token ids and the same block shifted by one token (the targets).

    The text comes from ``data_dir/wikitext-2.txt`` when that file exists (WikiText-2's ``train.txt``);
    otherwise a generated corpus of 100k tokens over 2,000 words is used. Nothing is ever downloaded:
    ``download`` is accepted for Lightning's signature and ignored.

    Example::

        data = WikiText2(Path("data"), block_size=35)
        inputs, target = data[0]       # two (35,) tensors, target[i] == inputs[i + 1]
        data.vocab_size
    """

    def __init__(self, data_dir: str | os.PathLike = Path("./data"), block_size: int = 35, download: bool = True) -> None:
        super().__init__()
        self.path = Path(data_dir) / "wikitext-2.txt"
        self.data, self.dictionary = tokenize(self.path) if self.path.exists() else _generated_corpus()
        self.block_size = block_size

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)

    def __len__(self) -> int:
        return len(self.data) // self.block_size - 1

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.block_size
        end = start + self.block_size
        return self.data[start:end], self.data[start + 1 : end + 1]


class LightningTransformer(LightningModule):
    """:class:`Transformer` trained as a language model: next-token negative log-likelihood, SGD (lr 0.1).

    Example::

        data = WikiText2()
        fulmen.Trainer(max_steps=10).fit(LightningTransformer(data.vocab_size), DataLoader(data, batch_size=8))
    """

    def __init__(self, vocab_size: int = 33278) -> None:
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size)

    def forward(self, inputs: Tensor, target: Tensor) -> Tensor:
        return self.model(inputs, target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        output = self(inputs, target)
        return F.nll_loss(output, target.view(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=0.1)
