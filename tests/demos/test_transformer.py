"""fulmen.demos.transformer: WikiText2 never downloads, and the Transformer demo trains."""

import torch
from torch.utils.data import DataLoader

import fulmen as pl
from fulmen.demos import LightningTransformer, Transformer, WikiText2
from fulmen.demos.transformer import tokenize


def test_wikitext2_without_a_file_generates_the_same_corpus_and_blocks(tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr(socket, "socket", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network used")))
    a, b = WikiText2(tmp_path, block_size=35), WikiText2(tmp_path, block_size=35, download=True)
    assert torch.equal(a.data, b.data) and a.vocab_size == b.vocab_size > 100
    inputs, target = a[3]
    assert inputs.shape == target.shape == (35,) and torch.equal(inputs[1:], target[:-1])
    assert len(a) == len(a.data) // 35 - 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_wikitext2_reads_the_given_corpus(tmp_path):
    (tmp_path / "wikitext-2.txt").write_text("the cat sat\nthe dog sat down\n")
    data = WikiText2(tmp_path, block_size=3)
    ids, dictionary = tokenize(tmp_path / "wikitext-2.txt")
    assert dictionary.idx2word == ["the", "cat", "sat", "<eos>", "dog", "down"]
    assert data.data.tolist() == [0, 1, 2, 3, 0, 4, 2, 5, 3] and data.vocab_size == 6
    assert [t.tolist() for t in data[1]] == [[3, 0, 4], [0, 4, 2]]


def test_transformer_outputs_log_probabilities_and_the_module_trains():
    torch.manual_seed(0)
    model = Transformer(vocab_size=50, ninp=16, nhead=2, nhid=16, nlayers=1, dropout=0.0)
    out = model(torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 7)))
    assert out.shape == (14, 50) and torch.allclose(out.exp().sum(-1), torch.ones(14), atol=1e-5)

    data = WikiText2("missing", block_size=8)
    lm = LightningTransformer(vocab_size=data.vocab_size)
    before = lm.model.decoder.weight.detach().clone()
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(lm, DataLoader(data, batch_size=2))
    assert trainer.global_step == 2 and not torch.equal(before, lm.model.decoder.weight)
