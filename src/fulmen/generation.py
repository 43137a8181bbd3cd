"""Token-by-token sampling from any causal language model.

A model qualifies when calling it on ``(batch, seq)`` token ids gives logits ``(batch, seq, vocab)``,
either as a plain tensor or as an object with ``.logits`` (a Hugging Face ``transformers`` model, for one).
When the model's ``forward`` takes a KV cache (``past_key_values`` or ``cache``, with ``use_cache``), the
prompt is fed once and each later step feeds only the newest token.

Example::

    import torch
    from fulmen.generation import generate
    out = generate(model, prompt_ids, max_new_tokens=32, do_sample=True, top_p=0.9,
                   generator=torch.Generator().manual_seed(0))
    new_ids = out[:, prompt_ids.shape[1]:]

Each step applies, in this order: repetition penalty, no-repeat n-gram, then (only when sampling)
temperature, top-k, top-p and min-p, then the user's ``logits_processors``; then it picks a token.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from fulmen.errors import MisconfigurationException

__all__ = [
    "generate",
    "generate_text",
    "min_p_filter",
    "no_repeat_ngram",
    "repetition_penalty",
    "stream",
    "stream_text",
    "top_k_filter",
    "top_p_filter",
]

LogitsProcessor = Callable[[Tensor, Tensor], Tensor]


# --- logits processors: each maps next-token logits (batch, vocab) to new logits ----------------------------


def repetition_penalty(
    input_ids: Tensor, logits: Tensor, penalty: float, attention_mask: Tensor | None = None
) -> Tensor:
    """Make tokens already in a row less likely: positive logits are divided by ``penalty``, negative ones multiplied.

    Positions where ``attention_mask`` is 0 (padding) do not count as seen.

    Example::

        >>> repetition_penalty(torch.tensor([[0]]), torch.tensor([[2.0, 2.0]]), 2.0)
        tensor([[1., 2.]])
    """
    seen = _token_set(input_ids, attention_mask, logits.shape[-1])
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def no_repeat_ngram(input_ids: Tensor, logits: Tensor, size: int, attention_mask: Tensor | None = None) -> Tensor:
    """Forbid any token that would complete an n-gram of ``size`` tokens already present in the row.

    Example::

        >>> # "1 2" was followed by 3 once, so after "... 1 2" the token 3 is banned
        >>> no_repeat_ngram(torch.tensor([[1, 2, 3, 1, 2]]), torch.zeros(1, 4), 3)
        tensor([[0., 0., 0., -inf]])
    """
    length = input_ids.shape[1]
    if size < 1 or length < size:
        return logits
    windows = input_ids.unfold(1, size, 1)  # (batch, length - size + 1, size): every n-gram so far
    tail = input_ids[:, length - size + 1 :]  # the n-1 tokens a new token would extend
    hit = (windows[..., :-1] == tail.unsqueeze(1)).all(-1)
    if attention_mask is not None:  # n-grams touching padding never count
        window_real = attention_mask.unfold(1, size, 1).all(-1)
        tail_real = attention_mask[:, length - size + 1 :].all(-1, keepdim=True)
        hit &= window_real.bool() & tail_real.bool()
    vocab = logits.shape[-1]
    banned = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    banned.scatter_(1, torch.where(hit, windows[..., -1], vocab), True)  # misses land in a spare column
    return logits.masked_fill(banned[:, :vocab], float("-inf"))


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep only the ``k`` highest logits per row (exactly ``k``: a tie at the edge is broken arbitrarily).

    Example::

        >>> top_k_filter(torch.tensor([[1.0, 3.0, 2.0]]), 2)
        tensor([[-inf, 3., 2.]])
    """
    values, order = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, values)


