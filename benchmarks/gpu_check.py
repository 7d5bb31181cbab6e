"""Everything a lent GPU should be asked, in one run of at most 7 minutes, a row at a time.

    bash benchmarks/gpu_check.sh                          # on the GPU machine (installs the wheelhouse)
    bash benchmarks/gpu_check.sh --device cpu --shape tiny  # the rehearsal (make gpu-rehearsal)

Each part runs in a process of its own under its own deadline; each row is printed the moment
it is measured (a Markdown table on stdout, and a JSON line in $OUT/gpu_check.jsonl when OUT
is set). A part that fails or runs out of time prints its rows with the reason, and the parts
after it still run. The parts, most telling first:

1. decode at the released shape, random weights (benchmarks/decode.py): `edit30` at batch 1
   (unguided: one slot; the row says the slots used), 8 and 64: ms a step, task tokens a
   second, and the ratio to the memory floor measured in the same run. Goals on an H100:
   batch 1 >= 285 task tokens/s and <= 1.6x the floor; batch 64 >= 12,000.
2. the vocoder (benchmarks/vocoder.py): 32 tasks of 10 s with 10 s prompts in the engine's
   groups, warm, in bf16 and fp32. Goal: 32 x 10 s in under 2 s.
3. the whole CLI on tiny checkpoints, 32 clone tasks, `--gpu 0`: wall, decode's share,
   the vocoder's overlap with decoding. Goal: >= 80x real time (on the released model).
4. `--deterministic`: batch 8's outputs equal batch 1's, byte for byte.
5. serve's idle release: device memory back to its level before the load.
6. prefill of one W = 8,192 prompt: peak memory above the weights and the cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TEXT = "Batch editing keeps every voice clip consistent, from the first take to the last."
CLIP = ROOT / "manifests" / "clips" / "narration.wav"

Row = tuple[str, str, str, dict]  # name, result, detail, data


# -- the table ---------------------------------------------------------------------------------


class Table:
    """Rows printed as they come, and kept as JSON lines under $OUT."""

    def __init__(self, out: str | None) -> None:
        self.path = Path(out) / "gpu_check.jsonl" if out else None
        print("| check | result | detail |\n|---|---|---|", flush=True)

    def add(self, part: str, row: Row) -> None:
        name, result, detail, data = row
        print(f"| {name} | {result} | {detail} |", flush=True)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"part": part, "check": name, "result": result, "detail": detail,
                                    "data": data}) + "\n")


def run_part(table: Table, part: str, argv: list, deadline: float, rows: Callable[[dict], list[Row]],
             expected: list[str]) -> str:
    """One part's process: each JSON line it prints becomes rows at once; at its deadline it
    is killed, and the rows it had not reached say why. Returns why it failed ("": it did not)."""
    proc = subprocess.Popen([str(a) for a in argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    err: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    seen: set[str] = set()
    end, reason = time.monotonic() + deadline, ""
    while True:
        try:
            line = lines.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            reason = f"out of time after {deadline:.0f} s"
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if line is None:
            break
        try:
            got = json.loads(line)
        except ValueError:
            continue  # a library's chatter
        if not isinstance(got, dict):
            continue
        try:
            made = rows(got)
        except Exception as e:  # a row that cannot be read is itself a row
            made = [(f"{part}: unreadable", "ERROR", f"{type(e).__name__}: {e}", got)]
        for row in made:
            seen.add(row[0])
            table.add(part, row)
    code = proc.wait()
    if not reason and code:
        last = [x.strip() for x in err if x.strip()]
        reason = f"exit {code}: {last[-1][:200] if last else 'no message'}"
    for name in expected:
        if name not in seen:
            table.add(part, (name, "not run", reason or "the part ended without this row", {}))
    return reason


# -- rows of each part ---------------------------------------------------------------------------

GOALS = {1: 285, 64: 12000}  # task tokens a second at the released shape on an H100


def decode_rows(got: dict) -> list[Row]:
    if "prefill" in got:
        p = got["prefill"]
        return [(f"prefill W={p['prefill_width']}", f"{p['peak_above_weights_and_cache'] / 2**30:.2f} GiB peak",
                 f"{p['seconds']:.2f} s; a one-shot W x W bias would take {p['one_shot_bias_bytes'] / 2**30:.1f} GiB",
                 p)]
    if "meta" in got:
        m = got["meta"]
        return [("device", m["gpu"] or m["device"], f"torch {m['torch']}, {m['dtype']}, shape {m['shape']}, "
                 f"copy {m.get('copy_bandwidth_gb_s', '?')} GB/s", m)]
    r = got["row"]
    goal = GOALS.get(r["batch"]) if r.get("shape") == "released" else None  # the goals are the released shape's
    verdict = "" if goal is None else f"; goal {goal}: {'met' if r['task_tokens_per_s'] >= goal else 'NOT met'}"
    if goal and r["batch"] == 1:
        verdict += f"; {r['x_floor']:.2f}x floor (goal <= 1.6)"
    ops = f"; {r['ops_per_step']:.0f} ops, {r['syncs_per_step']:.3f} syncs a step" if "ops_per_step" in r else ""
    if "kernels_per_step" in r:
        ops += f"; {r['kernels_per_step']:.0f} kernels a step"
    kind = " flex" if r["attention"].startswith("flex") else ""
    return [(f"decode b{r['batch']}{kind}", f"{r['task_tokens_per_s']:.0f} task tok/s, {r['ms_per_step']:.2f} ms/step",
             f"{r['slots']} slot{'' if r['slots'] == 1 else 's'}; floor {r['floor_ms_per_step']:.2f} ms "
             f"({r['x_floor']:.2f}x); occupancy {r['occupancy']:.2f}; {r['tasks']} tasks; "
             f"{len(r['graphs'])} graphs, {r['captures']} captures "
             f"{r['capture_s']:.1f} s; peak {r['peak_memory_bytes'] / 2**30:.2f} GiB{ops}{verdict}", r)]


def vocoder_rows(got: dict) -> list[Row]:
    r = got["row"]
    audio = r["tasks"] * r["task_seconds"]
    goal = f"; goal 32 x 10 s under 2 s: {'met' if r['seconds'] < 2 else 'NOT met'}" \
        if (r["tasks"], r["task_seconds"], r["shape"]) == (32, 10, "released") else ""
    peak = f"; peak {r['peak_memory_bytes'] / 2**30:.2f} GiB" if r.get("peak_memory_bytes") else ""
    return [(f"vocoder {r['dtype']}", f"{r['seconds']:.2f} s for {r['tasks']} x {r['task_seconds']:g} s",
             f"{audio / r['seconds']:.0f}x real time; prompts {r['prompt_seconds']:g} s; groups of {r['group']}; "
             f"shape {r['shape']}{peak}{goal}", r)]


def passthrough_rows(got: dict) -> list[Row]:
    r = got["row"]
    return [(r["check"], r["result"], r["detail"], r.get("data", {}))]


# -- the parts that run in this script's own child process ---------------------------------------


def emit(check: str, result: str, detail: str, data: dict | None = None) -> None:
    print(json.dumps({"row": {"check": check, "result": result, "detail": detail, "data": data or {}}}), flush=True)


def tiny_args(tiny: Path, device: str) -> list:
    gpu = ["--gpu", "0"] if device.startswith("cuda") else []
    return ["--engine", "stepaudio", "--model-dir", tiny / "Step-Audio-EditX", "--tokenizer-dir",
            tiny / "Step-Audio-Tokenizer", *gpu]


def batch(manifest: Path, tiny: Path, device: str, out: Path, *extra) -> dict:
    p = subprocess.run([str(a) for a in [PY, "-m", "editx_cli.main", "batch", manifest, *tiny_args(tiny, device),
                                         "-o", out, "-q", "--cache-dir", out / ".cache", *extra]],
                       cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        lines = (p.stderr or p.stdout).strip().splitlines()
        raise RuntimeError(lines[-1][:200] if lines else f"exit {p.returncode}")
    return json.loads((out / "report.json").read_text())


def write_manifest(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["id", "task", "prompt_audio", "prompt_text", "text", "input_audio", "audio_text",
                                  "edit_type", "edit_info", "intensity"], *rows])
    return path


def part_cli(tiny: Path, device: str, tasks: int) -> None:
    """The whole CLI, many clone tasks: where a run's time goes."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [[f"c{i}", "clone", CLIP, TEXT, f"Voice line number {i}, spoken in the cloned voice.", "", "", "", "",
                 ""] for i in range(tasks)]
        report = batch(write_manifest(tmp / "m.csv", rows), tiny, device, tmp / "out")
    run = report["run"]
    info = run["engine_info"]
    decode, vocode = info.get("decode", {}), info.get("vocode", {})
    work = run["wall_seconds"] - run["engine_load_seconds"]
    share = decode.get("decode_seconds", 0) / work if work > 0 else 0
    overlap = vocode.get("vocode_overlap_seconds", 0) / vocode["vocode_seconds"] if vocode.get("vocode_seconds") else 0
    x_real = run["output_audio_seconds"] / run["wall_seconds"] if run["wall_seconds"] else 0
    emit(f"CLI {tasks} clone tasks", f"{run['wall_seconds']:.1f} s wall ({run['done']}/{run['tasks']} done)",
         f"load {run['engine_load_seconds']:.1f} s; decode {share:.0%} of the rest; vocoder "
         f"{vocode.get('vocode_seconds', 0):.1f} s, {overlap:.0%} beside decoding, {vocode.get('vocoder_calls', 0)} "
         f"calls; {x_real:.1f}x real time (tiny checkpoints); slots {decode.get('batch_sizes')}; "
         f"{decode.get('graph_captures', 0)} captures, {decode.get('graph_capture_failures', 0)} failed",
         {"run": {k: v for k, v in run.items() if k != "versions"}})


