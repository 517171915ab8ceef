"""Text generation from a trained run or a saved model folder: batched decoding on either backend with the engine of
`hybrid_ray.model.decode` (preallocated recurrent state and key/value ring buffers, a one-token step replayed as a CUDA
graph on GPUs), greedy or sampled (temperature, top-k, top-p), prompts of any lengths in one batch, stopping at EOS,
streaming text incrementally."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hybrid_ray import storage
from hybrid_ray.data.tokenizer import load_tokenizer, saved_in
from hybrid_ray.errors import CheckpointError, SpecError
from hybrid_ray.layout import RunLayout
from hybrid_ray.model.build import load_model, resolve_backend
from hybrid_ray.model.precision import autocast
from hybrid_ray.startup import Startup


@dataclass(kw_only=True)
class SamplingOptions:
    max_new_tokens: int = 100
    temperature: float = 0.8  # 0: greedy
    top_k: int = 50  # 0: no limit
    top_p: float = 1.0  # nucleus sampling; 1: no limit
    seed: int = 0
    use_cache: bool = True  # False recomputes the whole prefix for every token (slow; for comparisons)
    use_graph: bool = True  # on a GPU, replay the decode step as a captured CUDA graph
    compile: bool = False  # torch.compile the decode step first (fewer, fused kernels; costs a compile per run)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SpecError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise SpecError(f"--temperature must be a finite number >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise SpecError(f"--top-k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SpecError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    prompts: list[str]
    completions: list[str]
    new_tokens: list[int]  # generated tokens per prompt (up to and including EOS)
    seconds: float
    token_ids: list[list[int]] = field(default_factory=list)
    first_token_s: float = 0.0  # from the start (state, graph capture, prefill) to the first token of every prompt
    decode_s: float = 0.0  # the rest
    load_s: float = 0.0  # reading the model and tokenizer onto the device, before any of that
    startup: Startup | None = None  # where the start-up went, phase by phase (the command prints it)

    @property
    def tokens_per_s(self) -> float:
        return sum(self.new_tokens) / max(self.seconds, 1e-9)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first ones, per second of decoding."""
        return (sum(self.new_tokens) - len(self.new_tokens)) / max(self.decode_s, 1e-9)


