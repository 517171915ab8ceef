"""What the GPU tests share (tests/test_gpu.py, tests/test_gpu_decode.py, conftest.py's `gpu_kernels` fixture): one small
model shape for every test, FLA's autotuning narrowed to one configuration a kernel, a clock of Triton's compile time,
and the session's warm-up of the kernels they all run.

Every distinct shape and dtype compiles its own kernels (minutes at the H100 base size with FLA's full autotuning):
here every test uses SPEC (both layer kinds, value heads > key heads, GQA attention with a window shorter than the
sequence, head dim 64) at SEQ tokens, so the kernels the warm-up compiled serve them all. Importable without a GPU.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

from hybrid_ray.config.variants import variant_spec
from hybrid_ray.spec import ModelSpec, RunSpec

TESTS = os.path.dirname(os.path.abspath(__file__))

SPEC = ModelSpec(
    hidden_size=256, num_layers=2, num_heads=4, num_v_heads=8, head_dim=64, expand_v=1.0, attn_layers=[1],
    attn_num_heads=4, attn_num_kv_heads=2, attn_window=128, vocab_size=512,
)
SEQ = 256  # tokens per sequence: longer than 64, so FLA trains and scores through its chunk kernels
BATCH = 8  # sequences per training step
PARITY_BATCH = 2
# the decoding test's shape: SPEC with a window shorter than what it decodes (attention runs on torch: same kernels)
DECODE_SPEC = dataclasses.replace(SPEC, attn_window=32)
DECODE_PROMPTS = ([5], list(range(10, 30)), list(range(100, 140)))  # mixed lengths, one past the window
DECODE_TOKENS = 24


def run_spec(strategy: str = "auto") -> RunSpec:
    """A training run of SPEC on FLA's kernels, as a Ray Train worker builds it (bf16, the strategy's wrapper)."""
    base = variant_spec("h100_hybrid_sparse")
    spec = dataclasses.replace(base, name="gpu-tests", model=SPEC, data=dataclasses.replace(base.data, seq_len=SEQ))
    return spec.with_overrides({"scale.backend": "fla", "scale.strategy": strategy, "train.batch_size": BATCH,
                                "train.micro_batch_size": BATCH})


# ---- Triton: one configuration a kernel, and how long compiling took -----------------------------------------------

def narrow_autotuning() -> None:
    """Every Triton autotuner (FLA's kernels) keeps only its first configuration: one compile a kernel, no timing runs.
    A configuration this GPU cannot run (out of shared memory, a compile-time assertion) gives way to the next one.
    The kernels compute the same thing under any configuration; only speed differs, which these tests do not judge.
    Call before the first kernel runs; idempotent."""
    from triton.runtime import autotuner

    if getattr(autotuner.Autotuner, "_hybrid_ray_narrowed", False):
        return
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    refused: tuple[type[BaseException], ...] = (OutOfResources, CompilationError)
    try:
        from triton.runtime.errors import PTXASError

        refused += (PTXASError,)
    except ImportError:
        pass
    run = autotuner.Autotuner.run

    def first_config_run(self, *args: Any, **kwargs: Any) -> Any:
        if not hasattr(self, "_hybrid_ray_spare"):
            self._hybrid_ray_spare = list(self.configs[1:])
            self.configs = list(self.configs[:1])
        while True:
            try:
                return run(self, *args, **kwargs)
            except refused:
                if not self._hybrid_ray_spare:
                    raise
                self.configs = [self._hybrid_ray_spare.pop(0)]
                self.cache.clear()

    autotuner.Autotuner.run = first_config_run
    autotuner.Autotuner._hybrid_ray_narrowed = True


class CompileClock:
    """Seconds spent in `triton.compiler.compile` (a kernel found in the cache takes milliseconds there)."""

    seconds = 0.0
    compiles = 0
    installed = False


def install_compile_clock() -> None:
    """Time every Triton compile of this process. A JIT function looks `triton.compiler.compile` up when it first
    runs: install before any kernel has run."""
    if CompileClock.installed:
        return
    import triton.compiler
    import triton.compiler.compiler

    compile_ = triton.compiler.compile

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return compile_(*args, **kwargs)
        finally:
            CompileClock.seconds += time.perf_counter() - start
            CompileClock.compiles += 1

    triton.compiler.compile = timed
    triton.compiler.compiler.compile = timed
    CompileClock.installed = True


# ---- the session's warm-up -------------------------------------------------------------------------------------------

# what the GPU tests run, in parts that compile apart: `hybrid-ray warmup`'s work on run_spec() (hybrid_ray.train.warmup's
# warm_device: the bf16 FSDP2 train step, evaluation, decoding, scoring), a DDP step (autocast over fp32 weights),
# fp32 forward and backward through FLA's chunk kernels (the parity check), FLA's own decoding in fp32, and a training
# step and the recall probes at the H100 base size (the one shape of its own: test_gpu_recall.py's cost record)
PARTS = ("train", "ddp", "parity", "decode", "h100")
OWN_TEST = {"h100"}  # a part one test alone runs: compiled in its process, not run again in this one (its test loads it)

NOTES: list[str] = []  # what GPU tests record without asserting it (timings): conftest's terminal summary shows them


def note(line: str) -> None:
    """Record a line for the session's summary (and $HYBRID_RAY_GPU_TIMES), printed now too (`-s` shows it)."""
    NOTES.append(line)
    print(line, flush=True)


def h100_base_spec() -> RunSpec:
    """h100_hybrid_sparse at the H100 base size (768 wide, 12 layers, head dim 256, 48 x 1024 tokens a step, the
    reference vocabulary) on FLA, as one GPU trains it."""
    from hybrid_ray.config.variants import REFERENCE_VOCAB

    return variant_spec("h100_hybrid_sparse").with_overrides({"model.vocab_size": REFERENCE_VOCAB,
                                                              "scale.backend": "fla"})


class RandomText:
    """A validation split of random token ids: the copy probe's cost, not its content."""

    task = "lm"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def val_batches(self, *, seq_len: int, micro_batch: int, max_tokens: int, **_: Any) -> list:
        import torch

        from hybrid_ray.data import Batch

        ids = torch.randint(1, self.vocab_size, (max_tokens // seq_len, seq_len),
                            generator=torch.Generator().manual_seed(seq_len))
        return [Batch(ids[i:i + micro_batch], ids[i:i + micro_batch]) for i in range(0, len(ids), micro_batch)]


def recall_cost(device: Any, repeats: int = 2) -> dict[str, Any]:
    """Wall seconds of one training step and of the recall probes a run scores at each evaluation (MQAR and copy, every
    setting at the H100 base's 1024 tokens; forward passes of the micro batch's tokens, as the Evaluator runs them) at
    h100_base_spec(), FLA, bf16: the first of each (compiling what the kernel cache lacks), then the fastest of
    `repeats` more (0: the first only)."""
    import torch

    from hybrid_ray.evals import recall
    from hybrid_ray.train.loop import setup_model, train_step
    from hybrid_ray.train.optim import build_optimizer
    from hybrid_ray.train.parallelize import single_process_group
    from hybrid_ray.train.warmup import _batch

    spec = h100_base_spec()
    single_process_group(device)
    model = setup_model(spec, device)
    optimizer = build_optimizer(model, spec.optim, device)
    batch = [_batch(spec, device)]
    dataset = RandomText(spec.model.vocab_size)
    seq, tokens = spec.data.seq_len, spec.micro_batch_size * spec.data.seq_len
    chosen = recall.settings(recall.RecallProbes(), dataset, seq)
    scored: dict[str, Any] = {}

    def timed(work: Any) -> float:
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        work()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def step() -> None:
        train_step(model, optimizer, batch, 1e-4, spec, device)

    def probes() -> None:
        scored.update(recall.score_recall(model, dataset, device, seq_len=seq, precision=spec.train.precision,
                                          tokens=tokens, prepared=chosen))

    first_step, first_probes = timed(step), timed(probes)
    step_s = min([timed(step) for _ in range(repeats)] or [first_step])
    probe_s = min([timed(probes) for _ in range(repeats)] or [first_probes])
    out = {"gpu": torch.cuda.get_device_name(device), "settings": len(scored["settings"]), "tokens_per_pass": tokens,
           "step_tokens": spec.train.batch_size * seq, "strategy": spec.scale.strategy, "eval_every": spec.train.eval_every,
           "first_step_s": first_step, "first_probes_s": first_probes, "step_s": step_s, "probe_s": probe_s,
           "accuracies": [r["accuracy"] for r in scored["settings"].values()]}
    del model, optimizer
    return out


def train_steps(strategy: str, device: Any, steps: int) -> list[float]:
    """`steps` training steps of run_spec(strategy) on a fixed batch, as a Ray worker runs them; their losses."""
    import torch

    from hybrid_ray.data import Batch
    from hybrid_ray.train.loop import setup_model, train_step
    from hybrid_ray.train.optim import build_optimizer
    from hybrid_ray.train.parallelize import single_process_group

    single_process_group(device)
    spec = run_spec(strategy)
    model = setup_model(spec, device)
    optimizer = build_optimizer(model, spec.optim, device)
    ids = torch.randint(0, SPEC.vocab_size, (BATCH, SEQ), device=device,
                        generator=torch.Generator(device).manual_seed(0))
    batch = [Batch(ids, ids)]
    return [train_step(model, optimizer, batch, 1e-3, spec, device)[0].item() for _ in range(steps)]


def warm_part(name: str, device: Any) -> None:
    """Run one part of PARTS once on `device` (compiling what the kernel cache lacks)."""
    import torch

    from hybrid_ray.inference.generate import SamplingOptions, decode_reference
    from hybrid_ray.model import build_model

    if name == "train":
        from hybrid_ray.train.warmup import warm_device

        warm_device(run_spec(), device, say=lambda line: None)
    elif name == "ddp":
        train_steps("ddp", device, 1)
    elif name == "parity":
        model = build_model(SPEC, "fla", device=device, seed=0, fuse_cross_entropy=False, use_cache=False)
        ids = torch.randint(0, SPEC.vocab_size, (PARITY_BATCH, SEQ), device=device)
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    elif name == "decode":
        model = build_model(DECODE_SPEC, "fla", device=device, seed=0).eval()
        for use_cache in (True, False):
            options = SamplingOptions(max_new_tokens=DECODE_TOKENS, temperature=0, use_cache=use_cache)
            decode_reference(model, [list(p) for p in DECODE_PROMPTS], options, None, device, precision="fp32")
    elif name == "h100":
        recall_cost(device, repeats=0)
    else:
        raise ValueError(f"unknown warm-up part {name!r}; one of {', '.join(PARTS)}")
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()


def _python(code: str, *args: str) -> list[str]:
    """A new Python process that runs `code` with this folder importable and FLA's autotuning narrowed as here."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {TESTS!r}); import gpu_support; "
                                  f"gpu_support.narrow_autotuning(); {code}", *args]


def warm_shared_kernels(device: Any, say: Any = print, parallel: bool = True) -> dict[str, float]:
    """Compile what the GPU tests run, once, into the kernel cache: each of PARTS in a process of its own, all at once
    (Triton compiles on one CPU core per process; a cache entry is written atomically, so concurrent writers are
    safe), then each part again here (from the cache: seconds), so this process holds them too, but for a part that
    one test alone runs (OWN_TEST; its test loads it) whose process did not fail. Returns the seconds
    of each part, as `PART (process)` and `PART`."""
    import tempfile

    seconds: dict[str, float] = {}
    failed: set[str] = set()
    if parallel:
        logs = tempfile.mkdtemp(prefix="gpu-warm-")
        code = "import torch; gpu_support.warm_part(sys.argv[1], torch.device('cuda', 0))"
        start = time.perf_counter()
        running = {}
        for name in PARTS:
            log = open(os.path.join(logs, f"{name}.log"), "wb")
            running[name] = (subprocess.Popen(_python(code, name), stdout=log, stderr=subprocess.STDOUT), log)
        for name, (proc, log) in running.items():
            try:
                rc = proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            log.close()
            seconds[f"{name} (process)"] = round(time.perf_counter() - start, 1)
            if rc != 0:
                failed.add(name)  # this process compiles what it left out, or fails with the error itself
                tail = open(os.path.join(logs, f"{name}.log"), errors="replace").read().strip().splitlines()[-3:]
                say(f"warm-up part {name} failed in its own process (exit {rc}): {' / '.join(tail)}")
        say("warm-up processes: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    here = [name for name in PARTS if name not in OWN_TEST or not parallel or name in failed]
    for name in here:
        start = time.perf_counter()
        warm_part(name, device)
        seconds[name] = round(time.perf_counter() - start, 1)
    say("warm-up in this process: " + ", ".join(f"{k} {seconds[k]:.1f} s" for k in here))
    return seconds


def warmup_command(config: str) -> list[str]:
    """`hybrid-ray warmup --config CONFIG` in a new process, under the same narrowed autotuning as this session (its
    kernels are the ones the session compiled)."""
    return _python("from hybrid_ray.cli import main; sys.exit(main(sys.argv[1:]))", "warmup", "--config", config)
