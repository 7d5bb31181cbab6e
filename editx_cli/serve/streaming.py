"""A response sent while it is made (`stream: true`): the loop hands each output's parts over as
they become final (a long text's pieces as they are spoken and joined), from the engine's
threads; they go out as 16-bit PCM, raw or in a WAV whose header leaves its length open.

The samples are the ones the whole response would carry: the same join, converted to 16 bits
by the same library call; only what needs the whole output first (loudness, a peak ceiling,
a speed change) cannot be streamed.
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import AsyncIterator

import numpy as np

OPEN_LENGTH = 0xFFFFFFFF  # a RIFF or data size of "unknown": read to the end of the stream


def wav_header(rate: int) -> bytes:
    """A mono 16-bit PCM WAV header whose sizes are left open, as streaming players expect."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", OPEN_LENGTH) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + \
        b"data" + struct.pack("<I", OPEN_LENGTH)


def pcm16(x: np.ndarray) -> bytes:
    """Samples as little-endian 16-bit PCM, converted exactly as a written WAV's are."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(x, np.float32), -1.0, 1.0), 8000, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buf.getvalue()


class AudioStream:
    """One response's parts, handed over from any thread, read by the response's generator."""

    def __init__(self, rate: int | None, wav: bool) -> None:
        self.rate, self.wav = rate, wav  # rate: the one asked for (None: the engine's)
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()

    def put(self, samples: np.ndarray, sr: int) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (np.array(samples, np.float32), sr))

    def close(self) -> None:
        """Nothing more will come (the task has its outcome)."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes to send, until close(); parts made at another rate than the one asked for
        are resampled on the way (one resampler for the whole, so no seam is heard)."""
        resampler, started = None, False
        while (item := await self._queue.get()) is not None:
            samples, sr = item
            if not started:
                started, self.rate = True, self.rate or sr
                if self.wav:
                    yield wav_header(self.rate)
                if sr != self.rate:
                    import soxr

                    resampler = soxr.ResampleStream(sr, self.rate, 1, dtype="float32", quality="HQ")
            if resampler is not None:
                samples = resampler.resample_chunk(samples)
            if len(samples):
                yield pcm16(samples)
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield pcm16(tail)
