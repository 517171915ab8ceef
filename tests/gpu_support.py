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
# fp32 forward and backward through FLA's chunk kernels (the parity check), FLA's own decoding in fp32
PARTS = ("train", "ddp", "parity", "decode")


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
    safe), then each part again here (from the cache: seconds), so this process holds them too. Returns the seconds
    of each part, as `PART (process)` and `PART`."""
    import tempfile

    seconds: dict[str, float] = {}
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
            if rc != 0:  # this process compiles what it left out, or fails with the error itself
                tail = open(os.path.join(logs, f"{name}.log"), errors="replace").read().strip().splitlines()[-3:]
                say(f"warm-up part {name} failed in its own process (exit {rc}): {' / '.join(tail)}")
        say("warm-up processes: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    for name in PARTS:
        start = time.perf_counter()
        warm_part(name, device)
        seconds[name] = round(time.perf_counter() - start, 1)
    say("warm-up in this process: " + ", ".join(f"{k} {seconds[k]:.1f} s" for k in PARTS))
    return seconds


def warmup_command(config: str) -> list[str]:
    """`hybrid-ray warmup --config CONFIG` in a new process, under the same narrowed autotuning as this session (its
    kernels are the ones the session compiled)."""
    return _python("from hybrid_ray.cli import main; sys.exit(main(sys.argv[1:]))", "warmup", "--config", config)
