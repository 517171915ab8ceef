"""Decoding and scoring speed on one GPU (or, at the tiny size, a CPU), warm: prefill, time to first token, decode
tokens/s at batch 1 and 32 with and without the captured step and the cache, and `eval` of ARC-Easy-format questions.

    python benchmarks/bench_generate.py --out-dir benchmarks/results/generate            # one GPU, H100 base size
    python benchmarks/bench_generate.py --out-dir /tmp/gen --device cpu --preset tiny    # a CPU check
    ... --compile   # also the torch.compile'd step (a compile per variant and batch size: minutes more)
    ... --deadline-s 300 --narrow-autotuning   # one device call: stop in time, compile FLA's kernels once each

Before the arms (GPU, warm node): `hybrid-ray generate` itself, in a new process, on a saved model of --command-variant
(the H100 base pure DeltaNet: 1.1 GB of safetensors at GPT-2's vocabulary) for each of --command-tokenizers (`byte`,
and `gpt2`: a GPT-2-style folder, tokenizer.json + vocab.json + merges.txt naming GPT2Tokenizer, trained offline on
the standard library and kept in --gpt2-tokenizer), run --command-runs times: `load_s` (the command's model load),
`model_ready_from_start_s` and `first_token_from_start_s` (from the process's start), and its start-up phases as the
command prints them; then `hybrid-ray eval --task arc_easy --limit 1` in a new process (`first_question_from_start_s`:
its whole run, one question scored). The JSON's "startup" holds one entry a tokenizer; "generate_command" is the byte
one's.

Random weights (speed does not depend on them), greedy decoding without EOS, so every run decodes exactly
--decode-tokens tokens after a --prompt-len-token prompt. Every measurement follows one untimed pass of the same work.
Without the cache each token recomputes the whole sequence, so its cost grows with the length: it is timed over
--no-cache-tokens tokens, and its cost for --decode-tokens tokens is estimated from single forwards at the first,
middle and last length of that span (Simpson's rule over the per-token cost, which grows at most quadratically with
the length). The eval questions are ARC-Easy's own file when --arc-file names one, else written locally in its layout
(the hub is unreachable from the benchmark machines; the JSON says which), and scored by `hybrid_ray.evals.downstream.evaluate_task`
through a saved model folder with the byte tokenizer (about 4x more tokens per question than GPT-2's tokenizer).
--deadline-s skips what would start too late (each skipped part is named in the JSON, which is rewritten after every
part); --narrow-autotuning keeps FLA's first autotuning configuration of each kernel (the scoring and no-cache figures
then run untuned kernels; the cached decoding runs no FLA kernel at all: its step is plain PyTorch).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import gpt2_style_tokenizer, write_json
from hybrid_ray.config.variants import variant_spec
from hybrid_ray.data.tokenizer import ByteTokenizer, load_tokenizer
from hybrid_ray.errors import first_line
from hybrid_ray.evals import downstream as evals
from hybrid_ray.inference.generate import SamplingOptions, decode_reference, decode_timed, forward
from hybrid_ray.model import build_model, count_params, save_model
from hybrid_ray.model.precision import autocast

VARIANTS = ["h100_hybrid_sparse", "h100_deltanet", "h100_transformer"]
GPT2_VOCAB = 50257


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_decode(model: torch.nn.Module, prompts: list[list[int]], tokens: int, device: torch.device,
                 **options: Any) -> dict[str, float]:
    """One warm-up pass, then the timed one: first-token seconds, prefill and decode tokens/s."""
    sampling = SamplingOptions(max_new_tokens=tokens, temperature=0, **options)
    run = decode_timed if sampling.use_cache else decode_reference
    run(model, prompts, SamplingOptions(max_new_tokens=min(tokens, 8), temperature=0, **options), None, device)
    result = run(model, prompts, sampling, None, device)
    new = sum(map(len, result.tokens))
    decode_s = result.seconds - result.setup_s - result.first_token_s
    return {"first_token_s": result.first_token_s, "setup_s": result.setup_s, "seconds": result.seconds,
            "prefill_tokens_per_s": sum(map(len, prompts)) / result.first_token_s,
            "decode_tokens_per_s": (new - len(prompts)) / max(decode_s, 1e-9), "tokens": new}


@torch.no_grad()
def no_cache_estimate(model: torch.nn.Module, prompt_len: int, tokens: int, vocab: int,
                      device: torch.device) -> dict[str, float]:
    """Seconds to decode `tokens` tokens by recomputing: Simpson's rule over single forwards at the span's lengths."""
    costs = []
    for length in (prompt_len, prompt_len + tokens // 2, prompt_len + tokens):
        ids = torch.randint(0, vocab, (1, length), device=device)
        for timed in (False, True):  # the first forward of a length is the warm-up
            sync(device)
            start = time.perf_counter()
            with autocast(device, "auto"):
                forward(model, ids, None)
            sync(device)
            if timed:
                costs.append(time.perf_counter() - start)
    return {"no_cache_forward_s": dict(zip(("first", "middle", "last"), costs)),
            "no_cache_estimated_s": tokens * (costs[0] + 4 * costs[1] + costs[2]) / 6}


def arc_questions(path: Path, n: int, seed: int = 0) -> Path:
    """n four-choice questions in ARC-Easy's JSONL layout (question, choices.text/label, answerKey)."""
    rng = random.Random(seed)
    words = "water plant energy animal light heat rock cell earth moon sun food air soil sound force".split()
    rows = []
    for i in range(n):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(8, 24)))
        answers = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 5))) for _ in range(4)]
        rows.append({"id": f"q{i}", "question": f"Which {question}?",
                     "choices": {"text": answers, "label": list("ABCD")}, "answerKey": rng.choice("ABCD")})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


