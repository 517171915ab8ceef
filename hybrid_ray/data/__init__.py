"""The data layer: sources -> tokenizer -> cached token shards -> per-rank, resumable batches.

    ds = prepare(DataSpec(source="stdlib"), progress=True)   # once on the driver; workers hit the cache
    loader = ds.train_loader(seq_len=1024, global_batch=48, micro_batch=24, rank=0, world_size=2, seed=0)
    micro_batches = loader.next_step()

The names are imported on first use: `generate` reads a tokenizer (data/tokenizer.py) without the shard writer and
the loader behind `prepare` (tqdm, the node cache, the synthetic tasks).
"""

from __future__ import annotations

from hybrid_ray.lazy import exports

_HOMES = {
    "Dataset": "dataset", "describe": "dataset", "prepare": "dataset",
    "Batch": "loader", "BatchLoader": "loader",
    "publish": "shards",
    "iter_documents": "sources", "source_identity": "sources",
    "Tokenizer": "tokenizer", "get_tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
}
__all__ = sorted(_HOMES)
__getattr__ = exports(__name__, _HOMES)
