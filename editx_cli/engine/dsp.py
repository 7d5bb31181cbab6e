"""The `dsp` engine: signal-processing edits that need no speech model.

- speed: tempo change that keeps pitch and formants (Rubber Band, through Spotify's
  pedalboard, in its high-quality mode; a phase vocoder smeared speech into other
  words). Base tempo per edit_info: faster 1.2, more faster 1.44, slower 1/1.2,
  more slower 1/1.44; intensity w raises it to the power w, so the duration is
  scaled by tempo ** -w (faster at w=2: 1.44x tempo, 0.694x duration). The output
  is round(input / tempo) samples long.
- vad: silero-vad finds speech; pauses between speech are shortened to at most
  0.3 s / w, and leading/trailing silence to a margin around the speech (silero's
  spans end on the word's body: its onset and release lie just outside them).
- denoise: noisereduce spectral gating with prop_decrease = 1 - 0.1 ** w
  (w=1: 90 % of the estimated noise removed, w=2: 99 %, w=0.1: 21 %). The output
  has exactly the input's samples.

Speech timestamps (the costly part of vad) go through the feature cache.
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from editx_cli.audio import samples_digest, time_stretch
from editx_cli.engine import Engine, Request, Result
from editx_cli.longform import speech_spans

CODE_VERSION = "dsp-2"
SPEED_BASE = {"faster": 1.2, "more faster": 1.2**2, "slower": 1 / 1.2, "more slower": 1 / 1.2**2}
VAD_MARGIN_S = 0.12  # kept each side of a speech span: a word's onset and release (0.05 s clipped "Finally")
VAD_MAX_PAUSE_S = 0.3


def tempo_factor(edit_info: str, intensity: float) -> float:
    return SPEED_BASE[edit_info] ** intensity


def noise_reduction(intensity: float) -> float:
    return 1.0 - 0.1**intensity


class DspEngine(Engine):
    name = "dsp"
    task_kinds = frozenset({"edit"})
    edit_types = frozenset({"speed", "vad", "denoise"})

    def __init__(self, config: dict[str, Any], cache: Any) -> None:
        super().__init__(config, cache)

    def fingerprint(self) -> str:
        parts = [CODE_VERSION] + [f"{k}={v}" for k, v in sorted(self.versions().items())]
        return ";".join(parts)

    def versions(self) -> dict[str, str]:
        out = {}
        for pkg in ("pedalboard", "noisereduce", "silero-vad", "soxr"):
            try:
                out[pkg] = version(pkg)
            except PackageNotFoundError:
                out[pkg] = "missing"
        return out

    def load(self) -> None:
        # Run each effect once on a short signal so that imports and numba's JIT
        # (seconds on a fresh install) count as load time, not as the first task's.
        # The VAD model itself loads only on the first cache miss.
        import noisereduce

        if getattr(self, "_warm", False):  # loaded once per run
            return
        self._warm = True
        probe = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
        time_stretch(probe, 16000, 1.2)
        noisereduce.reduce_noise(y=probe, sr=16000)

    def run(self, request: Request) -> Result:
        t0 = time.perf_counter()
        stages: dict[str, float] = {}
        info: dict[str, Any] = {}
        hit: bool | None = None
        x, sr = request.audio, request.sr
        if request.edit_type == "speed":
            rate = tempo_factor(request.edit_info, request.intensity)
            y = time_stretch(x, sr, rate)
            info["tempo"] = round(rate, 4)
        elif request.edit_type == "denoise":
            import noisereduce

            prop = noise_reduction(request.intensity)
            y = noisereduce.reduce_noise(y=x, sr=sr, prop_decrease=prop)
            info["prop_decrease"] = round(prop, 4)
        elif request.edit_type == "vad":
            t_feat = time.perf_counter()
            segments, hit = speech_spans(x, sr, self.cache, request.audio_digest or samples_digest(x, sr))
            stages["features"] = time.perf_counter() - t_feat
            y = _join_speech(x, sr, segments, VAD_MAX_PAUSE_S / request.intensity)
            info["speech_segments"] = len(segments)
        else:
            raise ValueError(f"the dsp engine cannot do edit_type {request.edit_type!r}")
        stages["process"] = time.perf_counter() - t0 - sum(stages.values())
        return Result(np.asarray(y, dtype=np.float32), sr, stages, info,
                      cache_hits=int(hit is True), cache_misses=int(hit is False))

    def seam_pause(self, edit_type: str, edit_info: str, intensity: float, seconds: float) -> float:
        # a cut pause is shortened as the pauses inside each chunk are
        if edit_type == "vad":
            return min(seconds, max(VAD_MAX_PAUSE_S / intensity, 2 * VAD_MARGIN_S))
        return seconds

    def length_ratio(self, edit_type: str, edit_info: str, intensity: float) -> float | None:
        if edit_type == "denoise":
            return 1.0
        if edit_type == "speed":
            return 1.0 / tempo_factor(edit_info, intensity)
        return None


def _join_speech(x: np.ndarray, sr: int, segments: list[tuple[int, int]], max_pause_s: float) -> np.ndarray:
    """Keep speech with a margin each side; shorten every pause to at most max_pause_s, and
    never below the two margins it lies between.

    A shortened pause keeps its own first and last halves, so room tone and
    breaths at the edges stay natural instead of cutting to digital silence.
    """
    if not segments:
        return x
    pad = int(VAD_MARGIN_S * sr)
    keep = max(int(max_pause_s * sr), 2 * pad)
    pieces = [x[max(0, segments[0][0] - pad) : segments[0][0]]]
    for i, (start, end) in enumerate(segments):
        pieces.append(x[start:end])
        gap_end = segments[i + 1][0] if i + 1 < len(segments) else None
        if gap_end is None:
            pieces.append(x[end : end + pad])
        elif gap_end - end <= keep:
            pieces.append(x[end:gap_end])
        else:
            half = keep // 2
            pieces.append(x[end : end + half])
            pieces.append(x[gap_end - (keep - half) : gap_end])
    return np.concatenate(pieces)
