"""Audio and text longer than the model's window: cut in pauses, every chunk edited in one
batch, joined without clicks; long clone texts spoken piece by piece."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS, invoke, long_speech, model_args, read_audio, write_manifest

from editx_cli import audio, longform

SR = 24000
GAP = 0.7  # seconds of room tone between the clips of the long file


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> tuple:
    """~75 s of speech: the shipped clips, in turn, with 0.7 s of quiet room tone between them;
    and where each pause lies (seconds)."""
    path = tmp_path_factory.mktemp("long") / "long.wav"
    pauses = long_speech(path, SR, 75, GAP)
    return path, pauses, sf.info(path).duration


def _report(path):
    return json.loads(path.read_text())["tasks"]


def test_cut_points_fall_in_the_longest_late_pause():
    sr = 100
    spans = [(0, 500), (520, 1500), (1600, 1900), (1950, 3000)]  # pauses at 5.1, 15.5, 19.25 s
    assert longform.cut_points(spans, 3000, sr, 20.0) == [1550]  # 15.5 s: longest in the second half
    assert longform.cut_points(spans, 1800, sr, 20.0) == []
    x = np.ones(4000, np.float32)
    x[3300:3302] = 0
    cuts = longform.cut_points([(0, 4000)], 4000, sr, 20.0, x)  # no pause: the quietest frame
    assert len(cuts) == 2 and all(0 < b - a <= 2000 for a, b in zip([0, *cuts], [*cuts, 4000], strict=False))
    long = [(0, 1100), (1900, 3000)]  # an 8 s pause is a chunk apart, cut 0.5 s from its sounds
    assert longform.cut_points(long, 3000, sr, 20.0) == [1150, 1850]


def test_text_is_split_at_sentences_then_commas():
    sentence = "This sentence takes about two seconds to say aloud."
    pieces = longform.split_text(" ".join([sentence] * 40), 25.0)
    assert len(pieces) >= 3
    assert all(longform.speech_seconds(p) <= 25.0 for p, _ in pieces)
    assert " ".join(p for p, _ in pieces) == " ".join([sentence] * 40)  # nothing lost or doubled
    assert all(p.endswith(".") and pause == longform.SENTENCE_PAUSE for p, pause in pieces)
    long_clause = ", ".join(["and then we went on walking for a while"] * 20) + "."
    pieces = longform.split_text(long_clause, 10.0)
    assert all(longform.speech_seconds(p) <= 10.0 for p, _ in pieces) and len(pieces) > 2
    assert pieces[0][0].endswith(",") and pieces[0][1] == longform.CLAUSE_PAUSE
    tagged = longform.split_text("[Japanese] " + "今日はとても良い天気ですね。" * 20, 10.0)
    assert len(tagged) > 1 and all(p.startswith("[Japanese] ") for p, _ in tagged)


def test_transcripts_follow_the_cuts():
    text = "One two three. Four five six, seven eight nine ten."
    assert longform.split_words(text, [1, 1]) == ["One two three.", "Four five six, seven eight nine ten."]
    heard = [(w, i * 1.0, i * 1.0 + 0.5) for i, w in enumerate("one two tree four five six seven ate nine ten".split())]
    assert longform.split_by_times(text, heard, [5.9]) == ["One two three. Four five six,",
                                                           "seven eight nine ten."]
    assert longform.split_by_times(text, [("hmm", 0.0, 1.0)], [5.9]) is None  # nothing matches: no trust
    assert longform.split_like("One [laugh] two three. Four [sigh] five six, seven eight nine ten.",
                               ["One two three. Four", "five six, seven eight nine ten."]) == \
        ["One [laugh] two three. Four [sigh]", "five six, seven eight nine ten."]


def test_join_keeps_the_pauses_and_does_not_click():
    sr = 16000
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    lead, tail = np.zeros(800, np.float32), np.zeros(1600, np.float32)
    pieces = [np.concatenate([lead, tone, tail]), np.concatenate([lead[:400], tone * 0.8, tail])]
    y, spans = longform.join(pieces, [0.3], sr)
    loud = np.flatnonzero(np.abs(y) > 1e-3)
    gaps = np.flatnonzero(np.diff(loud) > 100)  # not the tone's zero crossings
    assert len(gaps) == 1
    assert (loud[gaps[0] + 1] - loud[gaps[0]]) / sr == pytest.approx(0.3, abs=0.002)
    assert spans[1][1] == len(y) and spans[0][0] == 0


def test_a_join_made_piece_by_piece_holds_back_only_the_next_crossfade():
    """What a streamed response sends: each piece's samples as soon as it is known, all but the
    crossfade the next piece will make; in all, the very samples of the whole join."""
    sr = 16000
    rng = np.random.default_rng(3)
    pieces = []
    for n in (9000, 30, 12000, 400, 7000):  # pieces shorter than a crossfade too
        x = (rng.standard_normal(n) * 1e-4).astype(np.float32)
        x[n // 4: 3 * n // 4] += 0.3 * np.sin(np.arange(n // 2 - n // 2 % 1) * 0.05)[: 3 * n // 4 - n // 4]
        pieces.append(x)
    pauses = [0.2, 0.05, 0.4, 0.0]
    whole, spans = longform.join(pieces, pauses, sr)
    joiner = longform.Joiner(pauses, sr)
    parts, sent = [], 0
    for i, p in enumerate(pieces):
        parts.append(joiner.add(p))
        sent += len(parts[-1])
        assert joiner.spans[i][1] - sent <= joiner.fade  # only the crossfade to come is held back
    parts.append(joiner.finish())
    assert np.array_equal(np.concatenate(parts), whole) and joiner.spans == spans
    ends = longform.Joiner(None, sr)  # end to end, as cut
    assert np.array_equal(np.concatenate([ends.add(p) for p in pieces]), np.concatenate(pieces))


def test_a_long_edit_is_cut_in_pauses_and_keeps_its_length(long_file, tmp_path):
    """The dsp engine keeps a denoised file's length, so the joined output's length and seams
    are exact to check."""
    path, pauses, seconds = long_file
    assert seconds >= 70
    out = tmp_path / "out.wav"
    r = invoke("edit", path, "--type", "denoise", "--engine", "dsp", "--chunk-seconds", "20", "-o", out,
               "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    (task,) = _report(tmp_path / "r.json")
    chunks = task["info"]["chunks"]
    # at most 20 s each; each but the last at least half that (cuts are in the window's second half)
    assert math.ceil(seconds / 20) <= len(chunks) <= math.ceil(seconds / 10)
    assert all(10 <= c["end"] - c["start"] <= 20 for c in chunks[:-1]) and chunks[-1]["end"] - chunks[-1]["start"] <= 20
    x, sr = read_audio(path)
    level = np.sqrt(np.mean(x**2))
    for c in chunks[1:]:  # every cut inside a pause: 50 ms either side far quieter than the speech
        cut = int(c["start"] * sr)
        assert np.sqrt(np.mean(x[cut - sr // 20: cut + sr // 20] ** 2)) < 0.05 * level, c
    y, _ = read_audio(out)
    assert len(y) == len(x)  # an edit that keeps length keeps it to the sample, chunked
    r = invoke("edit", path, "--type", "denoise", "--engine", "dsp", "-o", tmp_path / "whole.wav")
    assert r.exit_code == 0, r.stderr
    assert len(read_audio(tmp_path / "whole.wav")[0]) == len(x)  # and whole
    for c in chunks[1:]:  # no click: the sample step at each seam is like its neighbours'
        seam = int(c["output_start"] * sr)
        around = np.abs(np.diff(y[seam - sr // 20: seam + sr // 20]))
        step = np.abs(np.diff(y[seam - 2: seam + 2])).max()
        assert step <= 3 * np.percentile(around, 99) + 1e-6, (c, step)


@pytest.mark.slow
def test_long_edits_on_the_model_batch_all_chunks_and_rerun_identically(long_file, tiny, tmp_path):
    path, pauses, seconds = long_file
    transcript = " ".join(f"Sentence number {i} is spoken here." for i in range(24))
    rows = [["a", "edit", str(path), transcript, "emotion", "happy", 3, "a.wav"],
            ["b", "edit", str(CLIPS / "narration.wav"), "Hello there.", "emotion", "sad", 4, "b.wav"]]
    manifest = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "audio_text", "edit_type",
                                                  "edit_info", "seed", "output"], rows)
    common = [*model_args(tiny), "--cache-dir", tmp_path / "cache", "--batch-size", "8"]
    r = invoke("batch", manifest, "-o", tmp_path / "one", *common)
    assert r.exit_code == 0, r.stderr
    a, b = _report(tmp_path / "one" / "report.json")
    chunks = a["info"]["chunks"]
    assert len(chunks) == 4 and all(c["end"] - c["start"] <= 25.0 for c in chunks)
    assert [c["seed"] for c in chunks] == [3, 1003, 2003, 3003]
    assert " ".join(c["text"] for c in chunks) == transcript  # every word in exactly one chunk
    assert all(c["decoded_with"] == 5 for c in chunks)  # four chunks and the short task, together
    assert b["info"]["decoded_with"] == 5
    assert a["cache_misses"] >= 4 and a["input_seconds"] == pytest.approx(seconds, abs=0.01)
    y, sr = read_audio(tmp_path / "one" / "a.wav")
    assert len(y) / sr == pytest.approx(chunks[-1]["output_end"], abs=0.01)
    r = invoke("batch", manifest, "-o", tmp_path / "two", *common)
    assert r.exit_code == 0, r.stderr
    assert audio.file_digest(tmp_path / "one" / "a.wav") == audio.file_digest(tmp_path / "two" / "a.wav")
    r = invoke("review", tmp_path / "one")  # the page says which task was edited in pieces
    assert r.exit_code == 0 and "emotion happy, 4 chunks" in (tmp_path / "one" / "review.html").read_text()


def test_silence_passes_through_and_a_failed_chunk_fails_its_task_by_name(tiny, tmp_path):
    """40 s of silence is not sent to the model (it would make something up); and a guided edit
    re-speaks each chunk's transcript, so with one word for two chunks of speech, one of them
    cannot run: the task fails, naming that chunk, and writes nothing."""
    x, _ = audio.load(CLIPS / "narration.wav", SR)
    y = np.concatenate([x, x, np.zeros(40 * SR, np.float32), x, x])
    path = tmp_path / "gap.wav"
    sf.write(path, y, SR)
    common = [*model_args(tiny), "--cache-dir", tmp_path / "cache"]
    r = invoke("edit", path, "--type", "denoise", "-o", tmp_path / "d.wav", "--report", tmp_path / "r.json", *common)
    assert r.exit_code == 0, r.stderr
    chunks = _report(tmp_path / "r.json")[0]["info"]["chunks"]
    kept = [c for c in chunks if c.get("kept")]
    assert kept and all(c["start"] >= 11 and c["end"] <= 52 for c in kept)  # inside the silence
    assert all("generated_tokens" not in c for c in kept) and all("generated_tokens" in c for c in chunks
                                                                   if c not in kept)
    out, sr = read_audio(tmp_path / "d.wav")
    for c in kept:
        a, b = int(c["output_start"] * sr) + sr // 10, int(c["output_end"] * sr) - sr // 10
        assert np.abs(out[a:b]).max() < 1e-3  # still silence
    r = invoke("edit", path, "--type", "denoise", "--intensity", "1.5", "--audio-text", "Hello.",
               "-o", tmp_path / "o.wav", *common)
    assert r.exit_code == 1
    m = re.search(r"failed: chunk (\d+) \((\d+\.\d)-(\d+\.\d) s\): ValueError: .* needs audio_text", r.stderr)
    assert m, r.stderr
    assert not (11 <= float(m[2]) and float(m[3]) <= 52)  # a chunk of speech, not of the silence
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.slow
def test_a_long_clone_text_is_spoken_in_pieces(tiny, tmp_path):
    text = " ".join(f"This is sentence number {i}, and it goes on a little." for i in range(30))
    out = tmp_path / "c.wav"
    r = invoke("clone", CLIPS / "narration.wav", "--prompt-text", "The quick brown fox.", "--text", text, "-o", out,
               *model_args(tiny), "--cache-dir", tmp_path / "cache", "--report", tmp_path / "r.json",
               "--retry-below", "sim=1", "--max-retries", "1", "--whisper-model", tiny / "whisper-tiny.pt")
    assert r.exit_code == 0, r.stderr
    (task,) = _report(tmp_path / "r.json")
    chunks = task["info"]["chunks"]
    assert len(chunks) >= 3
    assert " ".join(c["text"] for c in chunks) == text
    assert all(longform.speech_seconds(c["text"]) <= 25 for c in chunks)
    assert task["cache_hits"] >= len(chunks) - 1  # one prompt: its features computed once
    y, sr = read_audio(out)
    assert len(y) / sr == pytest.approx(chunks[-1]["output_end"], abs=0.01)
    for c, d in zip(chunks, chunks[1:], strict=False):  # pieces follow each other, overlapping by the fade
        assert d["output_start"] == pytest.approx(c["output_end"] - longform.FADE_SECONDS, abs=0.002)
    # each piece checked against its own text, and retried on its own with its next seed (a
    # similarity of 1 is never reached); the task's scores combine the pieces' kept attempts
    for c in chunks:
        assert [a["seed"] for a in c["qa_attempts"]] == [c["seed"] - 1 + a["attempt"] for a in c["qa_attempts"]]
        assert len(c["qa_attempts"]) == 2
    qa = task["info"]["qa"]
    assert qa["passed"] is False and "chunk 1: similarity" in qa["problems"]
    assert all(c["qa"]["wer"] is not None and "similarity" in c["qa"] for c in chunks)
    assert qa["similarity"] == min(c["qa"]["similarity"] for c in chunks)
    assert min(c["qa"]["wer"] for c in chunks) <= qa["wer"] <= max(c["qa"]["wer"] for c in chunks)
    assert qa["passed"] == all(c["qa"]["passed"] for c in chunks)


def test_chunks_longer_than_the_window_are_refused(tiny, tmp_path):
    r = invoke("edit", CLIPS / "narration.wav", "--type", "denoise", *model_args(tiny), "--chunk-seconds", "40",
               "-o", tmp_path / "o.wav")
    assert r.exit_code == 2
    assert r.stderr.strip() == ("error: --engine stepaudio: --chunk-seconds 40: longer than the stepaudio engine's "
                                "window of 30 s (it edits and speaks at most that at a time)")


@pytest.mark.slow
def test_without_a_transcript_each_chunk_is_transcribed_and_tags_follow_their_words(long_file, tiny, tmp_path):
    path, _, _ = long_file
    common = [*model_args(tiny), "--cache-dir", tmp_path / "cache", "--whisper-model", tiny / "whisper-tiny.pt"]
    r = invoke("edit", path, "--type", "emotion", "--info", "sad", "--transcribe", "-o", tmp_path / "e.wav",
               "--report", tmp_path / "e.json", *common)
    assert r.exit_code == 0, r.stderr
    (task,) = _report(tmp_path / "e.json")
    assert task["info"]["transcript_split"] == "transcribed by chunk"
    chunks = task["info"]["chunks"]
    assert len(chunks) >= 3 and all(c["text"] for c in chunks)
    misses = task["cache_misses"]
    r = invoke("edit", path, "--type", "emotion", "--info", "sad", "--transcribe", "-o", tmp_path / "e2.wav",
               "--report", tmp_path / "e2.json", *common)
    (again,) = _report(tmp_path / "e2.json")
    assert again["cache_misses"] == 0 and again["cache_hits"] == misses + task["cache_hits"]  # chunks' transcripts too
    assert [c["text"] for c in again["info"]["chunks"]] == [c["text"] for c in chunks]

    transcript = " ".join(f"Line {i} of the story goes here." for i in range(20))
    tagged = transcript.replace("Line 3 of", "Line 3 [laugh] of").replace("Line 17 ", "Line 17 [sigh] ")
    r = invoke("edit", path, "--type", "paralinguistic", "--audio-text", transcript, "--text", tagged,
               "-o", tmp_path / "p.wav", "--report", tmp_path / "p.json", *common)
    assert r.exit_code == 0, r.stderr
    chunks = _report(tmp_path / "p.json")[0]["info"]["chunks"]
    assert " ".join(c["text"] for c in chunks) == transcript
    assert " ".join(c["new_text"] for c in chunks) == tagged
    for c in chunks:  # each piece's tagged text is its transcript with its own tags
        assert longform.spoken(c["new_text"]) == longform.spoken(c["text"])


@pytest.mark.parametrize("edit, check", [
    (["--type", "speed", "--info", "faster"], "tempo"),
    (["--type", "vad"], "pauses"),
])
def test_dsp_seams_follow_the_edit(long_file, tmp_path, edit, check):
    """A cut pause is treated as the pauses inside the chunks are: scaled by the tempo of a speed
    edit, shortened by a vad edit."""
    path, pauses, seconds = long_file
    out = tmp_path / "o.wav"
    r = invoke("edit", path, *edit, "--engine", "dsp", "--chunk-seconds", "20", "-o", out,
               "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.stderr
    assert len(_report(tmp_path / "r.json")[0]["info"]["chunks"]) >= 4
    y, sr = read_audio(out)
    if check == "tempo":  # round(input / tempo) within 10 ms, chunked and whole
        x, _ = read_audio(path)
        assert abs(len(y) - round(len(x) / 1.2)) <= sr // 100
        r = invoke("edit", path, *edit, "--engine", "dsp", "-o", tmp_path / "whole.wav")
        assert r.exit_code == 0, r.stderr
        assert abs(len(read_audio(tmp_path / "whole.wav")[0]) - round(len(x) / 1.2)) <= sr // 100
    else:  # the longest pause left is no longer than when the file is edited whole
        r = invoke("edit", path, *edit, "--engine", "dsp", "-o", tmp_path / "whole.wav")
        assert r.exit_code == 0, r.stderr
        whole, _ = read_audio(tmp_path / "whole.wav")
        assert _longest_pause(y, sr) <= _longest_pause(whole, sr) + 0.04
        assert len(y) / sr == pytest.approx(len(whole) / sr, abs=0.5)


def _longest_pause(y: np.ndarray, sr: int) -> float:
    """Seconds of the longest run of 20 ms frames 40 dB under the loudest."""
    frame = sr // 50
    rms = np.sqrt(np.mean(y[: len(y) // frame * frame].reshape(-1, frame) ** 2, axis=1))
    quiet = np.concatenate([[0], (rms < rms.max() * 10 ** (-40 / 20)).astype(int), [0]])
    edges = np.flatnonzero(np.diff(quiet))
    return float((edges[1::2] - edges[::2]).max() * 0.02)
