"""Text generation from a trained run or a saved model folder (either backend)."""

from __future__ import annotations

from pathlib import Path

import torch

from hybrid_ray import storage
from hybrid_ray.data import load_tokenizer
from hybrid_ray.errors import CheckpointError
from hybrid_ray.model import load_model


def model_dir(path: str) -> str:
    """Accept a run folder (uses its model/), a checkpoint folder, or a model folder."""
    for candidate in (storage.join(path, "model"), path):
        if Path(candidate, "config.json").exists():
            return candidate
    raise CheckpointError(f"no model found in {path}: expected config.json there or in {path}/model")


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = 50,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Autoregressive sampling; temperature 0 is greedy. Re-runs the whole prefix each token: simple and exact
    for both backends, fine for the lengths this is used at."""
    ids = input_ids
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids).logits[:, -1].float()
        if temperature <= 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
        ids = torch.cat([ids, nxt.to(ids.device)], dim=1)
        if eos_id is not None and bool((nxt == eos_id).all()):
            break
    return ids


def generate(
    path: str,
    prompt: str,
    *,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
    backend: str = "auto",
) -> str:
    """The prompt's continuation, from the model in `path`."""
    folder = model_dir(path)
    tokenizer = load_tokenizer(folder)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_model(folder, backend, device=device)
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise CheckpointError(f"the model in {folder} has non-finite weights ({broken[0]} and {len(broken) - 1} more): "
                              "its run diverged; generate from an earlier checkpoint folder instead")
    model.eval()
    ids = torch.as_tensor(tokenizer.encode(prompt), dtype=torch.long, device=device)[None]
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.eos_id]], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = sample(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, eos_id=tokenizer.eos_id,
                     generator=generator)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())
