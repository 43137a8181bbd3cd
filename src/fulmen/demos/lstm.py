"""A small LSTM language model on WikiText-2, carrying its hidden state across batches.

``SequenceSampler`` cuts the token blocks into ``batch_size`` parallel streams, so batch ``i + 1`` continues
each stream of batch ``i`` and the LSTM's state can be carried over (and detached) between steps.

Example::

    from fulmen.demos.lstm import LightningLSTM

    fulmen.Trainer(max_steps=50).fit(LightningLSTM(vocab_size=WikiText2().vocab_size))
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from fulmen.demos.transformer import WikiText2
from fulmen.module import LightningModule

__all__ = ["LightningLSTM", "SequenceSampler", "SimpleLSTM"]


class SimpleLSTM(nn.Module):
    """Embedding, a stacked LSTM and a linear decoder to log-probabilities over the vocabulary.

    ``forward(input, hidden)`` takes ``(batch, time)`` token ids and the ``(h, c)`` state and returns
    ``(batch * time, vocab_size)`` log-probabilities and the new state.

    Example::

        lstm = SimpleLSTM(vocab_size=100, ninp=16, nhid=16, nlayers=1)
        out, hidden = lstm(torch.randint(0, 100, (2, 5)), lstm.init_hidden(2))   # (10, 100)
    """

    def __init__(self, vocab_size: int = 33278, ninp: int = 512, nhid: int = 512, nlayers: int = 4,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.vocab_size, self.nlayers, self.nhid = vocab_size, nlayers, nhid
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab_size, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout if nlayers > 1 else 0.0, batch_first=True)
        self.decoder = nn.Linear(nhid, vocab_size)
        self.init_weights()

    def init_weights(self) -> None:
        """Small uniform embedding and decoder weights, zero decoder bias."""
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, input: Tensor, hidden: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        logits = self.decoder(self.drop(output)).view(-1, self.vocab_size)
        return F.log_softmax(logits, dim=1), hidden

    def init_hidden(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Zero ``(h, c)`` states for ``batch_size`` streams, on the parameters' device and dtype."""
        weight = next(self.parameters())
        shape = (self.nlayers, batch_size, self.nhid)
        return weight.new_zeros(shape), weight.new_zeros(shape)


class SequenceSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices, one per stream: batch ``i`` is ``[i, i + n, i + 2n, ...]``.

    Example::

        list(SequenceSampler(range(7), batch_size=2))  # [[0, 3], [1, 4], [2, 5]]
    """

    def __init__(self, dataset: Sized, batch_size: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.chunk_size = len(dataset) // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.chunk_size):
            yield [i + k * self.chunk_size for k in range(self.batch_size)]

    def __len__(self) -> int:
        return self.chunk_size


class LightningLSTM(LightningModule):
    """:class:`SimpleLSTM` trained on :class:`WikiText2` with its state carried between batches (SGD, lr 20).

    Example::

        fulmen.Trainer(max_steps=20, gradient_clip_val=0.25).fit(LightningLSTM(WikiText2().vocab_size))
    """

    def __init__(self, vocab_size: int = 33278) -> None:
        super().__init__()
        self.model = SimpleLSTM(vocab_size=vocab_size)
        self.hidden: tuple[Tensor, Tensor] | None = None

    def on_train_epoch_end(self) -> None:
        self.hidden = None  # a new epoch starts the streams again

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, target = batch
        if self.hidden is None:
            self.hidden = self.model.init_hidden(inputs.size(0))
        hidden = (self.hidden[0].detach(), self.hidden[1].detach())  # no backpropagation into earlier batches
        output, self.hidden = self.model(inputs, hidden)
        loss = F.nll_loss(output, target.view(-1))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def train_dataloader(self) -> DataLoader:
        dataset = WikiText2()
        return DataLoader(dataset, batch_sampler=SequenceSampler(dataset, batch_size=20))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=20.0)
