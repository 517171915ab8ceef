"""What one run needs before anything starts: its resource plan (the Train workers and what each holds, what one run
or trial holds on the cluster, so how many run at once, checked against the cluster), the GPU memory one Train worker
takes (so how many trials share a GPU), and the kernel shape it compiles. A sweep plans each arm with it
(hybrid_ray/sweep/plan.py). Pure functions: no Ray, no GPU."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hybrid_ray.errors import ClusterError, HybridRayError, SpecError
from hybrid_ray.model import count_params
from hybrid_ray.spec import RunSpec
from hybrid_ray.train import parallelize

# The Tune trial itself only waits on its TorchTrainer, but it holds this much CPU for as long as it runs; its
# workers hold their own CPUs and GPUs in a placement group of their own (docs/ARCHITECTURE.md, "Ray facts").
TRIAL_CPU = 0.01
# Host memory of one running trial, which Ray does not reserve but the machine must hold: the Tune trial, its Train
# controller and placement-group cleaner (~600 MB each run), and per worker a torch process plus, on CPU workers,
# 16 bytes a parameter (weights, gradients, AdamW's moments).
TRIAL_MEMORY = 1.2e9
WORKER_MEMORY = 1.0e9

# --- GPU memory of one Train worker ------------------------------------------------------------------------------
# The model: what training keeps on the GPU at its peak (the end of the forward pass, the start of the backward),
# per worker, in bytes. Training holds fp32 weights, fp32 gradients and fused AdamW's two fp32 moments: 16 bytes a
# parameter (FSDP2 shards them over the workers). Activations are what autograd saves for the backward pass, per
# token of the micro batch, in bf16 (FSDP2's bf16 compute parameters, model/precision.py):
#   every layer: the residual stream and the normalized inputs of its mixer and MLP, LAYER_BYTES x hidden, and the
#     SwiGLU MLP's gate and up projections, MLP_BYTES x MLP width (FLA's fused SwiGLU-linear recomputes the product);
#   a Gated DeltaNet layer: GDN_BYTES x (q + k + v + output gate + output) = 2 key widths + 3 value widths (the
#     projections before and after the short convolution, the normalized q and k, the gated output);
#   an attention layer: ATTN_BYTES x (q + k + v + output) widths (the rotated q and k, v and SDPA's output);
#   once: the backward of the widest MLP, BACKWARD_MLP_BYTES x MLP width (the recomputed product, d gate, d up);
#   the logits: LOGIT_BYTES x vocab (bf16 logits, whose gradient FLA's fused loss writes in place), or with
#     --loss-kernel fused-linear only FUSED_LINEAR_BYTES x hidden (chunks of logits, fp32 input gradient).
# Measured on one H100 (benchmarks/results/train-*-1gpu-*.json: FSDP2 "auto", bf16 autocast, batch 48 x 1024, vocab
# 49152, torch.cuda.max_memory_allocated): pure DeltaNet 274.4M 51.02 GiB; hybrid 17% [5, 11] 255.4M 45.26 GiB;
# transformer 160.5M 18.69 GiB. LAYER_BYTES, MLP_BYTES, ATTN_BYTES, LOGIT_BYTES and BACKWARD_MLP_BYTES are counted
# from the tensors above; GDN_BYTES = 4 is fitted to pure DeltaNet (3.97) and the hybrid (3.90); the transformer,
# which no fitted constant touches, comes out 2.7% over. tests/test_sweep_plan.py holds all four within 10%.
LAYER_BYTES = 8
MLP_BYTES = 4
GDN_BYTES = 4
ATTN_BYTES = 2
BACKWARD_MLP_BYTES = 6
LOGIT_BYTES = 2
FUSED_LINEAR_BYTES = 8
WORKSPACE = 512 * 2**20  # cuBLAS workspaces, FSDP2's unsharded bf16 copies of the root and a block or two, Triton
# FSDP2 over several GPUs adds its all-gather and reduce-scatter buffers: the hybrid on 2 GPUs measured 43.85 GiB,
# 0.49 GiB (2.06 bytes a parameter) over 45.26 GiB less the 8 bytes a parameter that sharding saves.
FSDP_SHARDED_BYTES = 2
# Without FSDP2 (--strategy ddp; one worker trains the bare model) autocast casts fp32 weights to bf16 at each use
# and caches them (2 bytes a parameter), and norms, residuals and elementwise ops keep fp32 activations: the hybrid
# measured 50.64 GiB against FSDP2's 45.26, which AUTOCAST_ACTIVATION_SHARE (more activations) sets. DDP over
# several workers keeps fp32 gradient buckets, 4 bytes a parameter (2 GPUs: 51.59 GiB, 0.95 GiB over one).
AUTOCAST_CACHE_BYTES = 2
AUTOCAST_ACTIVATION_SHARE = 0.115
DDP_BUCKET_BYTES = 4
# What the process holds beyond its allocations: the caching allocator's fragmentation (reserved but free blocks;
# nvidia-smi shows reserved) and the CUDA context with NCCL's and Triton's modules. At batch 16 x 1024 trials of the
# 13-arm sweep measured 17-25 GiB each in nvidia-smi; the model says 22-26 GiB with this margin.
FRAGMENTATION = 0.10
CUDA_CONTEXT = 2**30


class GpuMemoryError(HybridRayError):
    """One trial's Train worker would not fit the GPU share it is given."""

    exit_code = 2


