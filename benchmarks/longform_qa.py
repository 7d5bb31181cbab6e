"""The cost of --qa per task, and long-form throughput (seconds of audio edited per second),
side by side in one run.

1. The same clone tasks with and without --qa (Whisper decodes each wave's outputs in one
   batch on the device; CAM++ on each output): seconds per task and the ratio; the report's
   own `qa` stage per task.
2. A ~75 s recording edited whole (cut into chunks at pauses, all chunks decoded together)
   vs. its chunks as separate tasks in one batch (same audio, transcripts and seeds, so the
   same decoding): audio seconds edited per wall second, and the ratio, which is what
   cutting, aligning and joining cost.
3. Peak memory of the dsp engine's denoise of a 1 and a 10 min file: what a long file costs.

Without model folders it builds the tiny checkpoints (CPU figures of the pipeline's shape,
not of the real model):

    python benchmarks/longform_qa.py [--tasks 8]
    python benchmarks/longform_qa.py --model-dir M --tokenizer-dir T --editx-src S --whisper-model W --gpu 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT / "manifests" / "clips"
EDITX = str(Path(sys.executable).with_name("editx"))
SR = 24000


def run(args: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run([EDITX, *map(str, args)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        sys.exit(r.stderr)
    return wall, r


def manifest(path: Path, header: list[str], rows: list[list]) -> Path:
    pd.DataFrame(rows, columns=header).to_csv(path, index=False)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--model-dir")
    ap.add_argument("--tokenizer-dir")
    ap.add_argument("--editx-src")
    ap.add_argument("--whisper-model")
    ap.add_argument("--gpu")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="editx-bench-"))
    if a.model_dir:
        model = ["--model-dir", a.model_dir, "--tokenizer-dir", a.tokenizer_dir, "--editx-src", a.editx_src]
        whisper = a.whisper_model
    else:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_checkpoints.py"), str(tmp / "tiny")],
                       check=True, capture_output=True)
        t = tmp / "tiny"
        model = ["--model-dir", t / "Step-Audio-EditX", "--tokenizer-dir", t / "Step-Audio-Tokenizer",
                 "--editx-src", t / "editx-src"]
        whisper = t / "whisper-tiny.pt"
    common = ["--engine", "stepaudio", *model, "--cache-dir", tmp / "cache", "-q",
              *(["--gpu", a.gpu] if a.gpu else [])]

    # 1. --qa per task
    rows = [[f"c{i}", "clone", CLIPS / "narration.wav", "The quick brown fox jumps over the lazy dog.",
             f"Sentence {i}: the weather report says rain is coming later tonight.", i, f"c{i}.wav"]
            for i in range(a.tasks)]
    m = manifest(tmp / "clone.csv", ["id", "task", "prompt_audio", "prompt_text", "text", "seed", "output"], rows)
    run(["batch", m, "-o", tmp / "warm", *common])  # prompt features cached, so both runs below hit
    plain, _ = run(["batch", m, "-o", tmp / "plain", *common])
    checked, _ = run(["batch", m, "-o", tmp / "qa", *common, "--qa", "--whisper-model", whisper])
    report = json.loads((tmp / "qa" / "report.json").read_text())
    qa_stage = np.mean([t["stages"].get("qa", 0.0) for t in report["tasks"]])
    print(f"--qa, {a.tasks} clone tasks, one batch")
    print("| run | s/task | ratio |\n|---|---|---|")
    print(f"| without --qa | {plain / a.tasks:.3f} | 1.00 |")
    print(f"| with --qa | {checked / a.tasks:.3f} | {checked / plain:.2f} |")
    print(f"  the report's qa stage: {qa_stage:.3f} s per task (Whisper batch + CAM++)")

    # 2. long-form throughput
    sys.path.insert(0, str(ROOT))
    from editx_cli.audio import load

    clips = [load(CLIPS / n, SR)[0] for n in ("narration.wav", "pauses.wav", "noisy.wav")]
    pieces, i = [], 0
    while sum(len(p) for p in pieces) < 75 * SR:
        pieces += [clips[i % 3], np.zeros(int(0.7 * SR), np.float32)]
        i += 1
    y = np.concatenate(pieces)
    sf.write(tmp / "long.wav", y, SR)
    seconds = len(y) / SR
    text = "Batch editing keeps every voice clip consistent, from the first take to the last. " * 6
    header = ["id", "task", "input_audio", "audio_text", "edit_type", "edit_info", "seed", "output"]
    whole = manifest(tmp / "long.csv", header, [["long", "edit", tmp / "long.wav", text.strip(), "emotion", "happy",
                                                 0, "l.wav"]])
    run(["batch", whole, "-o", tmp / "lw", *common])  # features cached
    t_whole, _ = run(["batch", whole, "-o", tmp / "l", *common])
    task = json.loads((tmp / "l" / "report.json").read_text())["tasks"][0]
    chunks = task["info"]["chunks"]
    # The same chunks as tasks of their own (same audio, transcript and seed): the same decoding
    # work, so the ratio is what cutting, aligning and joining cost
    for c in chunks:
        sf.write(tmp / f"part{c['index']}.wav", y[round(c["start"] * SR):round(c["end"] * SR)], SR)
    split = manifest(tmp / "parts.csv", header, [[f"p{c['index']}", "edit", tmp / f"part{c['index']}.wav",
                                                  c["text"], "emotion", "happy", c["seed"], f"p{c['index']}.wav"]
                                                 for c in chunks])
    run(["batch", split, "-o", tmp / "pw", *common])
    t_split, _ = run(["batch", split, "-o", tmp / "p", *common])
    tokens = sum(c["generated_tokens"] for c in chunks)
    print(f"\nlong-form: {seconds:.1f} s of speech, emotion edit, {len(chunks)} chunks, {tokens} tokens generated")
    print("| run | wall s | audio s per s | ratio |\n|---|---|---|---|")
    print(f"| its chunks as {len(chunks)} separate tasks, one batch | {t_split:.2f} | {seconds / t_split:.2f} | 1.00 |")
    print(f"| one long task (cut, aligned, joined) | {t_whole:.2f} | {seconds / t_whole:.2f} | "
          f"{t_split / t_whole:.2f} |")
    print(f"  the long task's split and join stages: {task['stages'].get('split', 0):.3f} s, "
          f"{task['stages'].get('join', 0):.3f} s")

    # 3. memory against length: the dsp engine's denoise of a short and a long file
    print("\ndsp denoise, peak memory against length")
    print("| input | float32 samples MiB | wall s | peak RSS MiB |\n|---|---|---|---|")
    for minutes in (1, 10):
        n = int(minutes * 57 * SR)
        sf.write(tmp / f"m{minutes}.wav", np.resize(y, n), SR)
        wall, rss = peak(["edit", tmp / f"m{minutes}.wav", "--type", "denoise", "--engine", "dsp", "-q",
                          "--no-cache", "-o", tmp / f"m{minutes}-out.wav"])
        print(f"| {n / SR:.0f} s | {n * 4 / 2**20:.0f} | {wall:.1f} | {rss:.0f} |")


def peak(args: list) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one editx command in a process of its own."""
    code = ("import resource, sys\nfrom editx_cli.main import main\nsys.argv = ['editx'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return wall, int(r.stderr.strip().splitlines()[-1]) / 1024


if __name__ == "__main__":
    main()
