"""The dsp engine's effects, measured on speech rather than assumed."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS, duration, invoke, read_audio

from editx_cli.engine.dsp import tempo_factor


def _edit(tmp_path, name, src, *args):
    out = tmp_path / f"{name}.wav"
    r = invoke("edit", src, *args, "--engine", "dsp", "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    return out


def _median_f0(x: np.ndarray, sr: int) -> float:
    import librosa

    f0 = librosa.yin(x, fmin=60, fmax=400, sr=sr)
    voiced = f0[(f0 > 60) & (f0 < 400)]
    return float(np.median(voiced))


@pytest.mark.parametrize("info,intensity", [("faster", 1.0), ("faster", 2.0), ("slower", 1.0),
                                            ("more faster", 1.0), ("more slower", 0.5)])
def test_speed_changes_duration_by_the_documented_factor_and_keeps_pitch(tmp_path, info, intensity):
    src = CLIPS / "narration.wav"
    out = _edit(tmp_path, "s", src, "--type", "speed", "--info", info, "--intensity", str(intensity))
    expected = duration(src) / tempo_factor(info, intensity)
    assert abs(duration(out) - expected) / expected < 0.05
    x, sr = read_audio(src)
    y, sr_out = read_audio(out)
    assert sr_out == sr
    assert abs(_median_f0(y, sr) / _median_f0(x, sr) - 1) < 0.05


def test_documented_speed_factors():
    assert tempo_factor("faster", 1.0) == pytest.approx(1.2)
    assert tempo_factor("more faster", 1.0) == pytest.approx(1.44)
    assert tempo_factor("faster", 2.0) == pytest.approx(1.44)
    assert tempo_factor("slower", 1.0) == pytest.approx(1 / 1.2)


def test_vad_shortens_long_pauses_and_keeps_the_speech(tmp_path):
    src = CLIPS / "pauses.wav"  # three phrases separated by two 1.6 s silences
    x, sr = read_audio(src)
    out1 = _edit(tmp_path, "v1", src, "--type", "vad")
    out3 = _edit(tmp_path, "v3", src, "--type", "vad", "--intensity", "3")
    y1, _ = read_audio(out1)
    y3, _ = read_audio(out3)
    assert duration(src) - duration(out1) > 2.4  # each long pause cut to at most 0.3 s
    assert duration(out3) < duration(out1)  # higher intensity: shorter pauses
    # the speech is kept: nearly all of the signal's energy survives
    assert np.sum(y1**2) / np.sum(x**2) > 0.97
    assert np.sum(y3**2) / np.sum(x**2) > 0.95


def test_vad_without_pauses_changes_little(tmp_path):
    src = CLIPS / "narration.wav"
    out = _edit(tmp_path, "v", src, "--type", "vad")
    assert duration(src) - duration(out) < 1.0


def test_denoise_raises_snr_on_known_noisy_speech(tmp_path):
    """Speech with one second of silence each side, plus white noise at 5 dB.

    SNR is measured as speech-region power over noise-only-region power: what a
    listener hears as the noise floor. (Spectral gating also trims speech
    components under the noise, so a sample-wise error SNR is not the measure.)
    """
    clean, sr = read_audio(CLIPS / "narration.wav")
    clean = np.concatenate([np.zeros(sr), clean / np.max(np.abs(clean)) * 0.5, np.zeros(sr)]).astype(np.float32)
    noise = np.random.default_rng(7).standard_normal(len(clean)).astype(np.float32)
    noise *= np.sqrt(np.mean(clean[sr:-sr] ** 2) / np.mean(noise**2)) / 10 ** (5 / 20)
    noisy = tmp_path / "noisy.wav"
    sf.write(noisy, clean + noise, sr, subtype="FLOAT")
    edge = sr // 8  # keep clear of the speech/silence boundary

    def snr(y: np.ndarray) -> float:
        speech = y[sr + edge : -sr - edge]
        quiet = np.concatenate([y[: sr - edge], y[-sr + edge :]])
        return 10 * np.log10(np.mean(speech**2) / np.mean(quiet**2))

    snr_in = snr(clean + noise)
    strong = _edit(tmp_path, "d1", noisy, "--type", "denoise")
    gentle = _edit(tmp_path, "d03", noisy, "--type", "denoise", "--intensity", "0.3")
    snr_strong = snr(read_audio(strong)[0])
    snr_gentle = snr(read_audio(gentle)[0])
    assert snr_strong > snr_in + 5
    assert snr_in < snr_gentle < snr_strong
    assert duration(strong) == pytest.approx(duration(noisy), abs=1e-3)


def test_iterations_apply_the_edit_repeatedly(tmp_path):
    src = CLIPS / "narration.wav"
    out = _edit(tmp_path, "i", src, "--type", "speed", "--info", "faster", "--iterations", "3")
    assert abs(duration(out) - duration(src) / 1.2**3) / duration(out) < 0.05


def test_any_rate_and_channels_in_flac_out(tmp_path):
    src = CLIPS / "noisy.wav"  # stereo, 24 kHz
    out = tmp_path / "o.flac"
    r = invoke("edit", src, "--type", "speed", "--info", "slower", "--engine", "dsp", "-o", out, "-q")
    assert r.exit_code == 0
    info = sf.info(str(out))
    assert info.format == "FLAC" and info.channels == 1 and info.samplerate == 24000
