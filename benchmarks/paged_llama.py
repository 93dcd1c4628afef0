"""A random-weight Llama-style model in plain torch, computing over a paged KV pool.

What benchmarks.ttft_gpu runs its forward on: bf16 weights, fused QKV, RoPE, SDPA attention
over K/V gathered from a per-layer pool by slot, SwiGLU. `Model.forward(..., wait=)` calls
`wait(l)` before layer l reads the pool, where SGLang's KV-pool accessor waits for a
layerwise load.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int = 32000


SHAPES = {"1b": Shape(16, 2048, 32, 8, 64, 8192),  # Llama-3.2-1B's shape
          "8b": Shape(32, 4096, 32, 8, 128, 14336),  # Llama-3-8B's shape
          "smoke": Shape(4, 256, 4, 2, 64, 512, vocab=1024)}  # `--device cpu`: checks the script


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def on_stream(stream):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


class Model:
    """Random bf16 weights; `forward` computes `ids` at positions start.. over a paged pool."""

    def __init__(self, s: Shape, max_pos: int, slots: int, dev):
        self.s, self.dev = s, dev
        g = torch.Generator(device=dev).manual_seed(0)

        def w(*shape):
            return (torch.randn(*shape, generator=g, device=dev) / math.sqrt(shape[0])).to(torch.bfloat16)

        q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        self.embed = (torch.randn(s.vocab, s.hidden, generator=g, device=dev)).to(torch.bfloat16)
        self.qkv = [w(s.hidden, q + 2 * kv) for _ in range(s.layers)]
        self.o = [w(q, s.hidden) for _ in range(s.layers)]
        self.gu = [w(s.hidden, 2 * s.ffn) for _ in range(s.layers)]
        self.down = [w(s.ffn, s.hidden) for _ in range(s.layers)]
        self.lm = w(s.hidden, s.vocab)
        inv = 1.0 / (500000 ** (torch.arange(0, s.head_dim, 2, device=dev).float() / s.head_dim))
        ang = torch.arange(max_pos, device=dev).float()[:, None] * inv[None]
        self.cos, self.sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
        self.k = [torch.zeros(slots, s.kv_heads, s.head_dim, dtype=torch.bfloat16, device=dev)
                  for _ in range(s.layers)]
        self.v = [torch.zeros_like(t) for t in self.k]

    def rope(self, x, pos):  # x [T, H, D]
        c, s_ = self.cos[pos][:, None], self.sin[pos][:, None]
        a, b = x[..., ::2], x[..., 1::2]
        return torch.stack((a * c - b * s_, a * s_ + b * c), dim=-1).flatten(-2)

    @torch.inference_mode()
    def forward(self, ids, start: int, prefix_slots, new_slots, wait=None) -> torch.Tensor:
        """Logits of the last position. `wait(l)` runs before layer l reads the pool."""
        s, T = self.s, ids.numel()
        pos = torch.arange(start, start + T, device=self.dev)
        slots = torch.cat([prefix_slots, new_slots])
        q_n, kv_n = s.heads * s.head_dim, s.kv_heads * s.head_dim
        if start:  # new tokens attend to the prefix and causally to each other
            mask = torch.arange(start + T, device=self.dev)[None] <= pos[:, None]
        x = self.embed[ids]
        for l in range(s.layers):
            h = F.rms_norm(x, (s.hidden,))
            q, k, v = (h @ self.qkv[l]).split((q_n, kv_n, kv_n), dim=-1)
            q = self.rope(q.view(T, s.heads, s.head_dim), pos)
            k = self.rope(k.view(T, s.kv_heads, s.head_dim), pos)
            if wait is not None:
                wait(l)  # where SGLang's KV-pool accessor calls wait_until(layer)
            self.k[l][new_slots], self.v[l][new_slots] = k, v.view(T, s.kv_heads, s.head_dim)
            rep = s.heads // s.kv_heads
            K = self.k[l][slots].repeat_interleave(rep, 1).transpose(0, 1)[None]
            V = self.v[l][slots].repeat_interleave(rep, 1).transpose(0, 1)[None]
            a = F.scaled_dot_product_attention(q.transpose(0, 1)[None], K, V,
                                               attn_mask=mask if start else None, is_causal=not start)
            x = x + a[0].transpose(0, 1).reshape(T, q_n) @ self.o[l]
            gate, up = (F.rms_norm(x, (s.hidden,)) @ self.gu[l]).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ self.down[l]
        return F.rms_norm(x[-1:], (s.hidden,)) @ self.lm

    def pools(self):
        return [(k, v) for k, v in zip(self.k, self.v)]
