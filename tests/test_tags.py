"""Tags in target texts: the 2026 spellings, the older ones, language tags; `editx tags`."""

from __future__ import annotations

import pytest
from conftest import CLIPS, invoke, model_args, write_manifest

from editx_cli import tags

PROMPT = str(CLIPS / "narration.wav")
TRANSCRIPT = "Batch editing keeps every voice clip consistent, from the first take to the last."


def dry_run(tiny, tmp_path, *texts: str, edit: bool = False):
    header = ["id", "task", "prompt_audio", "prompt_text", "text", "input_audio", "audio_text", "edit_type"]
    rows = []
    for i, text in enumerate(texts, 1):
        if edit:
            rows.append([f"t{i}", "edit", "", "", text, PROMPT, TRANSCRIPT, "paralinguistic"])
        else:
            rows.append([f"t{i}", "clone", PROMPT, TRANSCRIPT, text, "", "", ""])
    m = write_manifest(tmp_path / "m.csv", header, rows)
    return invoke("batch", m, *model_args(tiny), "-o", tmp_path / "o", "--dry-run")


def test_every_documented_tag_and_language_passes_quietly(tiny, tmp_path):
    every = " ".join(f"word [{t}]" for t in tags.PARALINGUISTIC)
    texts = [every, *(f"[{lang}] 今日天气好好。" for lang in tags.LANGUAGES), "  [Japanese] leading spaces",
             "你hao3吗？ A polyphone's reading in place of its character: chong2新."]
    r = dry_run(tiny, tmp_path, *texts)
    assert r.exit_code == 0, r.stderr
    assert "warning" not in r.stderr.lower() and "error" not in r.stderr
    assert len(tags.PARALINGUISTIC) == 22 and len(tags.LANGUAGES) == 4


@pytest.mark.parametrize(("old", "new"), sorted(tags.OLDER.items()))
def test_older_spellings_are_accepted_with_a_warning(tiny, tmp_path, old, new):
    r = dry_run(tiny, tmp_path, f"Well [{old}] that was fun.", edit=True)
    assert r.exit_code == 0, r.stderr
    assert f"m.csv: row 1, field 'text': [{old}] is the older spelling of [{new}]; write [{new}]" in r.stderr


@pytest.mark.parametrize(("tag", "closest"), [
    ("laughs", "laugh"), ("LAUGH", "laugh"), ("Suprise-oh", "Surprise-oh"), ("clear throat", "clears throat"),
    ("Question-Ei", "Question-ei"), ("cantonese", "Cantonese"), ("BREATHING", "breath"),
])
def test_an_unknown_tag_is_an_error_naming_the_closest(tiny, tmp_path, tag, closest):
    r = dry_run(tiny, tmp_path, "Fine.", f"So [{tag}] there.", edit=True)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"m.csv: row 2, field 'text': unknown tag [{tag}]; did you mean [{closest}]?" in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_tag_like_nothing_known_names_no_guess(tiny, tmp_path):
    r = dry_run(tiny, tmp_path, "See figure [7] and [xyzzy].")
    assert r.exit_code == 2
    assert "unknown tag [7] (`editx tags` lists them)" in r.stderr
    assert "unknown tag [xyzzy] (`editx tags` lists them)" in r.stderr


def test_a_language_tag_must_open_the_text(tiny, tmp_path):
    r = dry_run(tiny, tmp_path, "Hello [Cantonese] 今日天气好好。", "[laugh][Korean] 안녕하세요")
    assert r.exit_code == 2
    assert "row 1, field 'text': the language tag [Cantonese] must open the text" in r.stderr
    assert "row 2, field 'text': the language tag [Korean] must open the text" in r.stderr


def test_tags_are_checked_in_single_commands_too(tiny, tmp_path):
    out = tmp_path / "o.wav"
    r = invoke("clone", PROMPT, "--prompt-text", TRANSCRIPT, "--text", "Hi [laughter].", *model_args(tiny),
               "-o", out, "--dry-run")
    assert r.exit_code == 2 and "unknown tag [laughter]; did you mean [laugh]?" in r.stderr


def test_editx_tags_lists_them_all():
    r = invoke("tags")
    assert r.exit_code == 0
    for t in [*tags.PARALINGUISTIC, *tags.LANGUAGES, *tags.OLDER]:
        assert f"[{t}]" in r.stdout
