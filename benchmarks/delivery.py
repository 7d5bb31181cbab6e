"""Delivery and review costs, side by side in one run.

1. Per output: soundfile encoding 16-bit WAV alone vs. what editx does for each form
   (WAV, FLAC, MP3, Ogg Vorbis, Opus, each with its loudness and true peak measured for
   the report; a loudness-normalised WAV) on the same 10 s of speech, in ms and as a ratio.
2. The review page for 1,000 tasks (2,000 distinct clips): the first build (every
   spectrogram made), a rebuild (all made already), the page's size, and, where Chromium
   is installed, the time the page takes to load and to sort and filter its 1,000 rows.

    python benchmarks/delivery.py [--tasks 1000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editx_cli import audio, deliver, report, review  # noqa: E402
from editx_cli.report import Outcome  # noqa: E402


def per_output(repeat: int = 5) -> None:
    x, sr = audio.load(ROOT / "manifests" / "clips" / "pauses.wav")
    x = np.tile(x, 2)[: 10 * sr]
    forms = [("wav", ".wav", deliver.Delivery()), ("flac", ".flac", deliver.Delivery()),
             ("mp3 128k", ".mp3", deliver.Delivery(sample_rate=44100, bitrate=128)),
             ("ogg vorbis", ".ogg", deliver.Delivery()), ("opus 48k", ".opus", deliver.Delivery(bitrate=48)),
             ("wav -16 LUFS", ".wav", deliver.Delivery(loudness=-16.0))]
    deliver.render(x, sr, ".wav", deliver.Delivery(loudness=-16.0))  # imports and filter design, once
    times = {}
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        data = audio.encode(x, sr, ".wav")
        runs.append(time.perf_counter() - t0)
    times["bare wav encode"] = (min(runs), len(data), sr)  # no measuring: soundfile alone
    for name, suffix, d in forms:
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            data, rate, _ = deliver.render(x, sr, suffix, d)
            runs.append(time.perf_counter() - t0)
        times[name] = (min(runs), len(data), rate)
    base = times["bare wav encode"][0]
    print(f"one output: 10 s of speech at {sr} Hz, best of {repeat}")
    for name, (t, size, rate) in times.items():
        print(f"  {name:16s}: {t * 1000:7.1f} ms  (x{t / base:6.1f})  {size / 1024:7.1f} KiB at {rate} Hz")


def review_page(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="editx-review-bench-"))
    try:
        rng = np.random.default_rng(0)
        sr = 24000
        outcomes = []
        for i in range(n):
            seconds = 2.0 + (i % 7)
            t = np.arange(int(seconds * sr)) / sr
            tone = 0.2 * np.sin(2 * np.pi * (150 + i % 97) * t * (1 + 0.1 * np.sin(t * (i % 5 + 1))))
            src, out = work / "in" / f"t{i}.wav", work / "out" / f"t{i}.wav"
            for path, y in ((src, tone), (out, tone * (0.5 + 0.5 * np.abs(np.sin(t * 3)))
                                          + 0.01 * rng.standard_normal(len(t)))):
                path.parent.mkdir(exist_ok=True)
                sf.write(path, y.astype(np.float32), sr)
            failed = i % 50 == 0
            outcomes.append(Outcome(id=f"t{i}", task="edit", edit_type="emotion", edit_info="happy",
                                    status="failed" if failed else "done", output=str(out), input=str(src),
                                    input_seconds=seconds, output_seconds=None if failed else seconds, seed=i,
                                    intensity=1.0, iterations=1, stages={"generate": 0.5 + (i % 13) / 10},
                                    cache_hits=i % 2, cache_misses=1 - i % 2,
                                    error="RuntimeError: out of memory" if failed else ""))
        data = report.build(outcomes, wall_seconds=60.0, load_seconds=5.0, engine="stepaudio", device="cuda:0",
                            cache_dir=None, versions={}, started_at=time.time())
        report_path = work / "out" / "report.json"
        t0 = time.perf_counter()
        page = review.build(data, report_path)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        review.build(data, report_path)
        again = time.perf_counter() - t0
        pictures = list((page.parent / review.FILES).glob("*.png"))
        kib = sum(p.stat().st_size for p in pictures) / 1024
        print(f"review page, {n} tasks ({len(pictures)} spectrograms, {kib / len(pictures):.1f} KiB each)")
        print(f"  first build      : {first:7.2f} s  ({first / n * 1000:6.1f} ms/task)")
        print(f"  rebuild          : {again:7.2f} s  ({again / n * 1000:6.1f} ms/task, x{first / again:.0f} faster)")
        print(f"  review.html      : {page.stat().st_size / 1024:7.0f} KiB")
        _browser(page, n)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _browser(page: Path, n: int) -> None:
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        print("  in a browser     : skipped (needs Chromium and playwright)")
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1500, "height": 900})
        loads, sorts, filters = [], [], []
        for _ in range(3):
            t0 = time.perf_counter()
            tab.goto(page.as_uri(), wait_until="load")
            loads.append(time.perf_counter() - t0)
            sorts.append(tab.evaluate("""() => { const t = performance.now();
                document.querySelectorAll("th")[9].click(); return performance.now() - t; }""") / 1000)
            filters.append(tab.evaluate("""() => { const t = performance.now();
                const b = document.getElementById("f-failed"); b.checked = true;
                b.dispatchEvent(new Event("change")); return performance.now() - t; }""") / 1000)
        shown = tab.locator("#shown").inner_text()
        images = tab.evaluate("() => Array.from(document.images).filter(i => i.complete && i.naturalWidth).length")
        browser.close()
    print(f"  load in Chromium : {statistics.median(loads) * 1000:7.0f} ms  (median of 3; {images} of {2 * n} "
          "pictures loaded: the rest wait until scrolled to)")
    print(f"  sort {n} rows  : {statistics.median(sorts) * 1000:7.0f} ms")
    print(f"  filter failed    : {statistics.median(filters) * 1000:7.0f} ms  ({shown})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    args = ap.parse_args()
    per_output()
    review_page(args.tasks)


if __name__ == "__main__":
    main()
