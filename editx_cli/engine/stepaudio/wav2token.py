"""The audio tokenizer: 16 kHz speech -> vq02 (16.67 Hz, 1024 codes) and vq06 (25 Hz, 4096 codes).

vq02: the FunASR paraformer-online encoder, run chunk by chunk as the reference
does, then the nearest k-means centroid. vq06: Whisper 128-bin log-mel into the
ONNX speech tokenizer, per 30 s chunk. The models load on first use, so a run
whose prompts all come from the cache never loads them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

import numpy as np

from editx_cli.audio import resample

log = logging.getLogger("editx")

CODE_VERSION = "wav2token-1"
SR = 16000
CHUNK_STRIDE = 4 * 960  # chunk_size[1] * 960 samples: 240 ms
VQ06_CHUNK = 30 * SR


def preprocess(x: np.ndarray, sr: int) -> np.ndarray:
    """16 kHz, peak 0.999, silence-trimmed with fixed margins, as the reference tokenizes.

    Resampling uses soxr (high quality) where the reference uses torchaudio's sinc
    resampler; the reference also refuses input below 16 kHz, which is upsampled here.
    """
    import librosa

    x16 = resample(np.asarray(x, dtype=np.float32), sr, SR)
    x16 = x16 / max(float(np.max(np.abs(x16))) if x16.size else 0.0, 0.01) * 0.999
    _, (start, end) = librosa.effects.trim(x16, top_db=20, frame_length=512, hop_length=128)
    num_frames = math.ceil((end - start) / 240)
    start_idx = start - 800  # keep 50 ms before the speech
    x16 = x16[start_idx:] if start_idx > 0 else np.concatenate([np.zeros(-start_idx, np.float32), x16])
    out_len = num_frames * 240 + 4320  # and (0.05 + 0.22) s in all around it
    if len(x16) >= out_len:
        return np.ascontiguousarray(x16[:out_len], dtype=np.float32)
    return np.concatenate([x16, np.zeros(out_len - len(x16), np.float32)])


@contextlib.contextmanager
def _weights_only_loads(torch):
    """FunASR loads model.pt with a bare torch.load: make every load inside it weights-only,
    whatever torch's default, so a checkpoint can hold tensors but never code."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


