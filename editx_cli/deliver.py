"""What an output becomes on disk: its codec (from the file's extension), sample rate, bitrate
and loudness. Checked once, when a manifest row or the command line is validated; applied
when a task's output is committed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from editx_cli import audio, loudness

FORMATS = tuple(s.lstrip(".") for s in audio.OUTPUT_FORMATS)
DEFAULT_PEAK = -1.0  # dBTP ceiling when normalising and none is given
LOUDNESS_RANGE = (-60.0, -5.0)  # LUFS: quieter than -60 is no target, louder than -5 only distorts
PEAK_RANGE = (-30.0, 0.0)
RATE_RANGE = (8000, 192000)
TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Delivery:
    sample_rate: int | None = None  # None: the engine's rate (or the nearest the codec has)
    bitrate: int | None = None  # kbit/s, MP3 (constant) and Opus
    loudness: float | None = None  # target, LUFS
    peak: float | None = None  # true-peak ceiling, dBTP
    match_input: bool = False  # target: the loudness of the task's input audio
    speed: float | None = None  # played this many times as fast (OpenAI's `speed`: a server's request)

    @property
    def ceiling(self) -> float | None:
        if self.peak is not None:
            return self.peak
        return DEFAULT_PEAK if self.loudness is not None or self.match_input else None

    def key(self) -> dict[str, Any]:
        """The settings that change an output: part of its task's fingerprint."""
        return {k: v for k, v in asdict(self).items() if v is not None and v is not False}


def from_fields(values: dict[str, Any], suffix: str, err, explicit: set[str] | frozenset = frozenset()) -> Delivery:
    """A Delivery from raw field values (a row's, or defaults from the command line), problems
    reported through err(field, message). A setting that cannot apply to this output is an
    error when the row (or command) gave it: `explicit` names those; a default from the
    command line applies where it can (--bitrate to the mp3 rows of a mixed manifest).
    """
    codec = audio.CODECS[suffix]

    def number(key: str, kind: type, lo: float, hi: float, unit: str):
        v = values.get(key)
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        try:
            n = float(v)
        except (TypeError, ValueError, OverflowError):
            err(key, f"{v!r} is not a number")
            return None
        if n != n or kind is int and n != int(n):
            err(key, f"{v!r} is not a {'whole ' if kind is int else ''}number")
            return None
        if not lo <= n <= hi:
            err(key, f"{v!r} is outside {lo:g}–{hi:g} {unit}")
            return None
        return kind(n)

    rate = number("sample_rate", int, *RATE_RANGE, "Hz")
    bitrate = number("bitrate", int, 1, 2000, "kbit/s")
    target = number("loudness", float, *LOUDNESS_RANGE, "LUFS")
    peak = number("peak", float, *PEAK_RANGE, "dBTP")
    match = values.get("match_input")
    if isinstance(match, str):
        if match.strip().lower() not in TRUE + FALSE:
            err("match_input", f"{match!r} is not true or false")
        match = match.strip().lower() in TRUE
    elif isinstance(match, (int, float)) and not isinstance(match, bool) and match not in (0, 1):
        err("match_input", f"{match!r} is not true or false")
    match = bool(match)

    if rate is not None and codec.rates and rate not in codec.rates:
        err("sample_rate", f"{rate} Hz cannot be written as {suffix} (its rates: {', '.join(map(str, codec.rates))})")
    if bitrate is not None:
        if codec.bitrates is None:
            why = ("lossless" if not codec.lossy else "Vorbis is quality-based; use .mp3 or .opus for a set bitrate")
            if "bitrate" in explicit:
                err("bitrate", f"does not apply to {suffix} output ({why})")
            bitrate = None
        elif not codec.bitrates[0] <= bitrate <= codec.bitrates[1]:
            err("bitrate", f"{bitrate} kbit/s is outside {suffix}'s {codec.bitrates[0]}–{codec.bitrates[1]}")
        elif suffix == ".mp3":
            allowed = audio.mp3_bitrates(rate) if rate else sorted({b for t in audio.MP3_BITRATES.values() for b in t})
            if bitrate not in allowed:
                at = f" at {rate} Hz" if rate else ""
                err("bitrate", f"{bitrate} kbit/s is not an MP3 bitrate{at} (one of: {', '.join(map(str, allowed))})")
    if target is not None and match:
        err("match_input", "--loudness and match_input exclude each other: one target per output")
    return Delivery(rate, bitrate, target, peak, match)


def render(x: np.ndarray, sr: int, suffix: str, d: Delivery,
           input_loudness: float | None = None) -> tuple[bytes, int, dict[str, float]]:
    """The output file's bytes, its sample rate, and its loudness before and after.

    Stretched to its speed first (at the engine's rate), then resampled, so that the true peak
    is held at the rate the file is played at. Loudness is measured on every output
    (BS.1770); gain is applied only when asked for. Each stage once, in one pass.
    """
    audio.check_samples(x)
    x = np.asarray(x, dtype=np.float32)
    if d.speed is not None and d.speed != 1.0:
        x = audio.time_stretch(x, sr, d.speed)
    rate = audio.output_rate(suffix, sr, d.sample_rate)
    y = audio.resample(x, sr, rate)
    measures: dict[str, float] = {}
    try:
        measures["loudness_before"] = round(loudness.integrated(y, rate), 2)
    except loudness.LoudnessError as e:
        if d.loudness is not None or d.match_input:
            raise loudness.LoudnessError(f"cannot normalise the output: {e}") from None
    target = input_loudness if d.match_input else d.loudness
    if target is not None:
        y = loudness.normalise(y, rate, target, d.ceiling)
        measures["loudness_target"] = round(target, 2)
    elif d.ceiling is not None:
        y = loudness.limit(y, rate, d.ceiling)
    if "loudness_before" in measures:
        measures["loudness_after"] = round(loudness.integrated(y, rate), 2)
    measures["true_peak"] = round(max(loudness.true_peak(y, rate), -200.0), 2)
    return audio.encode(y, rate, suffix, d.bitrate), rate, measures
