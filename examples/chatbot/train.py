"""Train a small GPT-2 chatbot from scratch on a generated dialogue corpus (or fine-tune a GPT-2 saved on disk).

    python examples/chatbot/train.py                        # under 10 minutes on 2 CPU cores
    python examples/chatbot/train.py --pretrained ./gpt2    # fine-tune a GPT-2 saved with save_pretrained()
    python examples/chatbot/chat.py chatbot_runs/.../last.ckpt
    python examples/chatbot/train.py --devices 2 --strategy fsdp   # or ddp, deepspeed_stage_2, deepspeed_stage_3

Nothing is downloaded. At the end it prints the exact-match rate of the greedy replies to held-out questions
(facts in unseen phrasings, sums of unseen operand pairs, recalling the user's name in unseen contexts).
Checkpoints, the logged metrics (val_loss, val_ppl, val_exact_match per epoch) and ``samples.txt`` (sample
replies after each validation) go to the run directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

import fulmen as pl
from fulmen.callbacks import ModelCheckpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its two modules sit next to this file
from dialogue_data import SPECIAL_TOKENS, DialogueDataModule  # noqa: E402
from chatbot_model import ChatBot, small_gpt2_config  # noqa: E402

SAMPLE_PROMPTS = ["Hello!", "Where does Alma live?", "What is 12 + 9?", "Add 7 and 15."]


class SampleReplies(pl.Callback):
    """After each validation, append the bot's replies to a few prompts to ``samples.txt`` (and print them)."""

    def __init__(self, prompts: list[str], verbose: bool = False) -> None:
        self.prompts = prompts
        self.verbose = verbose

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        with whole_parameters(pl_module):  # every process generates (sharded weights are gathered together)
            replies = [pl_module.generate_reply(p) for p in self.prompts]
        if not trainer.is_global_zero:
            return
        lines = [f"epoch {trainer.current_epoch} step {trainer.global_step}"]
        lines += [f"  > {p}\n  < {r}" for p, r in zip(self.prompts, replies)]
        os.makedirs(trainer.log_dir, exist_ok=True)
        with open(os.path.join(trainer.log_dir, "samples.txt"), "a") as f:
            f.write("\n".join(lines) + "\n")
        if self.verbose:
            print("\n".join(lines), flush=True)


@contextlib.contextmanager
def whole_parameters(module):
    """Outside the training and evaluation steps, a sharded model (strategy="fsdp" or "deepspeed_stage_3")
    has only its shards in each process: gather the full parameters while generating."""
    if hasattr(module, "unshard"):  # FSDP2: the root's own parameters (wrapped children gather themselves)
        module.unshard()
        try:
            yield
        finally:
            module.reshard()
    elif any(hasattr(p, "ds_id") for p in module.parameters()):  # DeepSpeed ZeRO-3
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            yield
    else:
        yield


def load_pretrained(path: str):
    """A GPT-2 and its tokenizer from a directory written by ``save_pretrained`` (never from the hub)."""
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    if not os.path.isdir(path):
        sys.exit(f"--pretrained {path!r}: no such directory. Pass a directory holding a GPT-2 saved with "
                 "model.save_pretrained(dir) and tokenizer.save_pretrained(dir).")
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    else:  # only vocab.json + merges.txt: let transformers build the fast tokenizer, offline
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True).backend_tokenizer
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    gpt2 = GPT2LMHeadModel.from_pretrained(path, local_files_only=True)
    gpt2.resize_token_embeddings(tokenizer.get_vocab_size())
    return gpt2, tokenizer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained", metavar="DIR", help="fine-tune the GPT-2 saved in DIR instead of a new one")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps")
    parser.add_argument("--fast-dev-run", action="store_true", help="one batch of each stage, as a smoke test")
    parser.add_argument("--dialogues", type=int, default=6000, help="training dialogues in the corpus")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128, help="embedding size")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root-dir", default="chatbot_runs", help="where checkpoints and logs go")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--devices", default="auto", help="processes/GPUs to train on (e.g. 2)")
    parser.add_argument("--strategy", default="auto", help="ddp, fsdp, deepspeed_stage_2, ... (several devices)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument("--verbose", action="store_true", help="print sample replies after each epoch")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    gpt2 = tokenizer = None
    if args.pretrained:
        gpt2, tokenizer = load_pretrained(args.pretrained)
    data = DialogueDataModule(batch_size=args.batch_size, num_dialogues=args.dialogues, seed=args.seed,
                              tokenizer=tokenizer)
    if gpt2 is not None:
        model = ChatBot(gpt2.config.to_diff_dict(), lr=args.lr, tokenizer=data.tokenizer)
        model.gpt2.load_state_dict(gpt2.state_dict())
    else:
        config = small_gpt2_config(data.tokenizer.get_vocab_size(), args.layers, args.width, args.heads)
        model = ChatBot(config, lr=args.lr, tokenizer=data.tokenizer)

    devices = int(args.devices) if args.devices.isdigit() else args.devices
    trainer = pl.Trainer(max_epochs=args.epochs, max_steps=args.max_steps, fast_dev_run=args.fast_dev_run,
                         accelerator=args.accelerator, devices=devices, strategy=args.strategy,
                         use_distributed_sampler=False,  # the data module shards the training batches itself
                         default_root_dir=args.root_dir, gradient_clip_val=1.0, num_sanity_val_steps=0,
                         enable_model_summary=False, enable_progress_bar=args.verbose,
                         callbacks=[ModelCheckpoint(save_last=True), SampleReplies(SAMPLE_PROMPTS, args.verbose)])
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=data)
    train_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    exact = trainer.test(model, datamodule=data, verbose=False)[0]["test_exact_match"]
    n = len(data.corpus.test)
    if not trainer.is_global_zero:  # several processes: one report
        return {"exact_match": exact, "train_seconds": train_s, "trainer": trainer, "model": model, "data": data}
    print(f"trained in {train_s:.0f} s ({cpu_s:.0f} s of CPU time, {torch.get_num_threads()} threads); "
          f"held-out exact match: {exact:.1%} ({round(exact * n)}/{n})")
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.last_model_path:
        print(f"checkpoint: {trainer.checkpoint_callback.last_model_path}")
    return {"exact_match": exact, "train_seconds": train_s, "trainer": trainer, "model": model, "data": data}


if __name__ == "__main__":
    main()
