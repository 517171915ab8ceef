"""Downstream evaluation of a trained model: ARC and HellaSwag scored by the log-likelihood of the answer tokens only
(`acc` by the sum, `acc_norm` by the sum over the answer's length in characters, as common evaluation harnesses report
them), LAMBADA (last-word accuracy and perplexity), and perplexity on any data source the data layer reads.

Task data come from the Hugging Face hub when it is reachable, else from `--data`: a local file or folder of JSON,
JSONL or parquet records as the hub serves them, or as the tasks' authors distribute them (AI2's ARC-*.jsonl, Rowan's
hellaswag_*.jsonl): LAYOUTS.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hybrid_ray import storage
from hybrid_ray.data.hub import hub_available
from hybrid_ray.errors import DataError, SpecError, first_line, suggest
from hybrid_ray.layout import RunLayout
from hybrid_ray.model.precision import autocast
from hybrid_ray.records import folders
from hybrid_ray.startup import Startup

# task -> (hub dataset, config, split)
HUB = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "lambada": ("EleutherAI/lambada_openai", "default", "test"),
}
TASKS = (*HUB, "perplexity", "recall")
MAX_CONTEXT = 2048  # tokens kept of a long context (from its end)
BATCH = 16  # rows per scoring batch on a CPU
BATCH_TOKENS_CPU = 4096  # padded tokens per scoring batch
BATCH_ROWS_GPU, BATCH_TOKENS_GPU = 256, 32768


@dataclass
class Example:
    context: str
    continuations: list[str]
    gold: int


def _records(path: Path) -> Iterator[dict[str, Any]]:
    files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl", ".parquet")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path} holds no .json, .jsonl or .parquet task file")
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                yield from pq.read_table(file).to_pylist()
            except Exception as e:
                raise DataError(f"cannot read {file}: {first_line(e)}") from e
            continue
        text = file.read_text(errors="replace")
        try:
            data = json.loads(text)
            rows = data if isinstance(data, list) else data.get("data", data.get("rows", [data]))
        except json.JSONDecodeError:
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                try:
                    rows += [json.loads(line)] if line.strip() else []
                except json.JSONDecodeError as e:
                    raise DataError(f"{file}:{number}: not JSON or JSONL ({e.msg})") from e
        for row in rows:
            yield row.get("row", row) if isinstance(row, dict) else row


def _hub_records(task: str) -> Iterator[dict[str, Any]]:
    name, config, split = HUB[task]
    if not hub_available():
        raise DataError(f"the Hugging Face hub is unreachable: give the {task} data with --data FILE_OR_FOLDER "
                        f"(records as {name} serves them)")
    import datasets

    try:
        yield from datasets.load_dataset(name, config, split=split)
    except Exception as e:
        raise DataError(f"cannot load {name}: {first_line(e)}") from e


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


# the record layouts each task accepts, named in the error for a record that fits none of them
LAYOUTS = {
    "arc": 'the Hugging Face layout {"question": "...", "choices": {"text": [...], "label": [...]}, "answerKey"} or '
           'AI2\'s own ARC-*.jsonl {"question": {"stem", "choices": [{"label", "text"}, ...]}, "answerKey"}',
    "hellaswag": '{"activity_label", "ctx_a", "ctx_b" (or "ctx"), "endings": [...], "label"} (the Hugging Face '
                 'layout and Rowan\'s own hellaswag_*.jsonl; the unlabelled test split cannot be scored)',
    "lambada": '{"text": "... last word"}',
}


def _arc(record: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """(question, choice texts, choice labels) of an ARC record in either layout."""
    question = record["question"]
    if isinstance(question, dict):  # AI2's distribution: the choices inside the question
        choices = question["choices"]
        stem, texts, labels = question["stem"], [c["text"] for c in choices], [c["label"] for c in choices]
    else:  # Hugging Face's allenai/ai2_arc
        stem, texts, labels = question, list(record["choices"]["text"]), list(record["choices"]["label"])
    if not isinstance(stem, str) or not all(isinstance(t, str) for t in texts) or len(texts) != len(labels):
        raise ValueError("the question and its choices must be text, one label per choice")
    return stem, texts, [str(label) for label in labels]


def parse(task: str, record: Any, where: str) -> Example:
    """One task record in one of its usual layouts (LAYOUTS); DataError naming the record and the layouts when it
    fits none."""
    try:
        if task.startswith("arc"):
            question, texts, labels = _arc(record)
            return Example(f"Question: {question}\nAnswer:", [f" {t}" for t in texts],
                           labels.index(str(record["answerKey"])))
        if task == "hellaswag":
            # as evaluation harnesses build it: ctx_a and ctx_b capitalized (ctx alone when a record has only that)
            ctx = (f"{record['ctx_a']} {record['ctx_b'].capitalize()}" if "ctx_a" in record and "ctx_b" in record
                   else record["ctx"])
            endings = record["endings"]
            if isinstance(endings, str) or not all(isinstance(e, str) for e in endings):
                raise ValueError("endings must be a list of texts")
            gold = int(record["label"])
            if not 0 <= gold < len(endings):
                raise IndexError(f"label {gold} out of range for {len(endings)} endings")
            return Example(_hellaswag_text(f"{record['activity_label']}: {ctx}"),
                           [f" {_hellaswag_text(e)}" for e in endings], gold)
        context, _, word = record["text"].strip().rpartition(" ")
        if not context:
            raise ValueError("a single word")
        return Example(context, [f" {word}"], 0)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        layouts = LAYOUTS["arc" if task.startswith("arc") else task]
        raise DataError(f"{where}: not a valid {task} record ({type(e).__name__}: {first_line(e)}); expected "
                        f"{layouts}") from e


def load_examples(task: str, data: str | None = None, limit: int | None = None) -> list[Example]:
    if task not in HUB:
        raise SpecError(f"unknown task {task!r}{suggest(task, TASKS)}; choose one of {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise SpecError(f"--limit must be >= 1, got {limit}")
    if data is not None and not Path(data).expanduser().exists():
        raise DataError(f"task data not found: {data}")
    source = _records(Path(data).expanduser()) if data else _hub_records(task)
    examples = []
    for i, record in enumerate(source):
        if limit is not None and i >= limit:
            break
        examples.append(parse(task, record, f"{data or HUB[task][0]} record {i}"))
    if not examples:
        raise DataError(f"no {task} records in {data or HUB[task][0]}")
    return examples


def batch_rows(widths: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Row indices in batches, longest first (little padding), each within `max_tokens` padded tokens and `max_rows`
    rows (a row longer than `max_tokens` goes alone)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(widths)), key=lambda i: -widths[i]):
        if batches and len(batches[-1]) < max_rows and (len(batches[-1]) + 1) * widths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, tokenizer: Any, device: torch.device, pairs: list[tuple[str, str]], *,
                   max_tokens: int | None = None, max_rows: int | None = None) -> list[tuple[float, bool, int]]:
    """For each (context, continuation): the summed log-probability of the continuation's tokens given the context,
    whether greedy decoding would produce exactly them, and how many there are. Rows of similar length are
    right-padded into batches (a causal model's earlier positions never see the padding); only the answer positions'
    logits are normalised, and each batch's scores come back to the host at once."""
    from hybrid_ray.inference.generate import forward

    encoded = []
    for context, continuation in pairs:
        ctx, cont = tokenizer.encode(context).tolist(), tokenizer.encode(continuation).tolist()
        if not cont:
            raise DataError(f"an answer tokenizes to nothing: {continuation!r}")
        ctx = (ctx or [tokenizer.eos_id])[-MAX_CONTEXT:]
        encoded.append((ctx, cont))
    gpu = device.type == "cuda"
    max_tokens = max_tokens or (BATCH_TOKENS_GPU if gpu else BATCH_TOKENS_CPU)
    max_rows = max_rows or (BATCH_ROWS_GPU if gpu else BATCH)
    out: list[tuple[float, bool, int]] = [(0.0, False, 0)] * len(encoded)
    for members in batch_rows([len(c) + len(a) - 1 for c, a in encoded], max_tokens, max_rows):
        chunk = [encoded[i] for i in members]
        width = max(len(c) + len(a) - 1 for c, a in chunk)
        answer = max(len(a) for _, a in chunk)
        ids = torch.full((len(chunk), width), tokenizer.eos_id, dtype=torch.long)
        positions = torch.zeros(len(chunk), answer, dtype=torch.long)  # where each answer token is predicted
        targets = torch.zeros(len(chunk), answer, dtype=torch.long)
        mask = torch.zeros(len(chunk), answer, dtype=torch.bool)
        for row, (ctx, cont) in enumerate(chunk):
            seq = (ctx + cont)[:-1]
            ids[row, :len(seq)] = torch.tensor(seq)
            positions[row, :len(cont)] = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont))
            targets[row, :len(cont)] = torch.tensor(cont)
            mask[row, :len(cont)] = True
        positions, targets, mask = positions.to(device), targets.to(device), mask.to(device)
        with autocast(device, "auto"):
            logits, _ = forward(model, ids.to(device), None, use_cache=False)
        picked = logits[torch.arange(len(chunk), device=device)[:, None], positions].float()  # [rows, answer, V]
        logprobs = picked.log_softmax(-1)
        scores = logprobs.gather(-1, targets[..., None])[..., 0].masked_fill(~mask, 0.0).sum(-1)
        greedy = ((logprobs.argmax(-1) == targets) | ~mask).all(-1)
        for i, value, hit in zip(members, scores.tolist(), greedy.tolist()):
            out[i] = (value, hit, len(encoded[i][1]))
    return out


