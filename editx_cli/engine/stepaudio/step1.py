"""A native implementation of the Step1 causal LM, loading the checkpoint's weights by name.

Pre-norm blocks of RMSNorm, grouped-query attention and a SwiGLU MLP; no rotary
embedding: position enters only as an ALiBi-style bias -slope * sqrt(i - j).
Unlike the checkpoint's own code, the bias also masks padded keys, so a
left-padded row attends exactly as its prompt would alone (the bias depends only
on i - j), which is what makes batches of different lengths correct.

Two ways to run it:
- `forward(ids, key_mask, past)`: whole sequences with a growing cache; the
  plain reference path (tests, the conformance suite, the old decode loop).
- `extend(...)` / `decode(...)` over a `StaticCache`: preallocated slots written
  in place, each slot holding one sequence from position 0, so no padding mask is
  needed and nothing is copied when a row ends. Attention runs on the key/value
  groups directly: with one query per step, the heads a group serves are folded
  into the query axis, so every SDPA backend takes it without repeating keys.

Both read only the keys that can matter. A prompt is run in chunks of at most
`PREFILL_CHUNK` positions, each against the keys before it, so prefill memory
grows with the prompt's length, not its square (a one-shot W x W bias is 30 GB
near W = 8,192 at the released shape). A decode step attends over the first
`keys` positions of the cache, which the caller sets to a bucket just above the
longest live row (see decoder.py); its bias is (rows, heads, keys), never the
cache's length.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

KVCache = list[tuple[torch.Tensor, torch.Tensor]]

# Positions a prefill forward takes at once: bias and scores stay rows x heads x 256 x keys,
# and at 256 a forward of the 3B shape is already as long on compute as on reading weights.
PREFILL_CHUNK = 256


@dataclass(frozen=True)
class Step1Config:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_attention_groups: int
    num_hidden_layers: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    max_seq_len: int = 32768

    @classmethod
    def from_json(cls, path: Path) -> Step1Config:
        """The config, checked as data: whole positive sizes, every one present."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable JSON config ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: not a JSON object")
        fields = cls.__dataclass_fields__
        missing = [k for k, f in fields.items() if k not in raw and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{path}: not a Step1 config (missing {', '.join(missing)})")
        for k in fields:
            v = raw.get(k)
            kind = float if k == "rms_norm_eps" else int
            if k in raw and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0
                             or (kind is int and v != int(v))):
                raise ValueError(f"{path}: {k} must be a positive {'number' if kind is float else 'integer'}, "
                                 f"got {v!r}")
        return cls(**{k: raw[k] for k in fields if k in raw})

    def check_against(self, shapes: dict[str, tuple[int, ...]], where: Path) -> None:
        """Sizes that disagree with the weights are refused before anything is built: a config
        naming a million layers would otherwise take hours to build and fail after."""
        embed = shapes.get("model.embed_tokens.weight")
        layers = {int(n.split(".")[2]) for n in shapes if n.startswith("model.layers.")}
        found = {"vocab_size": embed[0] if embed else None, "hidden_size": embed[1] if embed else None,
                 "num_hidden_layers": len(layers)}
        for k, v in found.items():
            if v != getattr(self, k):
                raise ValueError(f"{where}/config.json: {k} {getattr(self, k)} does not match the weights ({v})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def alibi_slopes(heads: int) -> torch.Tensor:
    n = 2 ** math.floor(math.log2(heads))
    m0 = 2.0 ** (-8.0 / n)
    slopes = [m0**i for i in range(1, n + 1)]
    if heads > n:
        m1 = 2.0 ** (-4.0 / n)
        slopes += [m1**i for i in range(1, 2 * (heads - n), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.eps_tensor: torch.Tensor | None = None  # eps and 1/dim as tensors on the device, made once
        self.inverse_dim: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:  # one fused kernel (the reference's eight); bf16 rounds once, not at each product
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        if x.dtype == torch.float32:  # the same arithmetic in fewer ops: no casts, no scalars to wrap
            if self.eps_tensor is None or self.eps_tensor.device != x.device:
                self.eps_tensor = torch.tensor(self.eps, device=x.device)
                self.inverse_dim = torch.tensor(1.0 / x.shape[-1], device=x.device)
            var = torch.mul(x, x).sum(-1, keepdim=True).mul_(self.inverse_dim).add_(self.eps_tensor)
            return torch.mul(x, torch.rsqrt_(var)).mul_(self.weight)
        # As the reference: variance in float32, its rsqrt rounded to x's dtype, then multiplied
        # in x's dtype (in bf16, rounding the product instead differs by 1 ulp on ~30 % of values).
        var = x.float().pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.eps).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.heads, self.groups, self.head_dim = cfg.num_attention_heads, cfg.num_attention_groups, cfg.head_dim
        h, kv = cfg.hidden_size, cfg.num_attention_groups * cfg.head_dim
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, kv, bias=False)
        self.v_proj = nn.Linear(h, kv, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)
        self.sizes = (h, kv, kv)
        self.qkv: torch.Tensor | None = None  # q, k and v's weights as one matrix (transposed), once fused
        self.o_t: torch.Tensor | None = None

    def fuse(self) -> None:
        """q, k and v's weights as one matrix, so that a decode step makes one product of them;
        the three projections become views of it (no second copy of the weights). Held
        transposed, as a product reads them."""
        self.qkv = _fused(self.q_proj, self.k_proj, self.v_proj).t()
        self.o_t = self.o_proj.weight.t()

    def forward(self, x: torch.Tensor, bias: torch.Tensor, past: tuple | None) -> tuple[torch.Tensor, tuple]:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.groups, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.groups, self.head_dim).transpose(1, 2)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        rep = self.heads // self.groups  # each key/value group serves `rep` consecutive heads
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                             attn_mask=bias)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1)), (k, v)

    def forward_static(self, x: torch.Tensor, bias: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                       slots: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        """Attention that writes this call's keys/values into the static cache in place, then
        attends over the first `bias.shape[-1]` positions of the rows' cache.

        Prefill (`slots` given): the rows in cache `slots`, queries at positions `pos` (rows, s),
        against their keys so far (earlier chunks and this one).
        Decode (`slots` None): row r is slot r, one query at `pos[r]`.
        `bias` is (rows or 1, groups, rep * s, keys), the head-folded layout of `fold`.
        """
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.groups, self.head_dim)
        v = self.v_proj(x).view(b, s, self.groups, self.head_dim)
        rows = slots if slots is not None else torch.arange(b, device=x.device)
        g = torch.arange(self.groups, device=x.device)
        where = (rows[:, None, None], g[None, None, :], pos[:, :, None])  # (b, s, groups)
        cache_k.index_put_(where, k)
        cache_v.index_put_(where, v)
        keys = bias.shape[-1]
        if slots is not None:  # only the positions this chunk can see are gathered
            keys_, values = cache_k[:, :, :keys].index_select(0, slots), cache_v[:, :, :keys].index_select(0, slots)
        else:
            keys_, values = cache_k[:b, :, :keys], cache_v[:b, :, :keys]
        out = F.scaled_dot_product_attention(fold(q, self.groups), keys_, values, attn_mask=bias)
        return self.o_proj(unfold(out, self.groups, s))


