"""The vocoder's flow: speech tokens (with the prompt's) -> 80-bin mel at 50 Hz.

CosyVoice-300M-25Hz's `CausalMaskedDiffWithXvec`, written from its published shapes and
order of operations, with parameter names that load its `flow.pt` as it is:

    tokens (B, T, 2) -> dual-codebook embedding (B, T, 512)
      -> conformer encoder (6 layers at 25 Hz, x2 causal upsample, 4 layers at 50 Hz)
      -> Linear 512->80 = mu (B, 80, 2T)
    noise -> 10 Euler steps of a DiT (16 blocks) with classifier-free guidance 0.7, on
             [x, mu, speaker, prompt mel] -> mel; the prompt's frames are cut off.

Batched: items are right-padded; the embedding's output is zeroed past each item's end
(its Linear bias and LayerNorm would otherwise leak into the last frames through the
look-ahead convolution), the causal convolutions never look right, and attention sees only
each item's keys, so an item decodes as it would alone. Every step is one pass for all items:
the only per-item work is attention in `ITEMS` mode (see `Rows`). The noise is an input:
each item brings its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from editx_cli.engine.stepaudio.rowwise import conv

CFG_RATE = 0.7
STEPS = 10


@dataclass(frozen=True)
class FlowShape:
    """What the weights do not say by their shapes, and what they do (checked at load)."""

    vocab: int = 5121
    width: int = 512  # encoder width (embedding: two halves)
    mel: int = 80
    speaker: int = 192
    heads: int = 8  # encoder attention heads
    ff: int = 2048
    blocks: int = 6
    up_blocks: int = 4
    lookahead: int = 3
    up_stride: int = 2
    dit_width: int = 512
    dit_depth: int = 16
    dit_heads: int = 8
    dit_head_dim: int = 64
    dit_mlp_ratio: float = 4.0


# -- batch independence ---------------------------------------------------------------------
# An item's result must not depend on what it is batched with: convolutions are products of
# unfolded frames (rowwise.py), and attention, whose weighted sum would run over the padded
# length, runs over each item's own frames.

ITEMS = "items"  # attention item by item, each over its own frames: to the bit what it is alone
MASKED = "masked"  # one attention call for all items, padded keys masked: one kernel a block


def attention_mode(device: torch.device | str) -> str:
    """The CPU keeps an item's result to the bit whatever its batch mates (a masked softmax
    sums the padded row otherwise than the item's own: 1e-7 apart, enough to turn a 16-bit
    sample over); a GPU takes one masked call, whose launches per item would otherwise
    dominate the flow (VOCODER_FACTS 11.3: within 3e-6 of the item alone)."""
    return ITEMS if torch.device(device).type == "cpu" else MASKED


@dataclass
class Rows:
    """The rows of a batch: each one's frames, and how attention keeps to them. An item may
    hold several adjacent rows of its length (the flow's conditional and unconditional rows),
    which attend in one call in either mode."""

    lengths: list[int]
    mode: str
    mask: torch.Tensor | None  # (rows, 1, 1, frames), True at a row's own keys (MASKED, padded rows)
    per_item: int = 1

    @classmethod
    def of(cls, lengths: list[int], frames: int, device: torch.device, mode: str, per_item: int = 1) -> Rows:
        mask = None
        if mode == MASKED and min(lengths) < frames:
            mask = (torch.arange(frames, device=device)[None, :]
                    < torch.tensor(lengths, device=device)[:, None])[:, None, None, :]
        return cls(lengths, mode, mask, per_item)

    def each(self, fn, *rows: torch.Tensor) -> torch.Tensor:
        """fn(*rows of one item (r, H, frames, d), cut to its frames) for each item, zero-padded
        back together."""
        if len(self.lengths) == self.per_item and self.lengths[0] == rows[-1].shape[2]:
            return fn(*rows)  # one item, unpadded
        out = torch.zeros_like(rows[-1])
        for start in range(0, len(self.lengths), self.per_item):
            n, stop = self.lengths[start], start + self.per_item
            out[start:stop, :, :n] = fn(*(r[start:stop, :, :n] for r in rows))
        return out

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Softmax attention of (rows, H, frames, d) over each row's own keys."""
        if self.mode == ITEMS:
            return self.each(lambda q1, k1, v1: F.scaled_dot_product_attention(q1, k1, v1, scale=scale), q, k, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=scale)


def relative_positions(length: int, width: int) -> torch.Tensor:
    """ESPnet's relative table (1, 2L-1, width) for offsets L-1 ... -(L-1): channel 2m holds
    sin(rho * w_m), 2m+1 cos(rho * w_m), w_m = 10000^(-2m/width); float32 on the CPU, as the
    reference computes it (the arguments reach thousands of radians)."""
    position = torch.arange(0, length, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * -(math.log(10000.0) / width))
    ahead = torch.zeros(length, width)
    behind = torch.zeros(length, width)
    ahead[:, 0::2], ahead[:, 1::2] = torch.sin(position * rate), torch.cos(position * rate)
    behind[:, 0::2], behind[:, 1::2] = torch.sin(-1 * position * rate), torch.cos(-1 * position * rate)
    return torch.cat([torch.flip(ahead, [0]), behind[1:]]).unsqueeze(0)


class InputLayer(nn.Module):
    """Linear + LayerNorm, scaled by sqrt(width) (the positions enter in attention)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width, eps=1e-5))
        self.scale = math.sqrt(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.scale


class RelativeAttention(nn.Module):
    """Multi-head self-attention with relative positions (Transformer-XL's u and v biases):
    score(i, j) = ((q_i + u) . k_j + (q_i + v) . P(i - j)) / sqrt(d)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.d = heads, width // heads
        self.linear_q, self.linear_k = nn.Linear(width, width), nn.Linear(width, width)
        self.linear_v, self.linear_out = nn.Linear(width, width), nn.Linear(width, width)
        self.linear_pos = nn.Linear(width, width, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d))

    def forward(self, x: torch.Tensor, rows: Rows, table: torch.Tensor) -> torch.Tensor:
        """x (B, T, W); the relative table (1, 2T-1, W) of the batch's T frames."""
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(y.shape[0], -1, self.heads, self.d).transpose(1, 2)

        q, k, v = split(self.linear_q(x)), split(self.linear_k(x)), split(self.linear_v(x))
        p = split(self.linear_pos(table))  # (1, H, 2T-1, d): a row a relative offset
        if rows.mode == ITEMS:  # an item's offsets are the middle 2n-1 rows
            out = rows.each(lambda q1, k1, v1: self._attend(q1, k1, v1, p[:, :, t - q1.shape[2]:t + q1.shape[2] - 1]),
                            q, k, v)
        else:
            out = self._attend(q, k, v, p, rows.mask)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, -1))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, T, d) rows over their T frames (those `mask` keeps), p (1, H, 2T-1, d)."""
        t = q.shape[2]
        content = torch.matmul(q + self.pos_bias_u[:, None, :], k.transpose(-2, -1))
        position = torch.matmul(q + self.pos_bias_v[:, None, :], p.transpose(-2, -1))
        # column (T-1) - i + j of row i holds offset i - j
        index = (t - 1) - torch.arange(t, device=q.device)[:, None] + torch.arange(t, device=q.device)[None, :]
        position = torch.gather(position, -1, index.expand(*position.shape[:2], t, t))
        scores = (content + position) / math.sqrt(self.d)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm attention then feed-forward, each residual (no convolution module)."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.self_attn = RelativeAttention(width, heads)
        self.feed_forward = FeedForward(width, hidden)
        self.norm_mha, self.norm_ff = nn.LayerNorm(width, eps=1e-12), nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor, rows: Rows, table: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), rows, table)
        return x + self.feed_forward(self.norm_ff(x))


class LookAhead(nn.Module):
    """Each frame sees the next `frames` (zeros past the end), then a causal k3 convolution."""

    def __init__(self, width: int, frames: int) -> None:
        super().__init__()
        self.frames = frames
        self.conv1, self.conv2 = nn.Conv1d(width, width, frames + 1), nn.Conv1d(width, width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(conv(F.pad(x.transpose(1, 2), (0, self.frames)), self.conv1))
        return conv(F.pad(y, (2, 0)), self.conv2).transpose(1, 2) + x


class Upsample(nn.Module):
    """Each frame repeated `stride` times, then a causal convolution of 2*stride+1 taps."""

    def __init__(self, width: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(width, width, 2 * stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(x.transpose(1, 2), scale_factor=float(self.stride), mode="nearest")
        return conv(F.pad(y, (2 * self.stride, 0)), self.conv).transpose(1, 2)


class Encoder(nn.Module):
    def __init__(self, s: FlowShape) -> None:
        super().__init__()
        self.up_stride = s.up_stride
        self.embed = InputLayer(s.width)
        self.pre_lookahead_layer = LookAhead(s.width, s.lookahead)
        self.encoders = nn.ModuleList(ConformerLayer(s.width, s.heads, s.ff) for _ in range(s.blocks))
        self.up_layer = Upsample(s.width, s.up_stride)
        self.up_embed = InputLayer(s.width)
        self.up_encoders = nn.ModuleList(ConformerLayer(s.width, s.heads, s.ff) for _ in range(s.up_blocks))
        self.after_norm = nn.LayerNorm(s.width, eps=1e-5)
        self.tables: dict[tuple, torch.Tensor] = {}  # the longest relative table made, per device and dtype

    def table(self, frames: int, like: torch.Tensor) -> torch.Tensor:
        """The relative table of `frames` frames: the middle rows of the longest one made so far
        (a row is a function of its offset alone), kept on the device."""
        key = (like.device, like.dtype)
        table = self.tables.get(key)
        if table is None or table.shape[1] < 2 * frames - 1:
            table = relative_positions(max(frames, 512), like.shape[-1]).to(like.device, like.dtype)
            self.tables[key] = table
        longest = (table.shape[1] + 1) // 2
        return table[:, longest - frames:longest + frames - 1]

    def forward(self, x: torch.Tensor, lengths: list[int], mode: str) -> torch.Tensor:
        """(B, T, W) frames, each item's length -> (B, stride*T, W)."""
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < torch.tensor(lengths, device=x.device)[:, None]
        x = self.pre_lookahead_layer(self.embed(x) * valid[..., None])  # padding is zeros, as past the end alone
        rows, table = Rows.of(lengths, x.shape[1], x.device, mode), self.table(x.shape[1], x)
        for layer in self.encoders:
            x = layer(x, rows, table)
        x = self.up_embed(self.up_layer(x))
        rows = Rows.of([self.up_stride * n for n in lengths], x.shape[1], x.device, mode)
        table = self.table(x.shape[1], x)
        for layer in self.up_encoders:
            x = layer(x, rows, table)
        return self.after_norm(x)


