"""The examples, run in-process at tiny sizes: each must learn something measurable and write its files."""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str, file: str = "train.py"):
    """Import ``examples/<name>/<file>`` as a fresh module, the way ``python examples/<name>/<file>`` would run it."""
    spec = importlib.util.spec_from_file_location(f"example_{name}_{Path(file).stem}", EXAMPLES / name / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """The run's logged rows from metrics.csv, or one row per point from the TensorBoard event files that the
    Trainer's default logger writes when tensorboard is installed."""
    csvs = list(run_dir.rglob("metrics.csv"))
    if csvs:
        (path,) = csvs
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    from fulmen.plot import _read_tensorboard

    series = _read_tensorboard(sorted(run_dir.rglob("events.out.tfevents.*")))
    assert series, f"no metrics logged under {run_dir}"
    points = [(x, name, y) for name, (xs, ys) in series.items() for x, y in zip(xs, ys)]
    return [{"step": str(int(x)), name: str(y)} for x, name, y in sorted(points)]


def png_shape(path: Path) -> tuple[int, ...]:
    import matplotlib.image

    return matplotlib.image.imread(path).shape


def test_digits_mlp_reaches_90_percent_in_three_epochs_and_tests_its_checkpoint(tmp_path):
    pytest.importorskip("sklearn")
    out = load_example("digits").main(["--epochs", "3", "--root-dir", str(tmp_path)])
    assert out["test_acc"] >= 0.90
    (ckpt,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    assert ckpt.name == "epoch=2-step=120.ckpt"  # 1257 training digits / 32 = 40 steps per epoch
    rows = read_metrics(tmp_path)
    val_acc = [float(r["val_acc"]) for r in rows if r.get("val_acc")]
    assert len(val_acc) == 3 and val_acc[-1] >= 0.9
    assert any(r.get("test_acc") for r in rows)


def test_digits_linear_intro_model_learns(tmp_path):
    pytest.importorskip("sklearn")
    out = load_example("digits").main(["--model", "linear", "--epochs", "1", "--root-dir", str(tmp_path)])
    assert out["test_acc"] >= 0.85
    assert type(out["model"]).__name__ == "LitModel" and out["model"].hparams.lr == 0.02


def test_autoencoder_beats_the_mean_image_and_writes_reconstructions(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    example = load_example("autoencoder")
    out = example.main(["--epochs", "4", "--root-dir", str(tmp_path)])
    data = example.DigitsDataModule()
    data.setup("test")
    x = torch.stack([data.train_set[i][0] for i in range(len(data.train_set))])
    mean_image_mse = float(((x - x.mean(0)) ** 2).mean())  # what a model that ignores its input gets
    assert out["metrics"]["test_mse"] < 0.6 * mean_image_mse
    assert out["metrics"]["test_probe_acc"] >= 0.5  # chance is 0.1
    assert png_shape(Path(out["png"]))[:2] == ((8 * 9 + 1) * 4, (16 * 9 + 1) * 4)  # 8 rows x 16 tiles, 4x scale
    assert out["model"].automatic_optimization is False


def test_gan_samples_move_towards_real_digits(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = load_example("gan").main(["--epochs", "4", "--root-dir", str(tmp_path)])
    assert out["nn_distance"] < 0.75 * out["nn_distance_untrained"]
    assert png_shape(Path(out["png"]))[:2] == ((4 * 9 + 1) * 4, (16 * 9 + 1) * 4)
    rows = read_metrics(tmp_path)
    assert len([r for r in rows if r.get("nn_distance")]) == 4  # one per epoch
    assert all(torch.isfinite(torch.tensor(float(r["g_loss"]))) for r in rows if r.get("g_loss"))


# --- chatbot: needs the `examples` extra ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chatbot():
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    return load_example("chatbot")  # puts examples/chatbot on sys.path for its two modules


def test_chatbot_corpus_holds_out_what_it_evaluates(chatbot):
    import dialogue_data as dd

    corpus = dd.Corpus(seed=0, num_dialogues=2000)
    assert [h.message for h in dd.Corpus(seed=0, num_dialogues=10).test] == [h.message for h in corpus.test]
    train_turns = {turn for dialogue in corpus.train for turn in dialogue}
    held = corpus.val + corpus.test
    facts = [h for h in held if not h.history and "=" not in h.reference]
    sums = [h for h in held if "=" in h.reference]
    names = [h for h in held if h.history]
    assert len(facts) == 48 and len(sums) >= 20 and len(names) == 24
    for h in facts:  # the phrasing is new for this person, the fact itself was taught in other phrasings
        assert (h.message, h.reference) not in train_turns
        assert any(reply == h.reference for _, reply in train_turns)
    trained_sums = {reply for _, reply in corpus.train_arithmetic}
    assert not any(h.reference in trained_sums for h in sums)  # unseen operand pairs, in any phrasing
    seen = {(tuple(d[:-1]), d[-1][0]) for d in corpus.train}
    assert not any((tuple(h.history), h.message) in seen for h in names)


def test_chatbot_loss_covers_only_the_bots_turns(chatbot):
    import dialogue_data as dd

    tokenizer = dd.train_tokenizer([dd.render(d) for d in dd.Corpus(seed=0, num_dialogues=300).train])
    turns = [("What is 2 + 3?", "2 + 3 = 5."), ("Thanks!", "You are welcome!")]
    ids, labels = dd.encode_dialogue(tokenizer, turns, max_length=96)
    assert tokenizer.decode(ids, skip_special_tokens=False) == dd.render(turns)
    taught = [t for t in labels if t != -100]
    assert tokenizer.decode(taught, skip_special_tokens=False) == "2 + 3 = 5.<|end|>You are welcome!<|end|>"


def test_chatbot_trains_checkpoints_and_chats(chatbot, tmp_path):
    out = chatbot.main(["--epochs", "2", "--dialogues", "64", "--batch-size", "16", "--layers", "1",
                        "--width", "32", "--heads", "2", "--root-dir", str(tmp_path)])
    assert 0.0 <= out["exact_match"] <= 1.0
    rows = [r for r in read_metrics(tmp_path) if r.get("val_ppl")]
    assert len(rows) == 2 and float(rows[1]["val_ppl"]) < float(rows[0]["val_ppl"])  # it learns
    samples = next(tmp_path.rglob("samples.txt")).read_text()
    assert samples.count("> What is 12 + 9?") == 2  # sample replies after each epoch

    ckpt = next(tmp_path.rglob("last.ckpt"))
    bot = chatbot.ChatBot.load_from_checkpoint(ckpt, map_location="cpu")  # the tokenizer comes with it
    assert bot.tokenizer.to_str() == out["model"].tokenizer.to_str()
    assert bot.generate_reply("Hello!") == out["model"].generate_reply("Hello!")
    batch = bot.reply_to_prompts(["<|user|>Hello!<|bot|>", "<|user|>What is 1 + 2?<|bot|>"])
    assert batch[0] == bot.generate_reply("Hello!")  # left-padded batches decode like single prompts

    shown = io.StringIO()
    history = load_example("chatbot", "chat.py").chat(bot, ["Hello!", "What is 1 + 2?", ""], write=shown.write)
    assert [m for m, _ in history] == ["Hello!", "What is 1 + 2?"]
    assert shown.getvalue() == "".join(f"bot> {reply}\n" for _, reply in history)


def test_chatbot_fine_tunes_a_gpt2_saved_on_disk(chatbot, tmp_path):
    import dialogue_data as dd
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tokenizer = dd.train_tokenizer(["some text to learn a few merges from, 123"], vocab_size=300)
    saved = tmp_path / "gpt2"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(saved)
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_embd=32, n_head=2,
                               n_positions=128)).save_pretrained(saved)
    out = chatbot.main(["--pretrained", str(saved), "--max-steps", "2", "--dialogues", "64", "--batch-size", "16",
                        "--root-dir", str(tmp_path / "run")])
    assert out["model"].gpt2.config.n_embd == 32  # the saved model's shape, not the default one
    assert out["model"].gpt2.get_input_embeddings().num_embeddings == out["model"].tokenizer.get_vocab_size()
    with pytest.raises(SystemExit, match="no such directory"):
        chatbot.main(["--pretrained", str(tmp_path / "missing")])
