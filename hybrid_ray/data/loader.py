"""Per-rank, resumable batches from token shards.

The train token stream is cut into non-overlapping blocks of seq_len tokens. Epoch e visits the blocks in the order
`default_rng([seed, e]).permutation(num_blocks)`; global step t takes perm[t*GB:(t+1)*GB] (an epoch's leftover of
fewer than GB blocks is dropped). Rank r takes the contiguous share [r*GB/W, (r+1)*GB/W) of that and cuts it into
micro batches in order. So the loader's whole state is the number of steps served, and which blocks make up a
global step does not depend on the world size: a run can resume on a different number of workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from hybrid_ray.errors import DataError

log = logging.getLogger(__name__)
IGNORE = -100  # label value the loss skips


@dataclass
class Batch:
    """One micro batch. The model shifts labels itself: position j's logits are scored against labels[:, j + 1]."""

    input_ids: torch.Tensor  # int64 [micro_batch, seq_len], or [1, micro_batch * seq_len] when packed
    labels: torch.Tensor  # same shape; IGNORE where nothing is predicted
    cu_seqlens: torch.Tensor | None = None  # int32 segment starts + total length, packed mode only

    @property
    def num_tokens(self) -> int:
        """Tokens that count in the loss."""
        return int((self.labels != IGNORE).sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        cu = None if self.cu_seqlens is None else self.cu_seqlens.to(device, non_blocking=non_blocking)
        return Batch(self.input_ids.to(device, non_blocking=non_blocking),
                     self.labels.to(device, non_blocking=non_blocking), cu)


class Blocks(Protocol):
    """A split cut into `num_blocks` equal rows that can be turned into a Batch."""

    num_blocks: int

    def batch(self, idx: np.ndarray, packed: bool) -> Batch: ...


class TokenBlocks:
    """Blocks of seq_len tokens read straight from a split's .bin memmap."""

    def __init__(self, bin_path: Path, docs_path: Path, dtype: str, seq_len: int) -> None:
        itemsize = np.dtype(dtype).itemsize
        self.seq_len = seq_len
        self.num_blocks = bin_path.stat().st_size // itemsize // seq_len
        # the tail shorter than one block is never read; memmap of zero rows is not allowed, hence the guard
        self.tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(self.num_blocks, seq_len)) if self.num_blocks else None
        self.doc_starts = np.load(docs_path, mmap_mode="r")

    def batch(self, idx: np.ndarray, packed: bool) -> Batch:
        assert self.tokens is not None
        x = torch.from_numpy(self.tokens[idx].astype(np.int64))
        if not packed:
            return Batch(x, x.clone())
        L = self.seq_len
        starts = []
        for row, block in enumerate(idx):
            lo, hi = int(block) * L, (int(block) + 1) * L
            inner = self.doc_starts[np.searchsorted(self.doc_starts, lo, "right"): np.searchsorted(self.doc_starts, hi)]
            starts.append(np.concatenate([[row * L], inner - lo + row * L]))  # the row's start and its documents'
        cu = np.concatenate([*starts, [len(idx) * L]]).astype(np.int32)
        flat = x.reshape(1, -1)
        labels = flat.clone()
        labels[0, torch.from_numpy(cu[:-1].astype(np.int64))] = IGNORE  # nothing is predicted across a boundary
        return Batch(flat, labels, torch.from_numpy(cu))


def whole_batches(num_blocks: int, global_batch: int, seq_len: int) -> int:
    """Global batches in one pass over the training split; DataError when not even one fits."""
    if num_blocks < global_batch:
        raise DataError(f"the training split has {num_blocks} blocks of {seq_len} tokens, fewer than one global batch "
                        f"of {global_batch}; use more data, a smaller batch or a shorter seq_len")
    return num_blocks // global_batch


def check_layout(global_batch: int, micro_batch: int, rank: int, world_size: int) -> int:
    """The number of micro batches per rank per step; DataError when the numbers do not divide."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    if micro_batch < 1 or global_batch % (world_size * micro_batch):
        raise DataError(f"global batch {global_batch} is not divisible by world size {world_size} x micro batch {micro_batch}")
    return global_batch // (world_size * micro_batch)


class BatchLoader:
    """This rank's micro batches, step after step, endlessly (epochs roll over); resumable via state_dict()."""

    def __init__(self, blocks: Blocks, *, seq_len: int, global_batch: int, micro_batch: int, rank: int,
                 world_size: int, seed: int, packed: bool = False) -> None:
        self.accum = check_layout(global_batch, micro_batch, rank, world_size)
        self.steps_per_epoch = whole_batches(blocks.num_blocks, global_batch, seq_len)
        self.blocks, self.seq_len, self.global_batch, self.micro_batch = blocks, seq_len, global_batch, micro_batch
        self.rank, self.world_size, self.seed, self.packed = rank, world_size, seed, packed
        self.step = 0  # global optimizer steps served so far: the whole state
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    @property
    def epoch(self) -> float:
        """Completed epochs, fractional."""
        return self.step / self.steps_per_epoch

    def next_step(self) -> list[Batch]:
        """This rank's `accum` micro batches for the next optimizer step."""
        epoch, pos = divmod(self.step, self.steps_per_epoch)
        if pos == 0 and epoch > 0 and self.rank == 0:
            log.warning("training data repeats: starting epoch %d of the training split", epoch + 1)
        share = self.global_batch // self.world_size
        start = pos * self.global_batch + self.rank * share
        mine = self._permutation(epoch)[start: start + share]
        self.step += 1
        mb = self.micro_batch
        return [self.blocks.batch(mine[i * mb:(i + 1) * mb], self.packed) for i in range(self.accum)]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable; world size and rank are not in it, so a run may resume on another number of workers."""
        return {"step": self.step, **self._layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in self._layout().items():
            if state.get(name) != value:
                raise DataError(f"loader state was saved with {name}={state.get(name)}, this run has {value}; "
                                "resume with the same data, seed, seq_len and global batch size")
        self.step = int(state["step"])

    def _layout(self) -> dict[str, int]:
        return {"seed": self.seed, "seq_len": self.seq_len, "global_batch": self.global_batch,
                "num_blocks": self.blocks.num_blocks}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.blocks.num_blocks)
            self._perm_epoch = epoch
        return self._perm


def eval_batches(blocks: Blocks, *, seq_len: int, micro_batch: int, rank: int, world_size: int,
                 max_blocks: int | None = None, packed: bool = False) -> list[Batch]:
    """This rank's share of a split's validation blocks, in micro batches of at most `micro_batch`.

    With `max_blocks` (fewer than the split has), that many blocks spread evenly over the whole split; else every
    block. The chosen blocks depend on neither rank nor world size, so every run is scored on the same tokens; rank r
    takes the r-th of `world_size` contiguous shares (metrics are summed over ranks before dividing).
    """
    n = blocks.num_blocks
    if n == 0:
        raise DataError(f"the validation split has no block of {seq_len} tokens; raise data.val_fraction, add data "
                        "or shorten seq_len")
    k = n if max_blocks is None else max(1, min(max_blocks, n))
    chosen = (np.arange(k) * n) // k  # evenly spread, strictly increasing since n / k >= 1
    mine = np.array_split(chosen, world_size)[rank]
    return [blocks.batch(mine[i:i + micro_batch], packed) for i in range(0, len(mine), micro_batch)]
