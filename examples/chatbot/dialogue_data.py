"""The chatbot's data: a dialogue corpus generated with a fixed seed, a tokenizer trained on it, and the DataModule.

The bot knows three kinds of things:

* facts from a table (where 16 made-up people live, their pets and favourite colours), asked in four phrasings;
* sums of two whole numbers from 0 to ``MAX_OPERAND``;
* small talk, including remembering the user's name across turns.

Held-out questions test generalisation, not recall: a fact asked in a phrasing never seen *for that person*
(the fact itself was seen in the other phrasings), sums of operand pairs never seen in training, and
recalling a name introduced earlier in a dialogue with a context never seen in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import fulmen as pl

USER, BOT, END, PAD = "<|user|>", "<|bot|>", "<|end|>", "<|pad|>"
SPECIAL_TOKENS = [PAD, USER, BOT, END]
MAX_OPERAND = 15

PEOPLE = ["Alma", "Bruno", "Cleo", "Dario", "Edda", "Fenn", "Greta", "Hugo",
          "Ines", "Jonas", "Kira", "Lars", "Mira", "Nils", "Olga", "Pavel"]
ATTRIBUTES = {  # attribute: (possible values, question phrasings, answer)
    "city": (["Lisbon", "Oslo", "Cairo", "Lima", "Quito", "Riga", "Seoul", "Tunis"],
             ["Where does {p} live?", "Which city is {p} from?", "In what city does {p} live?",
              "What is {p}'s home town?"],
             "{p} lives in {v}."),
    "pet": (["cat", "dog", "parrot", "rabbit", "turtle", "hamster", "goldfish", "horse"],
            ["What pet does {p} have?", "Which animal does {p} keep?", "What is {p}'s pet?",
             "Does {p} have a pet?"],
            "{p} has a {v}."),
    "colour": (["red", "blue", "green", "yellow", "purple", "orange", "black", "white"],
               ["What is {p}'s favourite colour?", "Which colour does {p} like best?",
                "What colour does {p} love?", "Tell me {p}'s favourite colour."],
               "{p}'s favourite colour is {v}."),
}
SUMS = ["What is {a} + {b}?", "How much is {a} plus {b}?", "Calculate {a} + {b}.", "Add {a} and {b}."]
SMALL_TALK = [
    (["Hello!", "Hi!", "Hey there!", "Good morning!"], "Hello! Ask me about my friends, or give me a sum."),
    (["How are you?", "How are you doing?", "How is it going?"], "I am fine, thank you!"),
    (["What is your name?", "Who are you?"], "I am Fulmen, a tiny chatbot."),
    (["Thank you!", "Thanks!", "Thanks a lot!"], "You are welcome!"),
    (["Bye!", "Goodbye!", "See you later!"], "Goodbye! Have a nice day."),
]
INTRODUCE = ["My name is {n}.", "I am {n}.", "Call me {n}."]
ASK_NAME = ["What is my name?", "Do you remember my name?"]

Turn = tuple[str, str]  # (user message, bot reply)


@dataclass
class HeldOut:
    """One evaluation question: the earlier turns, the user's message, and the expected reply."""

    history: list[Turn]
    message: str
    reference: str


def render(history: list[Turn], message: str | None = None) -> str:
    """Dialogue text with speaker tokens; with ``message``, a prompt that ends where the bot's reply begins."""
    text = "".join(f"{USER}{user}{BOT}{bot}{END}" for user, bot in history)
    return text if message is None else f"{text}{USER}{message}{BOT}"


