"""Talk to a chatbot checkpoint in the terminal; the reply streams in as it is generated.

    python examples/chatbot/chat.py chatbot_runs/lightning_logs/version_0/checkpoints/last.ckpt

Type a message and press Enter; an empty line or Ctrl-D ends the chat, ``/reset`` forgets the conversation.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its two modules sit next to this file
from chatbot_model import ChatBot  # noqa: E402


def chat(bot: ChatBot, lines, write=sys.stdout.write, keep_turns: int = 3, **sampling) -> list[tuple[str, str]]:
    """Answer each message of ``lines`` (an iterable of str), streaming replies through ``write``.

    The last ``keep_turns`` exchanges go back to the model as context. Returns the whole conversation.
    """
    history: list[tuple[str, str]] = []
    for line in lines:
        message = line.strip()
        if not message:
            break
        if message == "/reset":
            history = []
            continue
        write("bot> ")
        pieces = []
        for piece in bot.stream_reply(message, history[-keep_turns:] if keep_turns else [], **sampling):
            pieces.append(piece)
            write(piece)
            sys.stdout.flush()
        write("\n")
        history.append((message, "".join(pieces)))
    return history


def _prompted_lines():
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Chat with a checkpoint written by examples/chatbot/train.py.")
    parser.add_argument("checkpoint", help="path to a .ckpt file (e.g. .../checkpoints/last.ckpt)")
    parser.add_argument("--sample", action="store_true", help="sample replies instead of taking the likeliest")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.9)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        sys.exit(f"{args.checkpoint!r} is not a file. Train first (python examples/chatbot/train.py) and pass the "
                 "last.ckpt it prints.")
    bot = ChatBot.load_from_checkpoint(args.checkpoint, map_location="cpu")
    sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p) if args.sample else {}
    if sys.stdin.isatty():
        print("Ask about Alma, Bruno, ... (where they live, their pets, favourite colours), give me a sum, or say "
              "hello. An empty line ends the chat.")
        chat(bot, _prompted_lines(), **sampling)
    else:  # piped input: one message per line
        chat(bot, sys.stdin, **sampling)


if __name__ == "__main__":
    main()
