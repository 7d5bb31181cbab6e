"""The vocoder's last stage: HiFT (a HiFi-GAN with a harmonic source and an iSTFT head),
80-bin mel at 50 Hz -> 24 kHz waveform, 480 samples a frame.

Written from its published shapes and order of operations, with parameter names that
load `hift.pt` as it is (weight-normalised layers are folded at load: either key form).

    mel -> F0 predictor (5 convs, ELU, Linear, |.|) -> f0 (B, T)
    f0  -> 9 harmonics of sine (phase integrated per frame, interpolated per sample), noise
           in unvoiced parts, Linear 9->1, tanh -> source s (B, 1, 480T)
    mel -> conv_pre -> 3 x (LeakyReLU, transposed conv, + source STFT branch, 3 resblocks)
        -> LeakyReLU(0.01), conv_post -> magnitude (exp, <= 100) and phase (sin) of an
           n_fft 16 / hop 4 iSTFT -> clamp +-0.99

The source's noise is an input (drawn by the caller from the task's generator), so a
waveform is a function of its mel and its seed.

Batched: items are right-padded, and after every convolution the frames past an item's end
are zeroed again (`Lengths`), so that the next convolution sees there the zeros it would
see past the end of the item alone; the source's phase stops at an item's end, its
spectrum reflects at the item's own end, and each item's inverse STFT is normalised by its
own frames. Every product is one of rows (rowwise.py): an item's waveform is the same, to
the bit, alone and among others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from editx_cli.engine.stepaudio.rowwise import conv, steady, transposed_conv


@dataclass(frozen=True)
class HiftShape:
    mel: int = 80
    base: int = 512
    harmonics: int = 8  # plus the fundamental: 9 sines
    sample_rate: int = 24000
    sine_amp: float = 0.1
    noise_std: float = 0.003
    voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernels: tuple[int, ...] = (16, 11, 7)
    n_fft: int = 16
    hop: int = 4
    resblock_kernels: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_kernels: tuple[int, ...] = (7, 7, 11)
    source_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_channels: int = 512

    @property
    def samples_per_frame(self) -> int:
        return int(np.prod(self.upsample_rates)) * self.hop


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, one alpha per channel (linear scale)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 whatever the model's dtype: in fp16 the 1e-9 that keeps 1/alpha finite is lost
        y = x if x.dtype == torch.float32 else x.float()
        alpha = self.alpha.view(1, -1, 1)
        alpha = alpha if alpha.dtype == torch.float32 else alpha.float()
        wave = torch.sin(y * alpha)
        out = torch.addcmul(y, (alpha + 1e-9).reciprocal(), wave * wave)
        return out if out.dtype == x.dtype else out.to(x.dtype)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
                                    for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2)
                                    for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """x zero past each item's end (`live`, (B, 1, T) of ones and zeros), and so the result."""
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True):
            x = torch.addcmul(x, live, steady(a2(steady(a1(x), c1) * live), c2))
        return x


