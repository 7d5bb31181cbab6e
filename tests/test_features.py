"""Prompt features: tokenizer rates, preprocessing margins, the vocoder's mel, Kaldi fbank numerics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import CLIPS, read_audio

from editx_cli.engine.stepaudio.features import kaldi_fbank, prompt_mel
from editx_cli.engine.stepaudio.layout import FUNASR_ID
from editx_cli.engine.stepaudio.wav2token import AudioTokenizer, preprocess

MEL_CONF = {"num_mels": 80, "n_fft": 1920, "hop_size": 480, "win_size": 1920, "sampling_rate": 24000,
            "fmin": 0, "fmax": 8000}


@pytest.fixture(scope="module")
def tokenizer(tiny):
    tok = AudioTokenizer(tiny / "Step-Audio-Tokenizer", FUNASR_ID, "cpu")
    tok.load()
    return tok


def test_preprocess_trims_to_the_reference_margins():
    sr = 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr).astype(np.float32)
    x = np.concatenate([np.zeros(sr, np.float32), tone, np.zeros(sr, np.float32)])
    y = preprocess(x, sr)
    assert np.max(np.abs(y)) == pytest.approx(0.999, abs=1e-3)
    # about 1 s of tone: ceil(len / 240) frames of 240 samples, plus 0.27 s of margins
    assert len(y) % 240 == 0
    assert abs(len(y) - (sr + 4320)) <= 2 * 240 + 128
    lead = np.argmax(np.abs(y) > 0.01)
    assert 800 - 256 <= lead <= 800 + 256  # 50 ms kept before the speech


def test_code_rates_on_speech(tokenizer):
    x, sr = read_audio(CLIPS / "narration.wav")
    x16 = preprocess(x, sr)
    seconds = len(x16) / 16000
    vq02, vq06 = tokenizer(x16)
    assert abs(len(vq06) - seconds * 25) <= 2
    assert abs(len(vq02) - seconds * 50 / 3) <= 2  # one frame per 60 ms
    assert all(0 <= c < 1024 for c in vq02) and all(0 <= c < 4096 for c in vq06)
    assert tokenizer(x16) == (vq02, vq06)  # deterministic: no dither


def test_prompt_mel_is_50_frames_per_second():
    x, sr = read_audio(CLIPS / "narration.wav")
    mel = prompt_mel(x, sr, MEL_CONF)
    assert mel.shape[1] == 80
    assert abs(mel.shape[0] - len(x) / sr * 50) <= 1
    assert mel.min() >= math.log(1e-5) - 1e-6


def kaldi_fbank_reference(x: np.ndarray) -> np.ndarray:
    """Kaldi's fbank, written from its definition (what torchaudio.compliance.kaldi.fbank computes
    with dither 0): 25/10 ms frames, snip edges, DC removal, pre-emphasis 0.97, Povey window,
    512-point power spectrum, 80 triangular mel bins over 20 Hz..Nyquist, log floored at float eps."""
    sr, flen, shift, nfft = 16000, 400, 160, 512
    n = 1 + (len(x) - flen) // shift
    frames = np.stack([x[i * shift : i * shift + flen] for i in range(n)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1 - 0.97), frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(flen) / (flen - 1))) ** 0.85
    power = np.abs(np.fft.rfft(frames * window, nfft)) ** 2

    def mel(f):
        return 1127.0 * np.log(1 + f / 700.0)

    lo, hi = mel(20.0), mel(sr / 2)
    delta = (hi - lo) / 81
    bins_mel = mel(np.arange(nfft // 2) * sr / nfft)
    weights = np.zeros((nfft // 2, 80))
    for b in range(80):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        up = (bins_mel - left) / (center - left)
        down = (right - bins_mel) / (right - center)
        weights[:, b] = np.where((bins_mel > left) & (bins_mel < right), np.minimum(up, down), 0.0)
    energies = power[:, : nfft // 2] @ weights
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def test_kaldi_fbank_matches_the_reference_numerics():
    x, sr = read_audio(CLIPS / "narration.wav")
    assert sr == 16000
    mine = kaldi_fbank(x)
    ref = kaldi_fbank_reference(x)
    assert mine.shape == ref.shape
    loud = ref > -5  # compare where there is signal; log of near-zero energies is noise-dominated
    assert np.max(np.abs(mine[loud] - ref[loud])) < 1e-3
    assert np.median(np.abs(mine - ref)) < 1e-4


def test_feature_fingerprint_follows_the_checkpoint(tiny, tmp_path):
    import shutil

    from editx_cli.cache import NullCache
    from editx_cli.engine.stepaudio import StepAudioEngine

    root = tmp_path / "c"
    shutil.copytree(tiny, root)
    config = {"model_dir": root / "Step-Audio-EditX", "tokenizer_dir": root / "Step-Audio-Tokenizer"}
    before = StepAudioEngine(config, NullCache()).feature_fingerprint()
    centroids = np.load(root / "Step-Audio-Tokenizer" / "linguistic_tokenizer.npy")
    np.save(root / "Step-Audio-Tokenizer" / "linguistic_tokenizer.npy", centroids * 1.01)
    assert StepAudioEngine(config, NullCache()).feature_fingerprint() != before
