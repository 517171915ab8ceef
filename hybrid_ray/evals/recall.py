"""In-context recall probes any trained causal LM can take, with no download: what attention buys a hybrid.

Two probes, each at several settings, each setting scored by its accuracy and the standard error of that accuracy
over its examples (an example's accuracy is the share of its scored tokens predicted exactly, by argmax):

- MQAR (`MQARProbe`): the multi-query associative recall examples of `data/synthetic.py` (its `make_example`, from
  the validation split's seed), keys and values drawn from ids 1..min(vocab, the run's vocabulary) - 1, with the
  key-value pairs at the start of a context of `length` tokens, the queries at its end and padding (id 0, as in
  Zoology) between them. Scored on the answers. Chance is about one in (vocab // 2) values.
- Copy (`CopyProbe`): a span of `span` tokens of the run's own validation text, the text that follows it, then the
  span again, `length` tokens in all (the second occurrence starts `length - span` tokens after the first). Scored
  on the second occurrence's tokens after its first (the first cannot be known to repeat); `baseline` is the same
  tokens' accuracy at their first occurrence, what the model predicts without copying.

Context lengths are shares of the model's sequence length, so the probes scale from the tiny preset to the H100
base; a setting that does not fit (pairs too many for the length or the vocabulary) is left out. `score` is the
mean accuracy over all settings, its standard error from theirs. Deterministic (examples from fixed seeds, validation
blocks chosen by the data layer), batched within the training micro batch's tokens, and split over ranks (each rank
scores a contiguous share; the sums are all-reduced, so every rank returns the same numbers).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from hybrid_ray.data.loader import IGNORE
from hybrid_ray.data.synthetic import PAD_ID, MQARConfig, make_example
from hybrid_ray.errors import DataError
from hybrid_ray.model.precision import autocast


@dataclass(frozen=True, kw_only=True)
class MQARProbe:
    """Multi-query associative recall at each (pairs, length) that fits; one query per pair."""

    pairs: tuple[int, ...] = (4, 16, 64)
    lengths: tuple[float, ...] = (0.25, 0.5, 1.0)  # context lengths as shares of the model's sequence length
    examples: int = 32  # per setting
    vocab: int = 256  # keys and values come from ids below min(vocab, the run's vocabulary)
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class CopyProbe:
    """A span of validation text repeated later in the context, at each length that holds it twice."""

    span: int = 16
    lengths: tuple[float, ...] = (0.25, 0.5, 1.0)
    examples: int = 32


@dataclass(frozen=True, kw_only=True)
class RecallProbes:
    """The probes a run takes (None: left out). Synthetic data sets have no validation text: no copy probe there."""

    mqar: MQARProbe | None = field(default_factory=MQARProbe)
    copy: CopyProbe | None = field(default_factory=CopyProbe)


@dataclass
class Setting:
    """One probe setting: its examples, all of one length, and what describes it in the results."""

    name: str
    ids: torch.Tensor  # int64 [examples, length]
    labels: torch.Tensor  # IGNORE except at the scored positions (labels[:, j] is predicted at j - 1)
    info: dict[str, Any]
    baseline: torch.Tensor | None = None  # labels scored for the copy probe's first occurrence


def _lengths(shares: tuple[float, ...], seq_len: int) -> list[int]:
    return sorted({max(2, int(round(s * seq_len))) for s in shares if 0 < s <= 1})


def mqar_settings(probe: MQARProbe, seq_len: int, vocab_size: int) -> list[Setting]:
    """The MQAR settings that fit a model of `seq_len` tokens and a vocabulary of `vocab_size` ids."""
    out = []
    for length in _lengths(probe.lengths, seq_len):
        for pairs in sorted(set(probe.pairs)):
            try:
                cfg = MQARConfig(pairs=pairs, vocab=min(probe.vocab, vocab_size), val_examples=probe.examples,
                                 seed=probe.seed)
            except DataError:
                continue  # too many keys for the vocabulary
            if cfg.example_len > length:
                continue
            ids = torch.full((probe.examples, length), PAD_ID, dtype=torch.long)
            labels = torch.full((probe.examples, length), IGNORE, dtype=torch.long)
            p2, queries = 2 * cfg.pairs, 2 * cfg.queries
            for i in range(probe.examples):
                x, y = make_example(cfg, "val", i)
                ids[i, :p2], labels[i, :p2] = torch.from_numpy(x[:p2]), torch.from_numpy(y[:p2])
                ids[i, length - queries:] = torch.from_numpy(x[p2:])
                labels[i, length - queries:] = torch.from_numpy(y[p2:])
            out.append(Setting(f"mqar_p{pairs}_l{length}", ids, labels,
                               {"probe": "mqar", "pairs": pairs, "length": length, "vocab": cfg.vocab,
                                "chance": 1 / (cfg.vocab - 1 - cfg.num_keys)}))
    return out


def copy_settings(probe: CopyProbe, dataset: Any, seq_len: int) -> list[Setting]:
    """The copy settings over `dataset`'s validation split (the same blocks for every run of that data)."""
    out = []
    for length in _lengths(probe.lengths, seq_len):
        if length < 2 * probe.span:
            continue
        blocks = dataset.val_batches(seq_len=length, micro_batch=probe.examples, rank=0, world_size=1,
                                     max_tokens=probe.examples * length)
        text = torch.cat([b.input_ids for b in blocks])
        s, first = probe.span, length - probe.span
        ids = torch.cat([text[:, :first], text[:, :s]], dim=1)
        labels = torch.full_like(ids, IGNORE)
        labels[:, first + 1:] = ids[:, first + 1:]
        baseline = torch.full_like(ids, IGNORE)
        baseline[:, 1:s] = ids[:, 1:s]
        out.append(Setting(f"copy_d{first}_l{length}", ids, labels,
                           {"probe": "copy", "span": s, "distance": first, "length": length}, baseline))
    return out