def fold(q: torch.Tensor, groups: int) -> torch.Tensor:
    """(b, s, heads, d) -> (b, groups, rep * s, d): the heads of one key/value group
    (heads // groups consecutive ones) become extra queries against that group's keys."""
    b, s, h, d = q.shape
    return q.view(b, s, groups, h // groups, d).permute(0, 2, 3, 1, 4).reshape(b, groups, -1, d)


def unfold(out: torch.Tensor, groups: int, s: int) -> torch.Tensor:
    """The inverse of `fold` for the attention output: (b, groups, rep * s, d) -> (b, s, heads * d)."""
    b, _, _, d = out.shape
    return out.view(b, groups, -1, s, d).permute(0, 3, 1, 2, 4).reshape(b, s, -1)


class MLP(nn.Module):
    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up: torch.Tensor | None = None  # gate and up's weights as one matrix (transposed), once fused
        self.down_t: torch.Tensor | None = None
        self.sizes = (cfg.intermediate_size, cfg.intermediate_size)

    def fuse(self) -> None:
        self.gate_up = _fused(self.gate_proj, self.up_proj).t()
        self.down_t = self.down_proj.weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _fused(*linears: nn.Linear) -> torch.Tensor:
    """The linears' weights stacked into one matrix, each linear's weight becoming a view of its
    rows: one product computes them all, and the weights are held once."""
    merged = torch.cat([lin.weight.detach() for lin in linears])
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(merged[start:start + rows], requires_grad=False)
        start += rows
    return merged


class Block(nn.Module):
    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, past: tuple | None) -> tuple[torch.Tensor, tuple]:
        a, kv = self.self_attn(self.input_layernorm(x), bias, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv

    def forward_static(self, x: torch.Tensor, bias: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                       slots: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn.forward_static(self.input_layernorm(x), bias, cache_k, cache_v, slots, pos)
        return x + self.mlp(self.post_attention_layernorm(x))

    def step(self, x: torch.Tensor, attend: Attend, cache: LayerCache, where: torch.Tensor, keys: int) -> torch.Tensor:
        """One decode step of a fused block: x (rows, hidden), row r in cache slot r; `where`
        (rows, groups) each row's new position for every group in the cache's flat views;
        `attend` the step's attention over the first `keys` positions. Four products (q/k/v, o
        with the residual, gate/up, down with the residual), the cache written in place, one
        attention call: no fold or unfold copies."""
        a, rows = self.self_attn, x.shape[0]
        q, k, v = torch.mm(self.input_layernorm(x), a.qkv).split_with_sizes(a.sizes, 1)
        cache.flat_k.index_put_((where,), k.view(rows, a.groups, a.head_dim))
        cache.flat_v.index_put_((where,), v.view(rows, a.groups, a.head_dim))
        x = torch.addmm(x, attend(q, cache.live_k(rows, keys), cache.live_v(rows, keys)), a.o_t)
        gate, up = torch.mm(self.post_attention_layernorm(x), self.mlp.gate_up).split_with_sizes(self.mlp.sizes, 1)
        return torch.addmm(x, F.silu(gate).mul_(up), self.mlp.down_t)


# A decode step's attention: q (rows, heads * head_dim), keys and values (rows, groups, keys,
# head_dim) -> (rows, heads * head_dim)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def folded_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SDPA over the key/value groups, the heads a group serves folded into the query axis
    (every backend takes it without repeating keys); `bias` (rows, groups, rep, keys)."""
    rows, groups, _, head_dim = k.shape
    return F.scaled_dot_product_attention(q.view(rows, groups, -1, head_dim), k, v, attn_mask=bias).view(rows, -1)


class FlexDecode:
    """A decode step's attention through FlexAttention: the ALiBi-sqrt bias and each row's
    causal limit computed inside the kernel from the rows' positions (never a rows x heads x
    keys tensor), the groups read as they are (GQA). On CUDA the compiled kernel is the
    flex-decoding one, which splits the keys over the GPU's blocks (SDPA's kernel at batch 1
    runs a grid of 4 blocks). The kernel is compiled for the first shape, then once more with
    shapes marked dynamic (every key bucket and width after that), during the decoder's
    warm-up steps, before any graph is captured; its positions live in one buffer the kernel
    reads, copied in a step."""

    def __init__(self, slopes: torch.Tensor) -> None:
        self.slopes = slopes
        self.pos: torch.Tensor | None = None
        self.kernel: Any = None
        self.score: Any = None

    def _make(self, rows: int, device: torch.device) -> None:
        from torch.nn.attention.flex_attention import flex_attention

        pos, slopes = torch.zeros(rows, dtype=torch.long, device=device), self.slopes.to(device)

        def score(s: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor,
                  kv_idx: torch.Tensor) -> torch.Tensor:
            d = pos[b] - kv_idx
            return torch.where(d >= 0, s - slopes[h] * d.clamp(min=0).to(torch.float32).sqrt(), -math.inf)

        self.pos, self.score = pos, score
        self.kernel = torch.compile(flex_attention)  # not dynamic=False: one kernel for every bucket

    def begin(self, pos: torch.Tensor) -> Attend:
        """This step's attention for rows at positions `pos`."""
        if self.pos is None or len(pos) > len(self.pos) or self.pos.device != pos.device:
            self._make(max(len(pos), 64), pos.device)
        self.pos[:len(pos)].copy_(pos)
        return self

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        rows, _, _, head_dim = k.shape
        return self.kernel(q.view(rows, -1, 1, head_dim), k, v, score_mod=self.score, enable_gqa=True).view(rows, -1)


