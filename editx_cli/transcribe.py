"""Transcripts for edit tasks that leave `audio_text` empty, with openai-whisper.

The model loads on first use, only if some task needs it. `--whisper-model` is a
local checkpoint file or the name of a model already in Whisper's cache folder;
nothing is downloaded unless the user allows it. Transcripts are cached by
audio content like the other prompt features.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from editx_cli.audio import resample
from editx_cli.cache import fingerprint_files

CODE_VERSION = "transcribe-1"
WINDOW_SECONDS = 30  # Whisper's window: clips up to this long decode in one batch
BATCH = 16


class TranscriptionError(RuntimeError):
    pass


def resolve(model: str, allow_download: bool) -> str:
    """A checkpoint path or a cached model name that whisper.load_model can open offline."""
    path = Path(model).expanduser()
    if path.is_file():
        return str(path.resolve())
    import whisper

    if model not in whisper.available_models():
        raise TranscriptionError(f"--whisper-model {model!r}: no such file, and not a Whisper model name")
    cached = Path(_download_root()) / os.path.basename(whisper._MODELS[model])
    if not cached.is_file() and not allow_download:
        raise TranscriptionError(f"--whisper-model {model!r} is not in {_download_root()} "
                                 "(pass --allow-download, or a local checkpoint file)")
    return model


def _download_root() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.getenv("XDG_CACHE_HOME", default), "whisper")


class Transcriber:
    def __init__(self, model: str, device: str, cache: Any, allow_download: bool = False) -> None:
        self.name = model
        self.device = device
        self.cache = cache
        self.allow_download = allow_download
        self.model = None
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # reads the checkpoint's head and tail: once
            path = Path(self.name).expanduser()
            files = [path] if path.is_file() else []
            self._fingerprint = fingerprint_files(files, f"{CODE_VERSION};{self.name}")
        return self._fingerprint

    def __call__(self, x: np.ndarray, sr: int, digest: str) -> tuple[str, bool, float]:
        """(transcript, cache hit, seconds)."""
        t0 = time.perf_counter()
        key = self.cache.key("transcript", digest, self.fingerprint())
        text, hit = self.cache.get_or_compute(key, lambda: self._transcribe(x, sr))
        return text, hit, time.perf_counter() - t0

    def words(self, x: np.ndarray, sr: int, digest: str) -> tuple[list[tuple[str, float, float]], bool]:
        """Every word heard with its start and end in seconds (Whisper's word timestamps), cached
        by audio content; and whether the cache had them."""
        key = self.cache.key("words", digest, self.fingerprint())

        def compute() -> list[list]:
            audio = resample(np.asarray(x, np.float32), sr, 16000)
            result = self._model().transcribe(audio, temperature=0.0, condition_on_previous_text=False,
                                              word_timestamps=True, fp16=self.device.startswith("cuda"),
                                              verbose=None)
            return [[w["word"].strip(), float(w["start"]), float(w["end"])]
                    for seg in result["segments"] for w in seg.get("words", [])]

        words, hit = self.cache.get_or_compute(key, compute)
        return [(str(w), float(a), float(b)) for w, a, b in words], hit

    def many(self, clips: list[tuple[np.ndarray, int, str]]) -> tuple[list[str], int, float]:
        """Transcripts of several (audio, rate, digest) clips, "" where no speech was heard; the
        cache hits and seconds. Clips of one window (30 s) that the cache lacks are decoded
        together in one batch on the device; longer ones one at a time."""
        t0 = time.perf_counter()
        keys = [self.cache.key("transcript", d, self.fingerprint()) for _, _, d in clips]
        texts: list[str | None] = [self.cache.get(k) for k in keys]
        hits = sum(t is not None for t in texts)
        todo = [i for i, t in enumerate(texts) if t is None]
        short = [i for i in todo if len(clips[i][0]) <= WINDOW_SECONDS * clips[i][1]]
        for start in range(0, len(short), BATCH):
            group = short[start:start + BATCH]
            for i, text in zip(group, self._decode_batch([clips[i][:2] for i in group]), strict=True):
                texts[i] = text
        for i in todo:
            if texts[i] is None:
                texts[i] = self._text(*clips[i][:2])
        for i in todo:
            self.cache.set(keys[i], texts[i])
        return [t or "" for t in texts], hits, time.perf_counter() - t0

    def _decode_batch(self, clips: list[tuple[np.ndarray, int]]) -> list[str]:
        import torch
        import whisper

        model = self._model()
        mels = [whisper.log_mel_spectrogram(whisper.pad_or_trim(resample(np.asarray(x, np.float32), sr, 16000)),
                                            n_mels=model.dims.n_mels) for x, sr in clips]
        options = whisper.DecodingOptions(temperature=0.0, without_timestamps=True,
                                          fp16=self.device.startswith("cuda"))
        with torch.inference_mode():
            results = whisper.decode(model, torch.stack(mels).to(model.device), options)
        return [r.text.strip() for r in results]

    def _model(self):
        import whisper

        if self.model is None:
            device = self.device if self.device.startswith("cuda") else "cpu"
            self.model = whisper.load_model(resolve(self.name, self.allow_download), device=device)
        return self.model

    def _text(self, x: np.ndarray, sr: int) -> str:
        audio = resample(np.asarray(x, np.float32), sr, 16000)
        result = self._model().transcribe(audio, temperature=0.0, condition_on_previous_text=False,
                                          fp16=self.device.startswith("cuda"), verbose=None)
        return result["text"].strip()

    def _transcribe(self, x: np.ndarray, sr: int) -> str:
        text = self._text(x, sr)
        if not text:
            raise TranscriptionError("transcription found no speech")
        return text