class AudioTokenizer:
    def __init__(self, tokenizer_dir: Path, funasr_id: str, device: str) -> None:
        self.dir = tokenizer_dir
        self.funasr_dir = tokenizer_dir / funasr_id
        self.device = device
        self.loaded = False

    def files(self) -> list[Path]:
        return [self.dir / "linguistic_tokenizer.npy", self.dir / "speech_tokenizer_v1.onnx",
                *(self.funasr_dir / n for n in ("model.pt", "config.yaml", "am.mvn"))]

    def check(self) -> None:
        """Cheap checks of the FunASR folder's configs, as data: FunASR imports and runs Python
        that its config names (trust_remote_code / remote_code), so refuse any that asks."""
        from editx_cli.datafiles import UnsafeFile, load_json, load_yaml, refuse_code

        for name, read in (("config.yaml", load_yaml), ("configuration.json", load_json)):
            if (self.funasr_dir / name).exists():
                refuse_code(read(self.funasr_dir / name), str(self.funasr_dir / name))
        centroids = self.dir / "linguistic_tokenizer.npy"
        try:  # the header only (memory-mapped): plain numbers, or refused
            np.load(centroids, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UnsafeFile(f"{centroids}: not a plain array file ({str(e).splitlines()[0]})") from None

    def load(self) -> None:
        if self.loaded:
            return
        import torch

        self.check()
        threads = torch.get_num_threads()
        # FunASR prints notices (its version, a missing ffmpeg it does not need here) and logs
        # its loading steps; stdout carries only editx's own results. Errors still raise.
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), _logging_disabled(logging.WARNING):
            from funasr import AutoModel

            # disable_update: never query a hub; dither 0: deterministic features (the
            # reference keeps FunASR's default dither, so its codes vary slightly run to run)
            try:
                with _weights_only_loads(torch):
                    auto = AutoModel(model=str(self.funasr_dir), disable_update=True, device=self.device,
                                     frontend_conf={"dither": 0.0}, ncpu=threads, log_level="ERROR",
                                     trust_remote_code=False)
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise RuntimeError(f"{self.funasr_dir}: the paraformer did not load as data "
                                   f"({type(e).__name__}: {first})") from None
        torch.set_num_threads(threads)
        self.paraformer = auto.model.eval()
        self.funasr_kwargs = auto.kwargs
        self.frontend = auto.kwargs["frontend"]
        self.centroids = torch.from_numpy(np.load(self.dir / "linguistic_tokenizer.npy", allow_pickle=False)).float()
        self.vq06_session = onnx_session(self.dir / "speech_tokenizer_v1.onnx", self.device)
        import whisper  # noqa: F401  (imported here so its cost is load time)

        self.loaded = True

    def __call__(self, x16: np.ndarray) -> tuple[list[int], list[int]]:
        self.load()
        return self.vq02(x16), self.vq06(x16)

    def vq02(self, x16: np.ndarray) -> list[int]:
        import torch
        from funasr.utils.load_utils import extract_fbank

        kw = self.funasr_kwargs
        cache: dict = {}
        self.paraformer.init_cache(cache, chunk_size=[0, 4, 5], encoder_chunk_look_back=4,
                                   decoder_chunk_look_back=1, encoder_conf=kw["encoder_conf"],
                                   frontend_conf=kw["frontend_conf"])
        samples = torch.from_numpy(x16)
        n = len(samples) // CHUNK_STRIDE + 1
        frames = []
        with torch.no_grad():
            for i in range(n):
                chunk = samples[i * CHUNK_STRIDE : (i + 1) * CHUNK_STRIDE]
                if len(chunk) == 0:
                    break
                final = i == n - 1
                try:
                    feats, lengths = extract_fbank([chunk], data_type="sound", frontend=self.frontend,
                                                   cache=cache["frontend"], is_final=final)
                except Exception:
                    if final and len(chunk) < 480:  # a tail too short for one fbank frame
                        log.debug("vq02: skipped a %d-sample tail", len(chunk))
                        continue
                    raise
                out, _ = self.paraformer.encode_chunk(feats.to(self.device), lengths.to(self.device),
                                                      cache=cache, is_final=final)
                keep = int(lengths[0])
                if keep:
                    # the chunk's output carries look-back context; its own frames are the last ones
                    frames.append(out[0, -keep:].float().cpu())
        if not frames:
            return []
        enc = torch.cat(frames)
        return torch.cdist(enc, self.centroids).argmin(dim=1).tolist()

    def vq06(self, x16: np.ndarray) -> list[int]:
        import torch
        import whisper

        codes: list[int] = []
        inputs = self.vq06_session.get_inputs()
        for start in range(0, len(x16), VQ06_CHUNK):
            chunk = x16[start : start + VQ06_CHUNK]
            if len(chunk) < 480:
                continue
            mel = whisper.log_mel_spectrogram(torch.from_numpy(chunk), n_mels=128).unsqueeze(0).numpy()
            out = self.vq06_session.run(None, {inputs[0].name: mel,
                                               inputs[1].name: np.array([mel.shape[2]], dtype=np.int32)})
            chunk_codes = np.asarray(out[0]).reshape(-1).tolist()
            expected = round(len(chunk) / SR, 2) * 25
            if abs(len(chunk_codes) - expected) > 2:
                raise RuntimeError(f"speech tokenizer gave {len(chunk_codes)} codes for {len(chunk) / SR:.2f} s "
                                   f"(expected about {expected:.0f} at 25 Hz)")
            codes += [int(c) for c in chunk_codes]
        return codes


def onnx_session(path: Path, device: str):
    """An ONNX Runtime session on the engine's device: the CUDA provider on its GPU when
    this onnxruntime has it, the CPU otherwise."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers: list = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


@contextlib.contextmanager
def _logging_disabled(level: int):
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