@dataclass(frozen=True)
class LayerCache:
    """One layer's keys and values (slots, groups, length, head_dim), and the same storage as
    rows of head_dim (`flat_*`) for the step's writes: views made once, so that a step spends
    no ops taking them."""

    k: torch.Tensor
    v: torch.Tensor
    flat_k: torch.Tensor
    flat_v: torch.Tensor

    def live_k(self, rows: int, keys: int) -> torch.Tensor:
        # one view op: the first `rows` slots and `keys` positions, the strides the cache's own
        return self.k.as_strided((rows, self.k.shape[1], keys, self.k.shape[3]), self.k.stride())

    def live_v(self, rows: int, keys: int) -> torch.Tensor:
        return self.v.as_strided((rows, self.v.shape[1], keys, self.v.shape[3]), self.v.stride())


class StaticCache:
    """Keys and values of `slots` sequences of up to `length` positions, for every layer:
    (layers, slots, groups, length, head_dim) each, allocated once and written in place."""

    def __init__(self, cfg: Step1Config, slots: int, length: int, device: str | torch.device,
                 dtype: torch.dtype) -> None:
        shape = (cfg.num_hidden_layers, slots, cfg.num_attention_groups, length, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slots, self.length = slots, length
        self.layers = [LayerCache(k, v, k.view(-1, cfg.head_dim), v.view(-1, cfg.head_dim))
                       for k, v in zip(self.k, self.v, strict=True)]
        self.ramp = torch.arange(length, device=device, dtype=torch.float32)  # key positions, for the bias
        # where slot r's group g starts in the flat views; a step adds each row's position
        self.starts = torch.arange(slots * cfg.num_attention_groups, device=device).view(slots, -1) * length

    def move(self, src: int, dst: int) -> None:
        """Slot `src`'s sequence becomes slot `dst`'s (compacting the batch at the tail)."""
        self.k[:, dst].copy_(self.k[:, src])
        self.v[:, dst].copy_(self.v[:, src])


class Step1Body(nn.Module):
    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Step1ForCausalLM(nn.Module):
    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.config = cfg
        self.model = Step1Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("slopes", alibi_slopes(cfg.num_attention_heads), persistent=False)
        self.flex: FlexDecode | None = None  # decode attention through FlexAttention (`use_flex`)
        self.neg_slopes: torch.Tensor | None = None  # -slopes as (heads, 1, 1) on the device, made once

    def attention_bias(self, key_mask: torch.Tensor, query_len: int, dtype: torch.dtype) -> torch.Tensor:
        """(batch, heads, query_len, key_len) additive bias: ALiBi-sqrt, causal, padded keys masked."""
        key_len = key_mask.shape[1]
        q_pos = torch.arange(key_len - query_len, key_len, device=key_mask.device)
        k_pos = torch.arange(key_len, device=key_mask.device)
        dist = (q_pos[:, None] - k_pos[None, :]).float()
        bias = -self.slopes.to(key_mask.device)[:, None, None] * dist.clamp(min=0).sqrt()
        blocked = (dist < 0)[None, None] | ~key_mask[:, None, None, :]
        bias = bias[None].masked_fill(blocked, float("-inf"))
        # A padding query sees no real key; let it attend freely so softmax stays finite.
        # Its output is never read: real tokens never attend to padding.
        bias = bias.masked_fill(blocked.all(-1, keepdim=True), 0.0)
        return bias.to(dtype)

    def folded_bias(self, q_pos: torch.Tensor, keys: int, cache: StaticCache) -> torch.Tensor:
        """The ALiBi-sqrt causal bias for queries at positions `q_pos` (rows, s) against key
        positions 0..keys-1 of the same sequence, in the head-folded layout of `fold`:
        (rows, groups, rep * s, keys), in the cache's dtype. Built in place: one float32 tensor
        of that size, from the cache's positions (whole numbers, exact in float32) and the
        negated slopes, both made once."""
        if self.neg_slopes is None or self.neg_slopes.device != q_pos.device:
            self.neg_slopes = -self.slopes.to(q_pos.device)[:, None, None]
        dist = q_pos[..., None] - cache.ramp[:keys]  # (rows, s, keys)
        # a future key's distance is negative: its square root is NaN, which becomes -inf
        bias = dist.sqrt_()[:, None] * self.neg_slopes  # (rows, heads, s, keys)
        bias.nan_to_num_(nan=-math.inf)
        if bias.dtype != cache.k.dtype:
            bias = bias.to(cache.k.dtype)
        return bias.view(len(q_pos), self.config.num_attention_groups, -1, keys)

    def extend(self, input_ids: torch.Tensor, start: int, slots: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """Run positions start..start+s-1 of the rows in cache `slots` (whose positions before
        `start` are already there) and return their final hidden states (rows, s, hidden).
        Rows are right-padded: a padded position sits after every real one of its row, so no
        real query sees it, and the decode steps overwrite it before any query reaches it."""
        rows, width = input_ids.shape
        pos = torch.arange(start, start + width, device=input_ids.device)
        bias = self.folded_bias(pos[None], start + width, cache)
        x = self.model.embed_tokens(input_ids)
        for i, layer in enumerate(self.model.layers):
            x = layer.forward_static(x, bias, cache.k[i], cache.v[i], slots, pos.expand(rows, width))
        return self.model.norm(x)

    def prefill(self, input_ids: torch.Tensor, last: list[int], slots: torch.Tensor, cache: StaticCache,
                chunk: int = PREFILL_CHUNK) -> torch.Tensor:
        """Run right-padded prompts (rows, width) into cache `slots` from position 0, `chunk`
        positions a forward; return the logits (rows, vocab) at each row's last real position."""
        rows, width = input_ids.shape
        out = torch.empty(rows, self.config.hidden_size, device=input_ids.device, dtype=cache.k.dtype)
        for start in range(0, width, chunk):
            h = self.extend(input_ids[:, start:start + chunk], start, slots, cache)
            for r, end in enumerate(last):
                if start <= end < start + chunk:
                    out[r] = h[r, end - start]
        return self.lm_head(out).float()

    def fuse(self) -> None:
        """Each block's q/k/v and gate/up weights as one matrix a block (views keep the names the
        checkpoint loads by); a 4-bit model's quantized layers are left as they are."""
        for layer in self.model.layers:
            for part, merged in ((layer.self_attn, "qkv"), (layer.mlp, "gate_up")):
                if getattr(part, merged) is None and all(type(m) is nn.Linear for m in part.children()):
                    part.fuse()

    @property
    def fused(self) -> bool:
        first = self.model.layers[0]
        return first.self_attn.qkv is not None and first.mlp.gate_up is not None

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, cache: StaticCache, keys: int) -> torch.Tensor:
        """One step for slots 0..rows-1: token `tokens[r]` at position `pos[r]`, attending over
        cache positions 0..keys-1 (every live row's `pos` below `keys`); logits (rows, vocab).
        Fixed shapes for given rows and keys, so it can be captured as a CUDA graph. What every
        layer shares (the bias, the cache indices) is made once a step."""
        if self.fused:
            column = pos[:, None]
            if self.flex is not None:
                attend = self.flex.begin(pos)
            else:
                attend = functools.partial(folded_sdpa, bias=self.folded_bias(column, keys, cache))
            where = cache.starts[:len(tokens)] + column
            x = self.model.embed_tokens(tokens)
            for layer, layer_cache in zip(self.model.layers, cache.layers, strict=True):
                x = layer.step(x, attend, layer_cache, where, keys)
            logits = self.lm_head(self.model.norm(x))
            return logits if logits.dtype == torch.float32 else logits.float()
        bias = self.folded_bias(pos[:, None], keys, cache)
        x = self.model.embed_tokens(tokens[:, None])
        for i, layer in enumerate(self.model.layers):
            x = layer.forward_static(x, bias, cache.k[i], cache.v[i], None, pos[:, None])
        return self.lm_head(self.model.norm(x[:, 0])).float()

    def use_flex(self, on: bool = True) -> None:
        """Decode steps attend through FlexAttention (`FlexDecode`) instead of the folded SDPA
        (a fused model's; a 4-bit one keeps SDPA). SDPA stays the default until a GPU's
        figures choose (benchmarks/decode.py --attention flex)."""
        self.flex = FlexDecode(self.slopes) if on else None

    def forward(self, input_ids: torch.Tensor, key_mask: torch.Tensor, past: KVCache | None = None,
                all_logits: bool = False) -> tuple[torch.Tensor, KVCache]:
        """Logits for the last position (or every position) and the extended KV cache.

        `key_mask` (batch, past + new) is True for real tokens, False for padding.
        """
        x = self.model.embed_tokens(input_ids)
        bias = self.attention_bias(key_mask, input_ids.shape[1], x.dtype)
        new_past: KVCache = []
        for i, layer in enumerate(self.model.layers):
            x, kv = layer(x, bias, past[i] if past is not None else None)
            new_past.append(kv)
        h = self.model.norm(x if all_logits else x[:, -1:])
        return self.lm_head(h).float(), new_past

    @classmethod
    def from_folder(cls, folder: Path, device: str, dtype: torch.dtype, nf4: bool = False) -> Step1ForCausalLM:
        """Load config.json and every *.safetensors in the folder by weight name.

        `nf4` quantizes the blocks' linear layers to 4-bit NF4 with double quantization
        (bitsandbytes, CUDA only), as the released bnb variant is loaded; embeddings,
        norms and the output layer stay in `dtype`.
        """
        from safetensors import safe_open

        cfg = Step1Config.from_json(folder / "config.json")
        files = sorted(folder.glob("*.safetensors"))
        shapes: dict[str, tuple[int, ...]] = {}
        for path in files:  # headers only: cheap, and a damaged file is named
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
            except Exception as e:
                raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
        cfg.check_against(shapes, folder)
        with torch.device("meta"):
            model = cls(cfg)
        state: dict[str, torch.Tensor] = {}
        for path in files:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    state[name] = f.get_tensor(name).to(dtype)
        if "lm_head.weight" not in state:  # declared tied to the embedding
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        expected = set(model.state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing:
            raise RuntimeError(f"{folder}: weights missing from the safetensors files: {sorted(missing)[:5]}")
        if unexpected:
            raise RuntimeError(f"{folder}: unexpected weights (not a Step1 checkpoint?): {sorted(unexpected)[:5]}")
        model.load_state_dict(state, assign=True)
        model.slopes = alibi_slopes(cfg.num_attention_heads)
        if nf4:
            _quantize_nf4(model, dtype, device)
        return model.to(device).eval()


def _quantize_nf4(model: Step1ForCausalLM, compute_dtype: torch.dtype, device: str) -> None:
    if not device.startswith("cuda"):
        raise RuntimeError("4-bit (bnb) weights need a CUDA device")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise RuntimeError("the bnb variant needs the bitsandbytes package (pip install bitsandbytes)") from None
    for block in model.model.layers:
        for parent in (block.self_attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                          compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4")
                    # Params4bit quantizes when moved to the GPU
                    q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False,
                                                 compress_statistics=True, quant_type="nf4")
                    setattr(parent, name, q)
