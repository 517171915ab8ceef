"""ASHA against FIFO on the 13-arm attention-ratio grid: wall time, the winner of each, time to the first finished trial.

    python -m benchmarks.bench_sweep --out-dir $OUT/sweep --storage /tmp/bench-sweep [--gpus-per-trial 0.25]
    python -m benchmarks.bench_sweep --out-dir /tmp/bench-sweep --cpu --ratios 0,1 --steps 20   # a quick CPU check

The size (GPU): the 17% hybrid's `small` preset at 12 layers (so every named share exists; width 128, 4 heads,
~9M parameters, the byte tokenizer on 400 documents of the built-in stdlib corpus (4.9M tokens: nothing to download,
no epoch repeated)), 16 x 256 tokens a step, 240 steps, an evaluation every 40 (six ASHA
time units: rungs at 1 and 3 evaluations with the default reduction factor 3). Four trials share one GPU
(`--gpus-per-trial 0.25`); a step takes tens of milliseconds. FLA compiles and tunes its kernels on first use
(minutes: docs/ARCHITECTURE.md, "FLA facts"), which would dominate and blur the comparison: a one-trial warm-up sweep
(the 17% hybrid, both layer kinds, one evaluation) compiles them first, both sweeps then read them from the node's
kernel cache, and each sweep is timed warm (the warm-up's wall time is recorded as `warmup_s`). Warm-up and both
sweeps should finish in under ~8 minutes on one H200. `--cpu` runs the same grid at the tiny size on the torch
backend (no warm-up).

Writes DIR/bench_sweep.json (after each sweep, so a cut-short run keeps what it measured): machine (gpus, ...), and
under `asha` and `fifo`: wall_s, winner (the best arm that ran all its steps), first_finished_s (sweep start to the
first trial that finished), statuses and the ranked table; `asha_over_fifo` (wall-time ratio) and `same_winner`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_json
from hybrid_ray.config.variants import variant_spec
from hybrid_ray.records import report
from hybrid_ray.sweep.options import SweepOptions
from hybrid_ray.sweep.tuner import sweep

GPU_SIZE = {"model.num_layers": 12, "model.attn_layers": [5, 11], "data.max_documents": 400,
            "data.seq_len": 256, "train.batch_size": 16, "train.steps": 240, "train.eval_every": 40,
            "train.checkpoint_every": 120, "train.log_every": 20, "train.eval_tokens": 32_768, "train.keep": 1,
            "scale.backend": "fla"}
CPU_SIZE = {"model.num_layers": 12, "model.attn_layers": [5, 11], "data.max_documents": 400, "train.steps": 60,
            "train.eval_every": 20, "train.checkpoint_every": 20, "train.eval_tokens": 8192, "train.keep": 1,
            "scale.backend": "torch"}


def base_spec(name: str, args: argparse.Namespace, storage: Path, steps: int | None = None):
    preset, size = ("tiny", CPU_SIZE) if args.cpu else ("small", GPU_SIZE)
    overrides = {**size, "name": name, "storage_path": str(storage)}
    if steps := steps or args.steps:
        overrides.update({"train.steps": steps, "train.eval_every": max(1, steps // 3),
                          "train.checkpoint_every": max(1, steps // 3)})
    return variant_spec("h100_hybrid_sparse", preset).with_overrides(overrides)


def warm_up(args: argparse.Namespace, storage: Path) -> float:
    """One short trial that compiles and tunes FLA's kernels into the node's kernel cache, which every later trial
    reads; returns its seconds."""
    started = time.time()
    base = base_spec("bench-warmup", args, storage, steps=3)
    sweep(base, SweepOptions(grid=["attention_ratio=0.17"], scheduler="fifo", gpus_per_trial=args.gpus_per_trial),
          progress=True)
    return time.time() - started


def one_sweep(scheduler: str, args: argparse.Namespace, storage: Path) -> dict[str, Any]:
    base = base_spec(f"bench-{scheduler}", args, storage)
    grid = "attention_ratio" + (f"={args.ratios}" if args.ratios else "")
    options = SweepOptions(grid=[grid], scheduler=scheduler, gpus_per_trial=0.0 if args.cpu else args.gpus_per_trial)
    started = time.time()
    outcome = sweep(base, options, progress=True)
    wall = time.time() - started
    finished = [r for r in outcome.rows if r["status"] == "finished"]
    ends = [Path(r["run_dir"], "results.json").stat().st_mtime - started for r in finished]
    complete = [a for a in report.arm_summary(outcome.rows) if a["complete"]]
    return {
        "wall_s": wall,
        "winner": complete[0]["arm"] if complete else None,
        "winner_best_val_loss": complete[0]["best_val_loss"] if complete else None,
        "first_finished_s": min(ends) if ends else None,
        "trials": len(outcome.rows),
        "statuses": {r["name"]: r["status"] for r in outcome.rows},
        "steps_trained": sum(r.get("step") or 0 for r in outcome.rows),
        "table": outcome.table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--storage", help="where the sweeps' trials go [default: OUT_DIR/sweeps]; keep it off $OUT")
    parser.add_argument("--gpus-per-trial", type=float, default=0.25)
    parser.add_argument("--cpu", action="store_true", help="the tiny size on CPU workers (a quick check)")
    parser.add_argument("--ratios", help="a shorter grid, e.g. 0,0.17,1 [default: the 13 named layouts]")
    parser.add_argument("--steps", type=int, help="steps a trial [default: 240 on GPU, 60 on CPU]")
    args = parser.parse_args()
    out = Path(args.out_dir).resolve()
    storage = Path(args.storage).resolve() if args.storage else out / "sweeps"
    results: dict[str, Any] = {"size": "cpu tiny" if args.cpu else GPU_SIZE,
                               "gpus_per_trial": 0.0 if args.cpu else args.gpus_per_trial}
    if not args.cpu:
        results["warmup_s"] = warm_up(args, storage)
    for scheduler in ("fifo", "asha"):
        results[scheduler] = one_sweep(scheduler, args, storage)
        write_json(out / "bench_sweep.json", results)
    results["asha_over_fifo"] = results["asha"]["wall_s"] / results["fifo"]["wall_s"]
    results["same_winner"] = results["asha"]["winner"] == results["fifo"]["winner"]
    write_json(out / "bench_sweep.json", results)
    for scheduler in ("fifo", "asha"):
        r = results[scheduler]
        print(f"{scheduler}: {r['wall_s']:.0f}s, winner {r['winner']}, first finished trial after "
              f"{r['first_finished_s'] or float('nan'):.0f}s, {r['steps_trained']} steps trained")
    print(f"ASHA took {results['asha_over_fifo']:.0%} of FIFO's wall time; same winner: {results['same_winner']}")
    print(f"results: {out / 'bench_sweep.json'}")


if __name__ == "__main__":
    main()
