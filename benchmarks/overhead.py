"""The batch layer's own cost, side by side in one run.

1. Per-task overhead: `editx batch` (validation, planning, fingerprints, atomic
   writes with records, report) vs. the same engine called directly in a loop
   (load, run, soundfile write) over the same tasks.
2. Start-up: `editx --help` vs. bare `python -c pass`.
3. Scheduling: the scheduler's cost per task for a plan of 1,000 tasks vs. one
   of 20,000 (the ratio stays near 1 when no step scans the whole plan).

    python benchmarks/overhead.py [--tasks 40] [--engine dsp]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editx_cli import audio, batch, engine, manifest  # noqa: E402
from editx_cli.cache import NullCache  # noqa: E402
from editx_cli.resume import PlannedTask  # noqa: E402
from editx_cli.schedule import Scheduler, outcome_of  # noqa: E402
from editx_cli.tasks import Task  # noqa: E402


def tasks_rows(n: int) -> list[dict]:
    clip = str(ROOT / "manifests" / "clips" / "narration.wav")
    infos = ["faster", "slower", "more faster", "more slower"]
    return [{"id": f"t{i}", "task": "edit", "input_audio": clip, "edit_type": "speed",
             "edit_info": infos[i % 4], "intensity": 1.0 + 0.1 * (i % 5)} for i in range(n)]


def direct(rows: list[dict], out: Path, name: str) -> float:
    eng = engine.get(name)({}, NullCache())
    t0 = time.perf_counter()
    eng.load()
    for r in rows:
        x, sr = audio.load(r["input_audio"])
        (res,) = engine.collect(eng.stream, [engine.Request(kind="edit", audio=x, sr=sr, edit_type=r["edit_type"],
                                                            edit_info=r["edit_info"], intensity=r["intensity"])])
        sf.write(out / f"{r['id']}.wav", res.audio, res.sr, subtype="PCM_16")
    return time.perf_counter() - t0


def batched(rows: list[dict], out: Path, name: str) -> float:
    t0 = time.perf_counter()
    tasks = manifest.validate(rows, source="bench", base_dir=ROOT, out_dir=out, engine=engine.get(name))
    config = batch.RunConfig(engine=name, use_cache=False, report=out / "report.json",
                             options=batch.RunOptions(progress=False))
    report, _ = batch.execute(tasks, config)
    assert report["run"]["done"] == len(rows)
    return time.perf_counter() - t0


def scheduling(n: int) -> float:
    """Seconds to hand out and finish `n` tasks one at a time, half of them chained."""
    plan = []
    for i in range(n):
        upstream = f"t{i - 1}" if i % 2 else None
        t = Task(id=f"t{i}", task="edit", source="bench", row=i + 1, output=Path(f"t{i}.wav"), edit_type="vad",
                 input_task=upstream)
        plan.append(PlannedTask(t, str(i), Path("in.wav"), False))
    sched = Scheduler(plan)
    t0 = time.perf_counter()
    while not sched.finished:
        for p in sched.take(1):
            sched.complete([outcome_of(p.task, "done")])
    return time.perf_counter() - t0


def startup(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--engine", default="dsp")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = tasks_rows(args.tasks)
    d_times, b_times = [], []
    for _ in range(args.repeat):  # interleaved, so both see the same machine state
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            d_times.append(direct(rows, Path(a), args.engine))
            b_times.append(batched(rows, Path(b), args.engine))
    d, b = min(d_times), min(b_times)
    print(f"{args.tasks} {args.engine} tasks, best of {args.repeat}")
    print(f"  engine called directly : {d:7.3f} s  ({d / args.tasks * 1000:6.1f} ms/task)")
    print(f"  editx batch            : {b:7.3f} s  ({b / args.tasks * 1000:6.1f} ms/task)")
    print(f"  batch-layer overhead   : {(b - d) / args.tasks * 1000:6.2f} ms/task  (ratio {b / d:.3f})")

    small, large = 1_000, 20_000
    per_small, per_large = scheduling(small) / small, scheduling(large) / large
    print("scheduling, one task at a time")
    print(f"  {small:6d} tasks          : {per_small * 1e6:6.1f} µs/task")
    print(f"  {large:6d} tasks          : {per_large * 1e6:6.1f} µs/task  (ratio {per_large / per_small:.2f})")

    editx = str(Path(sys.executable).with_name("editx"))
    bare = startup([sys.executable, "-c", "pass"], 10)
    helps = startup([editx, "--help"], 10)
    print("start-up, median of 10")
    print(f"  python -c pass         : {bare * 1000:6.1f} ms")
    print(f"  editx --help           : {helps * 1000:6.1f} ms  (+{(helps - bare) * 1000:.1f} ms over bare Python)")


if __name__ == "__main__":
    main()
