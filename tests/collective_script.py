"""Started by ``fulmen run`` in tests/test_run_command.py: joins the group from torchrun's environment, runs
TorchCollective's operations and plain torch.distributed's, and writes what it saw as JSON to
``$SEEN_DIR/seen_rank<N>.json`` (each rank its own file: two ranks printing to one pipe can interleave)."""

import json
import os
import sys

import torch
import torch.distributed as dist

from fulmen.strategies.collectives import TorchCollective

collective = TorchCollective().setup(backend="gloo", init_method="env://")
rank, world = dist.get_rank(), dist.get_world_size()
plain = torch.tensor([float(rank)])
dist.all_reduce(plain)  # the group torch started from the environment serves torch itself too
seen = {"rank": rank, "world": world, "argv": sys.argv[1:], "plain_sum": plain.item(),
        "lt": {k: v for k, v in os.environ.items() if k.startswith("LT_")}}
seen["sum"] = collective.all_reduce(torch.tensor([rank + 1.0])).item()
seen["max"] = collective.all_reduce(torch.tensor([rank + 1.0]), op="max").item()
seen["gathered"] = [t.item() for t in collective.all_gather([torch.zeros(1) for _ in range(world)],
                                                              torch.tensor([10.0 * rank]))]
seen["broadcast"] = collective.broadcast(torch.tensor([float(rank + 7)]), src=1).item()
seen["objects"] = collective.all_gather_object([None] * world, {"r": rank})
if rank == 0:
    collective.send(torch.tensor([42.0]), dst=1)
else:
    seen["received"] = collective.recv(torch.zeros(1), src=0).item()
sub = TorchCollective().create_group(ranks=[0, 1], backend="gloo")  # a group of its own
seen["sub_sum"] = sub.all_reduce(torch.tensor([2.0])).item()
try:
    sub.create_group(ranks=[0, 1])
except RuntimeError as err:
    seen["twice"] = str(err)
sub.barrier()
collective.barrier()
sub.teardown()  # the last group of a default group TorchCollective started: that one ends too
seen["default_ended"] = not dist.is_initialized()
path = os.path.join(os.environ["SEEN_DIR"], f"seen_rank{rank}.json")
with open(path + ".tmp", "w") as f:
    json.dump(seen, f)
os.replace(path + ".tmp", path)  # whole or absent