def part_deterministic(tiny: Path, device: str) -> None:
    """--deterministic: batch 8's outputs equal batch 1's, byte for byte."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [[f"e{i}", "edit", "", "", "", CLIP, TEXT, "emotion", info, w]
                for i, (info, w) in enumerate([("happy", ""), ("sad", "1.5"), ("angry", ""), ("fear", "0.5")])]
        rows.append(["c", "clone", CLIP, TEXT, "Another voice line.", "", "", "", "", ""])
        manifest = write_manifest(tmp / "m.csv", rows)
        seconds = {}
        for size in ("1", "8"):
            t0 = time.perf_counter()
            report = batch(manifest, tiny, device, tmp / f"b{size}", "--deterministic", "--batch-size", size)
            seconds[size] = time.perf_counter() - t0
        differ = [r[0] for r in rows if (tmp / "b1" / f"{r[0]}.wav").read_bytes() != (tmp / "b8" / f"{r[0]}.wav")
                  .read_bytes()]
    emit("CLI --deterministic b8 = b1", "equal" if not differ else f"DIFFERENT: {', '.join(differ)}",
         f"{len(rows)} tasks on {report['run']['device']}; b1 {seconds['1']:.1f} s, b8 {seconds['8']:.1f} s; "
         f"slots {report['run']['engine_info'].get('decode', {}).get('batch_sizes')}")


def part_idle(tiny: Path, device: str) -> None:
    """serve's engine service: the engine is released when idle and its device memory with it."""
    import gc
    import weakref

    import torch

    from editx_cli import audio
    from editx_cli import engine as engines
    from editx_cli.cache import NullCache
    from editx_cli.engine import Request
    from editx_cli.service import Service

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    before = torch.cuda.memory_allocated() if cuda else 0
    made = []
    config = {"model_dir": str(tiny / "Step-Audio-EditX"), "tokenizer_dir": str(tiny / "Step-Audio-Tokenizer"),
              "batch_size": 2, **({"gpu": 0} if cuda else {})}

    def make():
        made.append(engines.get("stepaudio")(config, NullCache()))
        return made[-1]

    service = Service(make, max_batch=2, idle_unload=0.5)
    try:
        x, sr = audio.load(CLIP)
        service.submit(Request(kind="edit", audio=x, sr=sr, audio_text=TEXT, edit_type="emotion", edit_info="happy",
                               audio_digest=audio.samples_digest(x, sr))).result(timeout=120)
        held = torch.cuda.memory_allocated() if cuda else 0
        engine = weakref.ref(made.pop())
        deadline = time.monotonic() + 15
        while (service.loaded or engine() is not None) and time.monotonic() < deadline:
            time.sleep(0.1)
            gc.collect()
        if cuda:
            torch.cuda.synchronize()
        after = torch.cuda.memory_allocated() if cuda else 0
        released = not service.loaded and engine() is None
    finally:
        service.close()
    ok = released and after == before
    emit("serve idle release", "memory back" if ok else "NOT released",
         f"allocated before load {before / 2**20:.1f} MiB, loaded {held / 2**20:.1f} MiB, after release "
         f"{after / 2**20:.1f} MiB; engine collected: {released}" + ("" if cuda else " (CPU: no device memory)"),
         {"before": before, "held": held, "after": after, "released": released})


