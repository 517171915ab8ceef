"""Token shards: split by document, EOS placement, the cache (reuse, invalidation, atomicity, locking), limits."""

import json
import threading
import time

import numpy as np
import pytest

from hybrid_ray.data import Dataset, describe, prepare, shards
from hybrid_ray.data.shards import cache_key
from hybrid_ray.data.tokenizer import ByteTokenizer
from hybrid_ray.errors import DataError
from hybrid_ray.spec import DataSpec


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


SEQ = 16


def corpus(path, n=400, dup_every=25):
    """n documents of varied text; every dup_every-th repeats an earlier one (duplicates must share a split)."""
    texts = [f"document {i}: " + "héllo wörld " * (i % 7 + 1) for i in range(n)]
    for i in range(0, n, dup_every):
        texts[i] = texts[1]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return texts


def spec_for(path, cache, **kw):
    return DataSpec(source=str(path), cache_dir=str(cache), **kw)


def split_docs(ds, split):
    """The split's documents decoded back from the .bin, each ending in EOS."""
    tokens = np.fromfile(ds.path / f"{split}.bin", dtype=ds.manifest["dtype"])
    starts = np.load(ds.path / f"{split}_docs.npy")
    ends = list(starts[1:]) + [len(tokens)]
    return [tokens[s:e] for s, e in zip(starts, ends)]


def cache_dirs(cache):
    return sorted(p.name for p in cache.iterdir() if p.is_dir()) if cache.exists() else []


def test_split_is_by_document_and_disjoint(tmp_path):
    texts = corpus(tmp_path / "c.jsonl")
    ds = prepare(spec_for(tmp_path / "c.jsonl", tmp_path / "cache", val_fraction=0.1))
    train = [ds.tokenizer.decode(d) for d in split_docs(ds, "train")]
    val = [ds.tokenizer.decode(d) for d in split_docs(ds, "val")]
    assert val and train
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(texts)  # nothing lost, nothing invented
    m = ds.manifest["splits"]
    assert m["train"]["documents"] == len(train) and m["val"]["documents"] == len(val)
    assert 0.03 < len(val) / len(texts) < 0.25


def test_eos_ends_every_document(tmp_path):
    corpus(tmp_path / "c.jsonl", n=50)
    ds = prepare(spec_for(tmp_path / "c.jsonl", tmp_path / "cache"))
    for split in ("train", "val"):
        tokens = np.fromfile(ds.path / f"{split}.bin", dtype=np.uint16)
        starts = np.load(ds.path / f"{split}_docs.npy")
        assert tokens[-1] == ds.eos_id
        assert (tokens[starts[1:] - 1] == ds.eos_id).all()
        assert (tokens == ds.eos_id).sum() == len(starts)  # the byte tokenizer never emits EOS inside text


def test_both_splits_get_a_document(tmp_path):
    (tmp_path / "two.jsonl").write_text('{"text": "first"}\n{"text": "second"}\n')
    ds = prepare(spec_for(tmp_path / "two.jsonl", tmp_path / "cache", val_fraction=0.001))
    assert ds.manifest["splits"]["train"]["documents"] == 1 and ds.manifest["splits"]["val"]["documents"] == 1


def test_manifest_and_handle(tmp_path):
    corpus(tmp_path / "c.jsonl", n=20)
    ds = prepare(spec_for(tmp_path / "c.jsonl", tmp_path / "cache"))
    m = ds.manifest
    assert (m["format"], m["task"], m["tokenizer"], m["dtype"]) == (shards.FORMAT_VERSION, "lm", "byte", "uint16")
    assert (ds.vocab_size, ds.model_vocab_size, ds.eos_id, ds.task) == (257, 320, 256, "lm")
    assert m["splits"]["train"]["bytes"] == (ds.path / "train.bin").stat().st_size
    assert ds.tokenizer.decode(ds.tokenizer.encode("ü")) == "ü"
    text = describe(ds)
    assert "documents" in text and str(ds.path) in text and "train.bin" in text