def top_p_filter(logits: Tensor, p: float, candidates: int | None = None) -> Tensor:
    """Keep the smallest set of most likely tokens whose probabilities add up to at least ``p`` (nucleus sampling).

    ``candidates``: when at most that many logits per row are finite (say, after top-k), ranking only those is
    much cheaper than sorting the whole vocabulary.

    Example::

        >>> top_p_filter(torch.tensor([[0.5, 0.3, 0.2]]).log(), 0.7)  # 0.5 + 0.3 reaches 0.7
        tensor([[-0.6931, -1.2040,    -inf]])
    """
    if candidates is None or candidates >= logits.shape[-1]:
        ranked, order = torch.sort(logits, dim=-1, descending=True)
    else:
        ranked, order = torch.topk(logits, candidates, dim=-1)
    probs = ranked.softmax(-1)
    drop = probs.cumsum(-1) - probs >= p  # the mass before this token already reaches p; the top one stays
    return logits.scatter(-1, order, ranked.masked_fill(drop, float("-inf")))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Drop tokens whose probability is below ``min_p`` times the most likely token's probability.

    Example::

        >>> min_p_filter(torch.tensor([[0.6, 0.3, 0.1]]).log(), 0.25)  # threshold 0.15
        tensor([[-0.5108, -1.2040,    -inf]])
    """
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))


def _token_set(input_ids: Tensor, attention_mask: Tensor | None, vocab: int) -> Tensor:
    """(batch, vocab) bool: which tokens occur in each row, ignoring padding."""
    if attention_mask is not None:
        input_ids = input_ids.masked_fill(attention_mask == 0, vocab)  # padding goes to a spare column
    seen = torch.zeros(input_ids.shape[0], vocab + 1, dtype=torch.bool, device=input_ids.device)
    return seen.scatter_(1, input_ids, True)[:, :vocab]


# --- entry points ---------------------------------------------------------------------------------------------


def generate(
    model: nn.Module,
    input_ids: Tensor,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    stop_token_ids: Sequence[int] | None = None,
    attention_mask: Tensor | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
) -> Tensor:
    """Continue each prompt by up to ``max_new_tokens`` tokens; return prompt and new ids as one (batch, length) tensor.

    ``input_ids`` is (batch, seq) or (seq,). Prompts of different lengths are left-padded, with
    ``attention_mask`` 0 on the padding. ``do_sample=False`` picks the most likely token (greedy); with
    ``do_sample=True``, ``temperature``/``top_k``/``top_p``/``min_p`` shape the distribution and ``generator``
    makes the draw reproducible. A row that emits one of ``stop_token_ids`` is padded from then on with
    ``pad_token_id`` (default: the first stop id); generation ends when every row has stopped.
    ``logits_processors`` are callables ``fn(input_ids, logits) -> logits`` run in order after the built-in ones.

    Args:
        model: A causal language model: ``model(ids)`` returns logits (or an object with ``.logits``).
        input_ids: The prompt(s), (batch, seq) or (seq,).
        max_new_tokens: Most tokens added to each prompt.
        do_sample: Draw from the distribution; False takes the most likely token.
        temperature: Divides the logits before sampling; below 1 sharpens, above 1 flattens.
        top_k: Sample among the ``top_k`` most likely tokens only.
        top_p: Sample among the smallest set of tokens whose probabilities add up to ``top_p``.
        min_p: Drop tokens less likely than ``min_p`` times the most likely one.
        repetition_penalty: Above 1 makes tokens already in the row less likely.
        no_repeat_ngram_size: Forbid repeating any n-gram of this size (0: off).
        stop_token_ids: A row ends when it emits one of these.
        attention_mask: 1 for real tokens, 0 for left padding.
        logits_processors: Functions ``fn(input_ids, logits) -> logits`` applied after the built-in ones.
        generator: Random generator for reproducible sampling.
        pad_token_id: Fills a row after it stopped. None: the first stop id.

    Example::

        out = generate(model, torch.tensor([[5, 7, 9]]), max_new_tokens=4)
        assert out.shape == (1, 7)
    """
    run = _Run(**locals())
    steps = sum(1 for _ in run)
    return run.tokens[:, : run.prompt_len + steps].clone()


def stream(
    model: nn.Module,
    input_ids: Tensor,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    stop_token_ids: Sequence[int] | None = None,
    attention_mask: Tensor | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
) -> Iterator[Tensor]:
    """Like :func:`generate`, but yield each step's new ids, a LongTensor of shape (batch,), as soon as it exists.

    Arguments are checked at the call, not at the first ``next()``.

    Example::

        for ids in stream(model, prompt_ids, max_new_tokens=16):
            print(ids.tolist())
    """
    run = _Run(**locals())  # the arguments, all of them
    return (run.tokens[:, run.prompt_len + step].clone() for step, _ in enumerate(run))


def stream_text(
    model: nn.Module, tokenizer, prompt: str, *, stop_strings: Sequence[str] = (), **kwargs
) -> Iterator[str]:
    """Yield the reply to ``prompt`` as text pieces, ending before the first of ``stop_strings``.

    ``tokenizer`` needs ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``; ``kwargs`` go to
    :func:`stream`. Stop token ids end the reply and are not part of its text.

    Example::

        for piece in stream_text(model, tokenizer, "Q: 2+2?\\nA:", stop_strings=["\\n"], max_new_tokens=20):
            print(piece, end="", flush=True)
    """
    stop_ids = set(kwargs.get("stop_token_ids") or ())
    steps = stream(model, torch.tensor([tokenizer.encode(prompt)]), **kwargs)
    reply_ids: list[int] = []
    sent = 0  # characters of the reply already yielded
    done = False  # the reply is complete: the model stopped, emitted a stop id, or wrote a stop string
    try:
        while not done:
            ids = next(steps, None)
            token = None if ids is None else int(ids[0])
            done = token is None or token in stop_ids
            if not done:
                reply_ids.append(token)
            # Decode everything so far: a byte-level tokenizer may split one character over several tokens.
            text = tokenizer.decode(reply_ids)
            if text.endswith("\ufffd") and not done:  # half a UTF-8 character; wait for the rest
                continue
            cut = _first_stop(text, stop_strings)
            if cut is not None:
                text, done = text[:cut], True
            # until the reply is complete, hold back what may begin a stop string
            end = len(text) if done else len(text) - _stop_prefix_len(text, stop_strings)
            if end > sent:
                yield text[sent:end]
                sent = end
    finally:
        steps.close()


def generate_text(model: nn.Module, tokenizer, prompt: str, *, stop_strings: Sequence[str] = (), **kwargs) -> str:
    """Return the whole reply to ``prompt`` as one string; same arguments as :func:`stream_text`.

    Example::

        reply = generate_text(model, tokenizer, "Once upon a time", max_new_tokens=40, stop_strings=["."])
    """
    return "".join(stream_text(model, tokenizer, prompt, stop_strings=stop_strings, **kwargs))


def _first_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return min(found) if found else None


def _stop_prefix_len(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of some stop string."""
    return max((n for s in stop_strings for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


# --- the decoding loop -----------------------------------------------------------------------------------------


class _Run:
    """One decoding run: checks the arguments, owns the output buffer, and iterates once per new token."""

    def __init__(
        self,
        model,
        input_ids,
        *,
        max_new_tokens,
        do_sample,
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        no_repeat_ngram_size,
        stop_token_ids,
        attention_mask,
        logits_processors,
        generator,
        pad_token_id,
    ):
        _check(max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, no_repeat_ngram_size)
        device = next((p.device for p in model.parameters()), None)  # prompts follow the model
        input_ids = torch.as_tensor(input_ids, dtype=torch.long, device=device)
        if input_ids.ndim == 1:
            input_ids = input_ids.unsqueeze(0)
            attention_mask = None if attention_mask is None else torch.as_tensor(attention_mask).reshape(1, -1)
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise MisconfigurationException(
                f"generate needs at least one prompt token per row, got input_ids of shape {tuple(input_ids.shape)}. "
                "Pass a (batch, seq) LongTensor with seq >= 1."
            )
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask, device=input_ids.device)
            if attention_mask.shape != input_ids.shape:
                raise MisconfigurationException(
                    f"attention_mask has shape {tuple(attention_mask.shape)} "
                    f"but input_ids has {tuple(input_ids.shape)}. "
                    "Pass a mask of the same shape, 1 on prompt tokens and 0 on (left) padding."
                )
            if not attention_mask.any(-1).all():
                raise MisconfigurationException(
                    "A row of attention_mask is all zeros, i.e. an empty prompt. Give every row at least one token."
                )
            if attention_mask.all():  # nothing is padded: the plain causal path is exact and faster
                attention_mask = None

        self.model = model
        self.prompt_len = input_ids.shape[1]
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.generator = generator
        batch, total = input_ids.shape[0], self.prompt_len + max_new_tokens
        stops = list(stop_token_ids or ())
        self.stop_ids = torch.tensor(stops, dtype=torch.long, device=input_ids.device) if stops else None
        self.pad_id = pad_token_id if pad_token_id is not None else (stops[0] if stops else 0)

        # Preallocated once: the model and processors read slices of these buffers every step.
        self.tokens = input_ids.new_full((batch, total), self.pad_id)
        self.tokens[:, : self.prompt_len] = input_ids
        self.mask = self.positions = None
        if attention_mask is not None:
            self.mask = input_ids.new_ones((batch, total))
            self.mask[:, : self.prompt_len] = attention_mask
            # Left-padded rows start counting positions at their first real token.
            self.positions = (self.mask.cumsum(-1) - 1).clamp_(min=0)

        self.processors = self._builtin_processors(
            repetition_penalty, no_repeat_ngram_size, temperature, top_k, top_p, min_p
        ) + list(logits_processors)
        self._call = _ModelCaller(model)

    def _builtin_processors(self, penalty, ngram, temperature, top_k, top_p, min_p) -> list[LogitsProcessor]:
        def mask_for(ids: Tensor) -> Tensor | None:
            return None if self.mask is None else self.mask[:, : ids.shape[1]]

        chain: list[LogitsProcessor] = []
        if penalty != 1.0:
            chain.append(lambda ids, logits: repetition_penalty(ids, logits, penalty, mask_for(ids)))
        if ngram > 0:
            chain.append(lambda ids, logits: no_repeat_ngram(ids, logits, ngram, mask_for(ids)))
        if self.do_sample:  # these never change the argmax, so greedy skips them
            if temperature != 1.0:
                chain.append(lambda ids, logits: logits / temperature)
            if top_k is not None:
                chain.append(lambda ids, logits: top_k_filter(logits, top_k))
            if top_p is not None and top_p < 1.0:
                chain.append(lambda ids, logits: top_p_filter(logits, top_p, candidates=top_k))
            if min_p:
                chain.append(lambda ids, logits: min_p_filter(logits, min_p))
        return chain

    def __iter__(self) -> Iterator[None]:
        """Write one new token per row into ``self.tokens`` per iteration."""
        was_training = self.model.training
        self.model.eval()
        try:
            finished = torch.zeros(self.tokens.shape[0], dtype=torch.bool, device=self.tokens.device)
            for step in range(self.max_new_tokens):
                length = self.prompt_len + step
                with torch.inference_mode():
                    logits = self._call(self.tokens, self.mask, self.positions, length)
                    ids = self.tokens[:, :length]
                    for process in self.processors:
                        logits = process(ids, logits)
                    new = _draw(logits, self.generator) if self.do_sample else logits.argmax(-1)
                    if self.stop_ids is not None:
                        new = new.masked_fill(finished, self.pad_id)
                        finished |= torch.isin(new, self.stop_ids)
                    self.tokens[:, length] = new
                yield
                if self.stop_ids is not None and bool(finished.all()):  # the one sync per step; only with stop ids
                    return
        finally:
            self.model.train(was_training)


def _draw(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row from softmax(logits), by inverse CDF.

    A cumulative sum and a binary search cost far less than ``torch.multinomial``, which draws one
    random number per vocabulary entry. float64 keeps tokens of probability 0 out of reach.
    """
    cdf = logits.softmax(-1).cumsum(-1, dtype=torch.float64)
    u = torch.rand(cdf.shape[0], 1, dtype=torch.float64, device=cdf.device, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


class _ModelCaller:
    """Calls the model the way its ``forward`` allows: with a KV cache, a mask and position ids when accepted."""

    def __init__(self, model):
        self.model = model
        try:
            accepted = set(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            accepted = set()
        # Hugging Face renamed `past_key_values` to `cache`; a bare `cache` only counts next to `use_cache`.
        names = ("past_key_values", "cache") if "use_cache" in accepted else ()
        self.cache_arg = next((name for name in names if name in accepted), None)
        self.takes_mask = "attention_mask" in accepted
        self.takes_positions = "position_ids" in accepted
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.cache = None
        self.cached_len = 0  # tokens whose keys and values the cache already holds

    def __call__(self, tokens: Tensor, mask: Tensor | None, positions: Tensor | None, length: int) -> Tensor:
        """Next-token logits (batch, vocab) in float32 for the first ``length`` tokens of each row."""
        start = self.cached_len if self.cache_arg else 0
        kwargs = dict(self.extra)
        if self.cache_arg:
            kwargs[self.cache_arg] = self.cache
            kwargs["use_cache"] = True
        if mask is not None and self.takes_mask:
            kwargs["attention_mask"] = mask[:, :length]
        if positions is not None and self.takes_positions:
            kwargs["position_ids"] = positions[:, start:length]
        out = self.model(tokens[:, start:length], **kwargs)
        if self.cache_arg:
            self.cache = getattr(out, self.cache_arg, None)
            self.cached_len = length
            if self.cache is None:  # the model took the argument but returned no cache: feed everything from now on
                self.cache_arg = None
        logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
        return logits[:, -1, :].float()


def _check(max_new_tokens, do_sample, temperature, top_k, top_p, min_p, penalty, ngram) -> None:
    def fail(message: str):
        raise MisconfigurationException(message)

    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        fail(f"max_new_tokens={max_new_tokens!r} must be an int >= 0, e.g. max_new_tokens=64.")
    if do_sample and not temperature > 0:
        fail(f"temperature={temperature!r} must be > 0 when do_sample=True; for greedy decoding pass do_sample=False.")
    if top_k is not None and top_k < 1:
        fail(f"top_k={top_k!r} must be >= 1 (1 keeps only the best token); pass top_k=None to keep every token.")
    if top_p is not None and not 0 < top_p <= 1:
        fail(f"top_p={top_p!r} must be in (0, 1], e.g. top_p=0.9; pass top_p=None (or 1.0) to turn it off.")
    if min_p is not None and not 0 <= min_p <= 1:
        fail(f"min_p={min_p!r} must be in [0, 1], e.g. min_p=0.05; pass min_p=None to turn it off.")
    if not penalty > 0:
        fail(f"repetition_penalty={penalty!r} must be > 0 (1.0 is off, > 1 discourages repeats), e.g. 1.2.")
    if ngram < 0:
        fail(f"no_repeat_ngram_size={ngram!r} must be >= 0 (0 is off), e.g. no_repeat_ngram_size=3.")
