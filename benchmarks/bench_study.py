"""The 13-arm attention-ratio study as a user runs it, at the H100 base size on one GPU: plan, sweep, Ctrl-C, resume.

    python -m benchmarks.bench_study --out-dir $OUT/study --storage /tmp/study          # one GPU, after a warm-up call
    python -m benchmarks.bench_study --out-dir /tmp/study --cpu --ratios 0,0.5,1         # the same flow on CPU workers

Each phase runs the command a user types (`hybrid-ray sweep --grid attention_ratio --match-params`, ASHA and the
default packing of trials on the GPU), from a job file that sets the study's size:
1. `--dry-run`: the plan (arms, MLP widths, GPU memory per trial against its share, trials at once, disk, kernel
   shapes), kept as `plan.txt`;
2. the sweep, interrupted with SIGINT once at least one trial has ended and another has written a checkpoint;
3. the same command again, which must resume every interrupted trial and end the study.

The size (GPU): the H100 base model (768 wide, 12 layers, 12 heads of 256) at the GPT-2 tokenizer's model vocabulary
(50,304: the shipped kernel cache's shapes), 16 x 1024 tokens a step on the built-in corpus (byte tokens), 48 steps, a
12-step warm-up, an evaluation every 12 steps (ASHA judges at steps 12 and 36), checkpoints at 24 and 48. Short on
purpose: what is measured is the sweep's machinery at the real size (packing, disk, compile per arm, statuses,
resume), not the model.

Writes DIR/bench_study.json after every phase (a call cut short keeps what it measured): machine.gpus; `arms`, one
entry per arm (`arm`, layers, parameters, MLP width, `first_step_s` (its first launch's first step: compiling and
tuning), status, launches, `resumed_at`, peak GPU memory against the plan's); the statuses after the interrupt and at
the end; wall times; the ranked table; ASHA's `judgements` (each with the trials recorded at its rung before it); and
`checks` (every interrupted trial resumed, "stopped by ASHA" only for ASHA's recorded decisions, no arm's first step
after the first cold one over 30 s, no trial failed (the H100 study's bookkeeping failed 4 of 13), every stopped
trial reports the step and loss ASHA judged). `--straight` runs the study once more without an interrupt
(`study-straight`) and compares: the relaunch's decisions must equal the straight run's wherever both judged a trial
at a rung after the same trials. tests/test_sweep.py runs the CPU twin (`--cpu --layers 4 --ratios 0,0.5,1`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_json
from hybrid_ray.config.variants import variant_spec
from hybrid_ray.layout import SweepLayout
from hybrid_ray.records import decisions
from hybrid_ray.sweep import status

GPU_SIZE = {"model.vocab_size": 50304, "train.batch_size": 16, "train.steps": 48, "optim.warmup_steps": 12,
            "train.eval_every": 12, "train.eval_tokens": 65_536, "train.checkpoint_every": 24, "train.log_every": 4,
            "scale.backend": "fla"}
CPU_SIZE = {"model.num_layers": 12, "model.attn_layers": [5, 11], "data.max_documents": 400, "train.steps": 40,
            "optim.warmup_steps": 10, "train.eval_every": 10, "train.checkpoint_every": 10, "train.log_every": 5,
            "train.eval_tokens": 8192, "scale.backend": "torch"}
FIRST_STEP_TARGET_S = 30.0


def job_file(args: argparse.Namespace, folder: Path) -> Path:
    """The study's size as a job file, so each phase is the same one command line."""
    spec = variant_spec("h100_hybrid_sparse", "tiny" if args.cpu else None)
    spec = spec.with_overrides({**(CPU_SIZE if args.cpu else GPU_SIZE), "name": "study"})
    if args.layers:
        spec = spec.with_overrides({"model.num_layers": args.layers, "model.attn_layers": [args.layers - 1]})
    if args.steps:
        every = max(1, args.steps // 4)
        spec = spec.with_overrides({"train.steps": args.steps, "train.eval_every": every,
                                    "train.checkpoint_every": 2 * every, "optim.warmup_steps": every})
    path = folder / "study.yaml"
    path.write_text(spec.to_yaml())
    return path


def command(args: argparse.Namespace, config: Path, storage: Path, *extra: str) -> list[str]:
    grid = "attention_ratio" + (f"={args.ratios}" if args.ratios else "")
    return [sys.executable, "-m", "hybrid_ray", "sweep", "--config", str(config), "--grid", grid, "--match-params",
            "--storage-path", str(storage), *extra]


def interrupt_when_ready(cmd: list[str], sweep: Path, log: Path, limit: float) -> tuple[int, float, list[str]]:
    """Run the sweep; SIGINT it once a trial has ended and another, still running, has a checkpoint (or at `limit`
    seconds). Returns its exit code, wall seconds and the trials that were running when it was cut."""
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        running: list[str] = []
        while proc.poll() is None:
            ended, running = _progress(sweep)
            if (ended and running) or time.time() - started > limit:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(1)
        proc.wait()
    return proc.returncode, time.time() - started, running


def _progress(sweep: Path) -> tuple[list[str], list[str]]:
    """Trials that ended (finished or stopped by ASHA) and trials running with a checkpoint."""
    stops = status.read_stops(SweepLayout.at(str(sweep)))
    ended, running = [], []
    for trial in sorted((sweep / "trials").glob("*-s*")):
        results = trial / "results.json"
        finished = results.exists() and json.loads(results.read_text()).get("status") == "finished"
        if finished or trial.name in stops:
            ended.append(trial.name)
        elif list(trial.glob("checkpoint_0*/manifest_rank0.json")):
            running.append(trial.name)
    return ended, running


def rows(sweep: Path) -> dict[str, dict[str, Any]]:
    path = sweep / "sweep.json"
    return {r["name"]: r for r in json.loads(path.read_text())["trials"]} if path.exists() else {}


def arm_entries(sweep: Path, first_launch: dict[str, dict[str, Any]], plan_memory: dict[str, float]) -> list[dict]:
    entries = []
    for name, row in rows(sweep).items():
        path = sweep / "trials" / name / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        spec = results.get("spec", {}).get("model", {})
        first = first_launch.get(name) or results
        entries.append({
            "arm": row["arm"], "trial": name, "status": row["status"], "reason": row.get("reason"),
            "attention_layers": results.get("attention_layers"), "params": results.get("params", {}).get("total"),
            "mlp_size": spec.get("mlp_size"), "first_step_s": first.get("compile_seconds"),
            "compile_seconds_all_launches": results.get("compile_seconds"), "launches": results.get("launches"),
            "resumed_at": results.get("resumed_at"), "step": results.get("step"),
            "best_val_loss": (results.get("best") or {}).get("val_loss"),
            # the plan's figure is what the process holds (allocator slack and CUDA context included); the peak is
            # torch's max_memory_allocated, below it
            "peak_memory_gb": round((results.get("peak_memory_gib") or 0) * 2**30 / 1e9, 2),
            "planned_memory_gb": plan_memory.get(row["arm"]),
            "wall_seconds": results.get("wall_seconds"),
        })
    return entries


def judgements(sweep: Path) -> dict[str, dict[str, Any]]:
    """ASHA's judgements in the order it made them, by `<trial>@<milestone>`: the decision and the trials already
    recorded at that rung (ASHA compares a trial with those alone)."""
    seen: dict[Any, list[str]] = {}
    found = {}
    for record in decisions.read(SweepLayout.at(str(sweep)).asha_decisions):
        before = seen.setdefault(record["milestone"], [])
        found[f"{record['trial']}@{record['milestone']}"] = {"decision": record["decision"], "step": record["step"],
                                                              "val_loss": record["val_loss"], "after": sorted(before)}
        before.append(record["trial"])
    return found


def judged_against_reported(sweep: Path) -> dict[str, dict[str, Any]]:
    """For every trial ASHA stopped: the step and loss it judged, and the ones sweep.json and results.json report."""
    final = rows(sweep)
    found = {}
    for name, stop in status.read_stops(SweepLayout.at(str(sweep))).items():
        row = final.get(name, {})
        path = sweep / "trials" / name / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        reported = (row.get("final") or {}).get("val_loss")
        found[name] = {"judged_step": stop["step"], "judged_val_loss": stop["val_loss"],
                       "reported_step": row.get("step"), "reported_val_loss": reported,
                       "results_step": results.get("step"),
                       "equal": stop["step"] == row.get("step") == results.get("step") and reported is not None
                       and abs(reported - stop["val_loss"]) < 1e-9}
    return found


def same_stops(relaunched: dict[str, dict], straight: dict[str, dict]) -> dict[str, Any]:
    """The relaunch's judgements against a straight run's, where both judged the same trial at the same rung after
    the same trials (with other trials before it, ASHA's cutoff is another one: such pairs are listed, not compared)."""
    both = sorted(set(relaunched) & set(straight))
    comparable = [k for k in both if relaunched[k]["after"] == straight[k]["after"]]
    differ = [k for k in comparable if relaunched[k]["decision"] != straight[k]["decision"]]
    return {"comparable": comparable, "differing": differ,
            "other_predecessors": [k for k in both if k not in comparable], "equal": not differ}


def straight_run(args: argparse.Namespace, config: Path, storage: Path, out: Path, results: dict[str, Any]) -> None:
    """The same study without an interrupt (`study-straight`), and its judgements against the relaunched study's."""
    started = time.time()
    with open(out / "straight.log", "w") as log:
        straight = subprocess.run(command(args, config, storage, "--name", "study-straight"), stdout=log,
                                  stderr=subprocess.STDOUT, text=True)
    results["straight"] = {"exit_code": straight.returncode, "wall_s": time.time() - started,
                           "statuses": {n: r["status"] for n, r in rows(storage / "study-straight").items()},
                           "judgements": judgements(storage / "study-straight")}
    results["checks"]["relaunch_stops_as_a_straight_run"] = same_stops(results["judgements"],
                                                                       results["straight"]["judgements"])
    write_json(out / "bench_study.json", results)


def relaunch_table(log: Path) -> list[str]:
    """The ranked table the relaunch printed (from its header to the line before 'sweep finished')."""
    lines = log.read_text().splitlines() if log.exists() else []
    start = next((i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "arm"]), None)
    if start is None:
        return []
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(("sweep ", "results:"))), len(lines))
    return lines[start:end]


