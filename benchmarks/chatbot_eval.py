"""Exact match of a chatbot checkpoint on every held-out question, by kind, and how fast it replies.

    python benchmarks/chatbot_eval.py chatbot_runs/lightning_logs/version_0/checkpoints/last.ckpt [--show-misses]

Kinds: ``fact`` (a fact in a phrasing never seen for that person), ``sum`` (an operand pair never seen in
training), ``name`` (recalling the name the user gave earlier in the dialogue).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "chatbot"))
from chatbot_model import ChatBot  # noqa: E402
from dialogue_data import Corpus, render  # noqa: E402


def kind(question) -> str:
    return "name" if question.history else "sum" if "=" in question.reference else "fact"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="the corpus seed the checkpoint was trained with")
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()

    bot = ChatBot.load_from_checkpoint(args.checkpoint, map_location="cpu")
    corpus = Corpus(args.seed, num_dialogues=0)
    questions = corpus.val + corpus.test
    start = time.perf_counter()
    replies = bot.reply_to_prompts([render(q.history, q.message) for q in questions])
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    for q in questions[:10]:
        bot.generate_reply(q.message, q.history)
    single_s = (time.perf_counter() - start) / 10

    total, hits = Counter(), Counter()
    for q, reply in zip(questions, replies):
        total[kind(q)] += 1
        hits[kind(q)] += reply == q.reference
        if args.show_misses and reply != q.reference:
            print(f"  {q.message!r}: {reply!r}, expected {q.reference!r}")
    for k in sorted(total):
        print(f"{k:5s} {hits[k]:3d}/{total[k]:3d} = {hits[k] / total[k]:.1%}")
    print(f"all   {sum(hits.values()):3d}/{len(questions):3d} = {sum(hits.values()) / len(questions):.1%}  "
          f"(validation half + test half)")
    print(f"{len(questions)} replies batched in {batched_s:.2f} s; one streamed reply in {single_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