# -- the run -------------------------------------------------------------------------------------


def parts(args, tiny: Path) -> Iterator[tuple[str, list, float, Callable, list[str]]]:
    """Each part: its name, its command, its deadline, how its lines become rows, the rows it owes.
    `--quick`: every part through the same code with the least work (the suite's rehearsal)."""
    gpu = args.device.startswith("cuda")
    dev = ["--device", args.device]
    child = [PY, __file__, "--device", args.device, "--tiny", tiny]
    sizes = [1] if args.quick else [1, 8, 64] if gpu else [1, 8, 16]  # 16: the CPU's share of 64's path
    yield ("decode", [PY, "benchmarks/decode.py", "--shape", args.shape, *dev, "--workload", "edit30",
                      "--batch-sizes", ",".join(map(str, sizes)), "--queue", "2" if gpu else "1", "--jsonl"],
           160, decode_rows, ["device", *(f"decode b{b}" for b in sizes)])
    tasks, seconds = (32, 10) if gpu else (2, 1) if args.quick else (8, 2)
    yield ("vocoder", [PY, "benchmarks/vocoder.py", "--tasks", tasks, "--seconds", seconds, "--prompt-seconds",
                       seconds, "--shape", args.shape, "--dtypes", "bfloat16,float32", *dev],
           55 if gpu else 150, vocoder_rows, ["vocoder bfloat16", "vocoder float32"])
    yield ("tiny", [PY, "scripts/make_tiny_checkpoints.py", tiny], 60,
           lambda got: [], [])
    clones = 32 if gpu else 2 if args.quick else 8
    yield ("cli", [*child, "--part", "cli", "--tasks", clones], 60 if gpu else 120, passthrough_rows,
           [f"CLI {clones} clone tasks"])
    yield ("deterministic", [*child, "--part", "deterministic"], 50 if gpu else 150, passthrough_rows,
           ["CLI --deterministic b8 = b1"])
    yield ("idle", [*child, "--part", "idle"], 35 if gpu else 60, passthrough_rows, ["serve idle release"])
    width = 8192 if gpu else 512 if args.quick else 2048
    yield ("prefill", [PY, "benchmarks/decode.py", "--shape", args.shape, *dev, "--prefill", width, "--jsonl"], 25,
           decode_rows, [f"prefill W={width}"])
    # last, on what time is left, on a GPU only: the same decode through FlexAttention, to choose
    # between them (on the CPU its compiler needs setuptools' C++ builder, which the image's
    # import closure is not known to hold; tests/test_step1.py checks its arithmetic there)
    if not gpu:
        return
    flex = [1, 64]
    yield ("flex", [PY, "benchmarks/decode.py", "--shape", args.shape, *dev, "--workload", "edit30", "--attention",
                    "flex", "--batch-sizes", ",".join(map(str, flex)), "--queue", "2", "--jsonl"],
           90, lambda got: [] if "meta" in got else decode_rows(got), [f"decode b{b} flex" for b in flex])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="default: cuda (the check measures a GPU)")
    ap.add_argument("--shape", choices=("released", "tiny"), default="released")
    ap.add_argument("--budget", type=float, default=400, help="seconds for all the parts together")
    ap.add_argument("--quick", action="store_true", help="each part with the least work (same code paths)")
    ap.add_argument("--part", choices=("cli", "deterministic", "idle"), help=argparse.SUPPRESS)
    ap.add_argument("--tiny", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tasks", type=int, default=32, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.part:
        device = args.device or "cuda"
        {"cli": lambda: part_cli(args.tiny, device, args.tasks),
         "deterministic": lambda: part_deterministic(args.tiny, device),
         "idle": lambda: part_idle(args.tiny, device)}[args.part]()
        return
    if args.device is None:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device here (the rehearsal on the CPU: --device cpu --shape tiny)")
        args.device = "cuda"
    table = Table(os.environ.get("OUT"))
    end = time.monotonic() + args.budget
    with tempfile.TemporaryDirectory() as tmp:
        tiny_ok = True
        for part, argv, deadline, rows, expected in parts(args, Path(tmp) / "tiny"):
            left = end - time.monotonic()
            if left < 5:
                for name in expected:
                    table.add(part, (name, "not run", "the check's time was spent", {}))
                continue
            if part in ("cli", "deterministic", "idle") and not tiny_ok:
                for name in expected:
                    table.add(part, (name, "not run", "the tiny checkpoints could not be built", {}))
                continue
            t0 = time.monotonic()
            failed = run_part(table, part, argv, min(deadline, left), rows, expected)
            if part == "tiny":
                tiny_ok = not failed
                table.add(part, ("tiny checkpoints", "FAILED" if failed else "built",
                                 failed or f"{time.monotonic() - t0:.1f} s", {}))


if __name__ == "__main__":
    main()
