"""The review page: built from a real run (done, skipped, chained and failed tasks), its links
and pictures checked on disk, then opened from file:// in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
from conftest import ARTIFACTS, CLIPS, chromium_page, invoke, needs_chromium

from editx_cli import review


class _Page(HTMLParser):
    """Rows of the task table with their media sources, links and text."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self.urls: list[str] = []
        self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-status" in a:
            self._row = {"status": a["data-status"], "audio": [], "img": [], "text": ""}
            self.rows.append(self._row)
        for key in ("src", "href", "data-src"):
            if key in a:
                self.urls.append(a[key])
        if self._row is not None and tag == "img":
            self._row["img"].append(a["src"])
        if self._row is not None and "player" in a.get("class", "").split():  # made into <audio> when shown
            self._row["audio"].append(a["data-src"])

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row is not None:
            self._row["text"] += data


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An out-dir after two runs: the second skips what the first did and adds a failing task."""
    work = tmp_path_factory.mktemp("review")
    sf.write(work / "short clip.wav", 0.1 * np.sin(np.arange(4000, dtype=np.float32) / 5), 16000)
    rows = [
        {"id": "calm", "task": "edit", "input_audio": str(CLIPS / "narration.wav"), "edit_type": "vad"},
        {"id": "fast", "task": "edit", "input_audio": "@calm", "edit_type": "speed", "edit_info": "faster",
         "intensity": 1.5, "output": "fast <b>&.mp3"},
        {"id": "clean", "task": "edit", "input_audio": str(CLIPS / "noisy.wav"), "edit_type": "denoise",
         "iterations": 2, "loudness": -16},
    ]
    m = work / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = work / "out"
    assert invoke("batch", m, "--engine", "dsp", "-o", out, "-q").exit_code == 0
    rows.append({"id": "<script>bad</script>", "task": "edit", "input_audio": str(work / "short clip.wav"),
                 "edit_type": "vad", "match_input": True, "output": "bad.wav"})
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work


def test_ids_with_markup_are_refused_before_a_page_could_show_them(run_dir):
    r = invoke("batch", run_dir / "m.jsonl", "--engine", "dsp", "-o", run_dir / "out", "-q", "--review")
    assert r.exit_code == 2 and "is not a usable id" in r.stderr


@pytest.fixture(scope="module")
def page(run_dir) -> Path:
    m = run_dir / "m.jsonl"
    rows = [json.loads(line) for line in m.read_text().splitlines()]
    rows[-1]["id"] = "short"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = invoke("batch", m, "--engine", "dsp", "-o", run_dir / "out", "-q", "--review")
    assert r.exit_code == 1, r.stderr  # the short clip cannot be measured for match_input
    page = run_dir / "out" / "review.html"
    assert r.stdout.split() == [str(run_dir / "out" / "report.json")] and page.is_file()  # stdout: the report's path
    return page


def test_every_task_has_its_players_pictures_and_message(page):
    parsed = _Page()
    text = page.read_text()
    parsed.feed(text)
    by_status = {}
    for row in parsed.rows:
        by_status.setdefault(row["status"], []).append(row)
    assert {k: len(v) for k, v in by_status.items()} == {"skipped": 3, "failed": 1}
    for row in by_status["skipped"]:  # done by the first run: input and output, both heard and seen
        assert len(row["audio"]) == 2 and len(row["img"]) == 2
    failed = by_status["failed"][0]
    assert len(failed["audio"]) == 1  # the input only
    assert "LoudnessError: match_input: the input audio: 0.25 s is too short to measure loudness" in failed["text"]
    assert "fast <b>&.mp3" in "".join(r["text"] for r in parsed.rows)  # shown as text, not markup
    for url in parsed.urls:  # relative links to files that exist: no server, no network
        assert not re.match(r"^[a-z]+:", url), url
        assert (page.parent / unquote(url)).is_file(), url
    assert "http://" not in text and "https://" not in text


def test_spectrograms_are_made_once(page, run_dir):
    pictures = {p: p.stat().st_mtime_ns for p in (page.parent / review.FILES).glob("*.png")}
    assert len(pictures) == 6  # narration, calm, fast, noisy, clean, the short clip
    r = invoke("review", run_dir / "out")
    assert r.exit_code == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in (page.parent / review.FILES).glob("*.png")} == pictures


def test_review_refuses_what_is_not_its_own(tmp_path, run_dir):
    out = tmp_path / "out"
    shutil.copytree(run_dir / "out", out)
    (out / "review.html").write_text("<html>my notes</html>")
    r = invoke("review", out)
    assert r.exit_code == 2
    assert f"error: --review: {out}/review.html exists and is not an editx review page" in r.stderr
    assert (out / "review.html").read_text() == "<html>my notes</html>"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("review", empty)
    assert r.exit_code == 2 and f"error: {empty}/report.json: no editx report here" in r.stderr


@needs_chromium
def test_the_page_in_a_real_browser(page):
    with chromium_page(1500, 900) as (tab, errors):
        tab.on("request", lambda req: errors.append(f"network: {req.url}")
               if not req.url.startswith("file://") else None)
        tab.goto(page.as_uri())
        rows = tab.locator("#tasks tbody tr")
        assert rows.count() == 4
        assert tab.locator("#shown").inner_text() == "4 of 4 shown"
        tab.wait_for_function("document.querySelectorAll('span.player').length === 0")
        assert tab.locator("audio.out").count() == 3  # a player for every output, made as rows show
        # the output of a chained edit plays: the browser loads it through its relative link
        seconds = tab.evaluate("""() => new Promise((ok, fail) => {
            const row = Array.from(document.querySelectorAll("#tasks tbody tr"))
                .find(r => r.cells[0].textContent === "fast");
            const a = row.querySelector("audio.out");  // "fast <b>&.mp3": an odd name, an mp3
            a.addEventListener("loadedmetadata", () => ok(a.duration));
            a.addEventListener("error", () => fail("cannot load " + a.src));
            a.preload = "metadata"; a.load();
        })""")
        assert seconds > 1.0
        pictures = tab.evaluate("""() => Promise.all(Array.from(document.images).map(i => {
            i.loading = "eager";
            return i.decode().then(() => i.naturalWidth, () => 0); }))""")
        assert len(pictures) == 7 and all(0 < w <= review.SPEC_WIDTH for w in pictures)  # all decode
        tab.screenshot(path=str(ARTIFACTS / "review.png"), full_page=True)
        tab.check("#f-failed")
        assert tab.locator("#tasks tbody tr:visible").count() == 1
        assert "0.25 s is too short" in tab.locator("#tasks tbody tr:visible").inner_text()
        tab.screenshot(path=str(ARTIFACTS / "review-failed.png"))
        tab.uncheck("#f-failed")
        tab.fill("#f-text", "speed")
        assert tab.locator("#tasks tbody tr:visible td").first.inner_text() == "fast"
        tab.fill("#f-text", "")
        header = tab.locator("th", has_text="id")
        header.click()
        ids = tab.locator("#tasks tbody tr td:first-child").all_inner_texts()
        assert ids == sorted(ids, key=str.lower)
        header.click()
        assert tab.locator("#tasks tbody tr td:first-child").all_inner_texts() == ids[::-1]
    assert errors == []
    assert (ARTIFACTS / "review.png").stat().st_size > 10_000
    assert os.access(ARTIFACTS / "review-failed.png", os.R_OK)


def test_a_skipped_task_keeps_what_its_run_measured(run_dir):
    tasks = {t["id"]: t for t in json.loads((run_dir / "out" / "report.json").read_text())["tasks"]}
    clean = tasks["clean"]
    assert clean["status"] == "skipped"
    assert clean["loudness_after"] == pytest.approx(-16, abs=0.5) and clean["input_seconds"] > 3
    assert {"read", "deliver", "write"} <= set(clean["stages"])


@pytest.fixture(scope="module")
def checked_page(tmp_path_factory, real_whisper) -> Path:
    """A dsp run with --qa heard by a real Whisper: a pass, a fail, one with nothing to score it
    against, and a near-silent input."""
    work = tmp_path_factory.mktemp("review-qa")
    hush = np.random.default_rng(0).standard_normal(48000) * 1e-5  # a quiet room, 100 dB under full scale
    sf.write(work / "silence.wav", hush.astype(np.float32), 24000)
    said = "I didn't keep every voice clip consistent, from the first take to the last."
    rows = [
        {"id": "heard", "task": "edit", "input_audio": str(CLIPS / "narration.wav"), "edit_type": "speed",
         "edit_info": "faster", "audio_text": said},
        {"id": "misheard", "task": "edit", "input_audio": str(CLIPS / "narration.wav"), "edit_type": "speed",
         "edit_info": "slower", "audio_text": "Something else entirely was said in this recording."},
        {"id": "unscored", "task": "edit", "input_audio": str(CLIPS / "pauses.wav"), "edit_type": "vad"},
        {"id": "silent", "task": "edit", "input_audio": str(work / "silence.wav"), "edit_type": "speed",
         "edit_info": "faster"},
    ]
    m = work / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = invoke("batch", m, "--engine", "dsp", "-o", work / "out", "-q", "--qa", "--review",
               "--whisper-model", real_whisper)
    assert r.exit_code == 0, r.stderr
    return work / "out" / "review.html"


def test_the_qa_column_says_pass_or_fail_at_a_glance(checked_page):
    parsed = _Page()
    parsed.feed(checked_page.read_text())
    marks = {row["text"].split()[0]: row["text"] for row in parsed.rows}
    assert "\u2713 pass" in marks["heard"] and "wer 0." in marks["heard"]
    assert "\u2717 fail" in marks["misheard"] and "\u2717 fail" in marks["silent"]
    assert "\u2013 not scored" in marks["unscored"]
    assert 'title="nearly silent' in checked_page.read_text()  # the reason, on hover
    assert "heard_by" not in "".join(marks.values())  # the raw keys only on hover


def test_silence_is_drawn_dark(checked_page):
    report = json.loads((checked_page.parent / "report.json").read_text())
    silent = next(t for t in report["tasks"] if t["id"] == "silent")
    assert review._mel_image(silent["output"]).max() <= 1
    speech = review._mel_image(str(CLIPS / "narration.wav"))
    assert np.percentile(speech, 90) > review.LEVELS / 2  # speech is bright against full scale


@needs_chromium
def test_the_table_fits_a_1280_pixel_window(checked_page):
    with chromium_page(1280, 800) as (tab, errors):
        tab.goto(checked_page.as_uri())
        assert tab.evaluate("document.documentElement.scrollWidth") <= 1280
        assert tab.locator("th:visible", has_text="LUFS").count() == 1
        assert tab.locator("th:visible", has_text="QA").count() == 1
        assert tab.locator("th:visible", has_text="seed").count() == 0
        tab.screenshot(path=str(ARTIFACTS / "review-1280.png"), full_page=True)
        tab.check("#f-more")
        assert tab.locator("th:visible", has_text="seed").count() == 1
    assert errors == []