class Corpus:
    """The generated dialogues: ``train`` (lists of turns) and the held-out ``val``/``test`` questions.

    Everything follows from ``seed``, so the same seed gives the same facts, splits and dialogues.
    """

    def __init__(self, seed: int = 0, num_dialogues: int = 6000, max_turns: int = 2) -> None:
        rng = random.Random(seed)
        self.facts = {(p, a): rng.choice(values) for p in PEOPLE for a, (values, _, _) in ATTRIBUTES.items()}

        # Facts: each (person, attribute) keeps one phrasing aside; the other three are for training.
        self.train_facts: list[Turn] = []
        held: list[HeldOut] = []
        for (person, attr), value in self.facts.items():
            _, phrasings, answer = ATTRIBUTES[attr]
            hidden = rng.randrange(len(phrasings))
            reply = answer.format(p=person, v=value)
            for i, question in enumerate(phrasings):
                turn = (question.format(p=person), reply)
                if i == hidden:
                    held.append(HeldOut([], *turn))
                else:
                    self.train_facts.append(turn)

        # Sums: 15% of the operand pairs never appear in training, in any phrasing.
        pairs = [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
        rng.shuffle(pairs)
        n_hidden = int(0.15 * len(pairs))
        sum_turn = lambda q, a, b: (q.format(a=a, b=b), f"{a} + {b} = {a + b}.")  # noqa: E731
        self.train_arithmetic = [sum_turn(q, a, b) for a, b in pairs[n_hidden:] for q in SUMS]
        held += [HeldOut([], *sum_turn(rng.choice(SUMS), a, b)) for a, b in pairs[:n_hidden]]

        # Name recall: introduced, then some other turn, then asked; evaluated on unseen combinations.
        for _ in range(24):
            name = rng.choice(PEOPLE)
            held.append(HeldOut([_introduce(rng, name), self._any_turn(rng)], rng.choice(ASK_NAME),
                                f"Your name is {name}."))

        rng.shuffle(held)
        half = len(held) // 2
        self.val, self.test = held[:half], held[half:]
        seen = {(tuple(h.history), h.message) for h in held}
        self.train: list[list[Turn]] = []
        while len(self.train) < num_dialogues:
            dialogue = self._dialogue(rng, max_turns)
            if (tuple(dialogue[:-1]), dialogue[-1][0]) not in seen:  # never train on a held-out dialogue
                self.train.append(dialogue)

    def _any_turn(self, rng: random.Random) -> Turn:
        kind = rng.random()
        if kind < 0.3:
            return rng.choice(self.train_facts)
        if kind < 0.85:
            return rng.choice(self.train_arithmetic)
        questions, reply = rng.choice(SMALL_TALK)
        return rng.choice(questions), reply

    def _dialogue(self, rng: random.Random, max_turns: int) -> list[Turn]:
        turns = [self._any_turn(rng) for _ in range(rng.randint(1, max_turns))]
        if rng.random() < 0.3:  # the user introduces themself somewhere, and may ask later
            name = rng.choice(PEOPLE)
            at = rng.randrange(len(turns) + 1)
            turns.insert(at, _introduce(rng, name))
            if rng.random() < 0.7:
                turns.insert(rng.randint(at + 1, len(turns)), (rng.choice(ASK_NAME), f"Your name is {name}."))
        elif rng.random() < 0.05:
            turns.append((rng.choice(ASK_NAME), "You have not told me your name yet."))
        return turns


def _introduce(rng: random.Random, name: str) -> Turn:
    return rng.choice(INTRODUCE).format(n=name), f"Nice to meet you, {name}!"


def train_tokenizer(texts: list[str], vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on ``texts``: digits stay single tokens, speaker tokens are atomic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),  # "17" -> "1", "7": sums generalise digit by digit
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def encode_dialogue(tokenizer, turns: list[Turn], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of a dialogue and its labels: the ids on the bot's replies (and their end token), -100 elsewhere."""
    ids: list[int] = []
    labels: list[int] = []
    for user, bot in turns:
        prompt = tokenizer.encode(f"{USER}{user}{BOT}").ids
        reply = tokenizer.encode(f"{bot}{END}").ids
        ids += prompt + reply
        labels += [-100] * len(prompt) + reply
    return ids[:max_length], labels[:max_length]


class DialogueDataset(Dataset):
    """Dialogues as (ids, labels) pairs; held-out items also carry their prompt and reference reply."""

    def __init__(self, tokenizer, dialogues: list[list[Turn]], max_length: int,
                 held_out: list[HeldOut] | None = None) -> None:
        self.items = [encode_dialogue(tokenizer, d, max_length) for d in dialogues]
        self.held_out = held_out

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if self.held_out is None:
            return self.items[i]
        return (*self.items[i], render(self.held_out[i].history, self.held_out[i].message),
                self.held_out[i].reference)


def collate(batch, pad_id: int) -> dict:
    """Right-pad ids (pad id) and labels (-100); held-out batches keep prompts and references as strings."""
    width = max(len(item[0]) for item in batch)
    out = {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, *_ in batch]),
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels, *_ in batch]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, *_ in batch]),
    }
    if len(batch[0]) == 4:
        out["prompts"] = [item[2] for item in batch]
        out["references"] = [item[3] for item in batch]
    return out


class SimilarLengthBatches(Sampler):
    """Shuffled batches of dialogues of similar length, so little compute goes to padding.

    Each epoch shuffles the dialogues, sorts them by length within windows of 50 batches, cuts batches and
    shuffles the batches. With several processes (``num_replicas``), each takes every ``num_replicas``-th
    batch from ``rank`` on, all the same number of them.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0
        self.num_replicas, self.rank = num_replicas, rank

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size) // self.num_replicas

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        window = 50 * self.batch_size
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)  # the same order in every process (same seed and epoch)
        return iter(batches[self.rank:len(self) * self.num_replicas:self.num_replicas])


class DialogueDataModule(pl.LightningDataModule):
    """Generates the corpus, trains the tokenizer (unless one is given) and serves the three loaders.

    Example::

        data = DialogueDataModule(num_dialogues=6000)
        data.setup("fit")
        data.tokenizer.encode("<|user|>Hi!<|bot|>").ids
    """

    def __init__(self, batch_size: int = 32, num_dialogues: int = 6000, max_length: int = 96, seed: int = 0,
                 vocab_size: int = 400, tokenizer=None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        self.corpus = Corpus(seed, num_dialogues)
        self.tokenizer = tokenizer or train_tokenizer(
            [render(d) for d in self.corpus.train],
            vocab_size,
        )
        self.pad_id = self.tokenizer.token_to_id(PAD)
        if any(self.tokenizer.token_to_id(t) is None for t in SPECIAL_TOKENS):
            raise ValueError(f"The tokenizer lacks some of the special tokens {SPECIAL_TOKENS}; "
                             "call tokenizer.add_special_tokens(SPECIAL_TOKENS) first.")

    def setup(self, stage: str) -> None:
        n = self.hparams.max_length
        held = lambda items: DialogueDataset(  # noqa: E731
            self.tokenizer, [h.history + [(h.message, h.reference)] for h in items], n, items)
        if stage == "fit":
            self.train_set = DialogueDataset(self.tokenizer, self.corpus.train, n)
        if stage in ("fit", "validate"):
            self.val_set = held(self.corpus.val)
        if stage == "test":
            self.test_set = held(self.corpus.test)

    def _loader(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.hparams.batch_size, collate_fn=lambda b: collate(b, self.pad_id))

    def train_dataloader(self) -> DataLoader:
        lengths = [len(ids) for ids, _ in self.train_set.items]
        trainer = self.trainer  # several processes: each trains on its own share of the batches
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        batches = SimilarLengthBatches(lengths, self.hparams.batch_size, self.hparams.seed, world, rank)
        return DataLoader(self.train_set, batch_sampler=batches, collate_fn=lambda b: collate(b, self.pad_id))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
