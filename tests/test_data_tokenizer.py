"""Tokenizers: the byte tokenizer's round trip and edge cases, a local Hugging Face tokenizer, save/load, errors."""

import numpy as np
import pytest

from hybrid_ray.data.tokenizer import (
    ByteTokenizer,
    FastTokenizer,
    HFTokenizer,
    IdTokenizer,
    _load_hf,
    get_tokenizer,
    load_tokenizer,
)
from hybrid_ray.errors import DataError


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_hf_tokenizer(path, layout="generic"):
    """A tiny byte-level BPE saved as a transformers tokenizer folder, built offline: `generic` (tokenizer.json of
    transformers' generic class), `gpt2` (GPT2TokenizerFast's save: tokenizer.json naming GPT2Tokenizer) or
    `gpt2-files` (GPT-2's vocab.json and merges.txt alone, as older hub folders hold)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 20, trainer)
    if layout == "gpt2-files":
        path.mkdir(parents=True)
        tok.model.save(str(path))
        (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    else:
        kind = PreTrainedTokenizerFast if layout == "generic" else GPT2TokenizerFast
        kind(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(path))
    return path


@pytest.mark.parametrize("text", ["", "hello", "héllo wörld ✓ 日本語 🙂", "tab\tnew\nline\x00nul"])
def test_byte_round_trip(text):
    tok = get_tokenizer("byte")
    ids = tok.encode(text)
    assert ids.dtype.kind == "i" and (ids < 256).all()
    assert tok.decode(ids) == text
    assert [t.tolist() for t in tok.encode_batch([text, "x"])] == [ids.tolist(), [ord("x")]]


def test_byte_decode_survives_bad_input():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id) == (257, 256)
    assert tok.decode([104, 105, 256, 999, -1]) == "hi"  # EOS and out-of-range ids are skipped
    assert tok.decode([0xFF, 0xFE, 104]) == "\ufffd\ufffdh"  # invalid UTF-8 is replaced, not raised
    assert tok.decode(np.array([[104], [105]])) == "hi"


def test_byte_save_load(tmp_path):
    get_tokenizer("byte").save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    IdTokenizer(64, 0, name="mqar").save(tmp_path / "ids")
    ids = load_tokenizer(tmp_path / "ids")
    assert (ids.name, ids.vocab_size, ids.eos_id) == ("mqar", 64, 0)
    assert ids.decode(ids.encode("3 4 5")) == "3 4 5"


def test_local_hf_tokenizer(tmp_path):
    tok = get_tokenizer(str(make_hf_tokenizer(tmp_path / "tok")))
    assert isinstance(tok, FastTokenizer)  # read without transformers (issue 47)
    assert tok.vocab_size == len(_load_hf(str(tmp_path / "tok"))._tok) and tok.eos_id == 0
    ids = tok.encode("hello world")
    assert tok.decode(ids) == "hello world" and tok.eos_id not in ids.tolist()  # no special tokens added
    tok.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert again.encode("the lazy dog").tolist() == tok.encode("the lazy dog").tolist()


def test_local_hf_tokenizer_through_prepare(tmp_path):
    from hybrid_ray.data import prepare
    from hybrid_ray.spec import DataSpec

    tok_dir = make_hf_tokenizer(tmp_path / "tok")
    (tmp_path / "c.txt").write_text("hello world, the quick brown fox")
    (tmp_path / "d.txt").write_text("over the lazy dog")
    ds = prepare(DataSpec(source=str(tmp_path / "*.txt"), tokenizer=str(tok_dir), cache_dir=str(tmp_path / "cache")))
    assert ds.vocab_size == ds.tokenizer.vocab_size and ds.eos_id == 0 and ds.manifest["dtype"] == "uint16"
    tokens = np.concatenate([np.fromfile(ds.path / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert (tokens == 0).sum() == 2 and tokens[-1] == 0
    assert sorted(ds.tokenizer.decode(t) for t in np.split(tokens, np.flatnonzero(tokens == 0)[:-1] + 1)) == [
        "hello world, the quick brown fox", "over the lazy dog"]


def test_unknown_tokenizer_is_one_line_with_a_hint():
    with pytest.raises(DataError, match="could not load tokenizer") as e:
        get_tokenizer("no-such-org/no-such-tokenizer")
    assert "\n" not in str(e.value) and "byte" in str(e.value)


def test_load_tokenizer_from_missing_folder(tmp_path):
    with pytest.raises(DataError):
        load_tokenizer(tmp_path / "missing")


TEXTS = ["", "hello world", " hello  world ", "héllo wörld ✓ 日本語 🙂", "tab\tnew\nline\x00nul",
         "<|endoftext|>x<|endoftext|>", "def main(x):\n    return x + 1  # ok?!", "Isn't it? 'quoted' , spaced ."]


@pytest.mark.parametrize("layout", ["generic", "gpt2", "gpt2-files"])
def test_tokenizers_reads_a_folder_as_transformers_does(tmp_path, layout):
    """Issue 47: generate and eval read a local tokenizer folder with `tokenizers` alone (transformers' import is a
    second or more of their start-up); the ids, the text, the vocabulary and EOS are transformers' own."""
    folder = make_hf_tokenizer(tmp_path / "tok", layout)
    fast, hf = load_tokenizer(folder), _load_hf(str(folder))
    assert isinstance(fast, FastTokenizer) and isinstance(hf, HFTokenizer)
    assert (fast.vocab_size, fast.eos_id) == (hf.vocab_size, hf.eos_id) == (297, 0)
    for text in TEXTS:
        ids = fast.encode(text).tolist()
        assert ids == hf.encode(text).tolist(), text
        assert fast.decode([*ids, fast.eos_id, 5]) == hf.decode([*ids, hf.eos_id, 5]), text
    assert [a.tolist() for a in fast.encode_batch(TEXTS)] == [a.tolist() for a in hf.encode_batch(TEXTS)]
    fast.save(tmp_path / "copy")  # a model folder's copy reads back the same
    assert load_tokenizer(tmp_path / "copy").encode(TEXTS[-2]).tolist() == fast.encode(TEXTS[-2]).tolist()


def test_a_folder_tokenizers_cannot_read_alone_loads_with_transformers(tmp_path):
    """Another tokenizer class (transformers 5 builds each class's pipeline in its own code) is left to transformers."""
    import json

    folder = make_hf_tokenizer(tmp_path / "tok")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "BloomTokenizer"}))
    assert FastTokenizer.read(folder) is None
    assert isinstance(load_tokenizer(folder), HFTokenizer)
