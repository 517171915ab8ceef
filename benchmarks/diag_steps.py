"""Diagnose a throughput drop: per-step times of one variant without Ray, then tokens/s of every step through Ray.

    python benchmarks/diag_steps.py h100_transformer 60

Found the stall in ray.train.report described in benchmarks/results/speed/NOTES.md.
"""

import sys
import time

import torch

from benchmarks.common import setup_training, single_process_group
from hybrid_ray.train import train
from hybrid_ray.train.loop import train_step
from hybrid_ray.variants import variant_spec

variant, steps = sys.argv[1], int(sys.argv[2])
device = torch.device("cuda", 0)
single_process_group(device)
spec = variant_spec(variant).with_overrides({"scale.backend": "fla"})
model, opt, batches = setup_training(spec, device)
times = []
for _ in range(steps):
    t = time.perf_counter()
    train_step(model, opt, batches, spec.optim.lr, spec, device)
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
print("no-ray step ms:", " ".join(f"{x * 1e3:.0f}" for x in times), flush=True)
del model, opt
torch.cuda.empty_cache()
spec = spec.with_overrides({"name": "diag", "storage_path": "/tmp/diag", "train.steps": steps, "train.log_every": 1,
                            "train.eval_every": 10 * steps, "train.checkpoint_every": 10 * steps})
out = train(spec, progress=False)
print("ray tok/s:", " ".join(f"{r['tokens_per_s'] / 1e3:.0f}" for r in out.results["history"] if "tokens_per_s" in r))
