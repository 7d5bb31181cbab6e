"""Everything a lent GPU should be asked, in one run of a few minutes, as one table.

    bash benchmarks/gpu_check.sh          # or: python benchmarks/gpu_check.py

1. The decode table at the released shape with random weights (no checkpoint):
   the `edit30` workload at batch 1 to 64 (benchmarks/decode.py), against the
   goals (batch 1 >= 285 task tokens/s, must-have 200; batch 64 >= 8,000, must-have
   6,500; batch 1 within 1.6x the measured memory floor).
2. The CLI end to end on tiny checkpoints on the GPU with --deterministic: the
   outputs of batch 8 equal those of batch 1, byte for byte.
3. `serve`'s idle release gives the device memory back to its level before the
   load (tests/test_serve.py, which runs only where CUDA is).
4. The vocoder's figures at the released shape (benchmarks/vocoder.py).
Each part that cannot run here (a package the image lacks) says why in its row.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TEXT = "Batch editing keeps every voice clip consistent, from the first take to the last."


def run(args: list, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def tail(p: subprocess.CompletedProcess) -> str:
    lines = (p.stderr or p.stdout).strip().splitlines()
    return lines[-1][:160] if lines else f"exit {p.returncode}"


def decode_rows() -> list[tuple[str, str, str]]:
    p = run([PY, "benchmarks/decode.py", "--shape", "released", "--workload", "edit30",
             "--batch-sizes", "1,8,32,64", "--json"], timeout=300)
    if p.returncode:
        return [("decode, released, edit30", "not run", tail(p))]
    data = json.loads(p.stdout)
    out = [("device", data["meta"]["gpu"] or "?", f"torch {data['meta']['torch']}, "
            f"copy {data['meta']['copy_bandwidth_gb_s']} GB/s")]
    goals = {1: (285, 200), 64: (8000, 6500)}
    for r in data["rows"]:
        goal, must = goals.get(r["batch"], (None, None))
        verdict = "" if goal is None else ("goal met" if r["task_tokens_per_s"] >= goal else
                                           "must-have met" if r["task_tokens_per_s"] >= must else "BELOW must-have")
        if r["batch"] == 1:
            verdict += f"; {r['x_floor']:.2f}x floor ({'ok' if r['x_floor'] <= 1.6 else 'over 1.6x'})"
        out.append((f"decode b{r['batch']}", f"{r['task_tokens_per_s']:.0f} task tok/s, {r['ms_per_step']:.2f} ms/step",
                    f"floor {r['floor_ms_per_step']:.2f} ms; occupancy {r['occupancy']:.2f}; keys {r['keys']}; "
                    f"{len(r['graphs'])} graphs, {r['captures']} captures {r['capture_s']:.1f} s; "
                    f"peak {r['peak_memory_bytes'] / 2**30:.1f} GiB; {verdict}"))
    return out


def deterministic_row() -> tuple[str, str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        p = run([PY, "scripts/make_tiny_checkpoints.py", tmp / "tiny"], timeout=300)
        if p.returncode:
            return ("CLI --deterministic b8 = b1", "not run", tail(p))
        clips = ROOT / "manifests" / "clips"
        rows = [["id", "task", "prompt_audio", "prompt_text", "text", "input_audio", "audio_text", "edit_type",
                 "edit_info", "intensity"]]
        for i, (info, w) in enumerate([("happy", ""), ("sad", "1.5"), ("angry", ""), ("fear", "0.5")]):
            rows.append([f"e{i}", "edit", "", "", "", clips / "narration.wav", TEXT, "emotion", info, w])
        rows.append(["c", "clone", clips / "narration.wav", TEXT, "Another voice line.", "", "", "", "", ""])
        with open(tmp / "m.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
        seconds = {}
        for size in ("1", "8"):
            t0 = time.perf_counter()
            p = run([PY, "-m", "editx_cli.main", "batch", tmp / "m.csv", "--engine", "stepaudio",
                     "--model-dir", tmp / "tiny" / "Step-Audio-EditX", "--tokenizer-dir",
                     tmp / "tiny" / "Step-Audio-Tokenizer", "--gpu", "0", "--deterministic", "--batch-size", size,
                     "-o", tmp / f"b{size}", "-q"], timeout=300)
            if p.returncode:
                return ("CLI --deterministic b8 = b1", "not run", tail(p))
            seconds[size] = time.perf_counter() - t0
        same = all((tmp / "b1" / f"{r[0]}.wav").read_bytes() == (tmp / "b8" / f"{r[0]}.wav").read_bytes()
                   for r in rows[1:])
        info = json.loads((tmp / "b8" / "report.json").read_text())["run"]["engine_info"]
        return ("CLI --deterministic b8 = b1", "equal" if same else "DIFFERENT",
                f"{len(rows) - 1} tasks on {info.get('device')}; b1 {seconds['1']:.1f} s, b8 {seconds['8']:.1f} s")


def idle_release_row() -> tuple[str, str, str]:
    p = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_serve.py", "-k",
             "idle_release_gives_the_device_memory_back"], timeout=300)
    verdict = "passed" if p.returncode == 0 and " passed" in p.stdout else "FAILED" if p.returncode == 1 else "not run"
    return ("serve idle release: memory back to before the load", verdict, tail(p) if verdict != "passed" else "")


def vocoder_rows() -> list[tuple[str, str, str]]:
    p = run([PY, "benchmarks/vocoder.py", "--batch-sizes", "1,8,32", "--seconds", "10", "--no-official"],
            timeout=240)
    if p.returncode:
        return [("vocoder, released", "not run", tail(p))]
    return [("vocoder", line.strip(), "") for line in p.stdout.splitlines()[1:] if line.strip()]


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (it measures a GPU; benchmarks/decode.py runs on the CPU)")
    rows = decode_rows() + [deterministic_row(), idle_release_row()] + vocoder_rows()
    print("| check | result | detail |\n|---|---|---|")
    for name, result, detail in rows:
        print(f"| {name} | {result} | {detail} |")


if __name__ == "__main__":
    main()
