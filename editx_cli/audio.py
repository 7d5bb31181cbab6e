"""Audio I/O: soundfile for reading and writing, soxr for resampling."""

from __future__ import annotations

import hashlib
import io
import os
import socket
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
    if not np.isfinite(mono).all():
        raise AudioError("the audio holds NaN or infinite samples")
    if not np.any(mono):
        raise AudioError("the audio is silent (every sample is zero)")
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
    x = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(x).all():
        raise AudioError("the engine produced NaN or infinite samples: nothing written")
    if x.size and float(np.ptp(x)) < 1e-6 and abs(float(x[0])) > 0.5:
        raise AudioError("the engine produced a constant full-scale signal: nothing written")
    # Encoded in memory, then written with plain file I/O: a full disk or a quota then reads
    # "No space left on device" with the file named, not libsndfile's "System error".
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), sr, format=fmt, subtype="PCM_16")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_part_prefix(target)}{_HOST}.{os.getpid()}.", suffix=".part",
                               dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an output is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


_HOST = socket.gethostname().replace("/", "_")


def _part_prefix(target: Path) -> str:
    return f".{target.name}."


def remove_stale_parts(target: str | os.PathLike) -> list[str]:
    """Remove temporary files of `target` left by killed editx processes on this host; return
    their names. A file is matched by exact name, never by a glob pattern, and one whose
    process still runs (another editx writing the same folder) is left alone."""
    target = Path(target)
    prefix, removed = _part_prefix(target), []
    try:
        entries = os.listdir(target.parent)
    except OSError:
        return removed
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".part")):
            continue
        try:
            host, pid, _ = entry[len(prefix) : -len(".part")].rsplit(".", 2)
            pid_n = int(pid)
        except ValueError:
            continue  # not a name editx makes
        if host != _HOST or pid_n == os.getpid() or _alive(pid_n):
            continue
        try:
            os.unlink(target.parent / entry)
            removed.append(entry)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