ARC_SYNTHETIC = "synthetic: questions written in ARC-Easy's layout (no --arc-file, and the hub is unreachable)"


def arc_data(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """ARC-Easy's own file (--arc-file) when it is on this machine, else --eval-questions synthetic ones; and which."""
    if args.arc_file and Path(args.arc_file).is_file():
        return Path(args.arc_file), f"file: {args.arc_file}"
    path = workdir / "arc_easy.jsonl"
    if not path.exists():
        arc_questions(path, args.eval_questions)
    note = ARC_SYNTHETIC if not args.arc_file else f"{ARC_SYNTHETIC}; --arc-file {args.arc_file} not found"
    return path, note


def saved(model: torch.nn.Module, spec: Any, workdir: Path, tokenizer: Any = None) -> Path:
    """The model as a model folder (weights and the tokenizer: the byte one by default), once per arm."""
    folder = workdir / "model"
    if not (folder / "config.json").exists():
        save_model(model, spec, folder)
        (tokenizer or ByteTokenizer()).save(folder)
    return folder


def bench_eval(folder: Path, data: Path, source: str, backend: str) -> dict[str, Any]:
    """`evaluate_task` on ARC-Easy questions through a saved model folder: one warm-up pass on a few, then all."""
    evals.evaluate_task(str(folder), "arc_easy", data=str(data), limit=64, backend=backend)
    start = time.perf_counter()
    result = evals.evaluate_task(str(folder), "arc_easy", data=str(data), backend=backend)
    seconds = time.perf_counter() - start
    return {"questions": result["examples"], "source": source, "seconds": seconds,
            "scoring_seconds": result["seconds"], "examples_per_s": result["examples"] / seconds, "acc": result["acc"]}


PROMPT = "def main("
_UNITS = {"ms": 1e-3, "s": 1.0}


def startup_phases(stderr: str) -> dict[str, float]:
    """The `start-up:` line of `generate` as {phase: seconds}, with model_ready_s and first_token_s (from the
    command's own start)."""
    line = next((x for x in stderr.splitlines() if x.startswith("start-up: ")), "")
    found = {name: float(value) * _UNITS[unit]
             for name, value, unit in re.findall(r"([A-Za-z][A-Za-z ]*?) (\d+(?:\.\d+)?) (ms|s)\b", line)}
    out = {k.strip(): v for k, v in found.items() if not k.startswith(("model ready", "first token"))}
    ready = re.search(r"model ready (\d+(?:\.\d+)?) (ms|s) after", line)
    first = re.search(r"first token (\d+(?:\.\d+)?) (ms|s)\)", line)
    if ready:
        out["model_ready_s"] = float(ready.group(1)) * _UNITS[ready.group(2)]
    if first:
        out["first_token_s"] = float(first.group(1)) * _UNITS[first.group(2)]
    return out


def generate_command(folder: Path, tokens: int) -> dict[str, Any]:
    """`hybrid-ray generate FOLDER` in a new process. The prompt is echoed the moment the model is ready: the time to
    that echo, less the command's own `model ready` time, is what came before the command's start (the interpreter,
    the CLI's imports); the first token from the process's start adds that to the command's own first-token time
    (random weights often sample tokens that print nothing, so the first token is not timed on stdout)."""
    command = [sys.executable, "-m", "hybrid_ray", "generate", str(folder), "--prompt", PROMPT, "--max-new-tokens",
               str(tokens), "--temperature", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    echoed = None
    out = b""
    while chunk := proc.stdout.read1(4096):
        out += chunk
        if echoed is None and len(out) >= len(PROMPT):
            echoed = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    rc = proc.wait()
    wall = time.perf_counter() - start
    entry: dict[str, Any] = {"rc": rc, "wall_s": wall, "prompt_echoed_s": echoed,
                             "stderr_tail": err.strip().splitlines()[-3:]}
    phases = startup_phases(err)
    loaded = re.search(r"model loaded in (\d+(?:\.\d+)?) (ms|s)", err)
    if loaded:
        entry["load_s"] = float(loaded.group(1)) * _UNITS[loaded.group(2)]
    if phases:
        entry["startup"] = phases
    if echoed is not None and "model_ready_s" in phases:
        before = max(0.0, echoed - phases["model_ready_s"])  # interpreter start and the CLI's imports
        entry["before_command_s"] = before
        entry["model_ready_from_start_s"] = echoed
        if "first_token_s" in phases:
            entry["first_token_from_start_s"] = before + phases["first_token_s"]
    return entry


def eval_command(folder: Path, data: Path) -> dict[str, Any]:
    """`hybrid-ray eval FOLDER --task arc_easy --limit 1` in a new process: its whole run is the wait for the first
    question's score (`first_question_from_start_s`), with its start-up phases."""
    command = [sys.executable, "-m", "hybrid_ray", "eval", str(folder), "--task", "arc_easy", "--data", str(data),
               "--limit", "1"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    entry: dict[str, Any] = {"rc": done.returncode, "first_question_from_start_s": wall,
                             "stderr_tail": done.stderr.strip().splitlines()[-3:]}
    if phases := startup_phases(done.stderr):
        entry["startup"] = phases
    return entry


class Clock:
    """The benchmark's deadline (--deadline-s from its start; none: no limit) and what it skipped for it."""

    def __init__(self, deadline_s: float | None) -> None:
        self.start, self.deadline_s, self.skipped = time.perf_counter(), deadline_s, []

    def allows(self, what: str, needs_s: float) -> bool:
        """Whether `what` (about `needs_s` seconds) can still start; else it is recorded as skipped."""
        if self.deadline_s is None or time.perf_counter() - self.start + needs_s <= self.deadline_s:
            return True
        self.skipped.append(what)
        print(f"skipped for the deadline: {what}", flush=True)
        return False


def bench_variant(variant: str, args: argparse.Namespace, device: torch.device, workdir: Path, clock: Clock,
                  report: dict[str, Any]) -> None:
    """Decoding at each batch size, then the ARC-Easy scoring; each entry goes into `report` (written as it grows)."""
    spec = variant_spec(variant, args.preset).model.with_vocab(args.vocab)
    backend = "auto"
    model = build_model(spec, backend, device=device, seed=0).eval()
    params = count_params(spec)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, args.vocab, (args.prompt_len,), generator=gen).tolist()
    for batch in args.batches:
        prompts = [torch.randint(0, args.vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(batch - 1)]
        prompts = [prompt, *prompts]
        if not clock.allows(f"{variant} batch {batch}", args.part_s):
            continue
        print(f"{variant} batch {batch}: decoding {args.decode_tokens} tokens", flush=True)
        entry: dict[str, Any] = {"variant": variant, "batch": batch, "prompt_tokens": args.prompt_len,
                                 "decode_tokens": args.decode_tokens, "captured_step": device.type == "cuda"}
        try:
            graph = timed_decode(model, prompts, args.decode_tokens, device)
        except Exception as e:  # keep measuring (op by op) and say why the captured step failed
            entry |= {"captured_step": False, "captured_step_error": first_line(e)}
            graph = timed_decode(model, prompts, args.decode_tokens, device, use_graph=False)
        entry |= graph
        if entry["captured_step"]:
            plain = timed_decode(model, prompts, args.no_graph_tokens, device, use_graph=False)
            entry["no_graph"] = plain
            entry["graph_speedup"] = graph["decode_tokens_per_s"] / plain["decode_tokens_per_s"]
        if args.compile:
            print(f"{variant} batch {batch}: decoding with the compiled step", flush=True)
            try:
                entry["compiled"] = timed_decode(model, prompts, args.decode_tokens, device, compile=True)
            except Exception as e:  # a compile failure is a result here, not the end of the benchmark
                entry["compiled"] = {"error": first_line(e)}
        if batch == 1 and clock.allows(f"{variant} without the cache", args.part_s):
            print(f"{variant}: recomputing without the cache", flush=True)
            recompute = timed_decode(model, prompts, args.no_cache_tokens, device, use_cache=False)
            estimate = no_cache_estimate(model, args.prompt_len, args.decode_tokens, args.vocab, device)
            entry["no_cache"] = {**recompute, **estimate, "measured_tokens": args.no_cache_tokens}
            for key, timing in (("cached", graph), ("compiled", entry.get("compiled", {}))):
                if "decode_tokens_per_s" in timing:  # decoding the same tokens with the cache, prefill included
                    cached_s = args.decode_tokens / timing["decode_tokens_per_s"] + timing["first_token_s"]
                    entry[f"{key}_speedup_vs_no_cache"] = estimate["no_cache_estimated_s"] / cached_s
        print(json.dumps(entry), flush=True)
        report["results"].append({**entry, "params": params})
        write(args, report, clock)
    if args.eval_questions and clock.allows(f"{variant} ARC-Easy scoring", args.part_s):
        data, source = arc_data(args, workdir.parent)
        print(f"{variant}: scoring ARC-Easy questions ({source})", flush=True)
        report["eval"][variant] = bench_eval(saved(model, spec, workdir), data, source, args.eval_backend)
        report["eval"][variant]["backend"] = args.eval_backend
        print(json.dumps(report["eval"][variant]), flush=True)
        write(args, report, clock)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def command_tokenizer(name: str, args: argparse.Namespace) -> Any:
    """The tokenizer of a command model: `byte`, or `gpt2` (the GPT-2-style folder in --gpt2-tokenizer, made there
    once; at the tiny size a small one, 1024 ids from 2 MB of text, made in seconds)."""
    if name == "byte":
        return ByteTokenizer()
    size = (1024, 2 << 20) if args.preset == "tiny" else (GPT2_VOCAB, None)
    folder = Path(args.gpt2_tokenizer or Path(tempfile.gettempdir(), f"hybrid-ray-gpt2-style-{size[0]}"))
    return load_tokenizer(gpt2_style_tokenizer(folder, *size))


def bench_command(args: argparse.Namespace, device: torch.device, workdir: Path, clock: Clock,
                  report: dict[str, Any]) -> None:
    """`hybrid-ray generate` on a saved model of --command-variant with each of --command-tokenizers, --command-runs
    times (the first may read the weights from disk; the later ones are a warm node's), then `eval` of one question."""
    variant = args.command_variant
    report.setdefault("startup", {})
    for name in args.command_tokenizers:
        if not clock.allows(f"generate command ({name} tokenizer)", 60):
            continue
        print(f"{variant} with the {name} tokenizer: saving the model", flush=True)
        tokenizer = command_tokenizer(name, args)
        vocab = max(args.vocab, tokenizer.vocab_size) if name != "byte" else args.vocab
        spec = variant_spec(variant, args.preset).model.with_vocab(vocab)
        model = build_model(spec, "torch", device=device, seed=0).eval()
        folder = saved(model, spec, workdir / f"{variant}-{name}", tokenizer)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        runs = []
        for i in range(args.command_runs):
            if not clock.allows(f"generate command run {i + 1} ({name} tokenizer)", 30):
                break
            print(f"hybrid-ray generate {variant} ({name} tokenizer, {args.command_tokens} tokens), run {i + 1}",
                  flush=True)
            runs.append(generate_command(folder, args.command_tokens))
            print(json.dumps(runs[-1]), flush=True)
        entry = {
            "variant": variant, "tokenizer": name, "vocab": vocab, "params": count_params(spec)["total"],
            "weights_bytes": (folder / "model.safetensors").stat().st_size, "tokens": args.command_tokens,
            "runs": runs, **{k: runs[-1].get(k) for k in (
                "load_s", "model_ready_from_start_s", "first_token_from_start_s") if runs},
            "targets": {"load_s": 3.0, "first_token_from_start_s": 6.0, "first_question_from_start_s": 6.0}}
        if clock.allows(f"eval command ({name} tokenizer)", 30):
            data = workdir / "arc_command.jsonl"
            if not data.exists():
                arc_questions(data, 4)
            print(f"hybrid-ray eval {variant} ({name} tokenizer), one ARC-Easy question", flush=True)
            entry["eval"] = eval_command(folder, data)
            entry["first_question_from_start_s"] = entry["eval"]["first_question_from_start_s"]
            print(json.dumps(entry["eval"]), flush=True)
        report["startup"][name] = entry
        if name == "byte":
            report["generate_command"] = entry
        write(args, report, clock)
        shutil.rmtree(folder, ignore_errors=True)


def output_path(args: argparse.Namespace) -> Path:
    return Path(args.out_dir, f"generate-{args.device}-{args.preset or 'h100'}.json")


def write(args: argparse.Namespace, report: dict[str, Any], clock: Clock) -> None:
    """The JSON, rewritten after every part: a run cut short keeps what it measured."""
    write_json(output_path(args), {**report, "skipped_for_deadline": clock.skipped,
                                   "bench_seconds": time.perf_counter() - clock.start})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--preset", default=None, help="model size [default: the H100 base size; tiny for a CPU]")
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--vocab", type=int, default=None,
                        help=f"vocabulary [default: GPT-2's {GPT2_VOCAB} on a GPU; 320 at the tiny size]")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=1000)
    parser.add_argument("--no-graph-tokens", type=int, default=200)
    parser.add_argument("--no-cache-tokens", type=int, default=50)
    parser.add_argument("--eval-questions", type=int, default=2376,
                        help="synthetic ARC-Easy questions when --arc-file is not given (0: no scoring)")
    parser.add_argument("--eval-backend", default="auto", choices=["auto", "fla", "torch"],
                        help="the scoring's backend (auto: the twin, as `eval` runs it; fla: FLA's model and kernels)")
    parser.add_argument("--arc-file", help="ARC-Easy's own test file (AI2's ARC-Easy-Test.jsonl or the hub's layout)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile'd step (adds a compile per variant and batch size)")
    parser.add_argument("--command-variant", default="h100_deltanet",
                        help="time `hybrid-ray generate` on a saved model of this variant ('none': do not)")
    parser.add_argument("--command-tokens", type=int, default=200)
    parser.add_argument("--command-runs", type=int, default=2)
    parser.add_argument("--command-tokenizers", nargs="*", default=["byte", "gpt2"], choices=["byte", "gpt2"],
                        help="the tokenizers of the command models (each its own saved model)")
    parser.add_argument("--gpt2-tokenizer", help="the GPT-2-style tokenizer folder: used when it holds one, else made "
                                                 "there [default: one in the temporary folder, kept for later runs]")
    parser.add_argument("--only-commands", action="store_true", help="time the commands only, no decoding arms")
    parser.add_argument("--deadline-s", type=float, help="start no part that would end past this many seconds")
    parser.add_argument("--part-s", type=float, default=45.0,
                        help="with --deadline-s: the seconds a part (a batch size, a scoring) is assumed to need")
    parser.add_argument("--narrow-autotuning", action="store_true",
                        help="keep FLA's first autotuning configuration of each kernel (compile once each; scoring "
                             "and no-cache figures then run untuned kernels)")
    args = parser.parse_args()
    clock = Clock(args.deadline_s)
    if args.compile:  # one compiled step per decoder: let every variant and batch size keep its own
        config = torch._dynamo.config
        setattr(config, "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit", 64)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: use --device cpu --preset tiny")
    if args.narrow_autotuning:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from gpu_support import narrow_autotuning

        narrow_autotuning()
    args.vocab = args.vocab or (320 if args.preset == "tiny" else GPT2_VOCAB)
    # model folders (1.1 GB each at the H100 size) in memory when it has room: writing them is not the point
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 16 * 2**30 else None
    workdir = Path(tempfile.mkdtemp(prefix="bench-generate-", dir=shm))
    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "autotuning": "FLA's first configuration of each kernel" if args.narrow_autotuning else "FLA's own",
        "results": [], "eval": {}}
    try:
        if args.command_variant != "none" and clock.allows("generate command", 60):
            bench_command(args, device, workdir, clock, report)
        for variant in [] if args.only_commands else args.variants:
            bench_variant(variant, args, device, workdir / variant, clock, report)
    finally:
        write(args, report, clock)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {output_path(args)}")


if __name__ == "__main__":
    main()
