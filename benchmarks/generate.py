"""Tokens per second: fulmen.generation.generate against transformers' model.generate().

Same randomly initialised GPT-2, same left-padded prompts, same settings, one CPU thread, runs alternated so
drift hits both sides alike. Prints the ratio of medians (fulmen / hf; above 1.0 means fulmen is faster) for
greedy decoding and for sampling, and whether the greedy outputs are identical.

    python benchmarks/generate.py [--new-tokens 64] [--repeats 7]
"""

import argparse
import statistics
import time

import torch

from fulmen.generation import generate

try:
    import transformers
except ImportError as err:
    raise SystemExit("this benchmark compares against transformers: pip install 'fulmen[examples]'") from err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=5000, n_positions=256, n_embd=256, n_layer=4, n_head=4, bos_token_id=None, eos_token_id=None
    )
    model = transformers.GPT2LMHeadModel(config).eval()

    lengths = [12 + 5 * i for i in range(args.batch)]  # different lengths, so rows are left-padded
    width = max(lengths)
    ids = torch.zeros(args.batch, width, dtype=torch.long)
    mask = torch.zeros(args.batch, width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(1, config.vocab_size, (n,))
        mask[row, width - n :] = 1

    n = args.new_tokens
    hf_common = dict(attention_mask=mask, max_new_tokens=n, min_new_tokens=n, pad_token_id=0, eos_token_id=None)
    settings = {
        "greedy": (dict(), dict(do_sample=False)),
        "sampling": (
            dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.9),
            dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.9),
        ),
    }

    print(f"GPT-2 n_layer=4 n_embd=256 vocab=5000, batch={args.batch}, {n} new tokens, 1 thread")
    for name, (ours_kwargs, hf_kwargs) in settings.items():

        def run_fulmen():
            gen = torch.Generator().manual_seed(0)
            return generate(model, ids, attention_mask=mask, max_new_tokens=n, generator=gen, **ours_kwargs)

        def run_hf():
            torch.manual_seed(0)
            with torch.inference_mode():
                return model.generate(ids, **hf_common, **hf_kwargs)

        ours_out, hf_out = run_fulmen(), run_hf()  # warm-up
        times = {"fulmen": [], "hf": []}
        for _ in range(args.repeats):
            for side, fn in (("fulmen", run_fulmen), ("hf", run_hf)):
                start = time.perf_counter()
                fn()
                times[side].append(time.perf_counter() - start)
        tokens = args.batch * n
        ours_tps = tokens / statistics.median(times["fulmen"])
        hf_tps = tokens / statistics.median(times["hf"])
        line = f"{name:9s} fulmen {ours_tps:8.0f} tok/s   hf {hf_tps:8.0f} tok/s   ratio {ours_tps / hf_tps:.2f}"
        if name == "greedy":
            line += f"   identical outputs: {torch.equal(ours_out, hf_out)}"
        print(line)


if __name__ == "__main__":
    main()
