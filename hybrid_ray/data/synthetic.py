"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"): a task attention solves and linear attention
struggles with as the number of key-value pairs grows, so it separates the two layer types cheaply.

One example, with P pairs and Q queries (keys and values come from disjoint id ranges, 0 is padding/EOS):
    k1 v1 k2 v2 ... kP vP   q1 a1 q2 a2 ... qQ aQ   0 0 ...
where each q is one of the keys (no repeats) and a is its value. Only the a positions carry labels. Example i of a
split is drawn from `default_rng([seed, split, i])`, so any example can be made on its own, in any order.
Source string: `mqar?pairs=16&queries=16&vocab=256&train_examples=20000&val_examples=512&seed=0` (all optional).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch

from hybrid_ray.data.loader import IGNORE, Batch
from hybrid_ray.errors import DataError, suggest

PAD_ID = 0
_SPLIT_IDS = {"train": 0, "val": 1}


@dataclass(frozen=True, kw_only=True)
class MQARConfig:
    pairs: int = 16
    queries: int = 0  # 0: one query per pair
    vocab: int = 256
    train_examples: int = 20000
    val_examples: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.queries == 0:
            object.__setattr__(self, "queries", self.pairs)
        if self.pairs < 1 or not 1 <= self.queries <= self.pairs:
            raise DataError(f"mqar needs pairs >= 1 and 1 <= queries <= pairs, got pairs={self.pairs} queries={self.queries}")
        if self.num_keys < self.pairs or self.vocab - 1 - self.num_keys < 1:
            raise DataError(f"mqar vocab={self.vocab} is too small for {self.pairs} distinct keys; "
                            f"use vocab >= {2 * self.pairs + 1}")
        if self.train_examples < 1 or self.val_examples < 1:
            raise DataError("mqar train_examples and val_examples must be >= 1")

    @property
    def num_keys(self) -> int:
        """Keys are ids 1..num_keys, values the ids above."""
        return (self.vocab - 1) // 2

    @property
    def example_len(self) -> int:
        return 2 * (self.pairs + self.queries)


def parse_mqar(options: str) -> MQARConfig:
    """The options of a source 'mqar?pairs=8&vocab=128' ('pairs=8&vocab=128') -> MQARConfig; unknown or
    non-integer options are a DataError."""
    known = {f.name for f in dataclasses.fields(MQARConfig)}
    values = {}
    for key, value in parse_qsl(options, keep_blank_values=True):
        if key not in known:
            raise DataError(f"unknown mqar option {key!r}{suggest(key, known)} (options: {', '.join(sorted(known))})")
        try:
            values[key] = int(value)
        except ValueError as e:
            raise DataError(f"mqar option {key} must be an integer, got {value!r}") from e
    return MQARConfig(**values)


def make_example(cfg: MQARConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels), int64, of length cfg.example_len; labels hold the answers, IGNORE elsewhere."""
    rng = np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])
    keys = rng.choice(cfg.num_keys, size=cfg.pairs, replace=False) + 1
    values = rng.integers(cfg.num_keys + 1, cfg.vocab, size=cfg.pairs)
    asked = rng.permutation(cfg.pairs)[: cfg.queries]
    p2 = 2 * cfg.pairs
    ids = np.empty(cfg.example_len, dtype=np.int64)
    ids[0:p2:2], ids[1:p2:2] = keys, values
    ids[p2::2], ids[p2 + 1::2] = keys[asked], values[asked]
    labels = np.full(cfg.example_len, IGNORE, dtype=np.int64)
    labels[p2 + 1::2] = values[asked]
    return ids, labels


def mqar_manifest(cfg: MQARConfig, source: str) -> dict[str, Any]:
    """The Dataset manifest of an MQAR task (nothing is written to disk: examples are made on the fly)."""
    return {"task": "mqar", "source": source, "tokenizer": "ids", "vocab_size": cfg.vocab, "eos_id": PAD_ID,
            "mqar": dataclasses.asdict(cfg),
            "splits": {s: {"documents": n, "tokens": n * cfg.example_len, "bytes": 0}
                       for s, n in (("train", cfg.train_examples), ("val", cfg.val_examples))}}


class MQARBlocks:
    """One split of MQAR examples, each padded to seq_len: the loader's `Blocks` for this task."""

    def __init__(self, cfg: MQARConfig, split: str, seq_len: int) -> None:
        if seq_len < cfg.example_len:
            raise DataError(f"mqar with {cfg.pairs} pairs and {cfg.queries} queries needs "
                            f"seq_len >= {cfg.example_len}, got {seq_len}")
        self.cfg, self.split, self.seq_len = cfg, split, seq_len
        self.num_blocks = cfg.train_examples if split == "train" else cfg.val_examples

    def batch(self, idx: np.ndarray, packed: bool) -> Batch:
        if packed:
            raise DataError("packed mode is not supported for mqar (each example is already one sequence)")
        ids = np.full((len(idx), self.seq_len), PAD_ID, dtype=np.int64)
        labels = np.full((len(idx), self.seq_len), IGNORE, dtype=np.int64)
        n = self.cfg.example_len
        for row, i in enumerate(idx):
            ids[row, :n], labels[row, :n] = make_example(self.cfg, self.split, int(i))
        return Batch(torch.from_numpy(ids), torch.from_numpy(labels))
