"""The handle a training run holds: what was prepared, and loaders over it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybrid_ray.data.loader import Batch, BatchLoader, Blocks, TokenBlocks, eval_batches, whole_batches
from hybrid_ray.data.shards import check_files, fetch, prepare_shards, read_manifest
from hybrid_ray.data.synthetic import PAD_ID, MQARBlocks, MQARConfig, mqar_manifest, parse_mqar
from hybrid_ray.data.tokenizer import IdTokenizer, Tokenizer, load_tokenizer
from hybrid_ray.errors import DataError
from hybrid_ray.spec import DataSpec


def prepare(spec: DataSpec, *, progress: bool = False, origin: str | None = None) -> Dataset:
    """Tokenize the source into cached shards once (a cache hit returns at once) and return its handle; with `origin`
    (a dataset the driver published to shared storage), copy that into this node's cache instead.

    Safe to call from many processes at once: one writes, the others wait and then reuse it.
    """
    if spec.parsed.kind == "mqar":  # synthetic: nothing to write, examples are made on the fly
        return Dataset(path=None, manifest=mqar_manifest(parse_mqar(spec.parsed.options), spec.source))
    if origin is not None:
        return Dataset.open(fetch(origin, spec))
    return Dataset.open(prepare_shards(spec, progress=progress))


@dataclass(eq=False)
class Dataset:
    """A prepared dataset: its manifest, its tokenizer, and loaders over its train and validation splits."""

    path: Path | None  # the shard folder (None for synthetic tasks)
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        """A prepared dataset folder, e.g. one printed by `describe`; its shard sizes are checked."""
        manifest = read_manifest(Path(path))
        check_files(Path(path), manifest)
        return cls(path=Path(path), manifest=manifest)

    def verify(self) -> None:
        """Check every shard's checksum (DataError naming the damaged file)."""
        if self.path is not None:
            check_files(self.path, self.manifest, checksums=True)

    def sample_documents(self, split: str, n: int) -> list[str]:
        """The text of up to n documents spread over a split (synthetic tasks: their first examples, as ids)."""
        if self.path is None:
            blocks = self._blocks(split, MQARConfig(**self.manifest["mqar"]).example_len)
            return [self.tokenizer.decode(blocks.batch([i], False).input_ids[0]) for i in range(min(n, blocks.num_blocks))]
        tokens = np.memmap(self.path / f"{split}.bin", dtype=self.manifest["dtype"], mode="r")
        starts = np.load(self.path / f"{split}_docs.npy")
        ends = np.append(starts[1:], len(tokens))
        picks = (np.arange(min(n, len(starts))) * len(starts)) // max(min(n, len(starts)), 1)
        return [self.tokenizer.decode(tokens[starts[i]:ends[i]]) for i in picks]

    @property
    def task(self) -> str:
        """'lm' (next-token prediction over documents) or 'mqar'."""
        return self.manifest["task"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def model_vocab_size(self) -> int:
        """vocab_size rounded up to a multiple of 64, the embedding size the model uses."""
        return -(-self.vocab_size // 64) * 64

    @property
    def eos_id(self) -> int:
        return self.manifest["eos_id"]

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        if self.path is None:
            return IdTokenizer(self.vocab_size, PAD_ID, name="mqar")
        return load_tokenizer(self.path / "tokenizer")

    def train_loader(self, *, seq_len: int, global_batch: int, micro_batch: int, rank: int, world_size: int,
                     seed: int, packed: bool = False) -> BatchLoader:
        """This rank's endless, resumable stream of training micro batches."""
        return BatchLoader(self._blocks("train", seq_len), seq_len=seq_len, global_batch=global_batch,
                           micro_batch=micro_batch, rank=rank, world_size=world_size, seed=seed, packed=packed)

    def val_batches(self, *, seq_len: int, micro_batch: int, rank: int, world_size: int,
                    max_tokens: int | None = None, packed: bool = False) -> list[Batch]:
        """This rank's validation micro batches: blocks spread evenly over the whole split, at most `max_tokens`
        tokens of them (None: the full split), the same blocks on every call and for every world size."""
        return eval_batches(self._blocks("val", seq_len), seq_len=seq_len, micro_batch=micro_batch, rank=rank,
                            world_size=world_size, max_blocks=None if max_tokens is None else max_tokens // seq_len,
                            packed=packed)

    def epochs_for(self, steps: int, *, seq_len: int, global_batch: int) -> float:
        """Passes over the training split that `steps` steps make; above 1 the run repeats data."""
        return steps / whole_batches(self._blocks("train", seq_len).num_blocks, global_batch, seq_len)

    def _blocks(self, split: str, seq_len: int) -> Blocks:
        if seq_len < 2:
            raise DataError(f"seq_len must be >= 2, got {seq_len}")
        if self.path is None:
            return MQARBlocks(MQARConfig(**self.manifest["mqar"]), split, seq_len)
        return TokenBlocks(self.path / f"{split}.bin", self.path / f"{split}_docs.npy", self.manifest["dtype"], seq_len)


def describe(dataset: Dataset) -> str:
    """A few lines for humans: source, tokenizer, documents/tokens per split, shard sizes, cache path."""
    m = dataset.manifest
    lines = [f"source:    {m['source']}" + (f" (task {m['task']})" if m["task"] != "lm" else ""),
             f"tokenizer: {m['tokenizer']} (vocab {m['vocab_size']:,}, model vocab {dataset.model_vocab_size:,}, "
             f"eos {m['eos_id']})"]
    for split, s in m["splits"].items():
        kind = "examples" if m["task"] == "mqar" else "documents"
        size = f", {split}.bin {_size(s['bytes'])}" if dataset.path is not None else ""
        lines.append(f"{split + ':':<10} {s['documents']:,} {kind}, {s['tokens']:,} tokens{size}")
    lines.append(f"cache:     {dataset.path}" if dataset.path is not None else "cache:     none (generated on the fly)")
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