def settings(probes: RecallProbes, dataset: Any, seq_len: int) -> list[Setting]:
    """Every setting of `probes` for a run on `dataset` with sequences of `seq_len` tokens."""
    out = mqar_settings(probes.mqar, seq_len, dataset.vocab_size) if probes.mqar else []
    if probes.copy and dataset.task == "lm":
        out += copy_settings(probes.copy, dataset, seq_len)
    return out


def _accuracy_rows(model: torch.nn.Module, ids: torch.Tensor, masks: list[torch.Tensor], device: torch.device,
                   precision: str) -> list[torch.Tensor]:
    """Per row, the share of each mask's positions predicted exactly (the model's shift: logits at j - 1)."""
    ids = ids.to(device)
    with autocast(device, precision):
        logits = model(input_ids=ids).logits
    right = logits[:, :-1].argmax(-1) == ids[:, 1:]
    out = []
    for mask in masks:
        m = mask[:, 1:].to(device) != IGNORE
        out.append((right & m).sum(-1).double() / m.sum(-1).clamp(min=1).double())
    return out


@torch.no_grad()
def score_setting(model: torch.nn.Module, setting: Setting, device: torch.device, precision: str = "auto", *,
                  tokens: int = 4096, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Sums over this setting's examples (this rank's share, all ranks summed): [n, sum acc, sum acc^2, sum baseline
    acc]. Every rank makes the same number of forward passes (FSDP's are collective), rows of `tokens // length`."""
    n, length = setting.ids.shape
    share = -(-n // world_size)
    mine = range(min(n, rank * share), min(n, (rank + 1) * share))
    rows = max(1, tokens // length)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for start in range(0, share, rows):
        pick = list(mine[start:start + rows])
        weight = torch.ones(len(pick), dtype=torch.float64, device=device)
        if not pick:  # this rank's share ran out: a pass over one row that counts for nothing
            pick, weight = [0], torch.zeros(1, dtype=torch.float64, device=device)
        masks = [setting.labels[pick]] + ([setting.baseline[pick]] if setting.baseline is not None else [])
        acc = _accuracy_rows(model, setting.ids[pick], masks, device, precision)
        sums[0] += weight.sum()
        sums[1] += (weight * acc[0]).sum()
        sums[2] += (weight * acc[0] ** 2).sum()
        if len(acc) > 1:
            sums[3] += (weight * acc[1]).sum()
    if world_size > 1:
        from hybrid_ray.evals.loss import sum_over_ranks

        sum_over_ranks(sums)
    return sums


def _mean_stderr(n: float, total: float, squares: float) -> tuple[float, float]:
    mean = total / max(n, 1)
    if n < 2:
        return mean, float("nan")
    variance = max(squares - n * mean * mean, 0.0) / (n - 1)
    return mean, math.sqrt(variance / n)


def score_recall(model: torch.nn.Module, dataset: Any, device: torch.device, *, seq_len: int,
                 precision: str = "auto", probes: RecallProbes | None = None, tokens: int | None = None,
                 rank: int = 0, world_size: int = 1, prepared: list[Setting] | None = None) -> dict[str, Any]:
    """Score a model on the recall probes: {"score", "score_stderr", "mqar", "copy", "settings": {name: {accuracy,
    stderr, examples, ...}}, "seconds"}. A collective when world_size > 1 (every rank calls it; all get the same
    numbers). `prepared`: the settings made once (`settings`), for a caller that scores often; `tokens`: tokens per
    forward pass (default: the larger of seq_len and 4096; the training micro batch's tokens fit)."""
    started = time.perf_counter()
    chosen = prepared if prepared is not None else settings(probes or RecallProbes(), dataset, seq_len)
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    if device.type == "cpu":
        # one thread, as a training worker and decoding have: on 2 busy shared cores the tiny preset's probes took
        # 38-46 s with two threads (each op waiting for the second) and 0.8-1.4 s with one
        torch.set_num_threads(1)
    try:
        results = {}
        for s in chosen:
            n, total, squares, base = score_setting(model, s, device, precision, tokens=tokens or max(seq_len, 4096),
                                                    rank=rank, world_size=world_size).tolist()
            accuracy, stderr = _mean_stderr(n, total, squares)
            results[s.name] = {"accuracy": accuracy, "stderr": stderr, "examples": int(n), **s.info}
            if s.baseline is not None:
                results[s.name]["baseline"] = base / max(n, 1)
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    return {**summarize(results), "settings": results, "seconds": round(time.perf_counter() - started, 3)}


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The summary numbers of per-setting results: the mean accuracy over all settings (score) and per probe, each
    with its standard error (settings are independent samples: the errors add in quadrature)."""

    def mean(rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
        if not rows:
            return None, None
        errors = [r["stderr"] for r in rows]
        stderr = math.sqrt(sum(e * e for e in errors)) / len(rows) if all(math.isfinite(e) for e in errors) else float("nan")
        return sum(r["accuracy"] for r in rows) / len(rows), stderr

    out: dict[str, Any] = {}
    for key, rows in (("score", list(results.values())),
                      ("mqar", [r for r in results.values() if r["probe"] == "mqar"]),
                      ("copy", [r for r in results.values() if r["probe"] == "copy"])):
        out[key], out[f"{key}_stderr"] = mean(rows)
    return out

