"""Tokenizers: a built-in UTF-8 byte tokenizer, any Hugging Face tokenizer, and the id tokenizer of synthetic tasks.

All share one small interface (`Tokenizer`); `save(dir)` + `load_tokenizer(dir)` put one next to a model. A local
Hugging Face folder whose ids the `tokenizers` library gives by itself (a tokenizer.json of the generic class, or
GPT-2's byte-level BPE from tokenizer.json or vocab.json + merges.txt) is read with `tokenizers` alone
(`FastTokenizer`: 0.01 s of imports, where transformers takes a second or more); any other one, and hub names, with
transformers (`HFTokenizer`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hybrid_ray.data.hub import hub_available
from hybrid_ray.errors import DataError, first_line

OWN_FILE = "hybrid_ray_tokenizer.json"  # not tokenizer.json: that name belongs to Hugging Face


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> np.ndarray: ...
    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...
    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...
    def save(self, directory: str | Path) -> None: ...


class ByteTokenizer:
    """Ids 0..255 are the UTF-8 bytes of the text, 256 is EOS. Needs no files."""

    name = "byte"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> np.ndarray:
        # "replace": lone surrogates (from files read with errors="surrogateescape") must not crash encoding
        return np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        arr = np.asarray(ids, dtype=np.int64).ravel()
        return arr[(arr >= 0) & (arr < 256)].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        """Our own file, plus a tokenizer.json with the same ids so that transformers' AutoTokenizer reads it too."""
        _write_json(directory, {"type": "byte", "vocab_size": self.vocab_size, "eos_id": self.eos_id})
        _byte_level_hf_tokenizer().save_pretrained(str(directory))


class IdTokenizer:
    """For synthetic tasks whose tokens are bare ids: text is the ids written out, space separated."""

    def __init__(self, vocab_size: int, eos_id: int, name: str = "ids") -> None:
        self.name, self.vocab_size, self.eos_id = name, vocab_size, eos_id

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.array([int(t) for t in text.split()], dtype=np.int32)
        except ValueError as e:
            raise DataError(f"the {self.name} tokenizer reads space-separated integer ids, got {text[:40]!r}") from e

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return " ".join(str(int(i)) for i in np.asarray(ids).ravel())

    def save(self, directory: str | Path) -> None:
        _write_json(directory, {"type": "ids", "name": self.name, "vocab_size": self.vocab_size, "eos_id": self.eos_id})


