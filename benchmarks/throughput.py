"""Decoding throughput of the stepaudio engine, side by side in one process.

1. Sequential, one task at a time (the reference's way) vs. `editx batch` at
   batch sizes 1, 4, 8, 16 over the same tasks: tasks/s and the ratio.
2. Prompt preparation (codes, mel, speaker embedding) on a cache miss vs. a hit.
3. `--workers 2` vs. 1 (whole batch runs, worker processes included).

Without model folders it builds the tiny checkpoints (CPU figures of the
pipeline's shape, not of the real model); with them, the same table for the
real model on whatever device is there:

    python benchmarks/throughput.py [--tasks 16]
    python benchmarks/throughput.py --model-dir M --tokenizer-dir T --editx-src S --gpu 0
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editx_cli import audio, batch, engine, manifest  # noqa: E402
from editx_cli.cache import FeatureCache, NullCache  # noqa: E402

TEXTS = {
    "narration.wav": "Batch editing keeps every voice clip consistent, from the first take to the last.",
    "pauses.wav": "First, open the file. Then wait for the signal. Finally, save your work.",
    "noisy.wav": "The weather report says rain is coming later tonight.",
}
EMOTIONS = ["happy", "sad", "angry", "surprised", "fear", "excited", "coldness", "humour"]


def rows(n: int) -> list[dict]:
    clips = sorted(TEXTS)
    out = []
    for i in range(n):
        clip = clips[i % len(clips)]
        out.append({"id": f"t{i:02d}", "task": "edit", "input_audio": str(ROOT / "manifests" / "clips" / clip),
                    "audio_text": TEXTS[clip], "edit_type": "emotion", "edit_info": EMOTIONS[i % len(EMOTIONS)],
                    "seed": i})
    return out


def sequential(eng, tasks) -> float:
    t0 = time.perf_counter()
    for t in tasks:
        x, sr = audio.load(t.input_audio)
        engine.collect(eng.stream, [engine.Request(
            kind="edit", audio=x, sr=sr, audio_text=t.audio_text, edit_type=t.edit_type, edit_info=t.edit_info,
            intensity=t.intensity, seed=t.seed, audio_digest=audio.samples_digest(x, sr), path=str(t.input_audio))])
    return time.perf_counter() - t0


def batched(eng, tasks, size: int, out: Path) -> float:
    for t in tasks:
        t.output = out / t.output.name
    planned = batch.plan(tasks, eng.fingerprint(), overwrite=True)
    eng.max_batch = size
    t0 = time.perf_counter()
    outcomes, _ = batch.run(planned, eng, batch.RunOptions(progress=False, batch_size=size))
    assert all(o.status == "done" for o in outcomes), [o.error for o in outcomes if o.error]
    return time.perf_counter() - t0


def prompt_preparation(eng, cache_dir: Path) -> tuple[float, float]:
    eng.cache = FeatureCache(cache_dir)
    clips = [audio.load(ROOT / "manifests" / "clips" / c) for c in sorted(TEXTS)]
    times = []
    for _ in range(2):  # first pass misses, second hits
        t0 = time.perf_counter()
        for x, sr in clips:
            eng.prompt_features(x, sr, audio.samples_digest(x, sr))
        times.append(time.perf_counter() - t0)
    eng.cache.close()
    return times[0], times[1]


def workers_run(args, model: list[str], manifest_path: Path, out: Path, workers: int) -> float:
    cmd = [str(Path(sys.executable).with_name("editx")), "batch", str(manifest_path), *model, "-o", str(out),
           "--workers", str(workers), "--overwrite", "-q", "--no-cache"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--sizes", default="1,4,8,16")
    ap.add_argument("--model-dir")
    ap.add_argument("--tokenizer-dir")
    ap.add_argument("--editx-src")
    ap.add_argument("--gpu", type=int)
    ap.add_argument("--skip-workers", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="editx-bench-"))
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    if not args.model_dir:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_checkpoints.py"), str(tmp / "tiny")],
                       check=True, capture_output=True)
        args.model_dir = str(tmp / "tiny" / "Step-Audio-EditX")
        args.tokenizer_dir = str(tmp / "tiny" / "Step-Audio-Tokenizer")
        args.editx_src = str(tmp / "tiny" / "editx-src")
        print("model: tiny checkpoints (CPU shape figures, not the real model)")
    config = {"model_dir": args.model_dir, "tokenizer_dir": args.tokenizer_dir, "editx_src": args.editx_src,
              "gpu": args.gpu}
    cls = engine.get("stepaudio")
    data = rows(args.tasks)
    tasks = manifest.validate(data, source="bench", base_dir=ROOT, out_dir=tmp / "out", engine=cls)
    eng = cls(config, NullCache())
    t0 = time.perf_counter()
    eng.load()
    print(f"engine loaded on {eng.device} in {time.perf_counter() - t0:.1f} s; {args.tasks} emotion edits")
    eng.cache = FeatureCache(tmp / "warm")  # decode figures below exclude prompt preparation
    sequential(eng, tasks[:2])  # warm-up

    base = sequential(eng, tasks)
    print(f"\n{'decoding':<28}{'seconds':>9}{'tasks/s':>9}{'vs sequential':>15}")
    print(f"{'sequential, one at a time':<28}{base:9.2f}{len(tasks) / base:9.2f}{1.0:14.2f}x")
    for size in map(int, args.sizes.split(",")):
        secs = batched(eng, tasks, size, tmp / f"b{size}")
        print(f"{'editx batch, size ' + str(size):<28}{secs:9.2f}{len(tasks) / secs:9.2f}{base / secs:14.2f}x")
    print(f"decode figures: {eng.run_info()['decode']}")

    miss, hit = prompt_preparation(eng, tmp / "prep-cache")
    print(f"\nprompt preparation, {len(TEXTS)} clips: miss {miss:.3f} s, hit {hit:.4f} s ({miss / hit:.0f}x)")

    if not args.skip_workers:
        import csv

        m = tmp / "m.csv"
        with open(m, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
        model = ["--engine", "stepaudio", "--model-dir", args.model_dir, "--tokenizer-dir", args.tokenizer_dir,
                 "--editx-src", args.editx_src]
        one = workers_run(args, model, m, tmp / "w1", 1)
        two = workers_run(args, model, m, tmp / "w2", 2)
        print(f"\nwhole batch run (process start, model loads, tokenizer): --workers 1 {one:.2f} s, "
              f"--workers 2 {two:.2f} s ({one / two:.2f}x)")


if __name__ == "__main__":
    main()
