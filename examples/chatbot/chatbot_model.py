"""``ChatBot``: a LightningModule around ``transformers``' GPT-2, trained only on the bot's turns."""

from __future__ import annotations

import math
from typing import Iterator

import torch

import fulmen as pl
from fulmen.generation import generate, stream_text

from dialogue_data import END, USER, Turn, render

try:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging
except ImportError as err:  # the optional extra
    raise ImportError("The chatbot example needs transformers and tokenizers: pip install 'fulmen[examples]'") from err

hf_logging.set_verbosity_error()  # quiet by default


class TextTokenizer:
    """The two methods ``fulmen.generation.stream_text`` needs, over a ``tokenizers.Tokenizer``."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def small_gpt2_config(vocab_size: int, n_layer: int = 4, n_embd: int = 128, n_head: int = 4,
                      n_positions: int = 128) -> dict:
    """A GPT-2 configuration small enough to train on a laptop CPU in minutes, as a plain dict (kept in hparams)."""
    return dict(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


class ChatBot(pl.LightningModule):
    """GPT-2 that learns to reply in dialogues; the tokenizer travels inside its checkpoints.

    ``gpt2_config`` is a ``GPT2Config`` as a dict (see :func:`small_gpt2_config`); the weights are random until
    trained or loaded (``model.gpt2.load_state_dict(...)`` for a pretrained GPT-2).

    Example::

        bot = ChatBot.load_from_checkpoint("last.ckpt", map_location="cpu")
        bot.generate_reply("What is 3 + 4?")  # '3 + 4 = 7.'
    """

    def __init__(self, gpt2_config: dict, lr: float = 3e-3, weight_decay: float = 0.05, warmup_steps: int = 100,
                 max_new_tokens: int = 48, tokenizer=None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        self.gpt2 = GPT2LMHeadModel(GPT2Config(**gpt2_config))
        self.tokenizer = tokenizer
        self._nll = self._tokens = 0.0

    # -- the tokenizer goes into every checkpoint, so chat.py needs nothing else ------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer"] = self.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(checkpoint["tokenizer"])

    # -- training -------------------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.gpt2(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch, batch_idx):
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._nll = self._tokens = 0.0
        self._hits = self._total = 0

    def validation_step(self, batch, batch_idx):
        out = self(batch["input_ids"], batch["attention_mask"], batch["labels"])
        tokens = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels by one
        self._nll += float(out.loss) * tokens
        self._tokens += tokens
        self._count_exact(batch)

    def on_validation_epoch_end(self) -> None:
        loss = self._nll / max(self._tokens, 1)
        self.log_dict({"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                       "val_exact_match": self._hits / max(self._total, 1)}, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._hits = self._total = 0

    def test_step(self, batch, batch_idx):
        self._count_exact(batch)

    def on_test_epoch_end(self) -> None:
        self.log("test_exact_match", self._hits / max(self._total, 1))

    def _count_exact(self, batch) -> None:
        replies = self.reply_to_prompts(batch["prompts"])
        self._hits += sum(r == ref for r, ref in zip(replies, batch["references"]))
        self._total += len(replies)

    def configure_optimizers(self):
        decay = [p for p in self.parameters() if p.ndim >= 2]  # no weight decay on biases and layer norms
        rest = [p for p in self.parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                       {"params": rest, "weight_decay": 0.0}], lr=self.hparams.lr, betas=(0.9, 0.98))
        total = max(int(min(self.trainer.estimated_stepping_batches, 10**9)), 1)
        warmup = min(self.hparams.warmup_steps, total // 10 + 1)

        def schedule(step: int) -> float:  # linear warm-up, then cosine decay to 10%
            if step < warmup:
                return (step + 1) / warmup
            return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- talking --------------------------------------------------------------------------------------------
    def _stop_ids(self) -> list[int]:
        return [self.tokenizer.token_to_id(END), self.tokenizer.token_to_id(USER)]

    def generate_reply(self, message: str, history: list[Turn] = (), **sampling) -> str:
        """The bot's reply to ``message`` after the earlier ``(user, bot)`` turns in ``history``.

        Greedy by default; ``sampling`` goes to :func:`fulmen.generation.generate_text` (``do_sample=True``,
        ``temperature``, ``top_p``, ...).

        Example::

            bot.generate_reply("What is my name?", history=[("I am Olga.", "Nice to meet you, Olga!")])
        """
        return "".join(self.stream_reply(message, history, **sampling))

    def stream_reply(self, message: str, history: list[Turn] = (), **sampling) -> Iterator[str]:
        """Like :meth:`generate_reply`, but yield the reply in pieces as they are generated."""
        sampling.setdefault("max_new_tokens", self.hparams.max_new_tokens)
        history = list(history)
        room = self.gpt2.config.n_positions - sampling["max_new_tokens"]  # the model sees at most n_positions
        prompt = render(history, message)
        while len(self.tokenizer.encode(prompt).ids) > room:
            if not history:
                raise ValueError(f"The message is too long: this model reads at most {room} tokens of prompt "
                                 f"when replying with up to {sampling['max_new_tokens']} new tokens.")
            history = history[1:]  # forget the oldest turns first
            prompt = render(history, message)
        yield from stream_text(self.gpt2, TextTokenizer(self.tokenizer), prompt, stop_token_ids=self._stop_ids(),
                               **sampling)

    def reply_to_prompts(self, prompts: list[str]) -> list[str]:
        """Greedy replies to several rendered prompts at once (left-padded into one batch)."""
        room = self.gpt2.config.n_positions - self.hparams.max_new_tokens
        encoded = [self.tokenizer.encode(p).ids[-room:] for p in prompts]  # keep the most recent tokens
        width = max(map(len, encoded))
        pad = self.tokenizer.token_to_id(END)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.device)
        out = generate(self.gpt2, ids, attention_mask=mask, max_new_tokens=self.hparams.max_new_tokens,
                       stop_token_ids=self._stop_ids(), pad_token_id=pad)
        replies = []
        for row in out[:, width:].tolist():
            ends = [i for i, t in enumerate(row) if t in self._stop_ids()]
            replies.append(self.tokenizer.decode(row[: ends[0] if ends else len(row)]))
        return replies
