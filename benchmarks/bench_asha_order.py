"""ASHA against FIFO on an ascending learning-rate grid: does the scheduler save time whatever the grid's order?

    python -m benchmarks.bench_asha_order --out-dir benchmarks/results/asha-order            # CPU, tiny (minutes)
    python -m benchmarks.bench_asha_order --out-dir $OUT/asha --gpu --storage /tmp/asha      # one GPU, H100 base

ASHA judges a trial at a rung only against the trials recorded there before it. On an H100 the default 7-value LR
grid of pure DeltaNet, launched in ascending order where the larger LR wins, stopped none of 7 trials: each arrival
beat those before it, and the sweep cost exactly what FIFO costs. hybrid-ray now starts ASHA's arms in a seeded
shuffle (sweep/asha.py, launch_order). This runs the same ascending grid twice through the CLI, `--scheduler asha`
and `--scheduler fifo`, and writes DIR/bench_asha_order.json: each run's wall seconds and trial-steps (the steps
all its trials trained), the launch order, the trials ASHA stopped and where, both winners, and ASHA's wall time
and trial-steps as a fraction of FIFO's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_json
from hybrid_ray.config.variants import variant_spec

CPU_SIZE = {"model.num_layers": 2, "model.attn_layers": [], "data.max_documents": 400, "train.steps": 60,
            "optim.warmup_steps": 10, "train.eval_every": 10, "train.checkpoint_every": 60, "train.log_every": 10,
            "train.eval_tokens": 4096, "scale.backend": "torch", "train.eval_recall": False}
GPU_SIZE = {"model.vocab_size": 50304, "train.batch_size": 16, "train.steps": 120, "optim.warmup_steps": 20,
            "train.eval_every": 20, "train.eval_tokens": 65_536, "train.checkpoint_every": 120, "train.log_every": 10,
            "scale.backend": "fla"}
CPU_LRS = "3e-4,1e-3,3e-3,1e-2,3e-2"  # ascending: the tiny model's loss at step 60 falls as the LR grows
GPU_LRS = "2e-4,3e-4,4e-4,5e-4,6e-4,7e-4,1e-3"  # the H100 run's default grid of pure DeltaNet, in its order


def run(args: argparse.Namespace, config: Path, storage: Path, scheduler: str, log: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "hybrid_ray", "sweep", "--config", str(config), "--grid", f"lr={args.lrs}",
           "--scheduler", scheduler, "--storage-path", str(storage), "--name", scheduler]
    started = time.time()
    with open(log, "w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True).returncode
    wall = time.time() - started
    sweep = json.loads((storage / scheduler / "sweep.json").read_text())
    rows = sweep["trials"]
    best = {r["arm"]: (r.get("best") or {}).get("val_loss") for r in rows}
    complete = sorted((r["arm"] for r in rows if r["status"] == "finished"), key=lambda arm: best[arm])
    return {"command": " ".join(cmd[1:]), "exit_code": code, "wall_s": round(wall, 1),
            "trial_steps": sum(r["step"] or 0 for r in rows), "launch_order": sweep.get("launch_order"),
            "statuses": {r["arm"]: r["status"] for r in rows},
            "stopped_at": {r["arm"]: r["stopped_at_step"] for r in rows if r["status"] == "stopped by ASHA"},
            "best_val_loss": best, "winner": complete[0] if complete else None}


def replay_in_grid_order(storage: Path, lrs: str, rf: int = 3) -> dict[str, Any]:
    """ASHA's rung judgements of the ASHA sweep replayed through Ray's own bracket in the grid's (ascending) order,
    as hybrid-ray launched trials before launch_order: which trials that order would have stopped, on the same
    losses (one trial at a time, so each reaches the rung in launch order)."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    from hybrid_ray.layout import SweepLayout
    from hybrid_ray.records import decisions

    judged = decisions.read(SweepLayout(str(storage), "asha").asha_decisions)
    milestones = sorted({r["milestone"] for r in judged})
    order = [f"lr{float(v):g}-s0" for v in lrs.split(",")]
    bracket = _Bracket(min_t=milestones[0], max_t=10**6, reduction_factor=rf, s=0, stop_last_trials=False)
    loss = {(r["trial"], r["milestone"]): r["val_loss"] for r in judged}
    stopped = []
    for name in order:
        for milestone in milestones:
            if (name, milestone) not in loss:
                break
            if bracket.on_result(type("T", (), {"trial_id": name})(), milestone, -loss[name, milestone]) == "STOP":
                stopped.append(name)
                break
    return {"order": order, "stopped": stopped,
            "note": "a trial the shuffled run stopped at a rung has no loss at later rungs: it is not replayed there"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--storage", help="where the sweeps go [default: OUT_DIR/sweeps]; keep it off $OUT on a GPU")
    parser.add_argument("--gpu", action="store_true", help="the H100 base size (pure DeltaNet) on one GPU")
    parser.add_argument("--lrs", help="the ascending grid [default: a CPU or GPU one]")
    args = parser.parse_args()
    args.lrs = args.lrs or (GPU_LRS if args.gpu else CPU_LRS)
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(args.storage or out / "sweeps").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    spec = variant_spec("h100_deltanet", None if args.gpu else "tiny").with_overrides(
        {**(GPU_SIZE if args.gpu else CPU_SIZE), "name": "order"})
    config = out / "order.yaml"
    config.write_text(spec.to_yaml())
    result: dict[str, Any] = {"size": "gpu h100 base" if args.gpu else "cpu tiny (2 layers)", "grid": args.lrs}
    for scheduler in ("asha", "fifo"):
        result[scheduler] = run(args, config, storage, scheduler, out / f"{scheduler}.log")
        write_json(out / "bench_asha_order.json", result)
        print(scheduler, json.dumps(result[scheduler]), flush=True)
    result["asha_in_grid_order_replayed"] = replay_in_grid_order(storage, args.lrs)
    asha, fifo = result["asha"], result["fifo"]
    result["asha_over_fifo"] = {"wall": round(asha["wall_s"] / fifo["wall_s"], 3),
                                "trial_steps": round(asha["trial_steps"] / fifo["trial_steps"], 3),
                                "same_winner": asha["winner"] == fifo["winner"]}
    write_json(out / "bench_asha_order.json", result)
    print(json.dumps(result["asha_over_fifo"]), flush=True)


if __name__ == "__main__":
    main()
