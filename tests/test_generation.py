import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fulmen.errors import MisconfigurationException
from fulmen.generation import (
    generate,
    generate_text,
    min_p_filter,
    no_repeat_ngram,
    repetition_penalty,
    stream,
    stream_text,
    top_k_filter,
    top_p_filter,
)

VOCAB = 50


class TinyLM(nn.Module):
    """Causal and padding-aware: position t sees the masked running mean of the embeddings up to t."""

    def __init__(self, vocab=VOCAB, dim=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        self.seen_training = []

    def forward(self, input_ids, attention_mask=None):
        self.seen_training.append(self.training)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        x = self.embed(input_ids) * mask.unsqueeze(-1)
        x = x.cumsum(1) / mask.cumsum(1).clamp(min=1).unsqueeze(-1)
        return self.head(torch.tanh(x) * 3)


class FixedLogits(nn.Module):
    """Returns the same next-token logits everywhere: a known distribution to sample from."""

    def __init__(self, probs):
        super().__init__()
        self.register_buffer("logits", torch.tensor(probs).log())

    def forward(self, input_ids):
        return self.logits.expand(*input_ids.shape, -1)


class Counter(nn.Module):
    """Always predicts (last token + 1) mod vocab."""

    def __init__(self, vocab=10):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids):
        return F.one_hot((input_ids + 1) % self.vocab, self.vocab).float() * 10


class Script(nn.Module):
    """Emits a fixed script of tokens after a one-token prompt, then repeats its last one."""

    def __init__(self, script, vocab=256):
        super().__init__()
        self.script, self.vocab = list(script), vocab

    def forward(self, input_ids):
        nxt = self.script[min(input_ids.shape[1] - 1, len(self.script) - 1)]
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[:, -1, nxt] = 1.0
        return logits


def tiny_gpt2(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                         bos_token_id=None, eos_token_id=None)
    return transformers.GPT2LMHeadModel(config).eval()


