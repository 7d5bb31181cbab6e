"""Audio I/O: soundfile for reading and writing, soxr for resampling."""

from __future__ import annotations

import hashlib
import io
import math
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Codec:
    """How one output extension is written through libsndfile."""

    container: str
    subtype: str
    rates: tuple[int, ...] = ()  # the only sample rates the codec has; () for any
    bitrates: tuple[int, int] | None = None  # kbit/s range a bitrate may be set in; None: not settable
    what: str = ""

    @property
    def lossy(self) -> bool:
        return self.subtype not in ("PCM_16", "PCM_24")


MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
CODECS = {
    ".wav": Codec("WAV", "PCM_16", what="16-bit PCM WAV"),
    ".flac": Codec("FLAC", "PCM_16", what="16-bit FLAC"),
    ".mp3": Codec("MP3", "MPEG_LAYER_III", MP3_RATES, (8, 320), "MP3 (MPEG Layer III)"),
    ".ogg": Codec("OGG", "VORBIS", what="Ogg Vorbis (quality-based; no set bitrate)"),
    ".opus": Codec("OGG", "OPUS", OPUS_RATES, (6, 256), "Ogg Opus"),
}
OUTPUT_FORMATS = tuple(CODECS)
# OpenAI's "pcm": samples with no header (a response's, never a file's: a headerless file
# cannot be read back)
RAW_PCM = Codec("RAW", "PCM_16", what="raw 16-bit little-endian PCM")


def codec_of(suffix: str) -> Codec | None:
    return RAW_PCM if suffix == ".pcm" else CODECS.get(suffix)
# The bitrates an MP3 frame can carry, by MPEG version (which the sample rate decides).
MP3_BITRATES = {
    1: (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),  # 32, 44.1, 48 kHz
    2: (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),  # 16, 22.05, 24 kHz
    2.5: (8, 16, 24, 32, 40, 48, 56, 64),  # 8, 11.025, 12 kHz
}


def mp3_bitrates(sr: int) -> tuple[int, ...]:
    return MP3_BITRATES[1 if sr >= 32000 else 2 if sr >= 16000 else 2.5]


def missing_codec(suffix: str, formats: dict | None = None, subtypes: dict | None = None) -> str:
    """Why this libsndfile cannot write `suffix`, or "". Nothing falls back to another format."""
    import soundfile as sf

    codec = CODECS[suffix]
    formats = sf.available_formats() if formats is None else formats
    subtypes = sf.available_subtypes(codec.container) if subtypes is None else subtypes
    if codec.container in formats and codec.subtype in subtypes:
        return ""
    return (f"{suffix} needs {codec.what}, which the installed libsndfile ({sf.__libsndfile_version__}) "
            f"was built without: install soundfile >= 0.12 (its wheels bundle a libsndfile with MP3, Vorbis "
            f"and Opus) or write .wav or .flac")


def output_rate(suffix: str, sr: int, requested: int | None = None) -> int:
    """The rate an output is written at: the one asked for, else the audio's own, else (for a
    codec with a fixed set) the nearest rate above it that the codec has."""
    if requested:
        return requested
    rates = codec_of(suffix).rates
    if not rates or sr in rates:
        return sr
    return next((r for r in rates if r >= sr), rates[-1])


def compression_level(suffix: str, sr: int, kbps: int) -> float:
    """libsndfile's compression level (0 best .. 1 smallest) that gives `kbps`.

    libsndfile maps the level linearly onto the codec's bitrate range: MP3 (constant
    bitrate) from the top to the bottom of the MPEG version's table, Opus (always variable
    bitrate there: a target that pauses stay below) from 256 to 6 kbit/s. The half-step
    keeps a rounding error from dropping to the next lower MP3 bitrate.
    """
    if suffix == ".mp3":
        table = mp3_bitrates(sr)
        top, bottom = table[-1], table[0]
        return min(max((top - kbps - 0.5) / (top - bottom), 0.0), 0.999)
    return min(max((256 - kbps) / 250, 0.0), 1.0)


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


UNKNOWN_LENGTH = 2**62  # libsndfile's count for a stream whose header leaves its length open (legal FLAC)
MAX_INPUT_RATE = 48000  # inputs above it are read at it: speech holds nothing above 24 kHz worth a 4x memory
BLOCK_SECONDS = 1.0  # decoded a block at a time: memory follows the mono output, not the file's channels


def probe(path: str | os.PathLike, count_up_to: float | None = None) -> AudioInfo:
    """Check that a file is readable audio with at least one sample, without decoding it. A file
    whose header does not say its length is counted block by block (up to `count_up_to` seconds
    when given: past that, the count so far, which is enough to refuse it)."""
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
    frames = info.frames
    if frames >= UNKNOWN_LENGTH:
        frames = _count(p, info.samplerate, count_up_to)
    if frames <= 0:
        raise AudioError("audio has no samples")
    return AudioInfo(info.samplerate, info.channels, frames)


def _count(path: Path, rate: int, up_to: float | None) -> int:
    import soundfile as sf

    frames, block = 0, max(int(rate * BLOCK_SECONDS), 1)
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                n = len(f.read(block, dtype="float32", always_2d=True))
                frames += n
                if n < block or (up_to is not None and frames > up_to * rate):
                    return frames
    except Exception:  # libsndfile cannot read some such streams at all (it seeks to their end)
        raise AudioError("its header leaves its length open, and it cannot be read without it: write it "
                         "again with its length (e.g. with flac or ffmpeg)") from None


