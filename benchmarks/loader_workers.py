#!/usr/bin/env python3
"""What following the loader workers' random streams (for exact resume) costs per batch.

With workers, fulmen has every batch come back with the random states of the worker that loaded it (torch,
random, numpy: about 9 kB pickled) and keeps, per worker, those of the last batch consumed. This times a
DataLoader with 2 workers over a dataset whose items cost nothing, so the loader's own cost is all there is,
iterated plainly and as fulmen's training loop iterates it; variants alternate, and the medians are printed
with their difference per batch.

usage: python benchmarks/loader_workers.py [--batches 3000] [--rounds 5] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset

from fulmen.trainer import data as _data


class Cheap(Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.randn(n, 32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.05 * torch.randn(32)  # a random augmentation, as the exact-resume tests have


def one_pass(loader: DataLoader, followed: bool) -> float:
    start = time.perf_counter()
    it = _data._worker_iter(loader, _data._WorkerStreams()) if followed else iter(loader)
    for _ in it:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loader = DataLoader(Cheap(args.batches * 8), batch_size=8, num_workers=args.workers)
    one_pass(loader, True)  # warm up (imports, first fork)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for followed in (False, True):
            times[followed].append(one_pass(loader, followed))
    plain, followed = statistics.median(times[False]), statistics.median(times[True])
    per_batch = (followed - plain) / args.batches * 1e6
    print(f"{args.workers} workers, {args.batches} batches of 8, load {os.getloadavg()[0]:.2f}")
    print(f"plain DataLoader   {plain / args.batches * 1e6:8.1f} us/batch")
    print(f"followed (fulmen)  {followed / args.batches * 1e6:8.1f} us/batch")
    print(f"ratio {followed / plain:.3f}   difference {per_batch:+.1f} us/batch")
    # the two costs alone (the end-to-end figures above are noisy on a loaded machine)
    import pickle
    import timeit

    rng = _data._worker_rng()
    n = 2000
    collect = min(timeit.repeat(_data._worker_rng, number=n, repeat=5)) / n * 1e6
    blob = pickle.dumps(rng)
    receive = min(timeit.repeat(lambda: pickle.loads(blob), number=n, repeat=5)) / n * 1e6
    print(f"in each worker, per batch: reading the random states {collect:.1f} us ({len(blob)} bytes pickled)")
    print(f"in the main process, per batch: receiving them {receive:.1f} us")


if __name__ == "__main__":
    main()
