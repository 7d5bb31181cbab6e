"""Transcripts (for edits that leave `audio_text` empty, QA, and cutting long inputs at
words), by one of two Whisper backends chosen by what `--whisper-model` names:

- a folder holding `model.bin` (a CTranslate2 conversion): faster-whisper, `int8` on the
  CPU and `float16` on CUDA, clips of one window decoded as one batch;
- a checkpoint file (`.pt`) or a model name already in Whisper's cache: openai-whisper.

The model loads on first use, only if some task needs it; nothing is downloaded unless
the user allows it. Transcripts are cached by audio content like the other prompt
features, keyed by the backend and the model's files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from editx_cli.audio import resample
from editx_cli.fingerprint import fingerprint_files

CODE_VERSION = "transcribe-3"
WINDOW_SECONDS = 30  # Whisper's window: clips up to this long decode in one batch
BATCH = 16
CT2_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json")


class TranscriptionError(RuntimeError):
    pass


def resolve(model: str, allow_download: bool) -> str:
    """A CTranslate2 folder, a checkpoint path, or a cached model name that opens offline."""
    path = Path(model).expanduser()
    if path.is_file():
        return str(path.resolve())
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise TranscriptionError(f"--whisper-model {model!r}: a folder without model.bin (a CTranslate2 "
                                     "Whisper conversion has one)")
        return str(path.resolve())
    import whisper

    if model not in whisper.available_models():
        raise TranscriptionError(f"--whisper-model {model!r}: no such file, and not a Whisper model name")
    cached = Path(_download_root()) / os.path.basename(whisper._MODELS[model])
    if not cached.is_file() and not allow_download:
        raise TranscriptionError(f"--whisper-model {model!r} is not in {_download_root()} "
                                 "(pass --allow-download, or a local checkpoint file)")
    return model


def backend_name(model: str) -> str:
    """Which backend hears with this model: a folder is a CTranslate2 conversion."""
    return "faster-whisper" if Path(model).expanduser().is_dir() else "openai-whisper"


def _download_root() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.getenv("XDG_CACHE_HOME", default), "whisper")


class Transcriber:
    def __init__(self, model: str, device: str, cache: Any, allow_download: bool = False) -> None:
        self.name = model
        self.device = device
        self.cache = cache
        self.allow_download = allow_download
        self.backend = backend_name(model)
        self.model = None
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # reads the model files' heads and tails: once
            path = Path(self.name).expanduser()
            files = [path] if path.is_file() else [path / f for f in CT2_FILES if (path / f).is_file()]
            self._fingerprint = fingerprint_files(files, f"{CODE_VERSION};{self.backend};{self.name}")
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
            return self._model().words(resample(np.asarray(x, np.float32), sr, 16000))

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
            audios = [resample(np.asarray(clips[i][0], np.float32), clips[i][1], 16000) for i in group]
            for i, text in zip(group, self._model().texts(audios), strict=True):
                texts[i] = text
        for i in todo:
            if texts[i] is None:
                texts[i] = self._text(*clips[i][:2])
        for i in todo:
            self.cache.set(keys[i], texts[i])
        return [t or "" for t in texts], hits, time.perf_counter() - t0

    def _model(self):
        if self.model is None:
            backend = FasterWhisper if self.backend == "faster-whisper" else OpenAIWhisper
            self.model = backend(resolve(self.name, self.allow_download), self.device)
        return self.model

    def _text(self, x: np.ndarray, sr: int) -> str:
        """A clip of one window is decoded as `many` decodes it (one pass, at most a window's
        tokens: a model that hallucinates cannot run on); a longer one window by window."""
        audio = resample(np.asarray(x, np.float32), sr, 16000)
        if len(audio) <= WINDOW_SECONDS * 16000:
            return self._model().texts([audio])[0]
        return self._model().text(audio)

    def _transcribe(self, x: np.ndarray, sr: int) -> str:
        text = self._text(x, sr)
        if not text:
            raise TranscriptionError("transcription found no speech")
        return text


class OpenAIWhisper:
    """openai-whisper on a checkpoint file or a cached model name; 16 kHz mono float32 in."""

    def __init__(self, model: str, device: str) -> None:
        import whisper

        self.fp16 = device.startswith("cuda")
        self.model = whisper.load_model(model, device=device if self.fp16 else "cpu")

    def text(self, audio: np.ndarray) -> str:
        result = self.model.transcribe(audio, temperature=0.0, condition_on_previous_text=False, fp16=self.fp16,
                                       verbose=None)
        return result["text"].strip()

    def words(self, audio: np.ndarray) -> list[list]:
        result = self.model.transcribe(audio, temperature=0.0, condition_on_previous_text=False,
                                       word_timestamps=True, fp16=self.fp16, verbose=None)
        return [[w["word"].strip(), float(w["start"]), float(w["end"])]
                for seg in result["segments"] for w in seg.get("words", [])]

    def texts(self, audios: list[np.ndarray]) -> list[str]:
        """Clips of one window each, decoded together in one batch."""
        import torch
        import whisper

        mels = [whisper.log_mel_spectrogram(whisper.pad_or_trim(a), n_mels=self.model.dims.n_mels) for a in audios]
        options = whisper.DecodingOptions(temperature=0.0, without_timestamps=True, fp16=self.fp16)
        with torch.inference_mode():
            results = whisper.decode(self.model, torch.stack(mels).to(self.model.device), options)
        return [r.text.strip() for r in results]


class FasterWhisper:
    """faster-whisper (CTranslate2) on a converted model folder; 16 kHz mono float32 in."""

    BEAM = 5

    def __init__(self, folder: str, device: str) -> None:
        from faster_whisper import WhisperModel

        cuda = device.startswith("cuda")
        index = int(device.partition(":")[2] or 0) if cuda else 0
        self.model = WhisperModel(folder, device="cuda" if cuda else "cpu", device_index=index,
                                  compute_type="float16" if cuda else "int8", cpu_threads=min(os.cpu_count() or 1, 8))

    def _segments(self, audio: np.ndarray, **options):
        segments, _ = self.model.transcribe(audio, beam_size=self.BEAM, temperature=0.0,
                                            condition_on_previous_text=False, **options)
        return list(segments)

    def text(self, audio: np.ndarray) -> str:
        return "".join(s.text for s in self._segments(audio)).strip()

    def words(self, audio: np.ndarray) -> list[list]:
        return [[w.word.strip(), float(w.start), float(w.end)]
                for s in self._segments(audio, word_timestamps=True) for w in (s.words or [])]

    def texts(self, audios: list[np.ndarray]) -> list[str]:
        """Clips of one window each, encoded and decoded as one batch, each in the language
        detected for it, without timestamps (as openai-whisper's batch decode)."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        model = self.model
        features = np.stack([pad_or_trim(model.feature_extractor(a)) for a in audios])
        encoded = model.encode(features)
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                              language="en" if model.model.is_multilingual else None)
        prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        prompts = [list(prompt) for _ in audios]
        if model.model.is_multilingual:
            at = prompt.index(tokenizer.language)
            for p, found in zip(prompts, model.model.detect_language(encoded), strict=True):
                p[at] = tokenizer.tokenizer.token_to_id(found[0][0])
        results = model.model.generate(encoded, prompts, beam_size=self.BEAM, max_length=model.max_length,
                                       suppress_blank=True, suppress_tokens=[-1])
        return [tokenizer.decode([t for t in r.sequences_ids[0] if t < tokenizer.eot]).strip() for r in results]