def stderr(values: list[float]) -> float:
    """Standard error of a mean: sample standard deviation over sqrt(n) (for 0/1 values, sqrt(p(1-p)/(n-1)))."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def score(task: str, examples: list[Example], results: list[tuple[float, bool, int]]) -> dict[str, Any]:
    """acc / acc_norm with standard errors for multiple choice; accuracy and perplexity for LAMBADA."""
    if task == "lambada":
        acc = [float(greedy) for _, greedy, _ in results]
        return {"acc": sum(acc) / len(acc), "acc_stderr": stderr(acc),
                "perplexity": math.exp(-sum(ll for ll, _, _ in results) / len(results))}
    acc, acc_norm, it = [], [], iter(results)
    for ex in examples:
        lls = [next(it)[0] for _ in ex.continuations]
        normed = [ll / len(c) for ll, c in zip(lls, ex.continuations)]
        acc.append(float(max(range(len(lls)), key=lls.__getitem__) == ex.gold))
        acc_norm.append(float(max(range(len(normed)), key=normed.__getitem__) == ex.gold))
    return {"acc": sum(acc) / len(acc), "acc_stderr": stderr(acc),
            "acc_norm": sum(acc_norm) / len(acc_norm), "acc_norm_stderr": stderr(acc_norm)}


def perplexity(model: torch.nn.Module, tokenizer_folder: str, device: torch.device, data: str,
               seq_len: int) -> dict[str, Any]:
    """Token-level loss and perplexity over the validation split of a data source, tokenized with the model's own
    tokenizer, saved in `tokenizer_folder` (the same blocks any model with this tokenizer is scored on)."""
    from hybrid_ray import data as data_lib
    from hybrid_ray.evals.loss import evaluate
    from hybrid_ray.spec import DataSpec

    dataset = data_lib.prepare(DataSpec(source=data, tokenizer=tokenizer_folder, seq_len=seq_len))
    batches = dataset.val_batches(seq_len=seq_len, micro_batch=8, rank=0, world_size=1)
    metrics = evaluate(model, batches, device, "auto", dataset.task)
    return {"loss": metrics["val_loss"], "perplexity": metrics["val_perplexity"], "accuracy": metrics["val_accuracy"],
            "tokens": metrics["val_tokens"], "data": data}


def recall_of_run(path: str, run: dict[str, Any] | None, backend: str, seq_len: int | None,
                  startup: Startup | None) -> dict[str, Any]:
    """The recall probes (evals/recall.py) on a run's model, over its own data's validation split."""
    from hybrid_ray import data as data_lib
    from hybrid_ray.evals import recall
    from hybrid_ray.inference.generate import load_for_inference
    from hybrid_ray.spec import RunSpec

    if run is None or not run.get("spec"):
        raise SpecError(f"--task recall needs a run folder (its spec names the data the copy probe reads): {path}")
    spec = RunSpec.from_dict(run["spec"])
    dataset = data_lib.prepare(spec.data)
    model, _, device = load_for_inference(path, backend, startup)
    return recall.score_recall(model, dataset, device, seq_len=seq_len or spec.data.seq_len)


def evaluate_task(path: str, task: str, *, data: str | None = None, limit: int | None = None, backend: str = "auto",
                  seq_len: int | None = None, startup: Startup | None = None) -> dict[str, Any]:
    """Score the model of a run (or model folder) on a task; the result also goes into the run's eval/<task>.json and
    its results.json under "evals". `startup` times the phases of loading the model (the command prints them)."""
    from hybrid_ray.inference.generate import load_for_inference, model_dir, tokenizer_dir

    if task not in TASKS:
        raise SpecError(f"unknown task {task!r}{suggest(task, TASKS)}; choose one of {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise SpecError(f"--limit must be >= 1, got {limit}")
    folder = model_dir(path)
    run = folders.read_results(RunLayout(path)) if folder != path else None
    if task == "perplexity":
        if data is None:
            raise SpecError("--task perplexity needs --data (any data source: a file, folder, glob, stdlib, hf:...)")
        model, _, device = load_for_inference(path, backend, startup)
        seq_len = seq_len or ((run or {}).get("spec", {}).get("data", {}).get("seq_len")) or 1024
        result = {"task": task, **perplexity(model, tokenizer_dir(folder), device, data, seq_len)}
    elif task == "recall":
        result = {"task": task, **recall_of_run(path, run, backend, seq_len, startup)}
    else:
        examples = load_examples(task, data, limit)
        model, tokenizer, device = load_for_inference(path, backend, startup)
        pairs = [(ex.context, c) for ex in examples for c in ex.continuations]
        start = time.perf_counter()
        scored = score(task, examples, loglikelihoods(model, tokenizer, device, pairs))
        seconds = time.perf_counter() - start
        result = {"task": task, "examples": len(examples), **scored, "seconds": round(seconds, 3),
                  "examples_per_s": round(len(examples) / max(seconds, 1e-9), 2)}
    if run is not None:
        storage.write_bytes(RunLayout(path).eval(task), folders.dumps(result).encode())
        folders.write_results(RunLayout(path), {**run, "evals": {**run.get("evals", {}), task: result}})
    return result


def evaluate_on_cluster(paths: list[str], task: str, *, address: str | None = None, data: str | None = None,
                        limit: int | None = None, seq_len: int | None = None) -> list[dict[str, Any]]:
    """evaluate_task for each path as Ray tasks, on GPU workers when the cluster has GPUs (the paths must be on storage
    the workers reach). A sweep evaluates its finished arms this way."""
    import ray

    from hybrid_ray import cluster

    cluster.connect(address)
    gpus = 1 if cluster.resources().get("GPU", 0) >= 1 else 0
    remote = ray.remote(num_gpus=gpus, num_cpus=1)(evaluate_task)
    return ray.get([remote.remote(p, task, data=data, limit=limit, seq_len=seq_len) for p in paths])
