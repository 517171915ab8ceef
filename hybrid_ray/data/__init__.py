"""The data layer: sources -> tokenizer -> cached token shards -> per-rank, resumable batches.

    ds = prepare(DataSpec(source="stdlib"), progress=True)   # once on the driver; workers hit the cache
    loader = ds.train_loader(seq_len=1024, global_batch=48, micro_batch=24, rank=0, world_size=2, seed=0)
    micro_batches = loader.next_step()
"""

from hybrid_ray.data.dataset import Dataset, describe, prepare
from hybrid_ray.data.loader import Batch, BatchLoader
from hybrid_ray.data.shards import publish
from hybrid_ray.data.sources import iter_documents, source_identity
from hybrid_ray.data.tokenizer import Tokenizer, get_tokenizer, load_tokenizer

__all__ = [
    "Batch", "BatchLoader", "Dataset", "Tokenizer", "describe", "get_tokenizer", "iter_documents",
    "load_tokenizer", "prepare", "publish", "source_identity",
]
