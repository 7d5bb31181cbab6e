"""Tests that listen: OpenAI's Whisper base (CTranslate2, through faster-whisper) hears the
outputs of the dsp engine, so the words an edit keeps, QA's scores and the cutting of long
inputs at words are checked on real speech recognition, not on a random-weight model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS, invoke, long_speech, write_manifest

from editx_cli import audio
from editx_cli.cache import NullCache
from editx_cli.qa import error_rate
from editx_cli.transcribe import Transcriber

TEXTS = {  # what the shipped clips say
    "narration": "I didn't keep every voice clip consistent, from the first take to the last.",
    "pauses": "First, open the file. Then wait for the signal. Finally, save your work.",
}
EDITS = [  # (id, clip, edit_type, edit_info, intensity, the most word error the output may have)
    ("narration-faster", "narration", "speed", "faster", 1.0, 0.15),
    ("narration-slower", "narration", "speed", "slower", 1.0, 0.15),
    ("pauses-faster", "pauses", "speed", "faster", 1.0, 0.15),
    ("pauses-slower", "pauses", "speed", "slower", 1.0, 0.15),
    ("pauses-tight", "pauses", "vad", "", 1.0, 0.10),
    ("pauses-tighter", "pauses", "vad", "", 3.0, 0.10),
    ("pauses-noisy-clean", "pauses-noisy", "denoise", "", 1.0, 0.10),
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("listen")
    for name in TEXTS:
        (folder / f"{name}.wav").write_bytes((CLIPS / f"{name}.wav").read_bytes())
    x, sr = audio.load(CLIPS / "pauses.wav")
    noise = np.cumsum(np.random.default_rng(3).standard_normal(len(x)))  # rumble and hiss, 14 dB under the speech
    noise -= np.convolve(noise, np.ones(200) / 200, "same")
    sf.write(folder / "pauses-noisy.wav", x + (noise / noise.std() * np.sqrt(np.mean(x**2)) * 0.2), sr)
    return folder


def test_the_real_asr_hears_the_shipped_clips(real_whisper):
    heard, _, _ = Transcriber(str(real_whisper), "cpu", NullCache()).many(
        [(*audio.load(CLIPS / f"{name}.wav"), name) for name in TEXTS])
    for name, text in zip(TEXTS, heard, strict=True):
        assert error_rate(TEXTS[name], text)[1] <= 0.08, (name, text)  # one word in 13 at most


def test_dsp_edits_keep_their_words_and_qa_hears_them_again_later(clips, real_whisper, tmp_path):
    rows = [[i, "edit", str(clips / f"{clip}.wav"), kind, info, w, TEXTS[clip.split("-")[0]]]
            for i, clip, kind, info, w, _ in EDITS]
    manifest = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type", "edit_info",
                                                   "intensity", "audio_text"], rows)
    out = tmp_path / "out"
    common = ["--engine", "dsp", "--whisper-model", real_whisper, "--cache-dir", tmp_path / "cache"]
    r = invoke("batch", manifest, "-o", out, "--qa", *common, "-q")
    assert r.exit_code == 0, r.stderr
    tasks = {t["id"]: t for t in json.loads((out / "report.json").read_text())["tasks"]}
    for i, clip, kind, info, _, most in EDITS:
        qa = tasks[i]["info"]["qa"]
        assert qa["heard_by"] == "faster-whisper"
        assert qa["wer"] <= most, (i, qa["heard"])
        x, sr = audio.load(clips / f"{clip}.wav")
        y, r_out = audio.load(out / f"{i}.wav")
        if kind == "denoise":
            assert len(y) == len(x) and r_out == sr  # to the sample
        if kind == "speed":
            assert abs(len(y) - round(len(x) / (1.2 if info == "faster" else 1 / 1.2))) <= sr // 100
    r = invoke("qa", out, *common, "--thresholds", "wer=0.15")
    assert r.exit_code == 0, r.stderr
    again = {row["id"]: row["qa"] for row in json.loads((out / "qa.json").read_text())["outputs"]}
    for i, *_ in EDITS:  # the written files, heard again: the same words, the same scores
        assert again[i]["heard"] == tasks[i]["info"]["qa"]["heard"] and again[i]["wer"] == tasks[i]["info"]["qa"]["wer"]


@pytest.mark.slow
def test_a_long_input_is_cut_between_real_words(real_whisper, tmp_path):
    path = tmp_path / "long.wav"
    long_speech(path, seconds=60)
    x, sr = audio.load(path)
    transcriber = Transcriber(str(real_whisper), "cpu", NullCache())
    words = transcriber.words(x, sr, "long")[0]
    transcript = " ".join(w for w, _, _ in words)
    out = tmp_path / "o.wav"
    r = invoke("edit", path, "--type", "denoise", "--engine", "dsp", "--chunk-seconds", "20", "--audio-text",
               transcript, "--transcribe", "--whisper-model", real_whisper, "--cache-dir", tmp_path / "cache",
               "-o", out, "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    (task,) = json.loads((tmp_path / "r.json").read_text())["tasks"]
    assert task["info"]["transcript_split"] == "whisper"
    chunks = task["info"]["chunks"]
    assert len(chunks) >= 3
    assert " ".join(c["text"] for c in chunks).split() == transcript.split()  # every word in exactly one chunk
    for c in chunks[1:]:  # no cut inside a word the ASR heard
        cut = c["start"]
        assert not any(a + 0.02 < cut < b - 0.02 for _, a, b in words), cut
    for c in chunks:  # and each chunk holds the words heard in its time
        inside = [w for w, a, b in words if c["start"] <= (a + b) / 2 < c["end"]]
        assert c["text"].split() == inside, c


def test_retry_below_keeps_the_attempt_the_real_asr_scores_best(clips, real_whisper, tmp_path):
    from editx_cli.qa import rank

    out = tmp_path / "out"
    r = invoke("edit", clips / "pauses.wav", "--type", "speed", "--info", "more faster", "--engine", "dsp",
               "--audio-text", TEXTS["pauses"], "--whisper-model", real_whisper, "--retry-below", "wer=0.01",
               "--max-retries", "1", "--cache-dir", tmp_path / "cache", "-o", out / "o.wav", "--report",
               out / "r.json")
    assert r.exit_code == 0, r.stderr
    (task,) = json.loads((out / "r.json").read_text())["tasks"]
    attempts = task["info"]["qa_attempts"]
    assert len(attempts) == 2 and all(a["heard_by"] == "faster-whisper" for a in attempts)
    assert task["info"]["qa"] == max(attempts, key=rank)
    y, sr = audio.load(out / "o.wav")  # the file kept is the attempt kept: heard again, the same words
    heard, _, _ = Transcriber(str(real_whisper), "cpu", NullCache()).many([(y, sr, "kept")])
    assert heard[0] == task["info"]["qa"]["heard"]