def test_cache_hit_returns_the_same_folder_without_rewriting(tmp_path):
    corpus(tmp_path / "c.jsonl", n=50)
    spec = spec_for(tmp_path / "c.jsonl", tmp_path / "cache")
    first = prepare(spec)
    stamp = (first.path / "train.bin").stat().st_mtime_ns
    again = prepare(spec)
    assert again.path == first.path and (again.path / "train.bin").stat().st_mtime_ns == stamp
    assert cache_dirs(tmp_path / "cache") == [first.path.name]
    # seq_len and packed only change the loader, not the shards
    assert prepare(spec_for(tmp_path / "c.jsonl", tmp_path / "cache", seq_len=64, packed=True)).path == first.path


def test_cache_key_changes_with_what_shapes_the_shards(tmp_path):
    corpus(tmp_path / "c.jsonl", n=50)
    base = spec_for(tmp_path / "c.jsonl", tmp_path / "cache")
    key = cache_key(base)[0]
    for change in ({"tokenizer": "HuggingFaceTB/SmolLM-135M"}, {"val_fraction": 0.1}, {"max_documents": 10},
                   {"max_tokens": 1000}, {"text_field": "body"}):
        assert cache_key(spec_for(tmp_path / "c.jsonl", tmp_path / "cache", **change))[0] != key, change
    first = prepare(base)
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"text": "one more document"}\n')
    second = prepare(base)
    assert second.path != first.path
    assert second.manifest["splits"]["train"]["documents"] + second.manifest["splits"]["val"]["documents"] == 51


def test_env_cache_root(tmp_path, monkeypatch):
    corpus(tmp_path / "c.jsonl", n=10)
    monkeypatch.setenv("HYBRID_RAY_CACHE", str(tmp_path / "envcache"))
    ds = prepare(DataSpec(source=str(tmp_path / "c.jsonl")))
    assert ds.path.parent == tmp_path / "envcache"


def test_limits(tmp_path):
    corpus(tmp_path / "c.jsonl", n=200)
    ds = prepare(spec_for(tmp_path / "c.jsonl", tmp_path / "cache", max_documents=30))
    assert sum(s["documents"] for s in ds.manifest["splits"].values()) == 30
    ds = prepare(spec_for(tmp_path / "c.jsonl", tmp_path / "cache", max_tokens=1234))
    assert sum(s["tokens"] for s in ds.manifest["splits"].values()) == 1234
    assert all(d[-1] == ds.eos_id for split in ("train", "val") for d in split_docs(ds, split))


def test_large_vocabularies_use_uint32(tmp_path, monkeypatch):
    class WideBytes(ByteTokenizer):
        vocab_size, eos_id = 70_000, 69_999

    monkeypatch.setattr(shards, "get_tokenizer", lambda name: WideBytes())
    corpus(tmp_path / "c.jsonl", n=40)
    ds = prepare(spec_for(tmp_path / "c.jsonl", tmp_path / "cache"))
    assert ds.manifest["dtype"] == "uint32" and ds.eos_id == 69_999
    assert all(d[-1] == 69_999 for d in split_docs(ds, "train"))
    (b,) = ds.train_loader(seq_len=SEQ, global_batch=2, micro_batch=2, rank=0, world_size=1, seed=0).next_step()
    assert int(b.input_ids.max()) <= 69_999


def test_stdlib_default_needs_no_network(tmp_path):
    ds = prepare(DataSpec(source="stdlib", max_documents=200, cache_dir=str(tmp_path)))
    assert sum(s["documents"] for s in ds.manifest["splits"].values()) == 200
    assert ds.manifest["source_identity"]["kind"] == "stdlib"
    first = ds.tokenizer.decode(split_docs(ds, "train")[0])
    assert "def " in first or "import" in first


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no documents") as e:
        prepare(spec_for(tmp_path / "empty.jsonl", tmp_path / "cache"))
    assert "\n" not in str(e.value)
    assert cache_dirs(tmp_path / "cache") == []


