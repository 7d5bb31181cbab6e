"""Audio I/O: soundfile for reading and writing, soxr for resampling."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


class AudioError(ValueError):
    """An audio file that cannot be used: missing, unreadable, empty."""


@dataclass(frozen=True)
class AudioInfo:
    samplerate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate


def probe(path: str | os.PathLike) -> AudioInfo:
    """Check that a file is readable audio with at least one sample, without decoding it."""
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioError("file not found")
    if not p.is_file():
        raise AudioError("not a regular file")
    if p.stat().st_size == 0:
        raise AudioError("file is empty (0 bytes)")
    try:
        info = sf.info(str(p))
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError by format
        raise AudioError(f"not a readable audio file ({_first_line(e)})") from None
    if info.frames <= 0:
        raise AudioError("audio has no samples")
    return AudioInfo(info.samplerate, info.channels, info.frames)


def load(path: str | os.PathLike, sr: int | None = None) -> tuple[np.ndarray, int]:
    """Read a file as mono float32 in [-1, 1]; resample to `sr` when given."""
    import soundfile as sf

    probe(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"cannot decode audio ({_first_line(e)})") from None
    if data.shape[0] == 0:
        raise AudioError("audio has no samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sr is not None and sr != rate:
        mono, rate = resample(mono, rate, sr), sr
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    import soxr

    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def write_atomic(path: str | os.PathLike, audio: np.ndarray, sr: int) -> str:
    """Write audio next to `path` under a temporary name; return that name.

    The caller renames it into place (os.replace) once it is ready to commit, so a
    reader never sees a half-written file, even after kill -9.
    """
    import soundfile as sf

    target = Path(path)
    fmt = OUTPUT_FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise AudioError(f"unsupported output format {target.suffix!r} (use .wav or .flac)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    clipped = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    sf.write(tmp, clipped, sr, format=fmt, subtype="PCM_16")
    return tmp


def samples_digest(x: np.ndarray, sr: int) -> str:
    """Content hash of decoded samples: the same audio in any container gives the same key."""
    h = hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(str(sr).encode())
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
