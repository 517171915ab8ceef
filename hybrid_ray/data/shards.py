"""Tokenize a source once into token shards on disk, split by document, cached under a key.

On-disk contract of one prepared dataset (a folder named `<source>-<tokenizer>-<key>`):
    train.bin, val.bin            raw tokens (uint16, or uint32 for vocabularies over 65535), EOS after every document
    train_docs.npy, val_docs.npy  int64 offset of each document's first token in its .bin
    tokenizer/                    the tokenizer, saved, so workers and checkpoints never need the hub
    manifest.json                 written last: a folder without it is not a dataset; it records the size and CRC32
                                  of every shard file (sizes are checked on every open, checksums by `verify`)
The folder is built under a temporary name and renamed into place when complete, under a file lock, so concurrent
`prepare` calls for one key write it once and a failure leaves nothing half-written.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hybrid_ray import storage
from hybrid_ray.data.sources import iter_documents, source_identity
from hybrid_ray.data.tokenizer import Tokenizer, get_tokenizer, tokenizer_identity
from hybrid_ray.errors import DataError
from hybrid_ray.node.cache import cache_root, locked
from hybrid_ray.spec import DataSpec

FORMAT_VERSION = 2
SHARD_FILES = tuple(f"{s}{ext}" for s in ("train", "val") for ext in (".bin", "_docs.npy"))
SPLITS = ("train", "val")
_SPLIT_SALT = b"hybrid-ray/split/v1"  # changing it reshuffles which documents are held out
_ENCODE_BATCH = 512


def cache_key(spec: DataSpec) -> tuple[str, dict[str, Any]]:
    """(short hash, what it hashes). seq_len and packed are not in it: they only change how the loader cuts tokens."""
    what = {
        "format": FORMAT_VERSION,
        "source": source_identity(spec),
        "tokenizer": tokenizer_identity(spec.tokenizer),
        "text_field": spec.text_field,
        "val_fraction": spec.val_fraction,
        "max_documents": spec.max_documents,
        "max_tokens": spec.max_tokens,
    }
    digest = hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=8).hexdigest()
    return digest, what


def dataset_dir(spec: DataSpec) -> Path:
    """Where `prepare_shards(spec)` puts (or finds) the shards."""
    return cache_root(spec) / _dir_name(spec, cache_key(spec)[0])


def prepare_shards(spec: DataSpec, *, progress: bool = False) -> Path:
    """Tokenize `spec`'s source into the cache unless it is already there; returns the dataset folder."""
    key, what = cache_key(spec)  # raises DataError for a missing path before anything is created
    final = cache_root(spec) / _dir_name(spec, key)
    return _build_once(final, lambda tmp: _write(spec, tmp, key, what, progress))


def publish(path: Path, store: str) -> str:
    """Copy a prepared dataset folder under `store` (a run's storage: shared by every node of a cluster), once;
    manifest.json goes last, so a copy that stopped part-way is never taken for a dataset. Returns its location."""
    target = storage.join(store, path.name)
    if storage.exists(storage.join(target, "manifest.json")):
        return target
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json"):
        storage.write_bytes(storage.join(target, *file.relative_to(path).parts), file.read_bytes())
    storage.write_bytes(storage.join(target, "manifest.json"), (path / "manifest.json").read_bytes())
    return target


def fetch(origin: str, spec: DataSpec) -> Path:
    """The dataset published at `origin`, copied into this node's cache on first use (once per node)."""
    final = cache_root(spec) / origin.rstrip("/").rsplit("/", 1)[-1]
    if not storage.exists(storage.join(origin, "manifest.json")):
        raise DataError(f"no prepared dataset at {origin}: the driver publishes it there before starting workers")
    return _build_once(final, lambda tmp: storage.copy_dir(origin, str(tmp)))


def _build_once(final: Path, build: Any) -> Path:
    """Make a dataset folder unless it is complete: built in a temporary folder, renamed into place, under a file
    lock, so concurrent processes build it once and a failure leaves nothing half-written."""
    if _complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(final.parent / f".{final.name}.lock"):
        if _complete(final):  # another process finished it while we waited for the lock
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed process; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            build(tmp)
            if final.exists():  # a folder without manifest.json (not written by us): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / "manifest.json").read_bytes())
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 at all
        raise DataError(f"{path} is not a prepared dataset (no readable manifest.json)") from e
    if not isinstance(manifest, dict):
        raise DataError(f"{path} is not a prepared dataset (its manifest.json is not a JSON object)")
    if manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"{path} has shard format {manifest.get('format')}, this version reads {FORMAT_VERSION}")
    return manifest


def check_files(path: Path, manifest: dict[str, Any], checksums: bool = False) -> None:
    """DataError unless every shard file has the size (and with `checksums`, the CRC32) the manifest records."""
    for name, meta in manifest["files"].items():
        file = path / name
        size = file.stat().st_size if file.exists() else None
        bad = "is missing" if size is None else f"is {size:,} bytes, not {meta['bytes']:,}" if size != meta["bytes"] else None
        if bad is None and checksums and storage.crc32(file) != meta["crc32"]:
            bad = "does not match its checksum"
        if bad:
            raise DataError(f"token shard {file} {bad}: the cache is damaged; delete {path} and run the same command "
                            "again to rebuild it")


