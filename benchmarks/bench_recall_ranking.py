"""Which layer type recalls better after brief training on MQAR: a transformer and a pure DeltaNet at the tiny size,
trained in-process (no Ray) on the `mqar` source, then scored by the recall probes (evals/recall.py).

    python benchmarks/bench_recall_ranking.py --seeds 0 1 2                       # the tiny preset, 200 steps
    python benchmarks/bench_recall_ranking.py --steps 400 --lr 3e-3 --pairs 32 --vocab 512 --layers 2

Each line is one (variant, seed): the final training loss, the accuracy on MQAR examples laid out as in training
(queries right after the pairs) and every probe setting's accuracy (queries at the end of the context, padding
between). benchmarks/results/recall/NOTES.md reads these numbers.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hybrid_ray.config.variants import variant_spec
from hybrid_ray.data import prepare
from hybrid_ray.evals import recall
from hybrid_ray.model import build_model
from hybrid_ray.train.loop import train_step
from hybrid_ray.train.optim import LRSchedule, build_optimizer

DEVICE = torch.device("cpu")  # --device: the twin on a GPU (fp32, as on a CPU) for many seeds at once


def mqar_spec(variant: str, *, pairs: int, vocab: int, steps: int, lr: float | None, batch: int | None,
              seq_len: int | None, layers: int | None, head_dim: int | None, seed: int, examples: int):
    """The tiny preset of `variant`, trained on MQAR with `pairs` pairs (one query each) over `vocab` ids."""
    overrides = {"data.source": f"mqar?pairs={pairs}&vocab={vocab}&train_examples={examples}&val_examples=64",
                 "train.steps": steps, "train.seed": seed, "optim.warmup_steps": max(1, steps // 10),
                 "train.precision": "fp32"}
    if lr:
        overrides["optim.lr"] = lr
    if batch:
        overrides["train.batch_size"] = batch
    if seq_len:
        overrides["data.seq_len"] = seq_len
    if head_dim:
        overrides["model.head_dim"] = head_dim
    spec = variant_spec(variant, "tiny").with_overrides(overrides)
    if layers:
        attn = list(range(layers)) if spec.model.attn_layers else []
        spec = spec.with_overrides({"model.num_layers": layers, "model.attn_layers": attn})
    return spec


def train_mqar(spec) -> tuple[torch.nn.Module, object, float]:
    """Train `spec` on one process; returns (model, dataset, mean loss of the last 10 steps)."""
    dataset = prepare(spec.data)
    spec = spec.with_overrides({"model.vocab_size": dataset.model_vocab_size})
    model = build_model(spec.model, "torch", device=DEVICE, seed=spec.train.seed)
    optimizer = build_optimizer(model, spec.optim, DEVICE)
    schedule = LRSchedule.from_spec(spec.optim, spec.train.steps)
    loader = dataset.train_loader(seq_len=spec.data.seq_len, global_batch=spec.train.batch_size,
                                  micro_batch=spec.train.batch_size, rank=0, world_size=1, seed=spec.train.seed)
    losses = []
    for step in range(spec.train.steps):
        loss, _ = train_step(model, optimizer, loader.next_step(), schedule.lr_at(step), spec, DEVICE)
        losses.append(float(loss))
    return model, dataset, sum(losses[-10:]) / len(losses[-10:])


def measure(spec, probe: recall.MQARProbe) -> dict:
    started = time.perf_counter()
    model, dataset, loss = train_mqar(spec)
    trained = time.perf_counter() - started
    out = recall.score_recall(model, dataset, DEVICE, seq_len=spec.data.seq_len, precision="fp32",
                              probes=recall.RecallProbes(mqar=probe, copy=None))
    return {"arch": "transformer" if spec.model.attn_layers else "deltanet", "seed": spec.train.seed,
            "loss": round(loss, 3), "train_s": round(trained, 1), "mqar": round(out["mqar"], 3),
            **{name: round(r["accuracy"], 3) for name, r in out["settings"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["h100_transformer", "h100_deltanet"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pairs", type=int, default=16, help="pairs in the training examples")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, help="[default: the variant's]")
    parser.add_argument("--batch", type=int, help="[default: the tiny preset's 8]")
    parser.add_argument("--seq-len", type=int, help="[default: the tiny preset's 128]")
    parser.add_argument("--layers", type=int, help="[default: the tiny preset's 6]")
    parser.add_argument("--head-dim", type=int, help="DeltaNet's key dimension per head [default: the tiny preset's 32]")
    parser.add_argument("--examples", type=int, default=20000, help="training examples")
    parser.add_argument("--probe-pairs", nargs="+", type=int, default=[4, 16, 64])
    parser.add_argument("--probe-lengths", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument("--probe-examples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: the same twin in fp32 on a GPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    probe = recall.MQARProbe(pairs=tuple(args.probe_pairs), lengths=tuple(args.probe_lengths),
                             examples=args.probe_examples, vocab=args.vocab)
    for seed in args.seeds:
        for variant in args.variants:
            spec = mqar_spec(variant, pairs=args.pairs, vocab=args.vocab, steps=args.steps, lr=args.lr,
                             batch=args.batch, seq_len=args.seq_len, layers=args.layers, head_dim=args.head_dim,
                             seed=seed, examples=args.examples)
            row = measure(spec, probe)
            print(json.dumps({**row, "steps": args.steps, "pairs": args.pairs, "vocab": args.vocab,
                              "lr": spec.optim.lr, "batch": spec.train.batch_size, "seq_len": spec.data.seq_len,
                              "layers": spec.model.num_layers, "head_dim": spec.model.head_dim}), flush=True)


if __name__ == "__main__":
    main()
