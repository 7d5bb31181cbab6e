"""`editx serve` under load vs. `editx batch` on the same work, side by side in one run.

A live server on 127.0.0.1 takes N edit requests at concurrency 1, 8 and 32 (requests per
second, p50 and p95 latency, and how many requests the engine held at once); then `editx batch`
runs the same N tasks from a manifest (tasks per second, the model's load time left
out of both). With the model, a long text (about 50 s of speech, cut in pieces) is then
asked for whole and with `stream: true`: the seconds to its first audio and to its end.
By default on the tiny checkpoints the tests build (CPU), so the figures show the server's
own cost and its batching, not a GPU's speed; pass --model-dir and --tokenizer-dir for
real weights.

    python benchmarks/serve.py [--requests 32] [--engine stepaudio|dsp]
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
EDITX = str(Path(sys.executable).with_name("editx"))
CLIP = ROOT / "manifests" / "clips" / "narration.wav"
TEXT = "The quick brown fox jumps over the lazy dog."
STORY = " ".join(f"Sentence number {i} of a story that goes on." for i in range(30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--engine", default="stepaudio", choices=["stepaudio", "dsp"])
    ap.add_argument("--model-dir")
    ap.add_argument("--tokenizer-dir")
    ap.add_argument("--editx-src", help="with --vocoder official, the official code's checkout")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="editx-serve-bench-"))
    model = []
    if args.engine == "stepaudio":
        if args.model_dir:
            folders = (args.model_dir, args.tokenizer_dir)
        else:
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_checkpoints.py"), str(work / "tiny")],
                           check=True, capture_output=True)
            folders = (work / "tiny" / "Step-Audio-EditX", work / "tiny" / "Step-Audio-Tokenizer")
        model = ["--model-dir", str(folders[0]), "--tokenizer-dir", str(folders[1]),
                 *(["--editx-src", args.editx_src] if args.editx_src else [])]
    form = ({"edit_type": "emotion", "edit_info": "happy", "audio_text": TEXT} if args.engine == "stepaudio"
            else {"edit_type": "speed", "edit_info": "faster"})
    n = args.requests
    print(f"{n} edit requests ({form['edit_type']} {form['edit_info']}, {CLIP.name}) on {args.engine}")
    server_rates = serve(work, model, args.engine, form, n)
    batch_rate = batch(work, model, args.engine, form, n)
    print(f"  editx batch      : {batch_rate:7.2f} tasks/s  (model load left out; --batch-size 16)")
    for c, rate in server_rates.items():
        print(f"  serve vs batch   : concurrency {c:2d} at {rate / batch_rate:5.2f}x the batch's throughput")


def serve(work: Path, model: list[str], engine: str, form: dict, n: int) -> dict[int, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([EDITX, "serve", "--engine", engine, *model, "--port", str(port), "--max-batch", "16",
                             "--max-queue", "256", "--cache-dir", str(work / "cache"),
                             "--voices-dir", str(work / "voices")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    data = CLIP.read_bytes()

    def one(_=None) -> tuple[float, int]:
        """Seconds to the answer, and how many requests the engine held at once with this one."""
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/audio/edits", files={"file": ("in.wav", data)}, data=form, timeout=600)
        r.raise_for_status()
        return time.perf_counter() - t0, int(r.headers["x-editx-batch"])

    rates = {}
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        one()  # loads the model and warms the cache: neither is what is measured
        for c in (1, 8, 32):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                answers = list(pool.map(one, range(n)))
            wall = time.perf_counter() - t0
            latencies, together = sorted(a[0] for a in answers), [a[1] for a in answers]
            rates[c] = n / wall
            p95 = latencies[min(len(latencies) - 1, int(round(0.95 * len(latencies))) - 1)]
            print(f"  serve, conc. {c:2d} : {n / wall:7.2f} req/s  p50 {statistics.median(latencies) * 1000:7.0f} ms  "
                  f"p95 {p95 * 1000:7.0f} ms  held together: median {statistics.median(together):g}, "
                  f"most {max(together)}")
        if engine == "stepaudio":
            first_audio(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rates


def first_audio(url: str) -> None:
    """A long text answered whole, then streamed: seconds to the first byte of audio and to the end."""
    voice = {"prompt_audio_base64": base64.b64encode(CLIP.read_bytes()).decode(), "prompt_text": TEXT}
    body = {"input": STORY, "response_format": "wav", "step_audio": voice}
    t0 = time.perf_counter()
    whole = httpx.post(url + "/v1/audio/speech", json=body, timeout=600)
    whole.raise_for_status()
    whole_s = time.perf_counter() - t0
    t0, first = time.perf_counter(), None
    with httpx.stream("POST", url + "/v1/audio/speech", json={**body, "stream": True}, timeout=600) as r:
        r.raise_for_status()
        for _ in r.iter_bytes():
            first = first or time.perf_counter() - t0
    end = time.perf_counter() - t0
    seconds = (len(whole.content) - 44) / 2 / int(whole.headers["x-editx-sample-rate"])
    print(f"  long text ({len(STORY)} chars, {whole.headers['x-editx-chunks']} pieces, {seconds:.0f} s of audio): "
          f"whole {whole_s:6.2f} s; stream: first audio {first:6.2f} s ({first / whole_s:4.2f}x), end {end:6.2f} s")


def batch(work: Path, model: list[str], engine: str, form: dict, n: int) -> float:
    manifest = work / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"t{i}", "task": "edit", "input_audio": str(CLIP),
                                            **form}) + "\n" for i in range(n)))
    subprocess.run([EDITX, "batch", str(manifest), "--engine", engine, *model, "--out-dir", str(work / "warm"),
                    "--cache-dir", str(work / "cache"), "-q"], check=True, capture_output=True)  # the same warm cache
    out = work / "out"
    subprocess.run([EDITX, "batch", str(manifest), "--engine", engine, *model, "--out-dir", str(out),
                    "--cache-dir", str(work / "cache"), "--batch-size", "16", "-q"], check=True, capture_output=True)
    run = json.loads((out / "report.json").read_text())["run"]
    return n / (run["wall_seconds"] - run["engine_load_seconds"])


if __name__ == "__main__":
    main()