def test_failure_midway_leaves_nothing_half_written(tmp_path):
    texts = [json.dumps({"text": f"doc {i}"}) for i in range(1500)]
    texts[1200] = '{"text": broken'  # after two encode batches were already written
    (tmp_path / "c.jsonl").write_text("\n".join(texts) + "\n")
    with pytest.raises(DataError, match="c.jsonl:1201: invalid JSON"):
        prepare(spec_for(tmp_path / "c.jsonl", tmp_path / "cache"))
    assert cache_dirs(tmp_path / "cache") == []


@pytest.mark.parametrize("source", ["missing.jsonl", "bad.parquet", "hf:HuggingFaceTB/smollm-corpus:cosmopedia-v2"])
def test_bad_sources_raise_one_line_and_write_nothing(tmp_path, source):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    src = source if source.startswith("hf:") else str(tmp_path / source)
    with pytest.raises(DataError) as e:
        prepare(spec_for(src, tmp_path / "cache"))
    assert "\n" not in str(e.value)
    assert cache_dirs(tmp_path / "cache") == []


def test_unknown_tokenizer_writes_nothing(tmp_path):
    corpus(tmp_path / "c.jsonl", n=10)
    with pytest.raises(DataError, match="could not load tokenizer"):
        prepare(spec_for(tmp_path / "c.jsonl", tmp_path / "cache", tokenizer="no-such-org/no-such-tokenizer"))
    assert cache_dirs(tmp_path / "cache") == []


def test_concurrent_prepares_write_once(tmp_path, monkeypatch):
    corpus(tmp_path / "c.jsonl", n=50)
    spec = spec_for(tmp_path / "c.jsonl", tmp_path / "cache")
    calls = []
    real_write = shards._write

    def slow_write(*args):
        calls.append(1)
        time.sleep(0.3)  # keep the lock held while the other caller arrives
        real_write(*args)

    monkeypatch.setattr(shards, "_write", slow_write)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(prepare(spec).path)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(paths)) == 1 and len(paths) == 3
    assert cache_dirs(tmp_path / "cache") == [paths[0].name]


def test_stale_temp_folder_is_cleaned(tmp_path):
    corpus(tmp_path / "c.jsonl", n=10)
    spec = spec_for(tmp_path / "c.jsonl", tmp_path / "cache")
    final = shards.dataset_dir(spec)
    stale = final.parent / f".{final.name}.tmp-killed"
    stale.mkdir(parents=True)
    (stale / "train.bin").write_bytes(b"partial")
    prepare(spec)
    assert cache_dirs(tmp_path / "cache") == [final.name]


def test_a_damaged_shard_is_one_line_that_says_how_to_rebuild(tmp_path):
    corpus(tmp_path / "c.jsonl")
    spec = spec_for(tmp_path / "c.jsonl", tmp_path / "cache")
    ds = prepare(spec)
    assert set(ds.manifest["files"]) == {"train.bin", "train_docs.npy", "val.bin", "val_docs.npy"}
    ds.verify()
    train_bin = ds.path / "train.bin"
    data = train_bin.read_bytes()
    train_bin.write_bytes(data[: len(data) // 2])  # truncated: caught on every open, by size
    with pytest.raises(DataError, match=f"token shard {train_bin} is {len(data) // 2:,} bytes, not {len(data):,}: "
                                        f"the cache is damaged; delete {ds.path} and run the same command again"):
        prepare(spec)
    train_bin.write_bytes(data[:-2] + bytes([data[-2] ^ 1, data[-1]]))  # same size, one bit flipped
    ds = prepare(spec)  # sizes match: opening is cheap and does not read the shards
    with pytest.raises(DataError, match="does not match its checksum"):
        ds.verify()


def test_a_folder_typed_two_ways_is_one_cache(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    corpus(tmp_path / "corpus" / "c.jsonl")
    monkeypatch.chdir(tmp_path)
    a = prepare(DataSpec(source="corpus/", cache_dir=str(tmp_path / "cache")))
    b = prepare(DataSpec(source=str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache")))
    assert a.path == b.path and cache_dirs(tmp_path / "cache") == [a.path.name]


@pytest.mark.parametrize("content", [b"", b"[1]", bytes(range(128, 256))])
def test_a_damaged_manifest_is_a_data_error(tmp_path, content):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(DataError, match="is not a prepared dataset"):
        Dataset.open(tmp_path)
