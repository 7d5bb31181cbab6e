"""Missing transcripts: Whisper (a tiny checkpoint built by the fixtures), cached by content."""

from __future__ import annotations

import json

from conftest import CLIPS, invoke, model_args, write_manifest


def _manifest(tmp_path):
    return write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "audio_text", "edit_type", "edit_info"], [
        ["a", "edit", str(CLIPS / "narration.wav"), "", "emotion", "happy"],
        ["b", "edit", str(CLIPS / "narration.wav"), "Given text.", "style", "whisper"],
        ["c", "edit", "@a", "", "speed", "slower"],
    ])


def test_empty_transcripts_are_transcribed_and_cached(tiny, tmp_path):
    m = _manifest(tmp_path)
    whisper = ["--transcribe", "--whisper-model", tiny / "whisper-tiny.pt"]
    r = invoke("batch", m, *model_args(tiny), *whisper, "-o", tmp_path / "o1", "-q")
    assert r.exit_code == 0, r.stderr
    tasks = {t["id"]: t for t in json.loads((tmp_path / "o1" / "report.json").read_text())["tasks"]}
    assert tasks["a"]["info"]["transcript"] and "transcribe" in tasks["a"]["stages"]
    assert tasks["a"]["info"]["transcribed_by"] == "openai-whisper"  # a checkpoint file
    assert "transcript" not in tasks["b"]["info"]  # a given transcript is used as is
    assert tasks["c"]["info"]["transcript"]  # the chained input (a's output) is transcribed too
    r = invoke("batch", m, *model_args(tiny), *whisper, "-o", tmp_path / "o2", "-q")
    again = {t["id"]: t for t in json.loads((tmp_path / "o2" / "report.json").read_text())["tasks"]}
    assert again["a"]["info"]["transcript"] == tasks["a"]["info"]["transcript"]
    assert again["a"]["cache_misses"] == 0 and again["a"]["cache_hits"] == 2  # transcript + features
    assert "transcribe" in again["a"]["stages"]


def test_without_transcribe_an_empty_transcript_is_invalid(tiny, tmp_path):
    r = invoke("batch", _manifest(tmp_path), *model_args(tiny), "-o", tmp_path / "o")
    assert r.exit_code == 2
    assert "row 1, field 'audio_text'" in r.stderr and "--transcribe" in r.stderr
    assert "row 3, field 'audio_text'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_an_unknown_whisper_model_is_bad_usage(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for model, message in (("no-such-model", "not a Whisper model name"), ("tiny", "pass --allow-download")):
        r = invoke("batch", _manifest(tmp_path), *model_args(tiny), "--transcribe", "--whisper-model", model,
                   "-o", tmp_path / "o")
        assert r.exit_code == 2 and message in r.stderr, r.stderr
        assert not (tmp_path / "o").exists()


def test_a_whisper_folder_without_model_bin_is_refused(tiny, tmp_path):
    folder = tmp_path / "not-ct2"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    r = invoke("batch", _manifest(tmp_path), *model_args(tiny), "--transcribe", "--whisper-model", folder,
               "-o", tmp_path / "o")
    assert r.exit_code == 2
    assert f"--whisper-model '{folder}': a folder without model.bin" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