# -- the DiT and its flow matching ----------------------------------------------------------


class TimeEmbedding(nn.Module):
    def __init__(self, width: int, channels: int = 256) -> None:
        super().__init__()
        self.channels = channels
        self.mlp = nn.Sequential(nn.Linear(channels, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.channels // 2
        rates = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (1000 * t)[:, None].float() * rates[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype))


class DiTAttention(nn.Module):
    def __init__(self, width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q, self.to_k, self.to_v = nn.Linear(width, inner), nn.Linear(width, inner), nn.Linear(width, inner)
        self.q_norm, self.k_norm = nn.LayerNorm(head_dim, eps=1e-5), nn.LayerNorm(head_dim, eps=1e-5)
        self.proj = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim)

        q, k = self.q_norm(heads(self.to_q(x))).transpose(1, 2), self.k_norm(heads(self.to_k(x))).transpose(1, 2)
        out = rows.attend(q, k, heads(self.to_v(x)).transpose(1, 2), 1.0 / math.sqrt(self.head_dim))
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class CausalConv(nn.Module):
    """A k3 convolution over (B, T, C) that sees only the past: two zero frames on the left, so
    right padding never reaches an item's frames."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width, width, 3))
        self.bias = nn.Parameter(torch.zeros(width))
        self.flat: tuple | None = None  # (key, the weight as (C, 3C)), made once for the weight as it is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """On the CPU one product of the unfolded frames, whose rows are summed alike whatever the
        batch and the thread count (rowwise.py); elsewhere torch's own convolution, twice as fast
        (the DiT's 320 convolutions a task are a third of the flow)."""
        if x.device.type != "cpu":
            return F.conv1d(F.pad(x.transpose(1, 2), (2, 0)), self.weight, self.bias).transpose(1, 2)
        key = (self.weight.data_ptr(), self.weight._version)
        if self.flat is None or self.flat[0] != key:
            self.flat = (key, self.weight.flatten(1))
        frames = F.pad(x, (0, 0, 2, 0)).unfold(1, 3, 1)  # (B, T, C, 3)
        return F.linear(frames.reshape(*x.shape[:2], -1), self.flat[1], self.bias)


class ConvBranch(nn.Module):
    """conv -> LayerNorm -> Mish -> conv; `block` keeps the checkpoint's numbering (its other
    places hold parameter-free steps)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.block = nn.ModuleList([nn.Identity(), CausalConv(width), nn.Identity(), nn.LayerNorm(width, eps=1e-5),
                                    nn.Identity(), nn.Mish(), CausalConv(width), nn.Identity()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block[6](self.block[5](self.block[3](self.block[1](x))))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


NORM_EPS = 1e-6  # the DiT's parameter-free LayerNorms
SCALES = (1, 4, 7)  # the adaLN rows that scale (applied as 1 + scale)


class DiTBlock(nn.Module):
    """Attention, then the causal convolution branch, then the MLP; each on an adaLN-modulated
    parameter-free LayerNorm of the input and gated, all by the time embedding."""

    def __init__(self, width: int, heads: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = DiTAttention(width, heads, head_dim)
        self.conv = ConvBranch(width)
        self.mlp = MLP(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))

    def modulations(self, c: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """For each time's embedding (S, W): shift, 1 + scale and gate of each branch, (W,) each."""
        m = self.adaLN_modulation(c).view(len(c), 9, -1)
        m = m + torch.zeros(9, 1, dtype=m.dtype, device=m.device).index_fill_(0, torch.tensor(SCALES,
                                                                                              device=m.device), 1)
        return [step.unbind(0) for step in m.unbind(0)]

    def forward(self, h: torch.Tensor, m: tuple[torch.Tensor, ...], rows: Rows) -> torch.Tensor:
        """h (B, T, W); m: this step's modulations. A modulated norm is a LayerNorm whose weight
        is 1 + scale and bias the shift; a gated residual one addcmul."""
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f, shift_c, scale_c, gate_c = m
        w = (h.shape[-1],)
        h = torch.addcmul(h, gate_a, self.attn(F.layer_norm(h, w, scale_a, shift_a, NORM_EPS), rows))
        h = torch.addcmul(h, gate_c, self.conv(F.layer_norm(h, w, scale_c, shift_c, NORM_EPS)))
        return torch.addcmul(h, gate_f, self.mlp(F.layer_norm(h, w, scale_f, shift_f, NORM_EPS)))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out)

    def modulations(self, c: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        shift, scale = self.adaLN_modulation(c).view(len(c), 2, -1).unbind(1)
        return list(zip(shift.unbind(0), (scale + 1).unbind(0), strict=True))

    def forward(self, h: torch.Tensor, m: tuple[torch.Tensor, ...]) -> torch.Tensor:
        shift, scale = m
        return self.linear(F.layer_norm(h, (h.shape[-1],), scale, shift, NORM_EPS))


class DiT(nn.Module):
    """The velocity of the flow at time t, from [x, mu, speaker, prompt mel] (4 x 80 channels);
    no positional encoding: order enters through the causal convolutions."""

    def __init__(self, s: FlowShape) -> None:
        super().__init__()
        self.mel = s.mel
        self.t_embedder = TimeEmbedding(s.dit_width)
        self.in_proj = nn.Linear(4 * s.mel, s.dit_width)
        self.blocks = nn.ModuleList(DiTBlock(s.dit_width, s.dit_heads, s.dit_head_dim, s.dit_mlp_ratio)
                                    for _ in range(s.dit_depth))
        self.final_layer = FinalLayer(s.dit_width, s.mel)
        self.made: tuple | None = None  # (key, (conditions, step lengths)): see conditions

    def conditions(self, steps: int, device: torch.device) -> tuple[list[tuple[list, tuple]], list[torch.Tensor]]:
        """Every block's modulations (and the final layer's) at each time of the schedule, and the
        steps' lengths. They are the same for every item and every call: made once for the
        weights as they are (a parameter changed in place or moved is a new key), a time a
        product, as a product of one row is summed the same whatever the thread count, and one
        of a few rows is not."""
        key = (steps, device, torch.is_inference_mode_enabled(),
               tuple((p.data_ptr(), p._version) for p in self.parameters()))
        if self.made is None or self.made[0] != key:
            times, dts = schedule(steps, device)
            made = []
            for step in range(steps):
                c = self.t_embedder(times[step:step + 1])
                made.append(([block.modulations(c)[0] for block in self.blocks], self.final_layer.modulations(c)[0]))
            self.made = (key, (made, dts))
        return self.made[1]

    def inputs(self, mu: torch.Tensor, speaker: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The part of the input projection that does not change over the steps: (B, T, W)
        from mu and the prompt mel (B, T, 80) and the speaker (B, 80), the bias in it."""
        fixed = torch.cat([mu, speaker[:, None, :].expand(-1, mu.shape[1], -1), cond], dim=-1)
        return F.linear(fixed, self.in_proj.weight[:, self.mel:], self.in_proj.bias)

    def forward(self, x: torch.Tensor, fixed: torch.Tensor, condition: tuple[list, tuple], rows: Rows) -> torch.Tensor:
        """x (B, T, 80) -> the velocity (B, T, 80) at one step: `fixed` from `inputs`, `condition`
        that step's from `conditions`."""
        h = torch.addmm(fixed.flatten(0, 1), x.flatten(0, 1), self.in_proj.weight[:, :self.mel].T).view_as(fixed)
        blocks, final = condition
        for block, m in zip(self.blocks, blocks, strict=True):
            h = block(h, m, rows)
        return self.final_layer(h, final)


def schedule(steps: int, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The times (steps,) and the step lengths of the cosine schedule, accumulated as the
    reference accumulates them; in float32 whatever the model's dtype: in bf16 its third point,
    1000 t = 48.94, would be 50.75, and steps would be percents short or long."""
    span = 1 - torch.cos(torch.linspace(0, 1, steps + 1, device=device, dtype=torch.float32) * 0.5 * torch.pi)
    t, dt = span[0], span[1] - span[0]
    times, lengths = [], []
    for step in range(1, steps + 1):
        times.append(t)
        lengths.append(dt)
        t = t + dt
        if step < steps:
            dt = span[step + 1] - t
    return torch.stack(times), lengths


class FlowMatching(nn.Module):
    """Euler steps from noise (t = 0) to mel (t = 1) on a cosine schedule; every step runs the
    conditional and the unconditional rows in one batch (the latter with mu, speaker and
    prompt mel zeroed) and mixes them with classifier-free guidance."""

    def __init__(self, s: FlowShape) -> None:
        super().__init__()
        self.estimator = DiT(s)

    def forward(self, noise: torch.Tensor, lengths: list[int], mu: torch.Tensor, speaker: torch.Tensor,
                cond: torch.Tensor, steps: int = STEPS, mode: str | None = None) -> torch.Tensor:
        """noise, mu, cond (B, 80, T), speaker (B, 80), each item's frames -> mel (B, 80, T)."""
        # an item's conditional and unconditional rows side by side: 2i and 2i + 1
        rows = Rows.of([n for n in lengths for _ in range(2)], mu.shape[2], mu.device,
                       mode or attention_mode(mu.device), per_item=2)

        def pairs(a: torch.Tensor) -> torch.Tensor:
            return torch.stack([a, torch.zeros_like(a)], 1).flatten(0, 1)

        fixed = self.estimator.inputs(pairs(mu).transpose(1, 2), pairs(speaker), pairs(cond).transpose(1, 2))
        conditions, dts = self.estimator.conditions(steps, mu.device)
        x = noise.transpose(1, 2)
        for condition, dt in zip(conditions, dts, strict=True):
            v = self.estimator(x.repeat_interleave(2, dim=0), fixed, condition, rows)
            guided, free = v.view(-1, 2, *v.shape[1:]).unbind(1)
            # (1 + cfg) guided - cfg free
            x = torch.addcmul(x, dt, torch.lerp(free, guided, 1.0 + CFG_RATE))
        return x.transpose(1, 2)


# -- the flow -----------------------------------------------------------------------------


class DualCodebook(nn.Module):
    """One table for both codebooks; a frame is [E(vq02 column); E(vq06 column)]."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, width // 2)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embedding(pairs[..., 0]), self.embedding(pairs[..., 1])], dim=-1)


class Flow(nn.Module):
    def __init__(self, s: FlowShape = FlowShape()) -> None:
        super().__init__()
        self.shape = s
        self.input_embedding = DualCodebook(s.vocab, s.width)
        self.spk_embed_affine_layer = nn.Linear(s.speaker, s.mel)
        self.encoder = Encoder(s)
        self.encoder_proj = nn.Linear(s.width, s.mel)
        self.decoder = FlowMatching(s)
        self.attention: str | None = None  # ITEMS or MASKED; None: by the device (attention_mode)

    def forward(self, prompts: list[torch.Tensor], tokens: list[torch.Tensor], prompt_mels: list[torch.Tensor],
                speakers: torch.Tensor, noises: list[torch.Tensor], steps: int = STEPS) -> list[torch.Tensor]:
        """Per item: prompt pairs (Tp, 2), generated pairs (Tg, 2), the prompt's mel already
        at 2*Tp frames (2Tp, 80), its noise (80, >= 2(Tp+Tg)); speakers (B, 192). Returns
        each item's mel (80, 2*Tg). Items are right-padded to the longest and masked."""
        lengths = [len(p) + len(g) for p, g in zip(prompts, tokens, strict=True)]
        up, mode = self.shape.up_stride, self.attention or attention_mode(speakers.device)
        pairs = pad_sequence([torch.cat([p, g]) for p, g in zip(prompts, tokens, strict=True)], batch_first=True)
        mu = self.encoder_proj(self.encoder(self.input_embedding(pairs.clamp(min=0)), lengths, mode))  # (B, up*T, 80)
        frames = mu.shape[1]
        cond = F.pad(pad_sequence(prompt_mels, batch_first=True), (0, 0, 0, frames - max(len(m) for m in prompt_mels)))
        noise = pad_sequence([n[:, :up * length].T for n, length in zip(noises, lengths, strict=True)],
                             batch_first=True)
        # one row at a time: a one-row product is summed otherwise than a many-row one
        speaker = torch.cat([self.spk_embed_affine_layer(F.normalize(row, dim=1)) for row in speakers.split(1)])
        mel = self.decoder(noise.transpose(1, 2), [up * n for n in lengths], mu.transpose(1, 2), speaker,
                           cond.transpose(1, 2), steps, mode)
        return [mel[i, :, up * len(p):up * lengths[i]] for i, p in enumerate(prompts)]
