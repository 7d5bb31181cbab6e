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

    def fingerprint(self) -> str:
        path = Path(self.name).expanduser()
        files = [path] if path.is_file() else []
        return fingerprint_files(files, f"{CODE_VERSION};{self.name}")

    def __call__(self, x: np.ndarray, sr: int, digest: str) -> tuple[str, bool, float]:
        """(transcript, cache hit, seconds)."""
        t0 = time.perf_counter()
        key = self.cache.key("transcript", digest, self.fingerprint())
        text, hit = self.cache.get_or_compute(key, lambda: self._transcribe(x, sr))
        return text, hit, time.perf_counter() - t0

    def _transcribe(self, x: np.ndarray, sr: int) -> str:
        import whisper

        if self.model is None:
            device = self.device if self.device.startswith("cuda") else "cpu"
            self.model = whisper.load_model(resolve(self.name, self.allow_download), device=device)
        audio = resample(np.asarray(x, np.float32), sr, 16000)
        result = self.model.transcribe(audio, temperature=0.0, condition_on_previous_text=False,
                                       fp16=self.device.startswith("cuda"), verbose=None)
        text = result["text"].strip()
        if not text:
            raise TranscriptionError("transcription found no speech")
        return text
