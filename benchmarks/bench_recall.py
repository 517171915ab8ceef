"""What the recall probes (evals/recall.py) cost against training: a FLOP estimate at any size, a timing at a small one.

    python benchmarks/bench_recall.py                       # FLOPs at the H100 base (h100 preset's cadence) and tiny
    python benchmarks/bench_recall.py --time --preset tiny  # also time probes vs a training step on this machine

FLOPs: the probes' forward tokens at each setting's length (model/flops.py, forward only) against `eval_every` training
steps of `batch x seq_len` tokens (forward x 3). The timing builds the model as `hybrid-ray train` does on a CPU (the
PyTorch twin) and uses the `stdlib` data's validation text for the copy probe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from hybrid_ray.config.variants import REFERENCE_VOCAB, variant_spec
from hybrid_ray.evals import recall
from hybrid_ray.model import flops_per_token

VARIANTS = ("h100_deltanet", "h100_hybrid_sparse", "h100_transformer")


def probe_lengths(seq_len: int, vocab: int, probes: recall.RecallProbes) -> list[tuple[int, int]]:
    """(length, examples) of every setting the probes make for a text run (no data needed to count them)."""
    out = [(s.ids.shape[1], s.ids.shape[0]) for s in recall.mqar_settings(probes.mqar, seq_len, vocab)]
    copy = probes.copy
    out += [(length, copy.examples) for length in recall._lengths(copy.lengths, seq_len) if length >= 2 * copy.span]
    return out


def flop_share(variant: str, preset: str | None, eval_every: int | None) -> dict:
    spec = variant_spec(variant, preset)
    model = dataclasses.replace(spec.model, vocab_size=spec.model.vocab_size or REFERENCE_VOCAB)
    seq, batch, every = spec.data.seq_len, spec.train.batch_size, eval_every or spec.train.eval_every
    probe = sum(n * length * flops_per_token(model, length, training=False)
                for length, n in probe_lengths(seq, REFERENCE_VOCAB, recall.RecallProbes()))
    step = batch * seq * flops_per_token(model, seq, training=True)
    val = spec.train.eval_tokens * flops_per_token(model, seq, training=False)
    return {"variant": variant, "preset": preset or "h100 base", "seq_len": seq, "batch": batch, "eval_every": every,
            "probe_tflop": round(probe / 1e12, 3), "step_tflop": round(step / 1e12, 3),
            "probe_in_steps": round(probe / step, 2), "probe_share_of_training": round(probe / (every * step), 4),
            "validation_loss_in_steps": round(val / step, 2)}


def timing(variant: str, preset: str, repeats: int) -> dict:
    from hybrid_ray.data import prepare
    from hybrid_ray.model import build_model
    from hybrid_ray.train.loop import train_step
    from hybrid_ray.train.optim import build_optimizer

    spec = variant_spec(variant, preset)
    dataset = prepare(spec.data)
    spec = spec.with_overrides({"model.vocab_size": dataset.model_vocab_size})
    device = torch.device("cpu")
    model = build_model(spec.model, "torch", device=device, seed=0)
    optimizer = build_optimizer(model, spec.optim, device)
    loader = dataset.train_loader(seq_len=spec.data.seq_len, global_batch=spec.train.batch_size,
                                  micro_batch=spec.train.batch_size, rank=0, world_size=1, seed=0)
    settings = recall.settings(recall.RecallProbes(), dataset, spec.data.seq_len)
    train_step(model, optimizer, loader.next_step(), 1e-4, spec, device)  # warm
    probes, steps = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        recall.score_recall(model, dataset, device, seq_len=spec.data.seq_len, prepared=settings,
                            tokens=spec.train.batch_size * spec.data.seq_len)
        probes.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(5):
            train_step(model, optimizer, loader.next_step(), 1e-4, spec, device)
        steps.append((time.perf_counter() - started) / 5)
    probe, step = min(probes), min(steps)
    return {"variant": variant, "preset": preset, "device": "cpu", "threads": torch.get_num_threads(),
            "probe_s": round(probe, 3), "step_s": round(step, 4), "probe_in_steps": round(probe / step, 2),
            "probe_share_of_training": round(probe / (spec.train.eval_every * step), 4),
            "eval_every": spec.train.eval_every}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--time", action="store_true", help="also time the probes against a training step here")
    parser.add_argument("--preset", default="tiny", help="the size timed (and estimated beside the H100 base)")
    parser.add_argument("--eval-every", type=int, help="the H100 base's evaluation cadence [default: the spec's]")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for variant in args.variants:
        print(json.dumps(flop_share(variant, None, args.eval_every)), flush=True)
        print(json.dumps(flop_share(variant, args.preset, None)), flush=True)
        if args.time:
            print(json.dumps(timing(variant, args.preset, repeats=3)), flush=True)


if __name__ == "__main__":
    main()
