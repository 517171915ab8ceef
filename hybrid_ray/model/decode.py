"""A decoding engine for both backends: preallocated per-layer state, prefill of the prompts, and a one-token step made
of plain tensor ops with static shapes (so a CUDA graph can capture it).

Both backends hold the same weights under the same state_dict keys, so one pure-PyTorch step serves them both. Per
layer the state is, for Gated DeltaNet, the short-convolution windows of q/k/v ([B, K-1, D], the last raw projected
inputs) and the recurrent state S [B, HV, dk, dv] in fp32; for attention, a key/value ring buffer of
min(window, longest sequence) slots. Every row has its own position, so prompts of different lengths share one batch:
each prompt is prefilled alone (prompts of equal length together) and its state written into its row; a row's
attention only sees the slots it wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hybrid_ray.model.precision import autocast, uses_bf16
from hybrid_ray.spec import ModelSpec


def model_spec(model: torch.nn.Module) -> ModelSpec:
    """The ModelSpec of a twin or of FLA's model (read back from its config)."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    from hybrid_ray.model.config import spec_from_fla_config

    return spec_from_fla_config(model.config.to_dict())


def twin_of(model: torch.nn.Module) -> torch.nn.Module:
    """The pure-PyTorch twin sharing `model`'s weight tensors (the model itself when it is one): it prefills prompts."""
    from hybrid_ray.model.torch_ref import HybridForCausalLM

    if isinstance(model, HybridForCausalLM):
        return model
    twin = getattr(model, "_decode_twin", None)
    if twin is None:
        with torch.device("meta"):
            twin = HybridForCausalLM(model_spec(model))
        twin.load_state_dict(model.state_dict(), assign=True)
        twin.eval()
        object.__setattr__(model, "_decode_twin", twin)  # not a submodule: stays out of state_dict and .to()
    return twin


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32 (the twin's, as one op)."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight, eps)


@dataclass
class _Layer:
    kind: str  # "gdn" | "attn"
    weights: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]