def planned_memory(plan: str) -> dict[str, float]:
    """Per-arm GPU memory (GB) from the dry run's arm lines ('<arm> ... <N> GB of <share> GB at ...')."""
    found = {}
    for line in plan.splitlines():
        match = re.match(r"(attn\S+)\s.*?([\d.]+) GB of [\d.]+ GB at ", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--storage", help="where the sweep's trials go [default: OUT_DIR/sweeps]; keep it off $OUT")
    parser.add_argument("--cpu", action="store_true", help="the tiny size on CPU workers (a quick check)")
    parser.add_argument("--ratios", help="a shorter grid, e.g. 0,0.5,1 [default: the 13 named layouts]")
    parser.add_argument("--steps", type=int, help="steps a trial [default: 48 on GPU, 40 on CPU]")
    parser.add_argument("--interrupt-after", type=float, default=400.0,
                        help="SIGINT the first launch at the latest after this many seconds")
    parser.add_argument("--layers", type=int, help="model layers (CPU: fewer for a quicker check) [default: 12]")
    parser.add_argument("--straight", action="store_true",
                        help="also run the study once without an interrupt and compare ASHA's judgements")
    parser.add_argument("--only-straight", action="store_true",
                        help="only the straight run, against the judgements of the study already in --storage "
                             "(a second device call; its trials may be deleted first to free the disk)")
    args = parser.parse_args(argv)
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(args.storage or out / "sweeps").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    sweep = storage / "study"
    config = job_file(args, out)
    results: dict[str, Any] = {"size": "cpu tiny" if args.cpu else GPU_SIZE, "ratios": args.ratios or "13 named",
                               "command": " ".join(command(args, config, storage)[1:])}
    result_file = out / "bench_study.json"
    if args.only_straight:
        results["judgements"] = judgements(sweep)
        results["checks"] = {}
        straight_run(args, config, storage, out, results)
        return results

    started = time.time()
    dry = subprocess.run(command(args, config, storage, "--dry-run"), capture_output=True, text=True)
    (out / "plan.txt").write_text(dry.stdout + dry.stderr)
    results["dry_run"] = {"exit_code": dry.returncode, "seconds": time.time() - started}
    plan_memory = planned_memory(dry.stdout)
    print(dry.stdout + dry.stderr, flush=True)

    code, wall, cut = interrupt_when_ready(command(args, config, storage), sweep, out / "launch1.log",
                                           args.interrupt_after)
    after_cut = rows(sweep)
    first_launch = {}
    for name in after_cut:
        path = sweep / "trials" / name / "results.json"
        if path.exists():
            first_launch[name] = json.loads(path.read_text())
    results["interrupted"] = {"exit_code": code, "wall_s": wall, "running_when_cut": cut,
                              "statuses": {n: r["status"] for n, r in after_cut.items()}}
    write_json(result_file, results)
    print(f"launch 1: exit {code} after {wall:.0f}s; {results['interrupted']['statuses']}", flush=True)

    started = time.time()
    with open(out / "launch2.log", "w") as log:
        relaunch = subprocess.run(command(args, config, storage), stdout=log, stderr=subprocess.STDOUT, text=True)
    final = rows(sweep)
    stops = status.read_stops(SweepLayout.at(str(sweep)))
    arms = arm_entries(sweep, first_launch, plan_memory)
    interrupted = [n for n, r in after_cut.items() if r["status"] in ("interrupted", "not started")]
    firsts = sorted((a["first_step_s"] for a in arms if a["first_step_s"] is not None), reverse=True)
    results.update({
        "relaunch": {"exit_code": relaunch.returncode, "wall_s": time.time() - started,
                     "statuses": {n: r["status"] for n, r in final.items()}},
        "wall_s": results["interrupted"]["wall_s"] + time.time() - started,
        "asha_stops": stops,
        "arms": arms,
        "table": relaunch_table(out / "launch2.log"),
        "checks": {
            "every_interrupted_trial_resumed": all(final.get(n, {}).get("status") in ("finished", "stopped by ASHA")
                                                   for n in interrupted),
            "interrupted_trials": interrupted,
            "stopped_only_by_recorded_decisions": {n for n, r in final.items() if r["status"] == "stopped by ASHA"}
            == set(stops),
            "first_step_s_after_the_first": firsts[1:] if len(firsts) > 1 else [],
            "every_further_arm_within_target": all(s <= FIRST_STEP_TARGET_S for s in firsts[1:]),
        },
    })
    failed = {n: r.get("reason") for n, r in final.items() if r["status"] == "failed"}
    judged = judged_against_reported(sweep)
    results["checks"].update({
        "trials_failed": failed,  # bookkeeping failed 4 of 13 trials of the H100 study: must be none
        "no_trial_failed": not failed,
        "judged_against_reported": judged,
        "every_stop_reports_what_asha_judged": all(j["equal"] for j in judged.values()),
    })
    results["judgements"] = judgements(sweep)
    write_json(result_file, results)
    if args.straight:
        straight_run(args, config, storage, out, results)
    for arm in sorted(arms, key=lambda a: a["arm"]):
        print(f"{arm['trial']:<12} {arm['status']:<16} first step {arm['first_step_s'] or 0:6.1f}s  launches "
              f"{arm['launches']}  peak {arm['peak_memory_gb']:5.1f} GB (plan {arm['planned_memory_gb']})  "
              f"best {arm['best_val_loss']}", flush=True)
    print(json.dumps(results["checks"], indent=1), flush=True)
    print(f"relaunch exit {relaunch.returncode}; results: {result_file}", flush=True)
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
