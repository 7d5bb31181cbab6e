"""Output delivery: every format written and read back, bitrates, sample rates, loudness to a
target under a true-peak ceiling, matching an input's loudness, per-row settings, and what
the report says about each."""

from __future__ import annotations

import json
import math

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from conftest import CLIPS, invoke, write_manifest
from scipy.signal import resample_poly

from editx_cli import audio, deliver, loudness

SHIPPED = sorted(CLIPS.glob("*.wav"))


def lufs(path) -> float:
    x, sr = sf.read(str(path), dtype="float64")
    return pyloudnorm.Meter(sr).integrated_loudness(x)


def true_peak_fine(path) -> float:
    """An independent meter, finer than editx's: oversampled to 768 kHz, not 192 kHz."""
    x, sr = sf.read(str(path), dtype="float64")
    return 20 * math.log10(max(np.abs(x).max(), np.abs(resample_poly(x, 768000 // sr, 1)).max()))


def run_batch(tmp_path, rows: list[dict], *args: str):
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    r = invoke("batch", m, "--engine", "dsp", "-o", out, "-q", *args)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return r, out, report


def vad(id: str, clip: str = "narration", **kw) -> dict:
    return {"id": id, "task": "edit", "input_audio": str(CLIPS / f"{clip}.wav"), "edit_type": "vad", **kw}


@pytest.mark.parametrize("suffix,subtype,rate", [
    (".wav", "PCM_16", 16000), (".flac", "PCM_16", 16000), (".mp3", "MPEG_LAYER_III", 16000),
    (".ogg", "VORBIS", 16000), (".opus", "OPUS", 16000),
    (".mp3", "MPEG_LAYER_III", 44100), (".opus", "OPUS", 48000), (".flac", "PCM_16", 22050),
])
def test_each_format_is_written_and_reads_back(tmp_path, suffix, subtype, rate):
    r, out, report = run_batch(tmp_path, [vad("a", output=f"a{suffix}", sample_rate=rate)])
    assert r.exit_code == 0, r.stderr
    t = report["tasks"][0]
    info = sf.info(str(out / f"a{suffix}"))
    assert (info.subtype, info.samplerate, info.channels) == (subtype, rate, 1)
    assert t["sample_rate"] == rate
    # a lossy codec pads to whole frames; the duration holds to within one frame
    assert info.duration == pytest.approx(t["output_seconds"], abs=0.06)
    x, sr = audio.load(out / f"a{suffix}")
    assert sr == rate and np.abs(x).max() > 0.05


@pytest.mark.parametrize("rate,kbps", [(24000, 32), (24000, 128), (48000, 192), (8000, 16), (44100, 320)])
def test_mp3_bitrate_is_the_constant_one_asked_for(rate, kbps):
    x, sr = audio.load(CLIPS / "pauses.wav")
    data = audio.encode(audio.resample(x, sr, rate), rate, ".mp3", kbps)
    assert len(data) * 8 / (len(x) / sr) / 1000 == pytest.approx(kbps, rel=0.03)


def test_opus_bitrate_is_a_variable_bitrate_target():
    """Opus here is always variable bitrate: the pauses take fewer bits, so a file averages at
    most the target, and a higher target gives a larger file."""
    x, sr = audio.load(CLIPS / "pauses.wav")
    y = audio.resample(x, sr, 48000)
    sizes = [len(audio.encode(y, 48000, ".opus", kbps)) * 8 / (len(x) / sr) / 1000 for kbps in (16, 48, 128)]
    assert sizes == sorted(sizes)
    for kbps, measured in zip((16, 48, 128), sizes, strict=True):
        assert 0.4 * kbps <= measured <= 1.1 * kbps


def test_mp3_bitrate_that_the_rate_lacks_is_refused_at_encoding():
    with pytest.raises(audio.AudioError, match="320 kbit/s is not an MP3 bitrate at 24000 Hz"):
        audio.encode(np.zeros(2400, np.float32), 24000, ".mp3", 320)


def test_a_missing_codec_is_named_not_replaced():
    msg = audio.missing_codec(".mp3", formats={"WAV": "", "FLAC": "", "OGG": ""}, subtypes={})
    assert msg.startswith(".mp3 needs MP3 (MPEG Layer III), which the installed libsndfile")
    assert audio.missing_codec(".opus", formats={"OGG": ""}, subtypes={"VORBIS": ""}).startswith(".opus needs Ogg Opus")
    assert all(audio.missing_codec(s) == "" for s in audio.OUTPUT_FORMATS)  # this install has them all


@pytest.mark.parametrize("clip", SHIPPED, ids=[c.stem for c in SHIPPED])
@pytest.mark.parametrize("target", [-16.0, -23.0])
def test_loudness_reaches_the_target_under_the_ceiling(clip, target):
    x, sr = audio.load(clip)
    y = loudness.normalise(x, sr, target, -1.0)
    assert pyloudnorm.Meter(sr).integrated_loudness(y.astype(np.float64)) == pytest.approx(target, abs=0.5)
    assert loudness.true_peak(y, sr) <= -1.0 + 1e-6


def test_the_ceiling_wins_over_a_loud_target(tmp_path):
    """A loud target forces the limiter to work: the peak holds, measured by another meter."""
    r, out, report = run_batch(tmp_path, [vad(c.stem, c.stem, loudness=-12, peak=-3) for c in SHIPPED])
    assert r.exit_code == 0, r.stderr
    for t in report["tasks"]:
        path = out / f"{t['id']}.wav"
        assert true_peak_fine(path) <= -3.0 + 0.1
        assert t["true_peak"] <= -3.0
        assert t["loudness_after"] == pytest.approx(lufs(path), abs=0.1)
        assert t["loudness_after"] > t["loudness_before"]
        assert t["info"]["loudness_target"] == -12


def test_peak_alone_is_a_ceiling_and_keeps_loudness_otherwise(tmp_path):
    r, out, report = run_batch(tmp_path, [vad("a", peak=-6)])
    assert r.exit_code == 0, r.stderr
    t = report["tasks"][0]
    assert true_peak_fine(out / "a.wav") <= -6 + 0.1
    assert t["loudness_after"] < t["loudness_before"]  # only what had to come down came down


def test_match_input_keeps_an_edit_at_its_inputs_loudness(tmp_path):
    quiet = tmp_path / "quiet.wav"
    x, sr = audio.load(CLIPS / "noisy.wav")
    sf.write(quiet, x * 0.2, sr)
    rows = [{"id": "dn", "task": "edit", "input_audio": str(quiet), "edit_type": "denoise", "match_input": True},
            {"id": "plain", "task": "edit", "input_audio": str(quiet), "edit_type": "denoise"}]
    r, out, report = run_batch(tmp_path, rows)
    assert r.exit_code == 0, r.stderr
    by_id = {t["id"]: t for t in report["tasks"]}
    assert lufs(out / "dn.wav") == pytest.approx(lufs(quiet), abs=0.5)
    assert by_id["dn"]["info"]["loudness_target"] == pytest.approx(lufs(quiet), abs=0.01)
    assert abs(lufs(out / "plain.wav") - lufs(quiet)) > 1.0  # denoising alone moved it


def test_command_line_settings_are_defaults_and_rows_override_them(tmp_path):
    rows = [vad("a"), vad("b", loudness=-20, format="flac"), vad("c", output="c.opus", bitrate=32)]
    r, out, report = run_batch(tmp_path, rows, "--format", "mp3", "--loudness", "-16", "--bitrate", "64")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_file() and p.suffix != ".json" and p.suffix != ".csv") == [
        "a.mp3", "b.flac", "c.opus"]
    assert lufs(out / "b.flac") == pytest.approx(-20, abs=0.5)
    assert lufs(out / "c.opus") == pytest.approx(-16, abs=1.0)  # a lossy codec moves loudness a little
    mp3 = (out / "a.mp3").stat().st_size * 8 / sf.info(str(out / "a.mp3")).duration / 1000
    assert mp3 == pytest.approx(64, rel=0.05)


def test_the_csv_report_carries_loudness_columns(tmp_path):
    import pandas as pd

    r, out, _ = run_batch(tmp_path, [vad("a", loudness=-18)])
    assert r.exit_code == 0, r.stderr
    row = pd.read_csv(out / "report.csv").iloc[0]
    assert row["loudness_after"] == pytest.approx(-18, abs=0.5)
    assert {"loudness_before", "true_peak", "sample_rate", "input", "edit_info"} <= set(row.index)
    assert (out / "report.csv").read_text().startswith("id,task,edit_type,status,")


def test_settings_are_part_of_the_fingerprint(tmp_path, clips):
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type"],
                       [["a", "edit", clips / "narration.wav", "vad"]])
    out = tmp_path / "out"
    first = invoke("batch", m, "--engine", "dsp", "-o", out, "-q")
    again = invoke("batch", m, "--engine", "dsp", "-o", out, "-q")
    louder = invoke("batch", m, "--engine", "dsp", "-o", out, "-q", "--loudness", "-14")
    assert (first.exit_code, again.exit_code, louder.exit_code) == (0, 0, 0)
    statuses = json.loads((out / "report.json").read_text())["tasks"][0]["status"]
    assert statuses == "done"  # redone for the new target, not skipped
    assert lufs(out / "a.wav") == pytest.approx(-14, abs=0.5)
    skipped = invoke("batch", m, "--engine", "dsp", "-o", out, "-q", "--loudness", "-14")
    assert json.loads((out / "report.json").read_text())["tasks"][0]["status"] == "skipped", skipped.stderr


def test_no_settings_leave_the_fingerprint_as_it_was():
    """Outputs of runs from before these settings existed stay done: no key unless set."""
    assert deliver.Delivery().key() == {}
    assert deliver.Delivery(loudness=-16.0).key() == {"loudness": -16.0}


def test_single_commands_take_the_settings(tmp_path, clips, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("edit", clips / "narration.wav", "--engine", "dsp", "--type", "vad", "--format", "opus",
               "--loudness", "-16", "-q")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "narration_vad.opus").is_file()
    bad = invoke("edit", clips / "narration.wav", "--engine", "dsp", "--type", "vad", "-o", "x.wav", "--bitrate", "64")
    assert bad.exit_code == 2
    assert "error: command line, --bitrate: does not apply to .wav output (lossless)" in bad.stderr


def test_a_too_short_output_cannot_be_normalised():
    with pytest.raises(loudness.LoudnessError, match="0.20 s is too short to measure loudness"):
        deliver.render(np.full(3200, 0.1, np.float32), 16000, ".wav", deliver.Delivery(loudness=-16))
    data, rate, measures = deliver.render(np.full(3200, 0.1, np.float32), 16000, ".wav", deliver.Delivery())
    assert rate == 16000 and "loudness_before" not in measures  # measured where it can be; written anyway


def test_the_limiter_moves_its_gain_smoothly_and_only_near_peaks():
    sr = 16000
    t = np.arange(sr, dtype=np.float64) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    x[7000:7400] *= 3.0  # a 25 ms burst to 0.9
    y = loudness.limit(x, sr, -6.0)
    assert loudness.true_peak(y, sr) <= -6.0 + 1e-6
    loud = np.abs(x) > 0.05
    gain = y[loud] / x[loud]
    assert np.abs(np.diff(gain)).max() < 0.02  # no step: a clipper's gain jumps by up to 0.5 here
    far = np.r_[0:6500, 8000:sr]
    np.testing.assert_allclose(y[far], x[far], rtol=1e-4)  # away from the burst, untouched


def test_the_true_peak_is_measured_in_blocks_as_over_the_whole_signal():
    """Long outputs are oversampled a block at a time (an hour at once would take gigabytes):
    the envelope is the whole signal's, blocks, seams and ends alike."""
    sr = 24000
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(3 * loudness.PEAK_BLOCK + 123) * 0.2).astype(np.float32)
    x[loudness.PEAK_BLOCK - 1: loudness.PEAK_BLOCK + 1] = [0.95, -0.95]  # an intersample peak on a seam
    factor = loudness.TRUE_PEAK_RATE // sr
    whole = np.abs(resample_poly(x, factor, 1)).reshape(len(x), factor).max(axis=1)
    np.testing.assert_allclose(loudness._peak_envelope(x, sr), np.maximum(np.abs(x), whole), rtol=1e-6, atol=1e-7)