class Decoder:
    """Batched decoding state for `batch` rows of up to `max_len` tokens each, and the step that advances it."""

    def __init__(self, model: torch.nn.Module, batch: int, max_len: int, device: torch.device,
                 precision: str = "auto", compile: bool = False) -> None:
        self.model, self.spec, self.device = model, model_spec(model), device
        self.batch, self.max_len = batch, max_len
        self.dtype = torch.bfloat16 if uses_bf16(device, precision) else torch.float32
        self.precision = precision
        spec, dt = self.spec, self.dtype
        sd = {k: v.detach() for k, v in model.state_dict().items()}

        def w(key: str, dtype: torch.dtype = dt) -> torch.Tensor:
            return sd[key].to(device=device, dtype=dtype)

        def cat(*keys: str) -> torch.Tensor:  # one matmul for several projections of the same input
            return torch.cat([w(k) for k in keys]).contiguous()

        self.embeddings = w("model.embeddings.weight")
        self.norm = w("model.norm.weight", torch.float32)
        self.lm_head = w("lm_head.weight")
        self.rows = torch.arange(batch, device=device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)  # the position of the token fed next
        self.token = torch.zeros(batch, dtype=torch.long, device=device)
        self.logits = torch.zeros(batch, spec.vocab_size, dtype=torch.float32, device=device)
        K = spec.conv_size
        self.key_dim, self.value_dim = spec.num_heads * spec.head_dim, spec.value_heads * spec.head_v_dim
        self.attn_heads = spec.attn_num_heads
        self.kv_heads = spec.attn_num_kv_heads or spec.attn_num_heads
        self.attn_head_dim = spec.hidden_size // self.attn_heads
        self.slots = min(max_len, spec.attn_window) if spec.attn_window else max_len
        self.slot_ids = torch.arange(self.slots, device=device)
        half = torch.arange(0, self.attn_head_dim, 2, device=device).float() / self.attn_head_dim
        self.inv_freq = 1.0 / (spec.rope_theta ** half)
        self.layers: list[_Layer] = []
        for i, kind in enumerate(spec.layer_types()):
            p = f"model.layers.{i}."
            weights = {"attn_norm": w(p + "attn_norm.weight", torch.float32),
                       "mlp_norm": w(p + "mlp_norm.weight", torch.float32),
                       "gate_up": cat(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                       "down": w(p + "mlp.down_proj.weight")}
            a = p + "attn."
            if kind == "attn":
                weights |= {"qkv": cat(a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
                            "o": w(a + "o_proj.weight")}
                shape = (batch, self.slots, self.kv_heads, self.attn_head_dim)
                state = {"k": torch.zeros(shape, dtype=dt, device=device),
                         "v": torch.zeros(shape, dtype=dt, device=device)}
            else:
                kind = "gdn"
                projections = ["q_proj", "k_proj", "v_proj", *(["g_proj"] if spec.use_gate else []), "a_proj", "b_proj"]
                conv = torch.cat([sd[a + f"{n}_conv1d.weight"][:, 0] for n in "qkv"])  # [C, K]
                weights |= {"in": cat(*(a + n + ".weight" for n in projections)),
                            "conv": conv.t().contiguous().to(device=device, dtype=dt),  # [K, C]
                            "A": -w(a + "A_log", torch.float32).exp(), "dt_bias": w(a + "dt_bias", torch.float32),
                            "o_norm": w(a + "o_norm.weight", torch.float32), "o": w(a + "o_proj.weight")}
                channels = 2 * self.key_dim + self.value_dim
                state = {"conv": torch.zeros(batch, K - 1, channels, dtype=dt, device=device),
                         "S": torch.zeros(batch, spec.value_heads, spec.head_dim, spec.head_v_dim, dtype=torch.float32,
                                          device=device)}
            self.layers.append(_Layer(kind, weights, state))
        self.graph: torch.cuda.CUDAGraph | None = None
        # torch.compile fuses the step's small ops (3.4x on the tiny model on a CPU, after a ~30 s compile); one graph,
        # no breaks (fullgraph), and a CUDA graph can still capture the compiled step
        self._run = self._step
        if compile:
            self._run = torch.compile(self._step, fullgraph=True, dynamic=False)
            # compile now (setup time, not first-token time), under the thread count the steps will run with
            with torch.no_grad(), self.threads():
                self._run()
            self.reset()

    # ---- the step -------------------------------------------------------------------------------------------------

    def _gdn(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        spec, W, st = self.spec, layer.weights, layer.state
        B, H, HV, dk, dv = x.shape[0], spec.num_heads, spec.value_heads, spec.head_dim, spec.head_v_dim
        proj = x @ W["in"].t()
        channels = 2 * self.key_dim + self.value_dim
        raw, gate, ab = proj.split([channels, self.value_dim if spec.use_gate else 0, 2 * HV], dim=-1)
        window = torch.cat([st["conv"], raw[:, None]], dim=1)  # [B, K, C]
        st["conv"].copy_(window[:, 1:])
        y = F.silu((window * W["conv"]).sum(1)).float()
        # q and k L2-normalised together (fewer kernels per step: at batch 1 their launches are the cost)
        qk = y[:, : 2 * self.key_dim].reshape(B, 2 * H, dk)
        qk = qk * torch.rsqrt(qk.pow(2).sum(-1, keepdim=True) + 1e-6)
        q, k = qk[:, :H], qk[:, H:]
        v = y[:, 2 * self.key_dim:].reshape(B, HV, dv)
        if HV != H:  # value head h reads key head h // (HV // H); expand, not repeat_interleave (no host sync)
            q, k = (t[:, :, None].expand(B, H, HV // H, dk).reshape(B, HV, dk) for t in (q, k))
        a, b = ab.float().split([HV, HV], dim=-1)
        beta = b.sigmoid() * 2 if spec.allow_neg_eigval else b.sigmoid()
        S = st["S"]
        S.mul_((W["A"] * F.softplus(a + W["dt_bias"])).exp()[..., None, None])
        u = beta[..., None] * (v - (k[:, :, None, :] @ S)[:, :, 0])
        S.view(B * HV, dk, dv).baddbmm_(k.reshape(B * HV, dk, 1), u.reshape(B * HV, 1, dv))  # S += k u^T
        o = (q[:, :, None, :] * dk**-0.5 @ S)[:, :, 0]  # [B, HV, dv]
        o = _rms(o, W["o_norm"], spec.norm_eps)
        if spec.use_gate:
            o = o * F.silu(gate.float().reshape(B, HV, dv))
        return o.reshape(B, -1).to(self.dtype) @ W["o"].t()

    def _rotary(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        cos, sin = angles.cos()[:, None], angles.sin()[:, None]
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    def _attn(self, layer: _Layer, x: torch.Tensor, angles: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        W, st = layer.weights, layer.state
        B, H, KV, d = x.shape[0], self.attn_heads, self.kv_heads, self.attn_head_dim
        q, k, v = (x @ W["qkv"].t()).split([H * d, KV * d, KV * d], dim=-1)
        q = self._rotary(q.reshape(B, H, d), angles)
        k = self._rotary(k.reshape(B, KV, d), angles)
        slot = self.pos % self.slots
        st["k"].index_put_((self.rows, slot), k)
        st["v"].index_put_((self.rows, slot), v.reshape(B, KV, d))
        q = q.reshape(B, KV, H // KV, d)
        scores = torch.einsum("bhgd,bshd->bhgs", q, st["k"]).float() * d**-0.5
        probs = scores.masked_fill(~visible[:, None, None, :], float("-inf")).softmax(-1)
        o = torch.einsum("bhgs,bshd->bhgd", probs.to(self.dtype), st["v"])
        return o.reshape(B, H * d) @ W["o"].t()

    def _step(self) -> None:
        """Feed `self.token` at `self.pos`: the next-token logits land in `self.logits`, positions advance by one."""
        eps = self.spec.norm_eps
        h = self.embeddings[self.token].float()
        angles = self.pos.float()[:, None] * self.inv_freq
        # slot s holds the position `age` steps back; visible when written (age <= pos) and inside the window
        age = (self.pos[:, None] - self.slot_ids) % self.slots
        visible = age <= self.pos[:, None]
        for layer in self.layers:
            x = _rms(h, layer.weights["attn_norm"], eps).to(self.dtype)
            out = self._gdn(layer, x) if layer.kind == "gdn" else self._attn(layer, x, angles, visible)
            h = h + out  # fp32 residual stream (type promotion, no extra cast)
            x = _rms(h, layer.weights["mlp_norm"], eps).to(self.dtype)
            gate, up = (x @ layer.weights["gate_up"].t()).chunk(2, dim=-1)
            h = h + F.silu(gate) * up @ layer.weights["down"].t()
        x = _rms(h, self.norm, eps).to(self.dtype)
        self.logits.copy_(x @ self.lm_head.t())
        self.pos.add_(1)

    def capture(self) -> None:
        """Record the step as a CUDA graph (the state is zeroed afterwards: prefill comes next)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up outside the graph (allocations, kernel choice, compilation)
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run()
        self.reset()

    def reset(self) -> None:
        self.pos.zero_()
        for layer in self.layers:
            for t in layer.state.values():
                t.zero_()

    @contextlib.contextmanager
    def threads(self) -> Iterator[None]:
        """On a CPU, one thread for small steps: their ops are too short to split, and on a busy machine waiting for
        a second thread made the tiny model's step 10x slower (32 vs 320 tokens/s on 2 shared cores)."""
        if self.device.type != "cpu" or self.batch * self.spec.hidden_size > 8192:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after feeding `token` [B] (a static buffer: copy it to keep it past the next step)."""
        self.token.copy_(token)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()
        return self.logits

    # ---- prefill --------------------------------------------------------------------------------------------------

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Run each prompt (prompts of equal length together) and write its state into its row; returns the
        next-token logits [B, V] after each prompt."""
        twin = twin_of(self.model)
        groups: dict[int, list[int]] = {}
        for i, ids in enumerate(prompts):
            groups.setdefault(len(ids), []).append(i)
        logits = torch.empty(self.batch, self.spec.vocab_size, dtype=torch.float32, device=self.device)
        K = self.spec.conv_size
        for length, members in groups.items():
            rows = torch.tensor(members, device=self.device)
            ids = torch.tensor([prompts[i] for i in members], dtype=torch.long, device=self.device)
            with autocast(self.device, self.precision):
                out = twin(input_ids=ids, use_cache=True)
            logits[rows] = out.logits[:, -1].float()
            keep = min(length, self.slots)
            slots = torch.arange(length - keep, length, device=self.device) % self.slots
            for layer, cache in zip(self.layers, out.cache):
                st = layer.state
                if layer.kind == "gdn":
                    window = torch.cat([c[:, -(K - 1):] for c in cache["conv"]], dim=-1)
                    st["conv"][rows] = window.to(st["conv"].dtype)
                    st["S"][rows] = cache["state"].float()
                else:
                    for name in ("k", "v"):
                        buf = st[name]
                        buf[rows[:, None], slots[None, :]] = cache[name][:, length - keep:].to(buf.dtype)
            self.pos[rows] = length
        return logits