@dataclass(frozen=True)
class GpuMemory:
    """The peak GPU memory of one Train worker, in bytes, by what holds it."""

    states: int  # weights, gradients, AdamW's moments, and what FSDP2 / DDP / autocast add
    activations: int  # saved for the backward pass over all layers at the micro batch, with the widest MLP's backward
    logits: int
    workspace: int
    allocated: int  # the sum: what torch.cuda.max_memory_allocated reports
    total: int  # allocated + FRAGMENTATION + CUDA_CONTEXT: what the process holds (nvidia-smi)


def strategy_used(spec: RunSpec) -> str:
    """fsdp, ddp or bare (one worker without FSDP2 trains the unwrapped model), as train/parallelize.py picks on GPUs."""
    if spec.scale.strategy in ("auto", "fsdp"):
        return "fsdp"
    return "ddp" if spec.scale.num_workers > 1 else "bare"


def activation_bytes_per_token(spec: RunSpec) -> tuple[float, float]:
    """(all layers, the logits) saved per token of the micro batch, in bf16."""
    m = spec.model
    h, mlp = m.hidden_size, m.intermediate_size
    key, value = m.num_heads * m.head_dim, m.value_heads * m.head_v_dim
    kv = (m.attn_num_kv_heads or m.attn_num_heads) * (h // m.attn_num_heads)
    layers = 0.0
    for kind in m.layer_types():
        layers += LAYER_BYTES * h + MLP_BYTES * mlp
        layers += GDN_BYTES * (2 * key + 3 * value) if kind == "gdn" else ATTN_BYTES * (2 * h + 2 * kv)
    layers += BACKWARD_MLP_BYTES * mlp
    if spec.train.loss_kernel == "fused-linear":
        logits = FUSED_LINEAR_BYTES * h
    else:
        logits = LOGIT_BYTES * (m.vocab_size or 0)
    return layers, logits


def gpu_memory(spec: RunSpec) -> GpuMemory:
    """The peak GPU memory of one Train worker of `spec` (see the constants above for what each part counts)."""
    params = count_params(spec.model)["total"]
    workers, strategy = spec.scale.num_workers, strategy_used(spec)
    bf16 = spec.train.precision != "fp32"
    tokens = spec.micro_batch_size * spec.data.seq_len
    layers, logits = activation_bytes_per_token(spec)
    width = 1 if bf16 else 2  # fp32 training saves fp32 activations
    if strategy == "fsdp":
        states = 16 * params / workers + (FSDP_SHARDED_BYTES * params if workers > 1 else 0)
        if workers == 1 and parallelize.HOST_WORK.one_rank_keeps_gathered:  # each block's gathered copy, kept
            states += (2 if bf16 else 4) * params
        share = 1.0
    else:
        states = 16 * params + (AUTOCAST_CACHE_BYTES * params if bf16 else 0)
        states += DDP_BUCKET_BYTES * params if strategy == "ddp" else 0
        share = 1 + AUTOCAST_ACTIVATION_SHARE if bf16 else 1.0
    activations = tokens * layers * width * share
    logit_bytes = tokens * logits * width
    allocated = states + activations + logit_bytes + WORKSPACE
    total = allocated * (1 + FRAGMENTATION) + CUDA_CONTEXT
    return GpuMemory(int(states), int(activations), int(logit_bytes), WORKSPACE, int(allocated), int(total))


def gpu_memory_bytes(spec: RunSpec) -> int:
    """The peak GPU memory one Train worker of `spec` holds (per GPU), its allocator's margin and CUDA context in."""
    return gpu_memory(spec).total


def gpu_share(per_gpu: int) -> float:
    """The GPU share of one of `per_gpu` workers on a GPU, rounded down to Ray's resource precision (1e-4)."""
    return 1.0 if per_gpu <= 1 else math.floor(1e4 / per_gpu) / 1e4


def workers_per_gpu(share: float) -> int:
    """How many workers of this GPU share Ray puts on one GPU."""
    return max(1, math.floor(1 / share + 1e-6)) if share < 1 else 1


def _largest_micro_batch(spec: RunSpec, room: float) -> int | None:
    """The largest micro batch (a divisor of the per-worker batch) whose worker fits `room` bytes."""
    per_worker = spec.train.batch_size // spec.scale.num_workers
    for micro in range(per_worker, 0, -1):
        if per_worker % micro == 0:
            if gpu_memory_bytes(spec.with_overrides({"train.micro_batch_size": micro})) <= room:
                return micro
    return None


def _gpus_per_worker(spec: RunSpec, gpus_per_trial: float | None, gpu_memory: int, label: str) -> float:
    """The GPU share of each worker of a trial: the one asked for (checked against the GPU's memory), else as many
    trials a GPU as fit. Two workers of one trial never share a GPU (NCCL refuses two ranks on one device), so
    trials of several workers get whole GPUs unless asked otherwise."""
    workers = spec.scale.num_workers
    need = gpu_memory_bytes(spec)
    at = f"at micro-batch {spec.micro_batch_size} x {spec.data.seq_len}"
    fit = math.floor(gpu_memory / need) if need else 1
    if fit < 1:
        micro = _largest_micro_batch(spec, gpu_memory)
        how = (f"use --micro-batch-size {micro} (--batch-size stays, through gradient accumulation)" if micro else
               "it does not fit even at --micro-batch-size 1: lower --seq-len or use a GPU with more memory")
        raise GpuMemoryError(f"one trial of {label} needs about {gb(need)} of GPU memory a worker {at}, more than a "
                             f"{gb(gpu_memory)} GPU holds; {how}")
    asked = gpus_per_trial / workers if gpus_per_trial is not None else spec.scale.gpus_per_worker
    if asked is None:
        return gpu_share(fit) if workers == 1 else 1.0
    if asked <= 0:
        return asked  # CPU workers: no GPU to check
    per_gpu = workers_per_gpu(asked)
    if need * per_gpu <= gpu_memory:
        return asked
    unit = "trials" if workers == 1 else "workers"
    share = gpu_share(fit) * workers
    flag = "--gpus-per-trial" if gpus_per_trial is not None else "--gpus-per-worker"
    given = gpus_per_trial if gpus_per_trial is not None else asked
    micro = _largest_micro_batch(spec, gpu_memory / per_gpu)
    lower = f"--micro-batch-size {micro}" if micro else "lower --micro-batch-size"
    suggestion = share if flag == "--gpus-per-trial" else gpu_share(fit)
    raise GpuMemoryError(f"{flag} {given:g} puts {per_gpu} {unit} on each {gb(gpu_memory)} GPU, but one {unit[:-1]} of "
                         f"{label} needs about {gb(need)} {at}: use {flag} {suggestion:g} ({fit} {unit} a GPU) or "
                         f"{lower}")


@dataclass(frozen=True)
class ResourcePlan:
    """How one run (or one trial of a sweep) sits on the cluster: its Train workers and what each holds, everything
    the run holds while it runs, and how many such runs go at once."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float  # a fraction: trials sharing one GPU
    holds: dict[str, float]  # CPU and GPU of the whole run (a trial: with its own share and host memory)
    concurrent: int = 1  # a sweep's trials at a time; a single run is one
    gpu_memory_need: int | None = None  # bytes of GPU memory one worker holds (None: not checked)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def per_gpu(self) -> int:
        """Workers that share one GPU."""
        return workers_per_gpu(self.gpus_per_worker) if self.gpus_per_worker else 0

    @property
    def worker_resources(self) -> dict[str, float]:
        """Ray resources of one Train worker (ScalingConfig's resources_per_worker)."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}

    def apply(self, spec: RunSpec) -> RunSpec:
        """`spec` with the GPUs this plan gives its workers, as its trial will train it."""
        return spec.with_overrides({"scale.gpus_per_worker": self.gpus_per_worker})


def plan(spec: RunSpec, have: dict[str, float], *, trial: bool = False, gpus_per_trial: float | None = None,
         max_concurrent: int | None = None, gpu_memory: int | None = None, label: str | None = None) -> ResourcePlan:
    """The one place a run is sized: `spec` on a cluster of `have` (ray.cluster_resources()), as a run of its own or,
    with `trial`, as one trial of a sweep (--gpus-per-trial, --max-concurrent). `gpu_memory`: bytes of one of the
    cluster's GPUs (the smallest), or None when unknown (no memory check; a trial gets 1 GPU per worker). With it, a
    trial's GPU share is as many trials a GPU as fit, and a share asked for that does not fit is refused. `label`
    names the trial's arm in refusals. Refuses, in one line, what the cluster cannot hold, instead of letting Ray
    wait forever for resources that do not exist."""
    workers, cpus = spec.scale.num_workers, spec.scale.cpus_per_worker
    cluster_gpus = have.get("GPU", 0.0)
    need = None
    if trial:
        if gpu_memory is not None and cluster_gpus and gpus_per_trial != 0:
            gpus = _gpus_per_worker(spec, gpus_per_trial, gpu_memory, label or spec.name)
            need = gpu_memory_bytes(spec)
            gpus_total = round(gpus * workers, 6)
        else:
            gpus_total = gpus_per_trial
            if gpus_total is None:
                gpus_total = (spec.scale.gpus_per_worker or 1.0) * workers if cluster_gpus else 0.0
            gpus = gpus_total / workers
        if gpus_total > cluster_gpus:
            raise SpecError(f"--gpus-per-trial {gpus_total:g} is more than the cluster's {cluster_gpus:g} GPU(s)")
    else:
        gpus = spec.scale.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if cluster_gpus >= workers else 0.0
        gpus_total = workers * gpus
    if gpus > 0 and cluster_gpus < workers * gpus - 1e-9:
        raise ClusterError(f"asked for {workers} worker(s) x {gpus:g} GPU but the cluster has {cluster_gpus:g} GPU(s)"
                           + ("; drop --gpus-per-worker to train on CPUs" if cluster_gpus == 0 else ""))
    if have.get("CPU", 0.0) < workers * cpus:
        raise ClusterError(f"asked for {workers} worker(s) x {cpus:g} CPU but the cluster has "
                           f"{have.get('CPU', 0.0):g} CPU(s)")
    if spec.scale.backend == "fla" and not gpus:
        raise SpecError("--backend fla needs GPU workers (FLA's Triton kernels do not run on CPUs); "
                        "use --backend torch or --gpus-per-worker 1")
    if not trial:
        return ResourcePlan(workers, cpus, gpus, {"CPU": workers * cpus, "GPU": gpus_total})
    return ResourcePlan(workers, cpus, gpus, trial_footprint(spec, gpus_total),
                        concurrency(spec, gpus_total, have, max_concurrent), need)


# --- trials at once ------------------------------------------------------------------------------------------------


def trial_footprint(spec: RunSpec, gpus_per_trial: float) -> dict[str, float]:
    """Everything one trial holds while it runs: its own CPU share plus its Train workers' CPUs and GPUs, and the
    host memory all of that takes."""
    workers = spec.scale.num_workers
    per_worker = WORKER_MEMORY + (0 if gpus_per_trial else 16 * count_params(spec.model)["total"])
    return {"CPU": TRIAL_CPU + workers * spec.scale.cpus_per_worker, "GPU": gpus_per_trial,
            "memory": TRIAL_MEMORY + workers * per_worker}


def trials_that_fit(footprint: dict[str, float], have: dict[str, float]) -> int:
    """How many trials of this footprint the cluster holds at once (0: not even one)."""
    counts = [math.floor(have.get(k, 0.0) / need + 1e-6) for k, need in footprint.items()
              if need > 0 and (k != "memory" or k in have)]
    return min(counts) if counts else 1


def concurrency(spec: RunSpec, gpus_per_trial: float, have: dict[str, float], asked: int | None) -> int:
    """Trials at a time: `asked` (--max-concurrent), else as many as fit; a trial that cannot fit at all is an error
    now rather than a worker group that retries its start forever."""
    footprint = trial_footprint(spec, gpus_per_trial)
    fit = trials_that_fit(footprint, have)
    if fit < 1:
        holds = " + ".join(f"{v:g} {k}" for k, v in footprint.items() if v > 0 and k != "memory")
        raise ClusterError(f"one trial holds {holds} ({spec.scale.num_workers} worker(s) x "
                           f"{spec.scale.cpus_per_worker:g} CPU + {TRIAL_CPU:g} CPU for the trial itself) but the "
                           f"cluster has {have.get('CPU', 0.0):g} CPU(s) and {have.get('GPU', 0.0):g} GPU(s); "
                           f"and {have.get('memory', 0.0) / 1e9:.1f} GB of memory for Ray; lower "
                           "--cpus-per-worker or --num-workers")
    return asked or fit


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def kernel_shape(spec: RunSpec) -> tuple:
    """What decides which kernels a spec compiles: its model's widths and which layer kinds it has (not where they
    sit), and the step's shape. Arms of a ratio sweep differ only in layout and, with --match-params, MLP width."""
    model = dataclasses.replace(spec.model, attn_layers=[])
    kinds = (bool(spec.model.attn_layers), len(spec.model.attn_layers) < spec.model.num_layers)
    return (repr(model), kinds, spec.micro_batch_size, spec.data.seq_len, spec.data.packed, spec.train.precision)
