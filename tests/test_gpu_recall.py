"""On a CUDA GPU: the recall probes (evals/recall.py) on FLA's kernels, bf16, against the pure-PyTorch twin with the
same weights, and what the probes cost beside one training step at the H100 base size.

Skipped on CPU-only machines (`python -m pytest -m gpu`, one process). The agreement test trains gpu_support's small
shape on MQAR for a few hundred steps first (on random weights every accuracy is about chance, and two models agreeing
at chance proves nothing); its kernels are the ones the session's warm-up compiled (training, and scoring at lengths
up to 64 tokens through FLA's fused-recurrent kernels, longer through its chunked ones). The cost test compiles the
H100 base size's kernels in a warm-up part of its own (gpu_support.PARTS: "h100"), beside the others; it records its
seconds (the terminal summary and $HYBRID_RAY_GPU_TIMES show them) and asserts nothing about speed.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from gpu_support import SEQ, SPEC, note, recall_cost

from hybrid_ray.data import prepare
from hybrid_ray.evals import recall
from hybrid_ray.model import build_model
from hybrid_ray.spec import DataSpec

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("gpu_kernels")]
CUDA = torch.device("cuda", 0)

# MQAR with 4 pairs over ids 1..63, in sequences of SEQ tokens: 400 steps (about 9 s on an H100) bring the small
# hybrid's loss to about 1.9 (chance: ln 32 = 3.5) and its probe accuracies to about 0.2 at 4 pairs, 6x chance; the
# probes' own settings at SEQ are then 4 and 16 pairs at 64, 128 and 256 tokens (six: 64 pairs need more keys than
# 63 ids hold; no copy probe: an MQAR run has no validation text)
TRAIN_SOURCE = "mqar?pairs=4&vocab=64&train_examples=8192&val_examples=64"
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR = 400, 32, 3e-3
# FLA scores in bf16 (TF32 dots), the twin in fp32: an argmax flips only where two logits nearly tie (seen on an
# H100: at most 0.008 apart in a setting, 0.001 in the score). 32 examples of 4 or 16 queries a setting
AGREEMENT = {"setting": 0.05, "score": 0.02}


def train_on_mqar(model: torch.nn.Module, dataset) -> list[float]:
    """TRAIN_STEPS AdamW steps under bf16 autocast (a run's precision rule on a GPU), warm-up then linear decay."""
    from hybrid_ray.train.optim import LRSchedule

    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    schedule = LRSchedule.from_spec(SimpleNamespace(warmup_steps=TRAIN_STEPS // 10, lr=TRAIN_LR, min_lr_ratio=0.1,
                                                    schedule="linear"), TRAIN_STEPS)
    loader = dataset.train_loader(seq_len=SEQ, global_batch=TRAIN_BATCH, micro_batch=TRAIN_BATCH, rank=0,
                                  world_size=1, seed=0)
    losses = []
    model.train()
    for step in range(TRAIN_STEPS):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(step)
        (batch,) = loader.next_step()
        batch = batch.to(CUDA)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=batch.input_ids, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 49:
            losses.append(round(loss.item(), 3))
    return losses


@pytest.mark.gpu(budget_s=60)
def test_recall_probes_on_fla_agree_with_the_twin():
    """The probes of a model trained on MQAR score within AGREEMENT on FLA (bf16 autocast, Triton kernels: the path
    of a run's evaluations) and on the twin (fp32) holding the same weights; at least one setting scores far above
    chance, so the agreement is not two models guessing."""
    dataset = prepare(DataSpec(source=TRAIN_SOURCE, seq_len=SEQ))
    fla = build_model(SPEC, "fla", device=CUDA, seed=0)
    losses = train_on_mqar(fla, dataset)
    twin = build_model(SPEC, "torch", device=CUDA, seed=None)
    twin.load_state_dict(fla.state_dict())
    chosen = recall.settings(recall.RecallProbes(), dataset, SEQ)
    assert len(chosen) == 6, [s.name for s in chosen]
    on_fla = recall.score_recall(fla, dataset, CUDA, seq_len=SEQ, precision="auto", prepared=chosen)
    on_twin = recall.score_recall(twin, dataset, CUDA, seq_len=SEQ, precision="fp32", prepared=chosen)
    rows = {name: (r["accuracy"], on_twin["settings"][name]["accuracy"]) for name, r in on_fla["settings"].items()}
    note("recall probes, FLA bf16 vs twin fp32 after "
         f"{TRAIN_STEPS} MQAR steps (losses {losses}): score {on_fla['score']:.3f} vs {on_twin['score']:.3f}; "
         + ", ".join(f"{name} {a:.3f}/{b:.3f}" for name, (a, b) in rows.items()))
    assert max(a for a, _ in rows.values()) >= 0.12, (losses, rows)  # chance is 1/32
    off = {name: (a, b) for name, (a, b) in rows.items() if abs(a - b) > AGREEMENT["setting"]}
    assert not off, f"settings whose accuracies differ by more than {AGREEMENT['setting']}: {off}"
    assert on_fla["score"] == pytest.approx(on_twin["score"], abs=AGREEMENT["score"])
    assert on_fla["settings"].keys() == on_twin["settings"].keys()
    assert all(r["examples"] == 32 for r in on_fla["settings"].values())


@pytest.mark.gpu(budget_s=60)
def test_recall_probe_cost_beside_a_training_step_at_the_h100_base_size():
    """Records (asserts no speed) the wall seconds of the probes a run scores at each evaluation (MQAR and copy: 12
    settings of 32 examples, forward passes of the micro batch's tokens) against one training step, at the H100 base
    size (h100_hybrid_sparse, 48 x 1024 tokens, FLA, bf16), each timed warm: the session's warm-up compiled their
    kernels (gpu_support.PARTS "h100")."""
    cost = recall_cost(CUDA, repeats=2)
    share = cost["probe_s"] / (cost["eval_every"] * cost["step_s"])
    note(f"recall probes at the H100 base size on {cost['gpu']}: {cost['probe_s']:.2f} s an evaluation = "
         f"{cost['probe_s'] / cost['step_s']:.2f} training steps of {cost['step_s']:.3f} s ({cost['step_tokens']} tokens, "
         f"bf16, {cost['strategy']}); every {cost['eval_every']} steps: {share:.1%} of training (first calls: step "
         f"{cost['first_step_s']:.1f} s, probes {cost['first_probes_s']:.1f} s)")
    assert cost["settings"] == 12 and all(0 <= a <= 1 for a in cost["accuracies"])
    assert cost["probe_s"] > 0 and cost["step_s"] > 0
