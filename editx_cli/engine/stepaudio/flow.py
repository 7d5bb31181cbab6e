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
look-ahead convolution) and attention masks padded keys, so an item decodes as it would
alone. The noise is an input: each item brings its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from editx_cli.engine.stepaudio.rowwise import conv, steady_conv

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


def per_item(lengths: list[int], fn, *rows: torch.Tensor) -> torch.Tensor:
    """fn(*rows of one item, cut to its frames) for each item, zero-padded back together."""
    out = torch.zeros_like(rows[-1])
    for i, n in enumerate(lengths):
        out[i:i + 1, :, :n] = fn(*(r[i:i + 1, :, :n] for r in rows))
    return out


# -- encoder ------------------------------------------------------------------------------


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

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(y.shape[0], -1, self.heads, self.d).transpose(1, 2)

        q, k, v = split(self.linear_q(x)), split(self.linear_k(x)), split(self.linear_v(x))
        out = per_item(lengths, self._attend, q, k, v)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, -1))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One item's (1, H, T, d) rows over its own T frames."""
        t = q.shape[2]
        positions = relative_positions(t, self.heads * self.d).to(q.device, q.dtype)
        p = self.linear_pos(positions).view(1, -1, self.heads, self.d).transpose(1, 2)  # (1, H, 2T-1, d)
        content = torch.matmul(q + self.pos_bias_u[:, None, :], k.transpose(-2, -1))
        position = torch.matmul(q + self.pos_bias_v[:, None, :], p.transpose(-2, -1))
        # column (T-1) - i + j of row i holds offset i - j
        index = (t - 1) - torch.arange(t, device=q.device)[:, None] + torch.arange(t, device=q.device)[None, :]
        position = torch.gather(position, -1, index.expand(1, self.heads, t, t))
        weights = torch.softmax((content + position) / math.sqrt(self.d), dim=-1)
        return torch.matmul(weights, v)


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

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), lengths)
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

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """(B, T, W) frames, each item's length -> (B, stride*T, W)."""
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < torch.tensor(lengths, device=x.device)[:, None]
        x = self.pre_lookahead_layer(self.embed(x) * valid[..., None])  # padding is zeros, as past the end alone
        for layer in self.encoders:
            x = layer(x, lengths)
        x = self.up_embed(self.up_layer(x))
        up = [self.up_stride * n for n in lengths]
        for layer in self.up_encoders:
            x = layer(x, up)
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


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTAttention(nn.Module):
    def __init__(self, width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q, self.to_k, self.to_v = nn.Linear(width, inner), nn.Linear(width, inner), nn.Linear(width, inner)
        self.q_norm, self.k_norm = nn.LayerNorm(head_dim, eps=1e-5), nn.LayerNorm(head_dim, eps=1e-5)
        self.proj = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = self.q_norm(heads(self.to_q(x))), self.k_norm(heads(self.to_k(x))), heads(self.to_v(x))
        scale = 1.0 / math.sqrt(self.head_dim)
        out = per_item(lengths, lambda q1, k1, v1: F.scaled_dot_product_attention(q1, k1, v1, scale=scale), q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class CausalConv(nn.Module):
    """A k3 convolution over (B, T, C) that sees only the past: two zero frames on the left."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width, width, 3))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Each item over its own frames (torch's convolution picks its algorithm by the input's
        length; cut to the item's, it computes what the item alone would; off the CPU it is
        twice as fast as a product of unfolded frames, and the DiT's 320 convolutions a task are
        a third of the flow). On the CPU a product of frames: torch's sums follow the threads."""
        x = x.transpose(1, 2)
        return per_item(lengths, lambda row: steady_conv(F.pad(row, (2, 0)), self.weight, self.bias),
                        x).transpose(1, 2)


class ConvBranch(nn.Module):
    """conv -> LayerNorm -> Mish -> conv; `block` keeps the checkpoint's numbering (its other
    places hold parameter-free steps)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.block = nn.ModuleList([nn.Identity(), CausalConv(width), nn.Identity(), nn.LayerNorm(width, eps=1e-5),
                                    nn.Identity(), nn.Mish(), CausalConv(width), nn.Identity()])

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        return self.block[6](self.block[5](self.block[3](self.block[1](x, lengths))), lengths)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Attention, then the causal convolution branch, then the MLP; each on an adaLN-modulated
    parameter-free LayerNorm of the input and gated, all by the time embedding."""

    def __init__(self, width: int, heads: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = DiTAttention(width, heads, head_dim)
        self.conv = ConvBranch(width)
        self.mlp = MLP(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)

    def forward(self, h: torch.Tensor, c: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        (shift_a, scale_a, gate_a, shift_f, scale_f, gate_f,
         shift_c, scale_c, gate_c) = self.adaLN_modulation(c).chunk(9, dim=-1)
        h = h + gate_a * self.attn(modulate(self.norm(h), shift_a, scale_a), lengths)
        h = h + gate_c * self.conv(modulate(self.norm(h), shift_c, scale_c), lengths)
        return h + gate_f * self.mlp(modulate(self.norm(h), shift_f, scale_f))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(h), shift, scale))


class DiT(nn.Module):
    """The velocity of the flow at time t, from [x, mu, speaker, prompt mel] (4 x 80 channels);
    no positional encoding: order enters through the causal convolutions."""

    def __init__(self, s: FlowShape) -> None:
        super().__init__()
        self.t_embedder = TimeEmbedding(s.dit_width)
        self.in_proj = nn.Linear(4 * s.mel, s.dit_width)
        self.blocks = nn.ModuleList(DiTBlock(s.dit_width, s.dit_heads, s.dit_head_dim, s.dit_mlp_ratio)
                                    for _ in range(s.dit_depth))
        self.final_layer = FinalLayer(s.dit_width, s.mel)

    def forward(self, x: torch.Tensor, lengths: list[int], mu: torch.Tensor, t: torch.Tensor, speaker: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        """(B, 80, T) each (speaker (B, 80)), each item's frames, the time (a scalar) -> (B, 80, T).
        The time's embedding and every modulation made of it are one row for all items (the
        same for each; and a one-row product is summed otherwise than a many-row one)."""
        stacked = torch.cat([x, mu, speaker[:, :, None].expand(-1, -1, x.shape[2]), cond], dim=1)
        h = self.in_proj(stacked.transpose(1, 2))
        c = self.t_embedder(t.reshape(1))[:, None, :]
        for block in self.blocks:
            h = block(h, c, lengths)
        return self.final_layer(h, c).transpose(1, 2)


class FlowMatching(nn.Module):
    """Euler steps from noise (t = 0) to mel (t = 1) on a cosine schedule; every step runs the
    conditional and the unconditional rows in one batch (the latter with mu, speaker and
    prompt mel zeroed) and mixes them with classifier-free guidance."""

    def __init__(self, s: FlowShape) -> None:
        super().__init__()
        self.estimator = DiT(s)

    def forward(self, noise: torch.Tensor, lengths: list[int], mu: torch.Tensor, speaker: torch.Tensor,
                cond: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
        # the schedule in float32 whatever the model's dtype: in bf16 its third point, 1000 t =
        # 48.94, would be 50.75, and steps would be percents short or long
        span = 1 - torch.cos(torch.linspace(0, 1, steps + 1, device=mu.device, dtype=torch.float32) * 0.5 * torch.pi)
        x, b = noise, mu.shape[0]
        t, dt = span[0], span[1] - span[0]
        rows_lengths = lengths + lengths
        rows_mu, rows_speaker = torch.cat([mu, torch.zeros_like(mu)]), torch.cat([speaker, torch.zeros_like(speaker)])
        rows_cond = torch.cat([cond, torch.zeros_like(cond)])
        for step in range(1, len(span)):
            v = self.estimator(torch.cat([x, x]), rows_lengths, rows_mu, t, rows_speaker, rows_cond)
            guided, free = v[:b], v[b:]
            x = x + dt * ((1.0 + CFG_RATE) * guided - CFG_RATE * free)
            t = t + dt
            if step < len(span) - 1:
                dt = span[step + 1] - t
        return x


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

    def forward(self, prompts: list[torch.Tensor], tokens: list[torch.Tensor], prompt_mels: list[torch.Tensor],
                speakers: torch.Tensor, noises: list[torch.Tensor], steps: int = STEPS) -> list[torch.Tensor]:
        """Per item: prompt pairs (Tp, 2), generated pairs (Tg, 2), the prompt's mel already
        at 2*Tp frames (2Tp, 80), its noise (80, >= 2(Tp+Tg)); speakers (B, 192). Returns
        each item's mel (80, 2*Tg). Items are right-padded to the longest and masked."""
        device = speakers.device
        lengths = [len(p) + len(g) for p, g in zip(prompts, tokens, strict=True)]
        longest, up = max(lengths), self.shape.up_stride
        pairs = torch.zeros(len(lengths), longest, 2, dtype=torch.long, device=device)
        for i, (p, g) in enumerate(zip(prompts, tokens, strict=True)):
            pairs[i, :lengths[i]] = torch.cat([p, g]).clamp(min=0)
        mu = self.encoder_proj(self.encoder(self.input_embedding(pairs), lengths)).transpose(1, 2)  # (B, 80, up*T)
        cond = torch.zeros_like(mu)
        noise = torch.zeros_like(mu)
        for i, (mel, n) in enumerate(zip(prompt_mels, noises, strict=True)):
            cond[i, :, :len(mel)] = mel.T
            noise[i, :, :up * lengths[i]] = n[:, :up * lengths[i]]
        # one row at a time: a one-row product is summed otherwise than a many-row one
        speaker = torch.cat([self.spk_embed_affine_layer(F.normalize(row, dim=1)) for row in speakers.split(1)])
        mel = self.decoder(noise, [up * n for n in lengths], mu, speaker, cond, steps)
        return [mel[i, :, up * len(p):up * lengths[i]] for i, p in enumerate(prompts)]
