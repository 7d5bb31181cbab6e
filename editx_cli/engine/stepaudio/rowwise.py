"""Convolutions whose every output is the same, whatever else is computed with it.

An item's audio must not depend on its neighbours in a batch, on the padded length, nor
on how many threads the process has (one worker process per GPU or CPU share). A matrix
product's rows on the CPU hold to that: each output is one dot product, summed the same
way whatever the other rows. torch's convolutions do not: their algorithm follows the
input's length and, on the CPU, the thread count (oneDNN picks its blocking by the threads
on some processors, for any kernel; differences of 1e-7 that turn a 16-bit sample over).
So the vocoder convolves as matrix products of unfolded frames; where only the thread count
is at stake (one item's convolution), `steady` keeps torch's own off the CPU, where it is
faster and its sums follow no thread count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv(x: torch.Tensor, layer: nn.Conv1d) -> torch.Tensor:
    """layer(x) for (B, C, T): its stride, dilation and padding."""
    return products(x, layer.weight, layer.bias, layer.stride[0], layer.dilation[0], layer.padding[0])


def steady(x: torch.Tensor, layer: nn.Conv1d) -> torch.Tensor:
    """layer(x) whatever the thread count."""
    return steady_conv(x, layer.weight, layer.bias, layer.stride[0], layer.dilation[0], layer.padding[0])


def steady_conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, dilation: int = 1,
                pad: int = 0) -> torch.Tensor:
    """conv1d whatever the thread count: products of frames on the CPU, torch's own elsewhere."""
    if x.device.type == "cpu":
        return products(x, w, bias, stride, dilation, pad)
    return F.conv1d(x, w, bias, stride, pad, dilation)


def products(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, dilation: int = 1,
             pad: int = 0) -> torch.Tensor:
    """conv1d(x, w, bias) for (B, C, T) as one matrix product of the unfolded frames."""
    if pad:
        x = F.pad(x, (pad, pad))
    k = w.shape[2]
    frames = x.unfold(2, (k - 1) * dilation + 1, stride)  # (B, C, T', span)
    if dilation > 1:
        frames = frames[..., ::dilation]  # (B, C, T', k)
    b, t = frames.shape[0], frames.shape[2]
    # one product of (B x T') rows: a batch of products (what a 3-D operand that is not one
    # block of rows becomes) is summed otherwise as its count changes
    frames = whole_rows(frames.transpose(1, 2).reshape(b * t, w.shape[1] * k))
    return F.linear(frames, whole_rows(w.reshape(w.shape[0], -1)), bias).view(b, t, -1).transpose(1, 2)


ROW_FLOATS = 16  # 64 bytes


def whole_rows(m: torch.Tensor) -> torch.Tensor:
    """m (M, K) with K padded with zeros to whole 64-byte rows: the BLAS reads a row by its
    address's alignment, so with rows of another width an item's rows would be summed otherwise
    at another place in the batch than alone (seen with K = 18). Pad both operands alike."""
    extra = -m.shape[1] % ROW_FLOATS
    return F.pad(m, (0, extra)) if extra else m


def transposed_conv(x: torch.Tensor, layer: nn.ConvTranspose1d) -> torch.Tensor:
    """layer(x), as one matrix product per output phase: output n takes the taps j = n + p (mod
    stride) of the inputs before it."""
    w, u, p = layer.weight, layer.stride[0], layer.padding[0]  # w: (C_in, C_out, k)
    k, length = w.shape[2], x.shape[2]
    taps = -(-k // u)
    padded = F.pad(x, (taps - 1, taps - 1))
    frames = whole_rows(padded.unfold(2, taps, 1).transpose(1, 2).reshape(-1, x.shape[1] * taps))  # (B x Q, C*taps)
    phases = []
    for r in range(u):
        kernel = torch.zeros(w.shape[0], w.shape[1], taps, dtype=w.dtype, device=w.device)
        kernel[:, :, : len(range(r, k, u))] = w[:, :, r::u]
        kernel = kernel.flip(2).permute(1, 0, 2).reshape(w.shape[1], -1)  # (C_out, C_in*taps): frame order
        # (B, Q, C_out): phase r at q = (n + p) // u
        phases.append((frames @ whole_rows(kernel).T).view(x.shape[0], -1, w.shape[1]))
    out = torch.stack(phases, dim=2).reshape(x.shape[0], -1, w.shape[1]).transpose(1, 2)  # n + p = q*u + r
    size = (length - 1) * u - 2 * p + k
    return out[:, :, p:p + size] + layer.bias[None, :, None]
