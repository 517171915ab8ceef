"""Decoding and scoring speed on one GPU (or, at the tiny size, a CPU), warm: prefill, time to first token, decode
tokens/s at batch 1 and 32 with and without the captured step and the cache, and `eval` of ARC-Easy-format questions.

    python benchmarks/bench_generate.py --out-dir benchmarks/results/generate            # one GPU, H100 base size
    python benchmarks/bench_generate.py --out-dir /tmp/gen --device cpu --preset tiny    # a CPU check
    ... --compile   # also the torch.compile'd step (a compile per variant and batch size: minutes more)

Random weights (speed does not depend on them), greedy decoding without EOS, so every run decodes exactly
--decode-tokens tokens after a --prompt-len-token prompt. Every measurement follows one untimed pass of the same work.
Without the cache each token recomputes the whole sequence, so its cost grows with the length: it is timed over
--no-cache-tokens tokens, and its cost for --decode-tokens tokens is estimated from single forwards at the first,
middle and last length of that span (Simpson's rule over the per-token cost, which grows at most quadratically with
the length). The eval questions are written locally in ARC-Easy's layout and scored by `hybrid_ray.evals.evaluate_task`
through a saved model folder with the byte tokenizer (about 4x more tokens per question than GPT-2's tokenizer).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_json
from hybrid_ray import evals
from hybrid_ray.data.tokenizer import ByteTokenizer
from hybrid_ray.errors import first_line
from hybrid_ray.generate import SamplingOptions, decode_reference, decode_timed, forward
from hybrid_ray.model import build_model, count_params, save_model
from hybrid_ray.model.precision import autocast
from hybrid_ray.variants import variant_spec

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


def bench_eval(model: torch.nn.Module, spec: Any, questions: int, backend: str, workdir: Path) -> dict[str, Any]:
    """`evaluate_task` on local ARC-Easy-format questions through a saved model folder: one warm-up pass on a few,
    then all of them."""
    folder = save_model(model, spec, workdir / "model")
    ByteTokenizer().save(folder)
    data = arc_questions(workdir / "arc_easy.jsonl", questions)
    evals.evaluate_task(str(folder), "arc_easy", data=str(data), limit=64, backend=backend)
    start = time.perf_counter()
    result = evals.evaluate_task(str(folder), "arc_easy", data=str(data), backend=backend)
    seconds = time.perf_counter() - start
    return {"questions": result["examples"], "seconds": seconds, "scoring_seconds": result["seconds"],
            "examples_per_s": result["examples"] / seconds, "acc": result["acc"]}


def bench_variant(variant: str, args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
    spec = variant_spec(variant, args.preset).model.with_vocab(args.vocab)
    backend = "auto"
    model = build_model(spec, backend, device=device, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, args.vocab, (args.prompt_len,), generator=gen).tolist()
    entries = []
    for batch in args.batches:
        prompts = [torch.randint(0, args.vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(batch - 1)]
        prompts = [prompt, *prompts]
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
        if batch == 1:
            print(f"{variant}: recomputing without the cache", flush=True)
            recompute = timed_decode(model, prompts, args.no_cache_tokens, device, use_cache=False)
            estimate = no_cache_estimate(model, args.prompt_len, args.decode_tokens, args.vocab, device)
            entry["no_cache"] = {**recompute, **estimate, "measured_tokens": args.no_cache_tokens}
            for key, timing in (("cached", graph), ("compiled", entry.get("compiled", {}))):
                if "decode_tokens_per_s" in timing:  # decoding the same tokens with the cache, prefill included
                    cached_s = args.decode_tokens / timing["decode_tokens_per_s"] + timing["first_token_s"]
                    entry[f"{key}_speedup_vs_no_cache"] = estimate["no_cache_estimated_s"] / cached_s
        print(json.dumps(entry), flush=True)
        entries.append(entry)
    evaluation = None
    if args.eval_questions:
        print(f"{variant}: scoring {args.eval_questions} ARC-Easy-format questions", flush=True)
        evaluation = bench_eval(model, spec, args.eval_questions, backend, workdir / variant)
        print(json.dumps(evaluation), flush=True)
    return {"entries": entries, "eval": evaluation, "params": count_params(spec)}


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
    parser.add_argument("--eval-questions", type=int, default=2376)
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile'd step (adds a compile per variant and batch size)")
    args = parser.parse_args()
    if args.compile:  # one compiled step per decoder: let every variant and batch size keep its own
        config = torch._dynamo.config
        setattr(config, "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit", 64)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: use --device cpu --preset tiny")
    args.vocab = args.vocab or (320 if args.preset == "tiny" else GPT2_VOCAB)
    workdir = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    results, evaluations, started = [], {}, time.perf_counter()
    try:
        for variant in args.variants:
            r = bench_variant(variant, args, device, workdir)
            results += [{**e, "params": r["params"]} for e in r["entries"]]
            evaluations[variant] = r["eval"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    name = f"generate-{args.device}-{args.preset or 'h100'}.json"
    write_json(Path(args.out_dir, name), {
        "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "results": results, "eval": evaluations, "bench_seconds": time.perf_counter() - started})
    print(f"wrote {Path(args.out_dir, name)}")


if __name__ == "__main__":
    main()
