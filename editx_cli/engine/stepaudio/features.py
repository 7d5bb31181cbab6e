"""Prompt features the vocoder conditions on: a 24 kHz log-mel and a CAMPPlus speaker embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from editx_cli.audio import resample

CODE_VERSION = "features-1"


def prompt_mel(x: np.ndarray, sr: int, mel_conf: dict) -> np.ndarray:
    """(frames, num_mels) log-mel at hop_size, from the untrimmed audio as the reference does."""
    import librosa
    import torch

    rate = int(mel_conf["sampling_rate"])
    n_fft, hop, win = int(mel_conf["n_fft"]), int(mel_conf["hop_size"]), int(mel_conf["win_size"])
    y = torch.from_numpy(resample(np.asarray(x, np.float32), sr, rate))
    pad = (n_fft - hop) // 2
    y = torch.nn.functional.pad(y[None, None], (pad, pad), mode="reflect")[0, 0]
    spec = torch.stft(y, n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win),
                      center=False, return_complex=True)
    magnitude = torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    basis = torch.from_numpy(librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=int(mel_conf["num_mels"]),
                                                 fmin=float(mel_conf["fmin"]), fmax=float(mel_conf["fmax"])))
    mel = torch.log(torch.clamp(basis @ magnitude, min=1e-5))
    return mel.T.contiguous().numpy().astype(np.float32)


def kaldi_fbank(x16: np.ndarray) -> np.ndarray:
    """80-bin Kaldi fbank of 16 kHz audio in [-1, 1], Kaldi's defaults, no dither."""
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, np.asarray(x16, np.float32).tolist())
    fbank.input_finished()
    if fbank.num_frames_ready == 0:
        return np.zeros((0, 80), np.float32)
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]).astype(np.float32)


class SpeakerEncoder:
    """campplus.onnx on mean-normalised fbank -> a 192-d embedding."""

    def __init__(self, path: Path, device: str) -> None:
        from editx_cli.engine.stepaudio.wav2token import onnx_session

        self.session = onnx_session(path, device)

    def __call__(self, x: np.ndarray, sr: int) -> np.ndarray:
        feats = kaldi_fbank(resample(np.asarray(x, np.float32), sr, 16000))
        feats = feats - feats.mean(axis=0, keepdims=True)
        name = self.session.get_inputs()[0].name
        return np.asarray(self.session.run(None, {name: feats[None]})[0], np.float32).reshape(-1)
