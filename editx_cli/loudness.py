"""Loudness: ITU-R BS.1770 integrated loudness (pyloudnorm), true peak, and normalising to a
target loudness under a true-peak ceiling."""

from __future__ import annotations

import math

import numpy as np

TRUE_PEAK_RATE = 192000  # BS.1770's meter oversamples 4x at 48 kHz: lower rates by more, to the same rate
LOOKAHEAD = 0.01  # seconds: the limiter's attack and release window
MIN_SECONDS = 0.4  # one BS.1770 gating block
PEAK_BLOCK = 1 << 16  # samples oversampled at a time for the true peak
PEAK_MARGIN = 64  # samples of context each side: resample_poly's filter reaches 10


class LoudnessError(ValueError):
    """Audio whose loudness cannot be measured: shorter than one gating block, or silent."""


def integrated(x: np.ndarray, sr: int) -> float:
    """Integrated loudness in LUFS."""
    import pyloudnorm

    if len(x) < MIN_SECONDS * sr:
        raise LoudnessError(f"{len(x) / sr:.2f} s is too short to measure loudness (BS.1770 needs "
                            f"{MIN_SECONDS} s)")
    value = pyloudnorm.Meter(sr).integrated_loudness(np.asarray(x, dtype=np.float64))
    if not math.isfinite(value):
        raise LoudnessError("the audio is silent: its loudness cannot be measured")
    return float(value)


def _peak_envelope(x: np.ndarray, sr: int) -> np.ndarray:
    """Per sample, the largest magnitude of the signal between it and the next sample.

    Oversampled a block at a time, each with a margin of its neighbours' samples wider than
    the interpolation filter, so the result is the whole signal's and the oversampled copy
    (8x a 24 kHz file: 4 GB for an hour) never exists at once.
    """
    from scipy.signal import resample_poly

    factor = max(2, -(-TRUE_PEAK_RATE // sr))
    x = np.asarray(x, dtype=np.float32)
    out = np.abs(x)
    for a in range(0, len(x), PEAK_BLOCK):
        b = min(len(x), a + PEAK_BLOCK)
        lo, hi = max(0, a - PEAK_MARGIN), min(len(x), b + PEAK_MARGIN)
        up = np.abs(resample_poly(x[lo:hi], factor, 1))
        part = up[(a - lo) * factor:(b - lo) * factor].reshape(b - a, factor).max(axis=1)
        np.maximum(out[a:b], part, out=out[a:b])
    return out


def true_peak(x: np.ndarray, sr: int) -> float:
    """True peak in dBTP, oversampled to 192 kHz; -inf for digital silence."""
    peak = float(_peak_envelope(x, sr).max()) if len(x) else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def limit(x: np.ndarray, sr: int, ceiling_db: float) -> np.ndarray:
    """Hold the true peak at `ceiling_db` with a look-ahead limiter (`x` itself when no peak
    is over).

    The gain each sample needs is min-filtered, then box-averaged, over the same window:
    every value the average takes was at most the sample's own need, so no peak escapes,
    and the gain moves smoothly over the window instead of clipping a waveform.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    ceiling = 10 ** (ceiling_db / 20)
    need = np.minimum(1.0, ceiling / np.maximum(_peak_envelope(x, sr), 1e-12))
    if need.min() >= 1.0:
        return x
    width = max(1, int(LOOKAHEAD * sr)) | 1
    gain = uniform_filter1d(minimum_filter1d(need, width, mode="nearest"), width, mode="nearest")
    y = x * gain
    over = true_peak(y, sr) - ceiling_db  # the gain's own movement shifts peaks between samples a little
    return y * 10 ** (-over / 20) if over > 0 else y


def normalise(x: np.ndarray, sr: int, target: float, ceiling_db: float | None) -> np.ndarray:
    """`x` at `target` LUFS, its true peak at most `ceiling_db` dBTP.

    Gain first; where that would cross the ceiling, the limiter takes the peaks down and
    the loudness it took is made up, a few times over, so quiet, peaky speech still
    reaches the target. The ceiling always wins over the target.
    """
    y = np.asarray(x, dtype=np.float64) * 10 ** ((target - integrated(x, sr)) / 20)
    if ceiling_db is None:
        return y.astype(np.float32)
    for _ in range(4):
        limited = limit(y, sr, ceiling_db)
        short = target - integrated(limited, sr) if limited is not y else 0.0
        y = limited
        if short < 0.05:
            break
        y = y * 10 ** (short / 20)
    else:  # the last make-up gain may have crossed the ceiling again
        y = limit(y, sr, ceiling_db)
    return y.astype(np.float32)
