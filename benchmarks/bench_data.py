"""Data-layer throughput: tokenize-and-shard (tokens/s) and the loader (batches/s) against a GPU's appetite.

    python benchmarks/bench_data.py [--out-dir benchmarks/results] [--hf-tokenizer NAME_OR_PATH]

Prepare runs on the stdlib corpus into a fresh cache. A Hugging Face tokenizer is timed only when it loads without
the network (cached or a local folder). Loader numbers are per rank: in a real run every rank is its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in a benchmark

from hybrid_ray.data import prepare  # noqa: E402
from hybrid_ray.data.tokenizer import get_tokenizer  # noqa: E402
from hybrid_ray.errors import DataError  # noqa: E402
from hybrid_ray.spec import DataSpec  # noqa: E402

from benchmarks.common import H100_TABLE  # noqa: E402

GPU_TOKENS_PER_S = H100_TABLE["h100_hybrid_sparse"][0]  # one H100 on the 17% hybrid at batch 48 x 1024


def bench_prepare(tokenizer: str, cache: Path, max_documents: int | None) -> dict:
    spec = DataSpec(source="stdlib", tokenizer=tokenizer, cache_dir=str(cache), max_documents=max_documents)
    t0 = time.perf_counter()
    ds = prepare(spec)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare(spec)
    hit = time.perf_counter() - t0
    splits = ds.manifest["splits"].values()
    tokens, docs = sum(s["tokens"] for s in splits), sum(s["documents"] for s in splits)
    return {"tokenizer": tokenizer, "documents": docs, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "docs_per_s": docs / seconds, "cache_hit_s": hit, "dataset": ds}


def bench_loader(ds, *, world: int, packed: bool, steps: int, global_batch: int, seq_len: int, repeats: int = 3) -> dict:
    """Rank 0's steps/s, the median of `repeats` runs of `steps` steps (this VM's disk and page cache are noisy)."""
    micro = global_batch // world
    loader = ds.train_loader(seq_len=seq_len, global_batch=global_batch, micro_batch=micro, rank=0,
                             world_size=world, seed=0, packed=packed)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            loader.next_step()
        rates.append(steps / (time.perf_counter() - t0))
    steps_per_s = statistics.median(rates)
    tokens_per_s = steps_per_s * micro * seq_len
    return {"world_size": world, "packed": packed, "micro_batch": micro, "steps_per_s": steps_per_s,
            "rank_tokens_per_s": tokens_per_s, "headroom_vs_gpu": tokens_per_s / GPU_TOKENS_PER_S}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="benchmarks/results", help="data.json goes here")
    ap.add_argument("--hf-tokenizer", default="HuggingFaceTB/SmolLM-135M")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--global-batch", type=int, default=48)
    ap.add_argument("--seq-len", type=int, default=1024)
    args = ap.parse_args()

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "prepare": [], "loader": []}
    with tempfile.TemporaryDirectory() as cache:
        byte = bench_prepare("byte", Path(cache), None)
        ds = byte.pop("dataset")
        results["prepare"].append(byte)
        try:
            get_tokenizer(args.hf_tokenizer)
            hf = bench_prepare(args.hf_tokenizer, Path(cache), None)
            hf.pop("dataset")
            results["prepare"].append(hf)
        except DataError as e:
            results["prepare"].append({"tokenizer": args.hf_tokenizer, "skipped": str(e)})
        # the first pass right after prepare pays for page faults on freshly written shards: shown on its own
        results["loader_first_pass"] = bench_loader(ds, world=1, packed=False, steps=args.steps, repeats=1,
                                                    global_batch=args.global_batch, seq_len=args.seq_len)
        (ds.path / "train.bin").read_bytes()  # then the rest run from the page cache: they measure the loader's CPU cost
        for world in (1, 2):
            for packed in (False, True):
                results["loader"].append(bench_loader(ds, world=world, packed=packed, steps=args.steps,
                                                      global_batch=args.global_batch, seq_len=args.seq_len))

    print(f"\nprepare (stdlib corpus, {os.cpu_count()} cores)")
    print(f"{'tokenizer':<32} {'documents':>10} {'tokens':>12} {'seconds':>8} {'tokens/s':>12} {'cache hit':>10}")
    for r in results["prepare"]:
        if "skipped" in r:
            print(f"{r['tokenizer'][:32]:<32} skipped: {r['skipped']}")
        else:
            print(f"{r['tokenizer'][-32:]:<32} {r['documents']:>10,} {r['tokens']:>12,} {r['seconds']:>8.2f} "
                  f"{r['tokens_per_s']:>12,.0f} {r['cache_hit_s'] * 1e3:>8.1f}ms")
    print(f"\nloader (global batch {args.global_batch} x {args.seq_len}, one rank's share; GPU needs "
          f"{GPU_TOKENS_PER_S:,.0f} tokens/s per rank)")
    print(f"{'world':>5} {'packed':>7} {'micro':>6} {'steps/s':>9} {'tokens/s/rank':>14} {'x GPU':>7}")
    for r in [results["loader_first_pass"], *results["loader"]]:
        print(f"{r['world_size']:>5} {str(r['packed']):>7} {r['micro_batch']:>6} {r['steps_per_s']:>9.1f} "
              f"{r['rank_tokens_per_s']:>14,.0f} {r['headroom_vs_gpu']:>7.0f}"
              + ("  (first pass after prepare)" if r is results["loader_first_pass"] else ""))
    out = Path(args.out_dir, "data.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
