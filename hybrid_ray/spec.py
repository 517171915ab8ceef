"""RunSpec: everything one training run needs, as plain validated data (YAML/JSON in, YAML/JSON out).

The same dictionary travels everywhere: the CLI builds it, Ray Train workers receive it as their config,
checkpoints and results.json store it, and `--config FILE` reads it back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hybrid_ray.errors import SpecError, first_line, suggest

SCHEMA_VERSION = 2


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


@dataclass(kw_only=True)
class ModelSpec:
    """The hybrid architecture: Gated DeltaNet everywhere except `attn_layers`, which are softmax attention."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12  # Gated DeltaNet key heads
    num_v_heads: int | None = None  # Gated DeltaNet value heads (None = num_heads)
    head_dim: int = 256  # Gated DeltaNet key dim per head
    expand_v: float = 1.0
    attn_layers: list[int] = field(default_factory=list)
    attn_num_heads: int = 12
    attn_num_kv_heads: int | None = None
    attn_window: int | None = None
    rope_theta: float = 10000.0
    hidden_ratio: int = 4
    mlp_size: int | None = None  # SwiGLU width of every layer; None: FLA's rule from hidden_ratio (--match-params sets it)
    conv_size: int = 4
    use_gate: bool = True
    allow_neg_eigval: bool = False
    vocab_size: int | None = None  # None: follow the tokenizer (padded to a multiple of 64)
    max_position_embeddings: int = 2048
    norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        _check(self.hidden_size > 0 and self.num_layers > 0, "model.hidden_size and model.num_layers must be > 0")
        _check(self.num_heads > 0 and self.head_dim > 0, "model.num_heads and model.head_dim must be > 0")
        _check(self.expand_v > 0, "model.expand_v must be > 0")
        _check(
            float(self.head_dim * self.expand_v).is_integer(),
            f"model.head_dim * model.expand_v must be an integer, got {self.head_dim} * {self.expand_v}",
        )
        if self.num_v_heads is not None:
            _check(
                self.num_v_heads >= self.num_heads and self.num_v_heads % self.num_heads == 0,
                f"model.num_v_heads ({self.num_v_heads}) must be a multiple of model.num_heads ({self.num_heads})",
            )
        self.attn_layers = sorted(int(i) for i in self.attn_layers)
        _check(len(set(self.attn_layers)) == len(self.attn_layers), f"model.attn_layers has duplicates: {self.attn_layers}")
        bad = [i for i in self.attn_layers if not 0 <= i < self.num_layers]
        _check(not bad, f"attention layer index {bad[0] if bad else ''} out of range for {self.num_layers} layers (valid: 0..{self.num_layers - 1})")
        if self.attn_layers:
            _check(
                self.hidden_size % self.attn_num_heads == 0,
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.attn_num_heads ({self.attn_num_heads})",
            )
            _check((self.hidden_size // self.attn_num_heads) % 2 == 0, "attention head dim must be even (rotary embedding)")
            kv = self.attn_num_kv_heads or self.attn_num_heads
            _check(
                self.attn_num_heads % kv == 0,
                f"model.attn_num_heads ({self.attn_num_heads}) must be divisible by model.attn_num_kv_heads ({kv})",
            )
        _check(self.attn_window is None or self.attn_window > 0, "model.attn_window must be a positive integer or null")
        _check(self.vocab_size is None or self.vocab_size > 1, "model.vocab_size must be > 1 or null")
        _check(self.conv_size > 1, "model.conv_size must be > 1")
        _check(self.mlp_size is None or self.mlp_size > 0, "model.mlp_size must be > 0 or null")

    @property
    def attention_ratio(self) -> float:
        return len(self.attn_layers) / self.num_layers

    @property
    def intermediate_size(self) -> int:
        """SwiGLU width: mlp_size, else FLA's rule 256 * ceil(int(hidden * ratio * 2/3) / 256)."""
        if self.mlp_size is not None:
            return self.mlp_size
        inner = int(self.hidden_size * self.hidden_ratio * 2 / 3)
        return 256 * math.ceil(inner / 256)

    @property
    def value_heads(self) -> int:
        return self.num_v_heads or self.num_heads

    @property
    def head_v_dim(self) -> int:
        return int(self.head_dim * self.expand_v)

    def layer_types(self) -> list[str]:
        """'attn' or 'gdn' for each layer, bottom to top."""
        attn = set(self.attn_layers)
        return ["attn" if i in attn else "gdn" for i in range(self.num_layers)]

    def with_vocab(self, vocab_size: int) -> ModelSpec:
        return dataclasses.replace(self, vocab_size=vocab_size)


@dataclass(frozen=True)
class Source:
    """A data source string, parsed once: which reader it needs and what that reader reads.

    `stdlib`, `mqar[?k=v&...]`, `hf:NAME[:CONFIG][@SPLIT]`, or a local file, folder or glob. A local path that
    exists wins over the prefixes, so a folder named `hf:x` or `mqar_data` is read as files.
    """

    kind: str
    text: str  # the normalized source string (local paths absolute)
    hf_name: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    options: str = ""  # mqar's query string

    @property
    def path(self) -> str:
        """The local path or glob of a `files` source."""
        return self.text


def parse_source(text: str) -> Source:
    """Parse a data source string (see Source); local paths become absolute, so workers in another directory
    (a Ray job's working_dir) and every command find the same files and the same shard cache."""
    _check(bool(text and text.strip()), "data.source must not be empty")
    text = text.strip()
    local = os.path.abspath(os.path.expanduser(text))
    if text == "stdlib":
        return Source("stdlib", text)
    if (text == "mqar" or text.startswith("mqar?")) and not os.path.exists(local):
        return Source("mqar", text, options=text.partition("?")[2])
    if text.startswith("hf:") and not os.path.exists(local):
        rest, _, split = text.removeprefix("hf:").partition("@")
        name, _, config = rest.partition(":")
        _check(bool(name), f"bad Hugging Face source {text!r}; expected hf:NAME[:CONFIG][@SPLIT]")
        return Source("hf", text, hf_name=name, hf_config=config or None, hf_split=split or "train")
    return Source("files", local)


@dataclass(kw_only=True)
class DataSpec:
    """Where documents come from, how they become tokens, and how they are cut into sequences."""

    source: str = "stdlib"  # stdlib | mqar[?k=v&...] | local path/glob | hf:NAME[:CONFIG][@SPLIT]
    tokenizer: str = "byte"  # byte | Hugging Face tokenizer name or local path
    text_field: str = "text"
    seq_len: int = 256
    val_fraction: float = 0.02  # share of documents held out for validation
    max_documents: int | None = None
    max_tokens: int | None = None
    packed: bool = False  # yield cu_seqlens so state and attention reset at document boundaries
    cache_dir: str | None = None  # None: $HYBRID_RAY_CACHE or ~/.cache/hybrid-ray

    def __post_init__(self) -> None:
        self.source = parse_source(self.source).text
        _check(self.seq_len >= 2, "data.seq_len must be >= 2")
        _check(0.0 < self.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(self.max_documents is None or self.max_documents > 0, "data.max_documents must be > 0 or null")
        _check(self.max_tokens is None or self.max_tokens > 0, "data.max_tokens must be > 0 or null")

    @functools.cached_property
    def parsed(self) -> Source:
        """The source string parsed (see Source)."""
        return parse_source(self.source)


@dataclass(kw_only=True)
class OptimSpec:
    """AdamW with linear warmup, then linear or cosine decay to lr * min_lr_ratio."""

    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    schedule: str = "linear"
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _check(math.isfinite(self.lr) and self.lr > 0, f"optim.lr must be a finite number > 0, got {self.lr}")
        _check(math.isfinite(self.eps) and self.eps > 0, f"optim.eps must be a finite number > 0, got {self.eps}")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]")
        _check(self.schedule in ("linear", "cosine"), f"optim.schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        _check(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay must be finite and >= 0")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
        _check(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "optim.grad_clip must be finite and >= 0 (0 disables clipping)")


CONV_BACKENDS = ("auto", "triton", "cuda")
LOSS_KERNELS = ("fused", "fused-linear")


@dataclass(kw_only=True)
class TrainSpec:
    """The loop: length, batch, evaluation, logging and checkpoint cadence."""

    steps: int = 1000
    batch_size: int = 48  # global: sequences per optimizer step, over all workers
    micro_batch_size: int | None = None  # per worker per forward; None: batch_size // num_workers
    eval_every: int = 100
    eval_tokens: int = 262_144  # validation tokens per evaluation, spread over the split; the run's end scores all
    eval_recall: bool | None = None  # the recall probes (evals/recall.py) at each evaluation; None: on in sweeps, off alone
    log_every: int = 10
    checkpoint_every: int = 100
    keep: int = 3
    seed: int = 0
    compile: bool = False
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    conv_backend: str = "auto"  # FLA's short convolution: auto (causal-conv1d's CUDA kernels when installed) | triton | cuda
    loss_kernel: str = "fused"  # FLA's loss: fused (cross-entropy over bf16 logits) | fused-linear (never builds the logits)

    def __post_init__(self) -> None:
        _check(self.steps > 0, f"train.steps must be > 0, got {self.steps}")
        _check(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        _check(self.micro_batch_size is None or self.micro_batch_size > 0, "train.micro_batch_size must be > 0")
        _check(self.eval_every > 0 and self.log_every > 0, "train.eval_every and train.log_every must be > 0")
        _check(self.eval_tokens > 0, "train.eval_tokens must be > 0")
        _check(self.checkpoint_every > 0, "train.checkpoint_every must be > 0")
        _check(self.keep >= 1, "train.keep must be >= 1")
        _check(self.precision in ("auto", "bf16", "fp32"), f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        _check(self.conv_backend in CONV_BACKENDS,
               f"train.conv_backend must be one of {', '.join(CONV_BACKENDS)}, got {self.conv_backend!r}")
        _check(self.loss_kernel in LOSS_KERNELS,
               f"train.loss_kernel must be one of {', '.join(LOSS_KERNELS)}, got {self.loss_kernel!r}")


STRATEGIES = ("auto", "ddp", "fsdp")
BACKENDS = ("auto", "fla", "torch")


@dataclass(kw_only=True)
class ScaleSpec:
    """How many Ray Train workers, on what, with which parallelism and model backend."""

    num_workers: int = 1
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1
    strategy: str = "auto"  # auto (fsdp on GPU workers, ddp on CPU) | ddp | fsdp
    backend: str = "auto"  # model backend: auto | fla | torch
    max_failures: int = 0

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, f"scale.num_workers must be >= 1, got {self.num_workers}")
        _check(self.gpus_per_worker is None or self.gpus_per_worker >= 0, "scale.gpus_per_worker must be >= 0")
        _check(self.cpus_per_worker > 0, "scale.cpus_per_worker must be > 0")
        _check(self.strategy in STRATEGIES, f"scale.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        _check(self.backend in BACKENDS, f"scale.backend must be auto, fla or torch, got {self.backend!r}")
        _check(self.max_failures >= -1, "scale.max_failures must be >= -1 (-1 retries forever)")


SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "data": DataSpec,
    "optim": OptimSpec,
    "train": TrainSpec,
    "scale": ScaleSpec,
}


@dataclass(kw_only=True)
class RunSpec:
    """One training run; `name` + `storage_path` identify it (relaunching the same pair resumes it)."""

    name: str = "hybrid"
    variant: str | None = None
    storage_path: str = "~/hybrid-ray-runs"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    scale: ScaleSpec = field(default_factory=ScaleSpec)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name and not self.name.startswith("."), f"invalid run name {self.name!r}")
        workers = self.scale.num_workers
        _check(
            self.train.batch_size % workers == 0,
            f"batch size {self.train.batch_size} is not divisible by {workers} workers",
        )
        per_worker = self.train.batch_size // workers
        micro = self.train.micro_batch_size or per_worker
        _check(
            per_worker % micro == 0,
            f"per-worker batch {per_worker} is not divisible by micro batch size {micro}",
        )

    @property
    def micro_batch_size(self) -> int:
        return self.train.micro_batch_size or self.train.batch_size // self.scale.num_workers

    @property
    def grad_accum_steps(self) -> int:
        return self.train.batch_size // (self.scale.num_workers * self.micro_batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml() if str(path).endswith((".yaml", ".yml")) else json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Strict: unknown keys are errors (with a close-match suggestion), values are coerced to field types."""
        if not isinstance(d, dict):
            raise SpecError(f"a run spec must be a mapping, got {type(d).__name__}")
        d = _migrate(dict(d))
        top = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in top:
                raise SpecError(f"unknown spec key {key!r}{suggest(key, top)}")
            if key in SECTIONS:
                kwargs[key] = _section_from_dict(key, SECTIONS[key], value or {})
            else:
                kwargs[key] = _coerce(key, value, top[key].type)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        """Read a YAML or JSON spec file; results.json files work too (their 'spec' entry is used)."""
        data = read_yaml(path)
        if isinstance(data, dict) and "spec" in data and "model" not in data:
            data = data["spec"]
        return cls.from_dict(data)

    def with_overrides(self, overrides: dict[str, Any]) -> RunSpec:
        """A copy with dotted-key overrides applied, e.g. {"train.steps": 20, "name": "x"}; None values are skipped."""
        d = self.to_dict()
        for dotted, value in overrides.items():
            if value is None:
                continue
            *path, leaf = dotted.split(".")
            node = d
            for part in path:
                if part not in node or not isinstance(node[part], dict):
                    raise SpecError(f"unknown spec section {part!r} in {dotted!r}{suggest(part, SECTIONS)}")
                node = node[part]
            if leaf not in node:
                raise SpecError(f"unknown spec key {dotted!r}{suggest(leaf, node)}")
            node[leaf] = value
        return RunSpec.from_dict(d)


def _vocab_flag(value: str) -> int | str:
    """--vocab-size: a number, or 'auto' (follow the tokenizer)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError as e:
        raise SpecError(f"--vocab-size must be a number or 'auto', got {value!r}") from e


@dataclass(frozen=True)
class Flag:
    """A spec field's command-line option. Its type is the field's (a bool gets --x/--no-x); it has no default of its
    own (None: not given, the spec decides), so its help text names the default."""

    key: str  # the dotted spec field it sets
    help: str
    name: str | None = None  # the option without its dashes; None: the field's name with - for _
    group: str = "run"  # data: every command that reads data; run: the commands that train
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None  # a text option, turned into the field's value (errors: SpecError)

    @property
    def option(self) -> str:
        return self.name or self.key.rsplit(".", 1)[-1].replace("_", "-")

    @property
    def dest(self) -> str:
        """The option's Python name (what click passes the command)."""
        return self.option.replace("-", "_")

    @property
    def type(self) -> str:
        """The field's annotated type without `| None`: int, float, str or bool."""
        section, _, leaf = self.key.rpartition(".")
        cls = SECTIONS[section] if section else RunSpec
        return str(next(f.type for f in dataclasses.fields(cls) if f.name == leaf)).replace(" ", "").removesuffix("|None")


# The spec fields a command line can set, in the order `--help` lists them; cli.py makes each a click option.
FLAGS: tuple[Flag, ...] = (
    Flag("data.source", "stdlib | mqar[?k=v] | file/dir/glob | hf:NAME[:CONFIG][@SPLIT]. [default: stdlib]",
         name="data", group="data"),
    Flag("data.tokenizer", "byte, or a Hugging Face tokenizer name or path. [default: byte]", group="data"),
    Flag("data.seq_len", "Tokens per sequence. [default: the preset's]", group="data"),
    Flag("data.max_documents", "Read at most this many documents. [default: all]", group="data"),
    Flag("data.packed", "Reset state at document boundaries (cu_seqlens).", group="data"),
    Flag("model.vocab_size", "Pin the model's vocabulary, or 'auto' to follow the tokenizer. [default: auto]",
         group="data", parse=_vocab_flag),
    Flag("model.num_heads", "Gated DeltaNet key heads. [default: the preset's]"),
    Flag("model.head_dim", "Gated DeltaNet key dim per head (24 heads of 128 train ~20% faster than 12 of 256 at the "
         "same parameter count: a different model). [default: the preset's]"),
    Flag("train.steps", "Optimizer steps. [default: the preset's]"),
    Flag("optim.lr", "Peak learning rate. [default: the variant's]"),
    Flag("optim.warmup_steps", "Learning-rate warm-up steps (linear, then decay). [default: the preset's; 100 at the "
         "H100 base size]"),
    Flag("train.batch_size", "Global batch (sequences per optimizer step)."),
    Flag("train.micro_batch_size", "Per worker per forward (gradient accumulation)."),
    Flag("scale.num_workers", "Ray Train workers (data parallel). [default: 1]"),
    Flag("scale.gpus_per_worker", "[default: 1 when the cluster has the GPUs, else 0]"),
    Flag("scale.cpus_per_worker", "[default: 1]"),
    Flag("scale.strategy", "Data parallelism. [default: auto = FSDP2 with bf16 compute params on GPUs, DDP on CPUs]",
         choices=STRATEGIES),
    Flag("scale.backend", "Model backend. [default: auto = FLA's kernels on GPUs, the pure-PyTorch twin on CPUs]",
         choices=BACKENDS),
    Flag("train.compile", "torch.compile each block. [default: off]"),
    Flag("train.conv_backend", "FLA's short convolution. [default: auto = causal-conv1d's CUDA kernels when installed, "
         "else Triton]", choices=CONV_BACKENDS),
    Flag("train.loss_kernel", "FLA's loss. [default: fused = cross-entropy over bf16 logits; fused-linear never builds "
         "the logits: less memory, slower]", choices=LOSS_KERNELS),
    Flag("scale.max_failures", "Worker-group restarts from the last checkpoint. [default: 0]"),
    Flag("train.eval_every", "Steps between evaluations. [default: the preset's]"),
    Flag("train.eval_tokens", "Validation tokens per evaluation, spread over the split; the last one scores the full "
                              "split."),
    Flag("train.eval_recall", "In-context recall probes (MQAR, copy of validation text) at each evaluation. "
                              "[default: on for a sweep's trials, off for a single run]"),
    Flag("train.log_every", "[default: 10]"),
    Flag("train.checkpoint_every", "[default: the preset's]"),
    Flag("train.keep", "Checkpoints to keep. [default: 3; a sweep's trials: 1]"),
    Flag("train.seed", "[default: 0]"),
    Flag("name", "Run name; relaunching a name resumes it. [default: VARIANT-PRESET]"),
    Flag("storage_path", f"Local folder or pyarrow URI (s3://...). [default: {RunSpec.storage_path}]"),
)


def flag_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted-key overrides from option values by their Python names (FLAGS' dest); None means not given."""
    out = {}
    for flag in FLAGS:
        value = values.get(flag.dest)
        if value is not None:
            out[flag.key] = flag.parse(value) if flag.parse else value
    return out


def read_yaml(path: str | Path) -> Any:
    """A YAML or JSON file's content; one-line SpecErrors for a missing or malformed file."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise SpecError(f"cannot read spec file {p}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise SpecError(f"spec file {p} is not a text (UTF-8) YAML/JSON file: {first_line(e)}") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"spec file {p} is not valid YAML/JSON: {first_line(e)}") from e


def _migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Read older schemas: version 1 counted validation in global batches (train.eval_batches)."""
    if d.pop("schema", SCHEMA_VERSION) < 2 and isinstance(d.get("train"), dict) and "eval_batches" in d["train"]:
        train = d["train"] = dict(d["train"])
        seq_len = (d.get("data") or {}).get("seq_len", DataSpec.seq_len)
        train["eval_tokens"] = int(train.pop("eval_batches")) * int(train.get("batch_size", TrainSpec.batch_size)) * int(seq_len)
    return d


def _section_from_dict(section: str, cls: type, d: Any) -> Any:
    if not isinstance(d, dict):
        raise SpecError(f"spec section {section!r} must be a mapping, got {d!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in known:
            raise SpecError(f"unknown spec key '{section}.{key}'{suggest(key, known)}")
        kwargs[key] = _coerce(f"{section}.{key}", value, known[key].type)
    return cls(**kwargs)


def _coerce(name: str, value: Any, type_str: Any) -> Any:
    """Convert YAML/CLI scalars to the annotated type ('1e-3' -> 0.001); reject what does not fit."""
    t = str(type_str).replace(" ", "")
    optional = t.endswith("|None")
    base = t.removesuffix("|None")
    if value is None:
        if optional:
            return None
        raise SpecError(f"{name} must not be null")
    try:
        if base == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if base == "list[int]":
            if isinstance(value, str):
                value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            return [int(v) for v in value]
    except (TypeError, ValueError) as e:
        raise SpecError(f"{name} must be {base}, got {value!r}") from e
    return value