def _write(spec: DataSpec, out: Path, key: str, what: dict[str, Any], progress: bool) -> None:
    tok = get_tokenizer(spec.tokenizer)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 65535 else np.uint32)
    writers = {s: _SplitWriter(out / f"{s}.bin", dtype) for s in SPLITS}
    read = _tokenize(spec, tok, writers, progress)
    _balance(writers, spec.source, read)
    splits = {s: w.close(out / f"{s}_docs.npy") for s, w in writers.items()}
    tok.save(out / "tokenizer")
    files = {name: {"bytes": (out / name).stat().st_size, "crc32": storage.crc32(out / name)} for name in SHARD_FILES}
    manifest = {
        "format": FORMAT_VERSION,
        "key": key,
        "task": "lm",
        "source": spec.source,
        "source_identity": what["source"],
        "tokenizer": spec.tokenizer,
        "tokenizer_identity": what["tokenizer"],
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "dtype": dtype.name,
        "text_field": spec.text_field,
        "val_fraction": spec.val_fraction,
        "max_documents": spec.max_documents,
        "max_tokens": spec.max_tokens,
        "splits": splits,
        "files": files,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _tokenize(spec: DataSpec, tok: Tokenizer, writers: dict[str, _SplitWriter], progress: bool) -> int:
    """Stream the source through the tokenizer into the split writers; returns the number of documents read."""
    limit = spec.max_tokens if spec.max_tokens is not None else float("inf")
    eos = np.array([tok.eos_id], dtype=np.int64)
    total, read = 0, 0
    docs = iter_documents(spec)
    if spec.max_documents is not None:
        docs = islice(docs, spec.max_documents)
    with tqdm(desc=f"tokenizing {spec.source}", unit=" docs", disable=not progress, file=sys.stderr) as bar:
        for texts in _batched(docs, _ENCODE_BATCH):
            for text, ids in zip(texts, tok.encode_batch(texts)):
                ids = np.concatenate([ids, eos])
                if total + len(ids) > limit:  # cut the last document to the limit, still ending in EOS
                    ids = ids[: int(limit) - total]
                    ids[-1] = tok.eos_id
                writers["val" if _is_val(text, spec.val_fraction) else "train"].add(ids)
                total += len(ids)
                read += 1
                if total >= limit:
                    return read
            bar.update(len(texts))
            bar.set_postfix(tokens=f"{total:,}", refresh=False)
    return read


class _SplitWriter:
    """Appends documents to one split's .bin. The newest document is held back, so that `_balance` can still move it
    to the other split when that one would otherwise end up empty."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.file = open(path, "wb")
        self.dtype = dtype
        self.starts = array("q")  # compact int64 offsets, not a list of Python ints
        self.written = 0
        self.pending: np.ndarray | None = None

    @property
    def documents(self) -> int:
        return len(self.starts) + (self.pending is not None)

    def add(self, ids: np.ndarray) -> None:
        self._flush()
        self.pending = ids

    def take_pending(self) -> np.ndarray:
        ids, self.pending = self.pending, None
        assert ids is not None
        return ids

    def close(self, docs_path: Path) -> dict[str, int]:
        self._flush()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        np.save(docs_path, np.frombuffer(self.starts, dtype=np.int64) if self.starts else np.zeros(0, np.int64))
        return {"documents": len(self.starts), "tokens": self.written, "bytes": self.written * self.dtype.itemsize}

    def _flush(self) -> None:
        if self.pending is not None:
            self.starts.append(self.written)
            self.file.write(self.pending.astype(self.dtype).tobytes())
            self.written += len(self.pending)
            self.pending = None


def _balance(writers: dict[str, _SplitWriter], source: str, read: int) -> None:
    """Both splits must hold a document: when the hash left one empty, move the other's last document over."""
    if read == 0:
        raise DataError(f"no documents in {source} (empty corpus)")
    if read == 1:
        raise DataError(f"{source} has a single document; at least 2 are needed for a train/validation split")
    for empty, full in (("val", "train"), ("train", "val")):
        if writers[empty].documents == 0:
            writers[empty].add(writers[full].take_pending())


def _is_val(text: str, fraction: float) -> bool:
    # by content, so identical documents always land in the same split
    h = hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=8, key=_SPLIT_SALT).digest()
    return int.from_bytes(h, "big") < fraction * 2**64


def _batched(items: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _complete(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def _dir_name(spec: DataSpec, key: str) -> str:
    source = spec.parsed
    if source.kind == "hf":
        name = source.hf_name.split("/")[-1]
        src = f"{name}_{source.hf_config}" if source.hf_config else name
    elif source.kind == "files":
        src = Path(source.path).name
    else:
        src = source.kind
    tok = Path(spec.tokenizer.rstrip("/")).name

    def slug(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._-")[:40] or "data"

    return f"{slug(src)}-{slug(tok)}-{key}"
