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
import sys
import time
from typing import Any

from hybrid_ray.spec import ModelSpec, RunSpec
from hybrid_ray.variants import variant_spec

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

def warm_shared_kernels(device: Any, say: Any = print) -> None:
    """Compile what the GPU tests run, once: `hybrid-ray warmup`'s work on run_spec() (bf16 FSDP2 train step,
    evaluation, decoding, scoring: hybrid_ray.warmup.warm_device), then fp32 forward and backward through FLA's chunk
    kernels (the parity check) and FLA's own cached and recomputing decoding in fp32 (the decoding test)."""
    import torch

    from hybrid_ray.generate import SamplingOptions, decode_reference
    from hybrid_ray.model import build_model
    from hybrid_ray.warmup import warm_device

    warm_device(run_spec(), device, say=say)
    torch.cuda.empty_cache()
    start = time.perf_counter()
    model = build_model(SPEC, "fla", device=device, seed=0, fuse_cross_entropy=False, use_cache=False)
    ids = torch.randint(0, SPEC.vocab_size, (PARITY_BATCH, SEQ), device=device)
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    del model
    inference = build_model(DECODE_SPEC, "fla", device=device, seed=0).eval()
    prompts = [list(p) for p in DECODE_PROMPTS]
    for use_cache in (True, False):
        options = SamplingOptions(max_new_tokens=2, temperature=0, use_cache=use_cache)
        decode_reference(inference, prompts, options, None, device, precision="fp32")
    torch.cuda.synchronize(device)
    say(f"fp32 parity and decoding kernels: {time.perf_counter() - start:.1f} s")


def warmup_command(config: str) -> list[str]:
    """`hybrid-ray warmup --config CONFIG` in a new process, under the same narrowed autotuning as this session (its
    kernels are the ones the session compiled)."""
    code = (f"import sys; sys.path.insert(0, {TESTS!r}); import gpu_support; gpu_support.narrow_autotuning(); "
            "from hybrid_ray.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, "warmup", "--config", config]
