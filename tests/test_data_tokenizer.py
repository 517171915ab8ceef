"""Tokenizers: the byte tokenizer's round trip and edge cases, a local Hugging Face tokenizer, save/load, errors."""

import numpy as np
import pytest

from hybrid_ray.data.tokenizer import ByteTokenizer, HFTokenizer, IdTokenizer, get_tokenizer, load_tokenizer
from hybrid_ray.errors import DataError


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_hf_tokenizer(path):
    """A tiny byte-level BPE saved as a transformers tokenizer folder, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(path))
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
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == len(tok._tok) and tok.eos_id == 0
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