class HFTokenizer:
    """A transformers tokenizer; documents are encoded without BOS/EOS (the shard writer adds EOS itself)."""

    def __init__(self, name: str, tok: Any) -> None:
        eos = tok.eos_token_id
        if eos is None:
            raise DataError(f"tokenizer {name!r} has no EOS token; hybrid-ray separates documents with EOS")
        tok.model_max_length = 1 << 60  # documents are cut into blocks later; silence the "too long" warning
        self.name, self._tok = name, tok
        self.vocab_size, self.eos_id = len(tok), int(eos)

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = self._tok(list(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return [np.asarray(ids, dtype=np.int32) for ids in out]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        # special tokens (EOS between documents) are dropped, as the byte tokenizer drops its EOS
        return self._tok.decode([int(i) for i in np.asarray(ids).ravel()], skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        self._tok.save_pretrained(str(directory))


# what FastTokenizer.save copies from the folder it was read from (what transformers' save_pretrained writes, or a hub
# folder holds)
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
            "added_tokens.json")
_GENERIC = (None, "TokenizersBackend", "PreTrainedTokenizerFast")  # transformers loads tokenizer.json as it is
_GPT2 = ("GPT2Tokenizer", "GPT2TokenizerFast")  # transformers rebuilds GPT-2's byte-level BPE from its vocab and merges
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


class FastTokenizer:
    """A local Hugging Face tokenizer folder read with the `tokenizers` library alone, giving the ids and text that
    transformers' tokenizer of the folder gives (no BOS/EOS added; special tokens dropped when decoding)."""

    def __init__(self, name: str, core: Any, eos_id: int, folder: Path) -> None:
        core.no_truncation()  # transformers turns off what tokenizer.json may set, for every call without truncation
        core.no_padding()
        self.name, self._core, self._folder = name, core, folder
        self.vocab_size, self.eos_id = core.get_vocab_size(with_added_tokens=True), eos_id

    @classmethod
    def read(cls, folder: str | Path) -> FastTokenizer | None:
        """The folder's tokenizer, or None where transformers would read it differently (another tokenizer class,
        a SentencePiece model, text clean-up after decoding): that one loads with transformers."""
        d = Path(folder)
        try:
            config = _json_or_empty(d / "tokenizer_config.json")
            specials = _json_or_empty(d / "special_tokens_map.json")
            kind = config.get("tokenizer_class")
            if (d / "added_tokens.json").exists():  # the legacy file: transformers' reading of it is its own
                return None
            if kind in _GPT2:
                core = _gpt2_core(d, config)
            elif kind in _GENERIC and (d / "tokenizer.json").exists():
                from tokenizers import Tokenizer as Core

                core = Core.from_file(str(d / "tokenizer.json"))  # with its added tokens
                if config.get("clean_up_tokenization_spaces") and type(core.model).__name__ != "BPE":
                    return None
            else:
                return None
            named = _named_specials(config, specials, kind)
            if core is None or named is None or not _add_specials(core, config, named):
                return None
        except Exception:  # a file `tokenizers` cannot read: transformers reads it, or says in one line why not
            return None
        eos = named.get("eos_token")
        eos_id = core.token_to_id(eos) if eos else None
        if eos_id is None:
            raise DataError(f"tokenizer {str(d)!r} has no EOS token; hybrid-ray separates documents with EOS")
        return cls(str(folder), core, int(eos_id), d)

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encoded = self._core.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encoded]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._core.decode([int(i) for i in np.asarray(ids).ravel()], skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        """The folder's own tokenizer files, copied."""
        import shutil

        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        if target.resolve() == self._folder.resolve():
            return
        for name in HF_FILES:
            if (self._folder / name).exists():
                shutil.copyfile(self._folder / name, target / name)


def _json_or_empty(path: Path) -> dict:
    value = json.loads(path.read_bytes()) if path.exists() else {}
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")
    return value


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken's dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _named_specials(config: dict, specials: dict, kind: str | None) -> dict[str, str] | None:
    """bos/eos/unk/pad as transformers names them: tokenizer_config.json, then special_tokens_map.json, then the GPT-2
    class's defaults (None where a value is not a token)."""
    defaults = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    named = {}
    for key in _SPECIAL:
        value = config[key] if key in config else specials.get(key, defaults.get(key) if kind in _GPT2 else None)
        if value is not None and _token_text(value) is None:
            return None
        if value is not None:
            named[key] = _token_text(value)
    return named


def _gpt2_core(d: Path, config: dict) -> Any:
    """GPT-2's byte-level BPE as transformers' GPT2Tokenizer builds it (its own pre-tokenizer and decoder around the
    folder's vocabulary and merges): tokenizer.json read by `tokenizers` when its BPE is the one GPT2Tokenizer makes,
    else vocab.json and merges.txt; None when the folder holds neither as GPT2Tokenizer reads it."""
    from tokenizers import Tokenizer as Core
    from tokenizers import decoders, models, pre_tokenizers

    if (d / "tokenizer.json").exists():
        core = Core.from_file(str(d / "tokenizer.json"))  # with its added tokens
        bpe = core.model
        if type(bpe).__name__ != "BPE" or bpe.dropout is not None or bpe.continuing_subword_prefix or \
                bpe.end_of_word_suffix or bpe.fuse_unk or bpe.byte_fallback or bpe.ignore_merges or bpe.unk_token:
            return None
        core.normalizer = None
    elif (d / "vocab.json").exists() and (d / "merges.txt").exists():
        vocab = json.loads((d / "vocab.json").read_bytes())
        lines = (d / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        core = Core(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
    else:
        return None
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    core.decoder = decoders.ByteLevel()
    return core


def _add_specials(core: Any, config: dict, named: dict[str, str]) -> bool:
    """Register tokenizer_config.json's added tokens (tokenizer.json's are in `core` already) and the named special
    tokens with `core`, as transformers does; False when an added token would not keep its recorded id."""
    from tokenizers import AddedToken

    wanted = {int(id_): entry for id_, entry in (config.get("added_tokens_decoder") or {}).items()}
    for entry in wanted.values():
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            return False
    recorded = {entry["content"]: id_ for id_, entry in wanted.items()}
    tokens = [AddedToken(e["content"], single_word=e.get("single_word", False), lstrip=e.get("lstrip", False),
                         rstrip=e.get("rstrip", False), normalized=e.get("normalized", not e.get("special", False)),
                         special=e.get("special", False)) for e in wanted.values()]
    core.add_special_tokens([t for t in tokens if t.special])
    core.add_tokens([t for t in tokens if not t.special])
    core.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in named.values()
                             if text not in recorded])
    return all(core.token_to_id(text) == id_ for text, id_ in recorded.items())


def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, which byte-level tokenizers in `tokenizers` use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + len(chars) - len(printable))
    return chars


def _byte_level_hf_tokenizer() -> Any:
    """The byte tokenizer as a transformers PreTrainedTokenizerFast: byte b is id b, EOS is 256, no merges."""
    from tokenizers import Tokenizer as HFCore
    from tokenizers import decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: b for b, char in _gpt2_byte_chars().items()}
    eos = "<|endoftext|>"
    core = HFCore(models.BPE(vocab={**vocab, eos: ByteTokenizer.eos_id}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([eos])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos)


def get_tokenizer(name: str) -> Tokenizer:
    """'byte' for the built-in tokenizer, else a Hugging Face tokenizer by hub name or local path."""
    if name == "byte":
        return ByteTokenizer()
    if not name.strip():
        raise DataError("the tokenizer name is empty; use byte, a Hugging Face name or a local folder")
    folder = Path(name).expanduser()
    if folder.is_dir() and (fast := FastTokenizer.read(folder)) is not None:
        return fast
    return _load_hf(name)


def saved_in(directory: str | Path) -> bool:
    """Whether `Tokenizer.save` wrote a tokenizer into `directory` (ours, or transformers' save_pretrained)."""
    return any(Path(directory, name).exists() for name in (OWN_FILE, "tokenizer_config.json"))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Read back what `Tokenizer.save(directory)` wrote."""
    d = Path(directory)
    if (d / OWN_FILE).exists():
        try:
            meta = json.loads((d / OWN_FILE).read_bytes())
            if meta.get("type") == "ids":
                return IdTokenizer(meta["vocab_size"], meta["eos_id"], meta.get("name", "ids"))
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
            raise DataError(f"the tokenizer file {d / OWN_FILE} is damaged: {first_line(e)}") from e
        return ByteTokenizer()
    if not d.is_dir():
        raise DataError(f"no tokenizer saved in {d}")
    return FastTokenizer.read(d) or _load_hf(str(d))


def tokenizer_identity(name: str) -> Any:
    """What the shard cache key records for a tokenizer: its name, or for a local folder its files' sizes and mtimes."""
    path = Path(name).expanduser()
    if name == "byte" or not path.exists():
        return name  # built in, or a hub name
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {"path": str(path.resolve()), "files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def _load_hf(name: str) -> HFTokenizer:
    from transformers import AutoTokenizer  # slow import: only when a Hugging Face tokenizer is asked for

    local = Path(name).expanduser().exists()
    offline = not local and not hub_available()
    hint = "use --tokenizer byte or a local tokenizer folder"
    # a model folder's config.json is FLA's gated_deltanet config, which transformers warns it does not know
    config_log = logging.getLogger("transformers.configuration_utils")
    level = config_log.level
    config_log.setLevel(logging.ERROR)
    try:
        tok = AutoTokenizer.from_pretrained(os.path.expanduser(name) if local else name, local_files_only=offline)
    except Exception as e:  # transformers raises OSError, ValueError, EnvironmentError... depending on what is missing
        where = "the Hugging Face hub is unreachable and it is not cached" if offline else first_line(e)
        raise DataError(f"could not load tokenizer {name!r}: {where}; {hint}") from e
    finally:
        config_log.setLevel(level)
    return HFTokenizer(name, tok)


def _write_json(directory: str | Path, meta: dict) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / OWN_FILE).write_text(json.dumps(meta))