def load(path: str | os.PathLike, sr: int | None = None, max_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a file as mono float32 in [-1, 1]; resample to `sr` when given, or down to `max_rate`
    when the file's rate is above it."""
    import soundfile as sf

    rate = probe(path).samplerate
    if sr is None and max_rate is not None and rate > max_rate:
        sr = max_rate
    return _mono(sf, str(path), sr)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded audio (what `encode` made) as mono float32, as `load` would read it from a file."""
    import io

    import soundfile as sf

    return _mono(sf, io.BytesIO(data), None)


def _mono(sf, source, sr: int | None) -> tuple[np.ndarray, int]:
    """Decoded a block at a time, each block made mono and resampled as it comes (a streamed
    resampling equals soxr's one-shot to the bit): a 192 kHz stereo file never sits whole in
    memory at its own rate."""
    import soxr

    heard = False
    try:
        with sf.SoundFile(source) as f:
            rate, channels = f.samplerate, f.channels
            stream = soxr.ResampleStream(rate, sr, 1, dtype="float32", quality="HQ") if sr and sr != rate else None
            known = f.frames if 0 < f.frames < UNKNOWN_LENGTH else 0
            out = _Growing(math.ceil(known * sr / rate) + 1 if stream is not None else known)
            for block in f.blocks(blocksize=max(int(rate * BLOCK_SECONDS), 1), dtype="float32", always_2d=True):
                mono = block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0]
                if not np.isfinite(mono).all():
                    raise AudioError("the audio holds NaN or infinite samples")
                heard = heard or bool(np.any(mono))
                out.add(stream.resample_chunk(mono) if stream is not None else mono)
            if stream is not None:
                out.add(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"cannot decode audio ({_first_line(e)})") from None
    if not out.size:
        raise AudioError("audio has no samples")
    if not heard:
        raise AudioError("the audio is silent (every sample is zero)")
    return out.samples(), int(sr if stream is not None else rate)


class _Growing:
    """A float32 buffer filled block by block: sized once when the length is known (no second
    copy of the whole at the end), doubled when it is not."""

    def __init__(self, expected: int) -> None:
        self.buffer, self.size = np.empty(max(expected, 1), dtype=np.float32), 0

    def add(self, block: np.ndarray) -> None:
        end = self.size + len(block)
        if end > len(self.buffer):
            grown = np.empty(max(end, 2 * len(self.buffer)), dtype=np.float32)
            grown[:self.size] = self.buffer[:self.size]
            self.buffer = grown
        self.buffer[self.size:end] = block
        self.size = end

    def samples(self) -> np.ndarray:
        # a view when the buffer is about full (sized from the header); a copy of what a doubling left
        return self.buffer[:self.size] if self.size * 10 >= len(self.buffer) * 9 else self.buffer[:self.size].copy()


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    import soxr

    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def time_stretch(x: np.ndarray, sr: int, tempo: float) -> np.ndarray:
    """x played `tempo` times as fast, pitch and formants kept (Rubber Band): round(len(x) / tempo)
    samples."""
    from pedalboard import time_stretch as rubberband

    y = rubberband(np.asarray(x, np.float32)[None, :], sr, stretch_factor=tempo, high_quality=True,
                   preserve_formants=True)[0]
    n = int(round(len(x) / tempo))
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def check_samples(x: np.ndarray) -> None:
    """Refuse what no engine should hand back, before anything is measured or written."""
    if not np.isfinite(x).all():
        raise AudioError("the engine produced NaN or infinite samples: nothing written")
    if x.size and float(np.ptp(x)) < 1e-6 and abs(float(x[0])) > 0.5:
        raise AudioError("the engine produced a constant full-scale signal: nothing written")


def encode(audio: np.ndarray, sr: int, suffix: str, bitrate: int | None = None) -> bytes:
    """Audio as the bytes of a `suffix` file; `bitrate` in kbit/s for MP3 (constant) and Opus."""
    import soundfile as sf

    codec = codec_of(suffix)
    if codec is None:
        raise AudioError(f"unsupported output format {suffix!r} (use {', '.join(OUTPUT_FORMATS)})")
    if codec.rates and sr not in codec.rates:
        raise AudioError(f"{sr} Hz cannot be written as {suffix} (its rates: {', '.join(map(str, codec.rates))})")
    options = {"endian": "LITTLE"} if codec is RAW_PCM else {}
    if bitrate is not None:
        if suffix == ".mp3" and bitrate not in mp3_bitrates(sr):
            raise AudioError(f"{bitrate} kbit/s is not an MP3 bitrate at {sr} Hz "
                             f"(there: {', '.join(map(str, mp3_bitrates(sr)))})")
        options = {"compression_level": compression_level(suffix, sr, bitrate),
                   "bitrate_mode": "CONSTANT" if suffix == ".mp3" else None}
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sr, format=codec.container,
             subtype=codec.subtype, **options)
    return buf.getvalue()


def write_atomic(path: str | os.PathLike, audio: np.ndarray | bytes, sr: int = 0) -> str:
    """Write audio (samples, or a file's bytes from `encode`) next to `path` under a temporary
    name; return that name.

    The caller renames it into place (os.replace) once it is ready to commit, so a
    reader never sees a half-written file, even after kill -9.
    """
    target = Path(path)
    if isinstance(audio, bytes):
        data = audio
    else:
        x = np.asarray(audio, dtype=np.float32)
        check_samples(x)
        data = encode(x, sr, target.suffix.lower())
    # Encoded in memory, then written with plain file I/O: a full disk or a quota then reads
    # "No space left on device" with the file named, not libsndfile's "System error".
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_part_prefix(target)}{_HOST}.{os.getpid()}.", suffix=".part",
                               dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an output is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
