"""--qa, --retry-below and `editx qa`: scores on known cases, the retry rule, re-checking a folder.

The Whisper here is the tiny random-weight checkpoint: it hears nonsense, so known word error
rates are made by comparing against what it hears of a clip, or against other words.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS, invoke, model_args, read_audio, write_manifest

from editx_cli import audio
from editx_cli.cache import FeatureCache
from editx_cli.qa import Check, Checker, ThresholdError, Thresholds, error_rate, rank
from editx_cli.transcribe import Transcriber

PROMPT = CLIPS / "narration.wav"
PROMPT_TEXT = "The quick brown fox jumps over the lazy dog."


def test_error_rates_on_known_strings():
    assert error_rate("The cat sat on the mat.", "the cat, sat on the MAT") == ("wer", 0.0)
    assert error_rate("the cat sat on the mat", "the cat sat on mat")[1] == pytest.approx(1 / 6)
    assert error_rate("[laugh] Oh really? [sigh]", "oh really") == ("wer", 0.0)  # tags are not words
    assert error_rate("one two three", "four five six") == ("wer", 1.0)
    assert error_rate("hello there", "") == ("wer", 1.0)
    assert error_rate("[laugh]", "anything") == ("wer", None)  # nothing to say: no rate
    # Chinese is counted in characters, spaces and punctuation ignored
    assert error_rate("今天天气很好。", "今天 天气很好") == ("cer", 0.0)
    assert error_rate("今天天气很好", "今天天气不好")[1] == pytest.approx(1 / 6)


def test_thresholds_are_parsed_and_applied():
    t = Thresholds.parse("wer=0.15, sim=0.5")
    assert (t.wer, t.cer, t.sim) == (0.15, None, 0.5)
    assert t.misses({"wer": 0.2, "similarity": 0.6}) == ["wer 0.200 > 0.15"]
    assert t.misses({"cer": 0.2, "similarity": 0.4}) == ["cer 0.200 > 0.15", "similarity 0.400 < 0.5"]
    assert Thresholds.parse("wer=0.3,cer=0.1").misses({"cer": 0.2}) == ["cer 0.200 > 0.1"]
    for bad in ("", "wer", "wer=x", "bleu=0.1", "sim=2", "wer=nan"):
        with pytest.raises(ThresholdError):
            Thresholds.parse(bad)
    # best attempt: passing beats failing; then fewer problems, fewer errors, more similar
    a = {"passed": False, "problems": "wer 0.5 > 0.15; similarity 0.2 < 0.5", "wer": 0.5, "similarity": 0.2}
    b = {"passed": False, "problems": "wer 0.3 > 0.15", "wer": 0.3, "similarity": 0.2}
    c = {"passed": True, "problems": "", "wer": 0.1, "similarity": 0.6}
    assert sorted([c, a, b], key=rank) == [a, b, c]


@pytest.mark.parametrize("args, message", [
    (["--retry-below", "wer=lots"], "--retry-below: 'wer=lots': 'lots' is not a number"),
    (["--max-retries", "2"], "--max-retries needs --retry-below"),
])
def test_bad_quality_options_are_one_line(tmp_path, args, message):
    r = invoke("edit", CLIPS / "narration.wav", "--type", "speed", "--info", "faster", "--engine", "dsp",
               "-o", tmp_path / "o.wav", *args)
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [f"error: {message}"] if "needs" not in message else \
        [f"error: {message} (the scores an output must reach)"]
    assert not (tmp_path / "o.wav").exists()


@pytest.fixture
def checker(tiny, tmp_path):
    from editx_cli.engine.stepaudio import StepAudioEngine

    cache = FeatureCache(tmp_path / "cache")
    cache.open()
    engine = StepAudioEngine({"model_dir": tiny / "Step-Audio-EditX", "tokenizer_dir": tiny / "Step-Audio-Tokenizer"},
                             cache)
    transcriber = Transcriber(str(tiny / "whisper-tiny.pt"), "cpu", cache)
    yield Checker(transcriber, engine.speaker_embedding, Thresholds.parse("wer=0.15,sim=0.5")), transcriber
    cache.close()


def _check(x, sr, expected: str, reference=None, kind="emotion") -> Check:
    ref = x if reference is None else reference
    return Check(x, sr, audio.samples_digest(x, sr), ref, sr, audio.samples_digest(ref, sr), expected, kind,
                 len(ref) / sr)


def test_known_scores(checker):
    """The reference clip's transcript is put in the transcript cache, where a real Whisper's
    would be (the random-weight one hears nonsense, and on some threads only punctuation);
    the other clips are transcribed by it for real."""
    check, transcriber = checker
    x, sr = audio.load(PROMPT)
    other, _ = audio.load(CLIPS / "noisy.wav", sr)
    digest = audio.samples_digest(x, sr)
    transcriber.cache.set(transcriber.cache.key("transcript", digest, transcriber.fingerprint()), PROMPT_TEXT)
    assert transcriber.many([(x, sr, digest)])[:2] == ([PROMPT_TEXT], 1)
    cases = [
        _check(x, sr, PROMPT_TEXT.upper()),  # the output is its reference and says what it should
        _check(x, sr, "a sentence that nobody said at all"),  # wrong words
        _check(other, sr, PROMPT_TEXT, reference=x),  # another recording as the output
        _check(np.zeros(sr, np.float32), sr, "", reference=x),  # silence, and too short
        _check(np.clip(x * 50, -1, 1), sr, "", reference=x),  # clipped
    ]
    (same, wrong, another, silent, clipped), seconds = check(cases)
    assert same["wer"] == 0.0 and same["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert same["passed"] and same["problems"] == "" and same["duration_ratio"] == 1.0
    # nine words heard for seven expected, none of them right: 7 substitutions + 2 insertions
    assert wrong["wer"] == round(9 / 7, 4) and not wrong["passed"] and wrong["problems"] == "wer 1.286 > 0.15"
    assert wrong["similarity"] == pytest.approx(1.0, abs=1e-5)  # the voice is right, the words are not
    assert another["similarity"] < same["similarity"]
    assert "nearly silent" in silent["problems"] and f"duration {sr / len(x):.2f}x the input's" in silent["problems"]
    assert isinstance(another["heard"], str) and another["wer"] is not None  # transcribed, whatever it heard
    assert "wer" not in silent  # nothing to compare with
    assert clipped["problems"].startswith("clipped (")
    assert seconds["transcribe"] > 0 and seconds["embed"] > 0


def _clone_rows(seeds: list[int]) -> list[list]:
    return [[f"c{s}", "clone", str(PROMPT), PROMPT_TEXT, "Pack my box with five dozen liquor jugs.", s,
             f"c{s}.wav"] for s in seeds]


HEADER = ["id", "task", "prompt_audio", "prompt_text", "text", "seed", "output"]


@pytest.fixture(scope="module")
def failing_run(tiny, tmp_path_factory):
    """Four clones that can never pass (similarity 1.0 asked for), one retry each: every attempt
    of every task is recorded."""
    tmp = tmp_path_factory.mktemp("qa")
    manifest = write_manifest(tmp / "m.csv", HEADER, _clone_rows([0, 10, 20, 30]))
    out = tmp / "out"
    r = invoke("batch", manifest, "-o", out, *model_args(tiny), "--cache-dir", tmp / "cache", "--whisper-model",
               tiny / "whisper-tiny.pt", "--retry-below", "sim=1", "--max-retries", "1", "--batch-size", "4",
               "--loudness", "-30")
    assert r.exit_code == 0, r.stderr  # below the thresholds is not a failure of the task
    return tmp, out, json.loads((out / "report.json").read_text())


def test_every_attempt_is_reported_and_retries_go_straight_back(failing_run):
    _, out, report = failing_run
    assert report["run"]["qa"] == {"checked": 4, "passed": 0, "retries": 4}
    for t in report["tasks"]:
        attempts = t["info"]["qa_attempts"]
        assert [(a["attempt"], a["seed"]) for a in attempts] == [(1, t["seed"]), (2, t["seed"] + 1)]
        assert all(not a["passed"] and "similarity" in a["problems"] for a in attempts)
        kept = max(attempts, key=rank)
        assert t["info"]["qa"] == kept  # the best attempt's scores, and its audio
        # a retry goes back as soon as its attempt is judged, joining the decoding under way
        assert 1 <= t["info"]["decoded_with"] <= 4
    assert set(report["run"]["engine_info"]["decode"]["batch_sizes"]) == {"4"}
    for t in report["tasks"]:  # scored as written: levelled to -30 LUFS, 16-bit
        y, _ = read_audio(out / f"{t['id']}.wav")
        assert t["info"]["qa"]["peak_dbfs"] == round(20 * math.log10(float(np.abs(y).max())), 1)
        assert t["info"]["qa"]["seconds"] == t["output_seconds"]


def test_a_retry_that_passes_is_taken(failing_run, tiny):
    """Forced: a threshold between a task's first and second attempt, so the first fails and the
    second passes; the output is then exactly what that seed alone makes."""
    tmp, _, report = failing_run
    pick = next(t for t in report["tasks"]
                if t["info"]["qa_attempts"][1]["similarity"] > t["info"]["qa_attempts"][0]["similarity"]
                and "duration" not in t["info"]["qa_attempts"][1]["problems"])
    first, second = (a["similarity"] for a in pick["info"]["qa_attempts"])
    threshold = round((first + second) / 2, 6)
    manifest = write_manifest(tmp / "one.csv", HEADER, _clone_rows([pick["seed"]]))
    out = tmp / "retry"
    common = [*model_args(tiny), "--cache-dir", tmp / "cache", "--whisper-model", tiny / "whisper-tiny.pt",
              "--loudness", "-30"]
    r = invoke("batch", manifest, "-o", out, *common, "--retry-below", f"sim={threshold}")
    assert r.exit_code == 0, r.stderr
    t = json.loads((out / "report.json").read_text())["tasks"][0]
    assert [a["passed"] for a in t["info"]["qa_attempts"]] == [False, True]  # no third attempt
    assert t["info"]["qa"]["seed"] == pick["seed"] + 1 and t["info"]["qa"]["passed"]
    direct = write_manifest(tmp / "direct.csv", HEADER, _clone_rows([pick["seed"] + 1]))
    r = invoke("batch", direct, "-o", tmp / "direct", *common)
    assert r.exit_code == 0, r.stderr
    got, _ = read_audio(out / f"c{pick['seed']}.wav")
    want, _ = read_audio(tmp / "direct" / f"c{pick['seed'] + 1}.wav")
    np.testing.assert_array_equal(got, want)
    # the retry settings are part of the task: the same run again skips it, other ones redo it
    r = invoke("batch", manifest, "-o", out, *common, "--retry-below", f"sim={threshold}")
    assert "1 skipped" in r.stderr
    r = invoke("batch", manifest, "-o", out, *common, "--retry-below", "sim=0.1", "--dry-run")
    assert "[run]" in r.stdout


def test_editx_qa_rechecks_a_folder(failing_run, tiny):
    tmp, out, report = failing_run
    common = [*model_args(tiny), "--cache-dir", tmp / "cache", "--whisper-model", tiny / "whisper-tiny.pt"]
    r = invoke("qa", out, *common, "--thresholds", "sim=0.01")
    assert r.exit_code == 0, r.stderr
    rows = {row["id"]: row for row in json.loads((out / "qa.json").read_text())["outputs"]}
    assert sorted(rows) == ["c0", "c10", "c20", "c30"]
    for t in report["tasks"]:  # the same audio scores the same as in the run
        kept, again = t["info"]["qa"], rows[t["id"]]["qa"]
        # the file as written is what the run scored: the same transcript (cached by content),
        # the same figures; only the verdict follows the other thresholds
        assert {k: v for k, v in again.items() if k not in ("problems", "passed")} == \
            {k: v for k, v in kept.items() if k not in ("problems", "passed", "attempt", "seed")}
        assert again["passed"]
    updated = json.loads((out / "report.json").read_text())
    assert all(t["info"]["qa"]["passed"] for t in updated["tasks"])
    assert (out / "qa.csv").read_text().startswith("id,output,wer,")
    # an output edited by hand since is named and left out; the others are checked
    x, sr = read_audio(out / "c0.wav")
    sf.write(out / "c0.wav", x * 0.5, sr)
    r = invoke("qa", out, *common, "--thresholds", "sim=1")
    assert r.exit_code == 1  # below the thresholds now
    assert "c0.wav: changed since editx wrote it; not checked" in r.stderr
    assert "low quality" in r.stderr
    assert len(json.loads((out / "qa.json").read_text())["outputs"]) == 3
    # records are data: one that says nothing usable is named and passed over; a reference that is
    # gone leaves the output checked without a similarity
    record = out / ".editx" / "c10.wav.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "checks": {"reference": 5, "text": ["x"]}}))
    record = out / ".editx" / "c20.wav.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "checks": {**data["checks"], "reference": str(tmp / "gone.wav")}}))
    r = invoke("qa", out, *common, "--thresholds", "sim=0.01")
    assert "c10.wav: its record says nothing to check it against" in r.stderr
    rows = {row["id"]: row for row in json.loads((out / "qa.json").read_text())["outputs"]}
    assert sorted(rows) == ["c20", "c30"]
    assert "similarity" not in rows["c20"]["qa"] and "is gone" in rows["c20"]["note"]
    assert "similarity" in rows["c30"]["qa"] and r.exit_code == 0
    empty = tmp / "empty"
    empty.mkdir()
    r = invoke("qa", empty, *common)
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {empty}: no output of an editx run to check here"