def one_output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A Linear of one output, (..., K) -> (...): a sum along each row. A product with one
    column is a matrix-vector product, whose rows are summed otherwise as their count
    changes (an item alone and in a batch)."""
    return (x * weight[0]).sum(-1) + bias[0]


class F0Predictor(nn.Module):
    def __init__(self, mel: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv1d(mel if i == 0 else channels, channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)  # named as the checkpoint names it; run layer by layer
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        x = mel
        for layer in self.condnet:
            x = steady(x, layer) * live if isinstance(layer, nn.Conv1d) else layer(x)
        return torch.abs(one_output(x.transpose(1, 2), self.classifier.weight, self.classifier.bias))


class Source(nn.Module):
    """The harmonic source: only its Linear 9->1 has weights (`m_source.l_linear`)."""

    def __init__(self, harmonics: int) -> None:
        super().__init__()
        self.l_linear = nn.Linear(harmonics + 1, 1)


class HiFT(nn.Module):
    def __init__(self, s: HiftShape = HiftShape()) -> None:
        super().__init__()
        self.shape = s
        self.f0_predictor = F0Predictor(s.mel, s.f0_channels)
        self.m_source = Source(s.harmonics)
        self.conv_pre = nn.Conv1d(s.mel, s.base, 7, padding=3)
        self.ups = nn.ModuleList()
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        stft_channels = s.n_fft + 2
        for i, (rate, kernel) in enumerate(zip(s.upsample_rates, s.upsample_kernels, strict=True)):
            width = s.base // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(s.base // 2**i, width, kernel, rate, padding=(kernel - rate) // 2))
            below = int(np.prod(s.upsample_rates[i + 1:]))  # the source STFT's frames per this stage's frame
            self.source_downs.append(nn.Conv1d(stft_channels, width, 1) if below == 1 else
                                     nn.Conv1d(stft_channels, width, 2 * below, below, padding=below // 2))
            self.source_resblocks.append(ResBlock(width, s.source_kernels[i], s.source_dilations[i]))
            for k, d in zip(s.resblock_kernels, s.resblock_dilations, strict=True):
                self.resblocks.append(ResBlock(width, k, d))
        self.conv_post = nn.Conv1d(s.base // 2 ** len(s.upsample_rates), stft_channels, 7, padding=3)
        from scipy.signal import get_window

        window = torch.from_numpy(get_window("hann", s.n_fft, fftbins=True).astype(np.float32))
        self.register_buffer("window", window, persistent=False)

    def source_noise_shape(self, frames: int) -> tuple[int, int]:
        """The source noise one item takes: (samples, sines)."""
        return frames * self.shape.samples_per_frame, self.shape.harmonics + 1

    def source(self, f0: torch.Tensor, noise: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """f0 (B, T) in Hz, noise (B, 480T, 9) ~ N(0, 1) -> source (B, 1, 480T). The phase stops at
        each item's end (`live` (B, T, 1)), so the interpolation's last half frame, which alone
        would repeat the last frame's phase, meets that same value."""
        s, up = self.shape, self.shape.samples_per_frame
        f0_up = F.interpolate(f0[:, None], scale_factor=float(up), mode="nearest").transpose(1, 2)  # (B, L, 1)
        harmonic = f0_up * torch.arange(1, s.harmonics + 2, device=f0.device, dtype=f0.dtype)  # (B, L, 9)
        step = (harmonic / s.sample_rate) % 1  # cycles a sample, constant over a frame
        per_frame = F.interpolate(step.transpose(1, 2), scale_factor=1 / up, mode="linear").transpose(1, 2)
        phase = torch.cumsum(per_frame * live, dim=1) * 2 * np.pi
        phase = F.interpolate(phase.transpose(1, 2) * up, scale_factor=float(up), mode="linear").transpose(1, 2)
        sines = torch.sin(phase) * s.sine_amp
        voiced = (f0_up > s.voiced_threshold).to(sines.dtype)
        amplitude = voiced * s.noise_std + (1 - voiced) * s.sine_amp / 3
        waves = sines * voiced + amplitude * noise
        linear = self.m_source.l_linear
        return torch.tanh(one_output(waves, linear.weight.float(), linear.bias.float()))[:, None, :]

    def source_spectrum(self, source: torch.Tensor, window: torch.Tensor, reflected: torch.Tensor) -> torch.Tensor:
        """The source's centred STFT, [real; imaginary] (B, n_fft + 2, frames), as a product with
        the DFT's basis: an FFT's result follows the thread count, a matrix product's rows do not
        (the n_fft is 16: the product costs nothing). `reflected` (B, samples + n_fft) indexes
        each item's samples reflected at both of its ends (Lengths.reflected)."""
        n = self.shape.n_fft
        frames = torch.gather(source, 1, reflected).unfold(1, n, self.shape.hop)
        k = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None] * torch.arange(n, dtype=torch.float64)[None]
        angle = 2 * np.pi * k / n
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]).to(source.device, torch.float32)  # (n + 2, n)
        return ((frames * window) @ basis.T).transpose(1, 2)

    def inverse_spectrum(self, real: torch.Tensor, imag: torch.Tensor, window: torch.Tensor,
                         live: torch.Tensor) -> torch.Tensor:
        """The centred inverse STFT of (B, n_fft/2 + 1, frames) as torch.istft makes it (inverse real
        DFT of each frame, windowed, overlap-added, divided by the overlapped squared window,
        the centring cut), with the DFT as a matrix product and the overlap-add in a fixed
        order: an inverse FFT's result follows the thread count."""
        n, hop = self.shape.n_fft, self.shape.hop
        k = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * np.pi * k * torch.arange(n, dtype=torch.float64)[None] / n
        weight = torch.full((n // 2 + 1, 1), 2.0, dtype=torch.float64)
        weight[0] = weight[-1] = 1.0  # DC and Nyquist once (their imaginary parts are dropped, as irfft does)
        cos_basis = (weight * torch.cos(angle) / n).to(real.device, torch.float32)
        sin_basis = (-weight * torch.sin(angle) / n).to(real.device, torch.float32)
        live = live.transpose(1, 2)  # (B, T, 1): an item's frames; the others add zeros, and no window
        frames = (real.transpose(1, 2) @ cos_basis + imag.transpose(1, 2) @ sin_basis) * window * live  # (B, T, n)
        signal = self._overlap_add(frames, hop)
        envelope = self._overlap_add(window * window * live, hop)
        length = hop * (frames.shape[1] - 1)
        return (signal / envelope)[:, n // 2: n // 2 + length]

    @staticmethod
    def _overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
        """Frames (B, T, n) placed `hop` apart and summed, frame by frame in order."""
        b, t, n = frames.shape
        out = torch.zeros(b, hop * (t - 1) + n, dtype=frames.dtype, device=frames.device)
        for j in range(n // hop):  # the j-th quarter of every frame: one shifted slice each
            out[:, j * hop: j * hop + hop * t] += frames[:, :, j * hop:(j + 1) * hop].reshape(b, -1)
        return out

    def forward(self, mel: torch.Tensor, noise: torch.Tensor, frames: list[int] | None = None) -> torch.Tensor:
        """mel (B, 80, T), source noise (B, 480T, 9), each item's mel frames (all T if None)
        -> waveform (B, 480T): an item's first 480 x frames samples are its own."""
        s, dtype = self.shape, mel.dtype  # the source and both STFTs in float32, whatever the layers' dtype
        at = Lengths(frames or [mel.shape[2]] * mel.shape[0], mel.shape[2], s, mel.device)
        source = self.source(self.f0_predictor(mel, at.live(1, dtype)).float(), noise.float(),
                             at.live(1, torch.float32).transpose(1, 2)).squeeze(1)
        window = self.window.float()
        spectrum_live = at.live(s.samples_per_frame // s.hop, torch.float32, 1)
        spec = (self.source_spectrum(source, window, at.reflected(s.n_fft)) * spectrum_live).to(dtype)
        x = steady(mel, self.conv_pre) * at.live(1, dtype)
        kinds, scale = len(s.resblock_kernels), 1
        for i, (up, rate) in enumerate(zip(self.ups, s.upsample_rates, strict=True)):
            scale *= rate
            x = transposed_conv(F.leaky_relu(x, s.lrelu_slope), up)
            extra = 0
            if i == len(self.ups) - 1:
                x, extra = F.pad(x, (1, 0), mode="reflect"), 1
            live = at.live(scale, dtype, extra)
            x = x * live + self.source_resblocks[i](conv(spec, self.source_downs[i]) * live, live)
            x = sum(self.resblocks[i * kinds + j](x, live) for j in range(kinds)) / kinds
        x = steady(F.leaky_relu(x), self.conv_post).float()
        half = s.n_fft // 2 + 1
        magnitude, phase = torch.clamp(torch.exp(x[:, :half]), max=1e2), torch.sin(x[:, half:])
        wave = self.inverse_spectrum(magnitude * torch.cos(phase), magnitude * torch.sin(phase), window,
                                     spectrum_live)
        return torch.clamp(wave, -s.audio_limit, s.audio_limit)


class Lengths:
    """Each item's frames at every resolution of a padded batch."""

    def __init__(self, frames: list[int], longest: int, shape: HiftShape, device: torch.device) -> None:
        self.longest, self.device = longest, device
        self.samples_per_frame = shape.samples_per_frame
        self.count = torch.tensor(frames, device=device)[:, None, None]

    def live(self, scale: int, dtype: torch.dtype, extra: int = 0) -> torch.Tensor:
        """(B, 1, scale x T + extra): one at each item's scale x frames + extra, zero after."""
        at = torch.arange(scale * self.longest + extra, device=self.device)
        return (at < self.count * scale + extra).to(dtype)

    def reflected(self, n_fft: int) -> torch.Tensor:
        """(B, samples + n_fft) indices of each item's samples (480 a frame), reflected n_fft / 2
        at both of its ends, as a centred STFT pads one signal; past the item, index 0."""
        samples = self.longest * self.samples_per_frame
        j = torch.arange(samples + n_fft, device=self.device)[None, :] - n_fft // 2
        own = (self.count[:, :, 0] * self.samples_per_frame)  # (B, 1)
        index = torch.where(j < 0, -j, torch.where(j >= own, 2 * (own - 1) - j, j))
        return torch.where((index >= 0) & (index < own), index, 0)


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with weight-normalised layers (either `weight_g`/`weight_v` or
    `parametrizations.weight.original0/1`) folded into plain `weight`s, w = g * v / ||v||
    (the norm over every dim but the first, as torch computes it)."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for g, v in ((".weight_g", ".weight_v"),
                     (".parametrizations.weight.original0", ".parametrizations.weight.original1")):
            if key.endswith(g):
                pairs.setdefault(key[: -len(g)], {})["g"] = value
                break
            if key.endswith(v):
                pairs.setdefault(key[: -len(v)], {})["v"] = value
                break
        else:
            out[key] = value
    for stem, gv in pairs.items():
        out[f"{stem}.weight"] = torch._weight_norm(gv["v"], gv["g"], 0)
    return out


def source_noise(generator: torch.Generator, samples: int, sines: int) -> torch.Tensor:
    """One item's source noise (1, samples, sines), drawn as the official source draws it from
    its generator: first the sines' initial phases (which never reach the output), then the
    noise into a tensor laid out sine-major (its sines are a transposed interpolation); torch
    draws a strided tensor's normals in another order than a contiguous one's, so the layout
    is part of the recipe."""
    torch.rand(1, sines, generator=generator, device=generator.device)
    noise = torch.empty_strided((1, samples, sines), (samples * sines, 1, samples), device=generator.device)
    return noise.normal_(generator=generator)