class NoCache(nn.Module):
    """Hides the HF model's cache so fulmen falls back to feeding the whole sequence each step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits


def left_pad(prompts, pad=0):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def sample_support(probs, n=3000, **kwargs):
    """Draw n single tokens at once (n rows) and return their counts."""
    out = generate(FixedLogits(probs), torch.zeros(n, 1, dtype=torch.long), max_new_tokens=1, do_sample=True,
                   generator=torch.Generator().manual_seed(0), **kwargs)
    return torch.bincount(out[:, 1], minlength=len(probs))


PROBS = [0.4, 0.3, 0.15, 0.1, 0.05]


# --- decoding ---------------------------------------------------------------------------------------------------


def test_greedy_matches_hand_written_argmax_loop():
    model, ids = TinyLM(), torch.tensor([[3, 14, 15], [9, 2, 6]])
    expected = ids
    for _ in range(12):
        expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], 1)
    out = generate(model, ids, max_new_tokens=12)
    assert out.dtype == torch.long and not out.is_inference()
    assert torch.equal(out, expected)


def test_top_k_1_sampling_equals_greedy():
    model, ids = TinyLM(), torch.tensor([[1, 2, 3]])
    greedy = generate(model, ids, max_new_tokens=10)
    seed = torch.Generator().manual_seed(1)
    sampled = generate(model, ids, max_new_tokens=10, do_sample=True, top_k=1, generator=seed)
    assert torch.equal(greedy, sampled)


def test_seeded_sampling_repeats_and_other_seed_differs():
    model, ids = TinyLM(), torch.tensor([[1, 2, 3], [4, 5, 6]])

    def run(seed):
        return generate(model, ids, max_new_tokens=20, do_sample=True, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_max_new_tokens_zero_returns_prompt_and_1d_prompt_is_a_batch_of_one():
    model = TinyLM()
    assert torch.equal(generate(model, torch.tensor([[4, 5]]), max_new_tokens=0), torch.tensor([[4, 5]]))
    assert generate(model, torch.tensor([4, 5]), max_new_tokens=3).shape == (1, 5)


def test_model_is_in_eval_mode_while_generating_and_mode_is_restored():
    model = TinyLM().train()
    generate(model, torch.tensor([[1]]), max_new_tokens=2)
    assert model.seen_training == [False, False] and model.training
    model.eval()
    list(stream(model, torch.tensor([[1]]), max_new_tokens=2))
    assert not model.training


# --- sampling filters restrict the support ------------------------------------------------------------------------


def test_unfiltered_sampling_reaches_every_token():
    counts = sample_support(PROBS)
    assert (counts > 0).all()
    assert torch.allclose(counts / counts.sum(), torch.tensor(PROBS), atol=0.03)


def test_top_k_keeps_k_most_likely():
    counts = sample_support(PROBS, top_k=2)
    assert counts[:2].min() > 0 and counts[2:].sum() == 0


@pytest.mark.parametrize(("top_p", "kept"), [(0.3, 1), (0.7, 2), (0.71, 3), (1.0, 5)])
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    counts = sample_support(PROBS, top_p=top_p)
    assert counts[:kept].min() > 0 and counts[kept:].sum() == 0


def test_min_p_drops_tokens_below_fraction_of_best():
    counts = sample_support(PROBS, min_p=0.3)  # threshold 0.12: tokens 0, 1, 2 survive
    assert counts[:3].min() > 0 and counts[3:].sum() == 0


def test_temperature_reshapes_distribution():
    assert sample_support(PROBS, temperature=0.01)[1:].sum() == 0  # near-greedy
    counts = sample_support(PROBS, n=6000, temperature=2.0)
    expected = (torch.tensor(PROBS).log() / 2).softmax(-1)
    assert torch.allclose(counts / counts.sum(), expected, atol=0.03)


def test_filter_functions_on_known_logits():
    logits = torch.tensor(PROBS).log().unsqueeze(0)
    inf = float("-inf")
    assert torch.equal(top_k_filter(logits, 3)[0, 3:], torch.tensor([inf, inf]))
    assert torch.isfinite(top_k_filter(logits, 99)).all()
    assert torch.isfinite(top_p_filter(logits, 0.85)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(min_p_filter(logits, 0.25)).tolist() == [[True, True, True, True, False]]
    # after top-k, ranking only the k candidates gives the same nucleus as sorting everything
    kept = top_k_filter(torch.randn(3, 40, generator=torch.Generator().manual_seed(0)), 10)
    assert torch.equal(top_p_filter(kept, 0.8, candidates=10), top_p_filter(kept, 0.8))


def test_top_k_and_top_p_combine():
    counts = sample_support(PROBS, top_k=3, top_p=0.7)
    assert counts[:2].min() > 0 and counts[2:].sum() == 0


# --- repetition penalty and no-repeat n-gram ------------------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -2.0, 1.0, 4.0]])
    out = repetition_penalty(torch.tensor([[0, 1, 1]]), logits, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0, 4.0]]))
    # padding (mask 0) does not count as seen
    out = repetition_penalty(torch.tensor([[3, 0]]), logits, 2.0, attention_mask=torch.tensor([[0, 1]]))
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 1.0, 4.0]]))


def test_no_repeat_ngram_bans_completions_of_seen_ngrams():
    inf = float("-inf")
    ids = torch.tensor([[1, 2, 3, 1, 2], [1, 2, 3, 4, 2]])
    out = no_repeat_ngram(ids, torch.zeros(2, 5), 3)
    assert out.tolist() == [[0, 0, 0, inf, 0], [0, 0, 0, 0, 0]]
    assert no_repeat_ngram(ids, torch.zeros(2, 5), 1)[0].tolist() == [0, inf, inf, inf, 0]
    # an n-gram that overlaps padding is not a real n-gram
    masked = no_repeat_ngram(ids, torch.zeros(2, 5), 3, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1] * 5]))
    assert masked[0].tolist() == [0] * 5


def test_no_repeat_ngram_in_generation_never_repeats_a_bigram():
    out = generate(FixedLogits(PROBS), torch.tensor([[0]]), max_new_tokens=8, no_repeat_ngram_size=2)[0].tolist()
    bigrams = list(zip(out, out[1:]))
    assert len(bigrams) == len(set(bigrams))
    assert out == [0, 0, 1, 0, 2, 0, 3, 0, 4]  # 5 tokens allow exactly these 8 distinct bigrams


def test_repetition_penalty_in_generation_avoids_repeats():
    # Without penalty the fixed model always says 0; a strong penalty walks down the list instead.
    out = generate(FixedLogits(PROBS), torch.tensor([[4]]), max_new_tokens=4, repetition_penalty=100.0)
    assert out.tolist() == [[4, 0, 1, 2, 3]]


# --- stopping and streaming -------------------------------------------------------------------------------------


def test_stop_token_stops_each_row_and_pads_until_all_stop():
    ids = torch.tensor([[0, 1], [2, 3]])
    out = generate(Counter(), ids, max_new_tokens=10, stop_token_ids=[5], pad_token_id=9)
    assert out.tolist() == [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 9, 9]]
    out = generate(Counter(), ids, max_new_tokens=10, stop_token_ids=[7, 5])  # pads with the first stop id
    assert out.tolist() == [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 7, 7]]
    assert generate(Counter(), ids, max_new_tokens=2, stop_token_ids=[5]).shape == (2, 4)


def test_stream_yields_the_same_ids_as_generate():
    model, ids = TinyLM(), torch.tensor([[1, 2, 3], [4, 5, 6]])
    kwargs = dict(max_new_tokens=15, do_sample=True, top_p=0.9, stop_token_ids=[7, 11])
    out = generate(model, ids, generator=torch.Generator().manual_seed(3), **kwargs)
    steps = list(stream(model, ids, generator=torch.Generator().manual_seed(3), **kwargs))
    assert all(s.shape == (2,) and s.dtype == torch.long for s in steps)
    assert torch.equal(torch.stack(steps, 1), out[:, 3:])


def test_user_logits_processors_run_in_order_after_builtins():
    calls = []

    def favour(token, name):
        def process(input_ids, logits):
            calls.append((name, input_ids.shape[1], bool(torch.isinf(logits).any())))
            return logits.index_fill(-1, torch.tensor([token]), float(logits.max()) + 50)  # beat whatever leads

        return process

    out = generate(FixedLogits(PROBS), torch.tensor([[0]]), max_new_tokens=2, do_sample=True, top_k=2,
                   logits_processors=[favour(3, "a"), favour(4, "b")])
    assert out.tolist() == [[0, 4, 4]]  # in the other order token 3 would win
    # in order, each step seeing the ids so far and logits already top-k filtered
    assert calls == [("a", 1, True), ("b", 1, True), ("a", 2, True), ("b", 2, True)]


# --- batching, padding and the KV cache --------------------------------------------------------------------------


PROMPTS = [[5, 6, 7, 8, 9], [11, 3], [20, 21, 22]]


@pytest.mark.parametrize("kind", ["plain", "hf"])
def test_left_padded_batch_equals_one_by_one(kind):
    model = TinyLM() if kind == "plain" else tiny_gpt2()
    kwargs = dict(max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=2)
    ids, mask = left_pad(PROMPTS)
    batched = generate(model, ids, attention_mask=mask, **kwargs)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([prompt]), **kwargs)
        assert batched[row, -10:].tolist() == alone[0, -10:].tolist()


def test_kv_cache_feeds_one_token_per_step_and_matches_no_cache():
    model = tiny_gpt2()
    ids, mask = left_pad(PROMPTS)
    lengths = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: lengths.append(args[0].shape[1]), with_kwargs=True)
    cached = generate(model, ids, attention_mask=mask, max_new_tokens=8)
    hook.remove()
    assert lengths == [5] + [1] * 7
    assert torch.equal(cached, generate(NoCache(model), ids, attention_mask=mask, max_new_tokens=8))
    sample = dict(max_new_tokens=8, do_sample=True, temperature=0.8, top_k=20)
    a = generate(model, ids, attention_mask=mask, generator=torch.Generator().manual_seed(0), **sample)
    b = generate(NoCache(model), ids, attention_mask=mask, generator=torch.Generator().manual_seed(0), **sample)
    assert torch.equal(a, b)


def test_greedy_matches_transformers_generate():
    model = tiny_gpt2()
    ids, mask = left_pad(PROMPTS)
    ours = generate(model, ids, attention_mask=mask, max_new_tokens=8)
    theirs = model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                            pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours, theirs)


# --- text --------------------------------------------------------------------------------------------------------


class Letters:
    """a=0 ... z=25."""

    def encode(self, text):
        return [ord(c) - 97 for c in text]

    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids)


class Bytes:
    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_stop_string_ends_text_stream_without_being_yielded():
    pieces = list(stream_text(Counter(26), Letters(), "a", stop_strings=["xyz", "ef"], max_new_tokens=20))
    assert "".join(pieces) == "bcd"
    assert generate_text(Counter(26), Letters(), "a", stop_strings=["ef"], max_new_tokens=20) == "bcd"
    assert generate_text(Counter(26), Letters(), "a", max_new_tokens=3) == "bcd"
    # a partial match that never completes is released at the end
    assert generate_text(Counter(26), Letters(), "a", stop_strings=["dx"], max_new_tokens=3) == "bcd"


def test_byte_level_text_never_yields_half_characters_and_drops_stop_tokens():
    script = list("héllo wörld".encode()) + [0]
    pieces = list(stream_text(Script(script), Bytes(), "x", max_new_tokens=30, stop_token_ids=[0]))
    assert "".join(pieces) == "héllo wörld"
    assert not any("\ufffd" in p for p in pieces)
    assert generate_text(Script(script), Bytes(), "x", max_new_tokens=30, stop_strings=[" w"]) == "héllo"


def test_stream_text_with_a_hf_model_and_tokenizer_shaped_object():
    model = tiny_gpt2()
    text = generate_text(model, Letters(), "abc", max_new_tokens=6, logits_processors=[lambda ids, l: l[:, :26]])
    assert len(text) == 6 and text.isalpha()


# --- bad arguments -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(do_sample=True, temperature=0.0),
        dict(do_sample=True, temperature=-1.0),
        dict(top_k=0),
        dict(min_p=-0.1),
        dict(min_p=1.1),
        dict(repetition_penalty=0.0),
        dict(no_repeat_ngram_size=-1),
        dict(max_new_tokens=-1),
        dict(attention_mask=torch.ones(1, 2)),
        dict(attention_mask=torch.tensor([[0, 0, 0]])),
        dict(input_ids=torch.zeros(1, 0, dtype=torch.long)),
    ],
)
def test_bad_arguments_raise_misconfiguration(kwargs):
    kwargs = {"input_ids": torch.tensor([[1, 2, 3]]), "max_new_tokens": 4, **kwargs}
    with pytest.raises(MisconfigurationException, match=r"\w"):
        generate(TinyLM(), **kwargs)
    with pytest.raises(MisconfigurationException):
        stream(TinyLM(), **kwargs)  # checked at the call, before iteration starts


def test_generation_is_an_opt_in_submodule_without_transformers():
    code = (
        "import sys, fulmen; assert 'fulmen.generation' not in sys.modules; "
        "import fulmen.generation; assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
