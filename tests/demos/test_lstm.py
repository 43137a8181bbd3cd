"""fulmen.demos.lstm: the LSTM demo carries its state across batches and trains on the generated corpus."""

import torch
from torch.utils.data import DataLoader

import fulmen as pl
from fulmen.demos import LightningLSTM, SequenceSampler, SimpleLSTM, WikiText2


def test_sequence_sampler_gives_parallel_streams():
    assert list(SequenceSampler(range(7), batch_size=2)) == [[0, 3], [1, 4], [2, 5]]
    assert len(SequenceSampler(range(10), batch_size=3)) == 3


def test_simple_lstm_shapes_and_state():
    lstm = SimpleLSTM(vocab_size=30, ninp=8, nhid=6, nlayers=2)
    hidden = lstm.init_hidden(3)
    assert hidden[0].shape == hidden[1].shape == (2, 3, 6) and not hidden[0].any()
    out, (h, c) = lstm.eval()(torch.randint(0, 30, (3, 5)), hidden)
    assert out.shape == (15, 30) and torch.allclose(out.exp().sum(1), torch.ones(15), atol=1e-5) and h.any()


def test_lightning_lstm_carries_detached_state_between_steps():
    data = WikiText2("missing", block_size=6)

    class Small(LightningLSTM):
        def __init__(self):
            super().__init__(vocab_size=data.vocab_size)
            self.model = SimpleLSTM(vocab_size=data.vocab_size, ninp=8, nhid=8, nlayers=1)
            self.states = []

        def training_step(self, batch, batch_idx):
            self.states.append(self.hidden)
            return super().training_step(batch, batch_idx)

        def train_dataloader(self):
            return DataLoader(data, batch_sampler=SequenceSampler(data, batch_size=4))

    model = Small()
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model)
    assert model.states[0] is None and model.states[1][0].shape == (1, 4, 8)
    assert "train_loss" in trainer.progress_bar_metrics and trainer.global_step == 3
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)