def read_prompts(path: str | Path) -> list[str]:
    """A file of prompts, one a line (blank lines skipped); one-line errors for a file that cannot be read as text."""
    try:
        return [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise SpecError(f"cannot read --prompts file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise SpecError(f"--prompts file {path} is not UTF-8 text: {e.reason} at byte {e.start}") from e


def model_dir(path: str) -> str:
    """Accept a run folder (uses its model/), a checkpoint folder, or a model folder."""
    for candidate in (RunLayout(path).model, path):
        if Path(candidate, "config.json").exists():
            return candidate
    raise CheckpointError(f"no model found in {path}: expected config.json there or in {path}/model")


def tokenizer_dir(folder: str) -> str:
    """Where a model folder's tokenizer is: the folder itself, or for a checkpoint folder (which holds none) its run's
    model/ folder."""
    run_model = RunLayout(storage.parent(folder)).model
    return run_model if not saved_in(folder) and saved_in(run_model) else folder


def start_cuda() -> torch.device:
    """The device inference runs on, with its CUDA context made now (a GPU's first call, timed on its own)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", torch.cuda.current_device())
    torch.empty(0, device=device)
    return device


def inference_backend(backend: str) -> str:
    """The model `generate` and `eval` build: for 'auto', the pure-PyTorch twin on every device. The cached decode step
    and its prefill are plain PyTorch on either backend (`hybrid_ray.model.decode`), so FLA's model adds nothing to
    them but its import (seconds: its layers, models and every kernel module); scoring runs the twin too. 'fla' builds
    FLA's own model (its kernels for the forwards that score or recompute, as training ran them)."""
    return "torch" if backend == "auto" else resolve_backend(backend)  # an unknown name is refused there


def load_for_inference(path: str, backend: str = "auto", startup: Startup | None = None
                       ) -> tuple[torch.nn.Module, Any, torch.device]:
    """(model in eval mode, tokenizer, device) from a run, checkpoint or model folder; a model with non-finite weights
    (a diverged run) is refused. `startup` times each phase of it."""
    startup = startup or Startup()
    folder = model_dir(path)
    backend = inference_backend(backend)
    with startup.phase("tokenizer"):
        tokenizer = load_tokenizer(tokenizer_dir(folder))
    with startup.phase("CUDA start"):
        device = start_cuda()
    model, _ = load_model(folder, backend, device=device, startup=startup)
    with startup.phase("to device"):  # one check on the device, one transfer of its verdicts
        params = list(model.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).tolist() if params else []
    broken = [name for (name, _), ok in zip(params, finite) if not ok]
    startup.loaded()
    if broken:
        raise CheckpointError(f"the model in {folder} has non-finite weights ({broken[0]} and {len(broken) - 1} more): "
                              "its run diverged; use an earlier checkpoint folder instead")
    return model.eval(), tokenizer, device


def forward(model: torch.nn.Module, ids: torch.Tensor, cache: Any, use_cache: bool = True) -> tuple[torch.Tensor, Any]:
    """Logits of `ids` continuing the sequences in `cache` (None: from the start), and the cache after them (None
    without `use_cache`: scoring needs no state)."""
    if getattr(model, "hybrid_backend", "torch") == "fla":
        out = model(input_ids=ids, past_key_values=cache, use_cache=use_cache)
        return out.logits, out.past_key_values
    out = model(input_ids=ids, cache=cache, use_cache=use_cache)
    return out.logits, out.cache


def next_tokens(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator) -> torch.Tensor:
    """One token per row of `logits` [B, V]: the argmax at temperature 0, else a sample after top-k and top-p."""
    logits = logits.float()
    if options.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / options.temperature
    if options.top_k:
        kth = torch.topk(logits, min(options.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p < 1:
        ordered, order = logits.sort(-1, descending=True)
        # drop a token once the tokens ranked above it already hold top_p of the probability
        drop = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1) >= options.top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@dataclass
class Decoded:
    tokens: list[list[int]]  # the new tokens of each prompt (up to and including EOS)
    setup_s: float  # state allocation and graph capture
    first_token_s: float  # prefill and the first token, after the setup
    seconds: float  # everything
    capture_s: float = 0.0  # the graph capture, part of setup_s


def decode(model: torch.nn.Module, prompt_ids: list[list[int]], options: SamplingOptions, eos_id: int | None,
           device: torch.device, on_token: Callable[[int, int], None] | None = None, **kwargs: Any) -> list[list[int]]:
    """The new tokens of each prompt; `on_token(prompt index, token)` sees every token as it comes."""
    return decode_timed(model, prompt_ids, options, eos_id, device, on_token, **kwargs).tokens


@torch.no_grad()
def decode_timed(model: torch.nn.Module, prompt_ids: list[list[int]], options: SamplingOptions, eos_id: int | None,
                 device: torch.device, on_token: Callable[[int, int], None] | None = None, *,
                 precision: str = "auto", check_every: int = 16) -> Decoded:
    """Decode all prompts as one batch with the static-state engine (`hybrid_ray.model.decode`), or recompute every
    prefix without a cache. Without `on_token` the tokens stay on the device: EOS is checked every `check_every`
    tokens and what follows it trimmed at the end."""
    if not options.use_cache:
        return decode_reference(model, prompt_ids, options, eos_id, device, on_token, precision=precision)
    from hybrid_ray.model.decode import Decoder

    start = time.perf_counter()
    n, batch = options.max_new_tokens, len(prompt_ids)
    decoder = Decoder(model, batch, max(map(len, prompt_ids)) + n, device, precision, compile=options.compile)
    built = time.perf_counter()
    if device.type == "cuda" and options.use_graph:
        decoder.capture()
    setup = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(options.seed)
    tokens = torch.empty(batch, n, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    finished = [False] * batch  # on the host, when streaming
    first = None
    steps = n
    # the prefill too under the step's thread count: on a busy 2-core CPU, the tiny model's first forward with a
    # second thread took 3.6 s instead of 0.06 s
    with decoder.threads():
        token = next_tokens(decoder.prefill(prompt_ids), options, generator)[:, 0]
        for t in range(n):
            if t:
                token = next_tokens(decoder.step(token), options, generator)[:, 0]
            tokens[:, t] = token
            if on_token is not None:
                for i, value in enumerate(token.tolist()):
                    if not finished[i]:
                        on_token(i, value)
                        finished[i] = value == eos_id
            if first is None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first = time.perf_counter()
            if eos_id is not None:
                done |= token == eos_id
                if (all(finished) if on_token is not None else (t + 1) % check_every == 0 and bool(done.all())):
                    steps = t + 1
                    break
    out = []
    for row in tokens[:, :steps].tolist():
        out.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    end = time.perf_counter()
    return Decoded(out, setup - start, first - setup, end - start, capture_s=setup - built)


@torch.no_grad()
def decode_reference(model: torch.nn.Module, prompt_ids: list[list[int]], options: SamplingOptions,
                     eos_id: int | None, device: torch.device,
                     on_token: Callable[[int, int], None] | None = None, *, precision: str = "auto") -> Decoded:
    """Token by token through the model's own forward: with its own cache (the plain cached step the engine must
    match), or recomputing the whole prefix for every token (`use_cache=False`). Prompts of equal length decode
    together."""
    start = time.perf_counter()
    first = None
    generator = torch.Generator(device=device).manual_seed(options.seed)
    out: list[list[int]] = [[] for _ in prompt_ids]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(prompt_ids):
        groups.setdefault(len(ids), []).append(i)
    for members in groups.values():
        ids = torch.tensor([prompt_ids[i] for i in members], dtype=torch.long, device=device)
        done = torch.zeros(len(members), dtype=torch.bool, device=device)
        cache, step_input = None, ids
        for _ in range(options.max_new_tokens):
            with autocast(device, precision):
                logits, cache = forward(model, step_input, cache if options.use_cache else None)
            token = next_tokens(logits[:, -1], options, generator)
            for row, i in enumerate(members):
                if not done[row]:
                    out[i].append(int(token[row]))
                    if on_token is not None:
                        on_token(i, int(token[row]))
            first = first or time.perf_counter()
            if eos_id is not None:
                done |= token[:, 0] == eos_id
            if bool(done.all()):
                break
            ids = torch.cat([ids, token], dim=1)
            step_input = token if options.use_cache else ids
    return Decoded(out, 0.0, (first or time.perf_counter()) - start, time.perf_counter() - start)


class TextStream:
    """Incremental detokenisation of one sequence: each push decodes only a short window of recent tokens (those since
    the last emitted text, after a few already emitted ones for context), holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.tokens, self.text = tokenizer, [], ""
        self.prefix = self.read = 0  # tokens[prefix:read] were emitted and give the window its context

    def push(self, token: int) -> str:
        """The new text after `token` ('' while a character is incomplete)."""
        self.tokens.append(token)
        before = self.tokenizer.decode(self.tokens[self.prefix:self.read])
        after = self.tokenizer.decode(self.tokens[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.tokens)
        self.text += after[len(before):]
        return after[len(before):]

    def finish(self, final: str) -> str:
        """What is left of `final` (the whole decoded text) after what was already streamed."""
        return final[len(self.text):] if final.startswith(self.text) else ""


def generate(path: str, prompts: list[str], options: SamplingOptions, *, backend: str = "auto",
             on_text: Callable[[int, str], None] | None = None, on_loaded: Callable[[], None] | None = None,
             batch: int = 1, startup: Startup | None = None) -> Generation:
    """Continue each prompt with the model in `path` (each `batch` times, all in one batch, to measure batched
    throughput); `on_text(prompt index, new text)` streams the decoded text; `on_loaded()` runs once the model has
    loaded (a missing or damaged model fails before it: a caller prints the prompt there, not before an error).
    `startup` (default: from this call) times each phase of the start-up, up to the first token."""
    if batch < 1:
        raise SpecError(f"--batch must be >= 1, got {batch}")
    startup = startup or Startup()
    started = time.perf_counter()
    model, tokenizer, device = load_for_inference(path, backend, startup)
    load_s = time.perf_counter() - started
    if on_loaded is not None:
        on_loaded()
    prompts = [p for p in prompts for _ in range(batch)]
    prompt_ids = [tokenizer.encode(p).tolist() or [tokenizer.eos_id] for p in prompts]
    streams = [TextStream(tokenizer) for _ in prompts]

    def on_token(i: int, token: int) -> None:
        if token != tokenizer.eos_id and (text := streams[i].push(token)):
            on_text(i, text)

    decoding = time.perf_counter()
    result = decode_timed(model, prompt_ids, options, tokenizer.eos_id, device, on_token if on_text else None)
    startup.seconds["decoder setup"] += result.setup_s - result.capture_s
    startup.seconds["graph capture"] += result.capture_s
    startup.first_token_at = decoding + result.setup_s + result.first_token_s
    new = result.tokens
    completions = [tokenizer.decode([t for t in ids if t != tokenizer.eos_id]) for ids in new]
    if on_text is not None:
        for i, (stream, text) in enumerate(zip(streams, completions)):
            if rest := stream.finish(text):
                on_text(i, rest)
    return Generation(prompts, completions, [len(ids) for ids in new], result.seconds, new,
                      first_token_s=result.setup_s + result.first_token_s,
                      decode_s=result.seconds - result.setup_s - result.first_token_s, load_s=load_s,
                      startup=startup)
