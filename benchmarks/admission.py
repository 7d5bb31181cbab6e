"""Rows decoding while uncached newcomers arrive: do they keep their speed?

Every slot holds a long clone task; then 4x the slots of newcomers arrive, each with audio of
its own (nothing cached: every one is tokenised, FunASR, vq06, CAM++ and mel). The newcomers'
features are made on the engine's preparation thread, and they wait for free slots; the
running rows should decode as fast as they do with no arrivals. Reported: the running rows'
own tokens a second (their tokens over the wall time from their first token to their last),
with and without the arrivals, and their ratio. On the tiny checkpoints, the CPU:

    python benchmarks/admission.py [--slots 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editx_cli import audio  # noqa: E402
from editx_cli.cache import NullCache  # noqa: E402
from editx_cli.engine import Request  # noqa: E402
from editx_cli.engine.stepaudio import StepAudioEngine  # noqa: E402
from editx_cli.engine.stepaudio.generate import EOS  # noqa: E402
from editx_cli.feed import Feed  # noqa: E402

CLIP = ROOT / "manifests" / "clips" / "narration.wav"
PROMPT_TEXT = "Batch editing keeps every voice clip consistent, from the first take to the last."
LONG = " ".join(["Every take of the long narration is read again in the same voice, line by line."] * 3)


def requests(count: int, start: int, text: str) -> list[Request]:
    """Clone requests, each with audio of its own (a different gain: another digest)."""
    x, sr = audio.load(CLIP)
    out = []
    for i in range(start, start + count):
        y = (x * (0.5 + 0.01 * i)).astype(np.float32)
        out.append(Request(kind="clone", audio=y, sr=sr, audio_text=PROMPT_TEXT, text=text, seed=i,
                           audio_digest=audio.samples_digest(y, sr), task_id=f"t{i}"))
    return out


def running_rate(engine: StepAudioEngine, slots: int, arrivals: int) -> tuple[float, int, float]:
    """The running rows' own tokens a second (their mean), how many newcomers were prepared
    while they ran, and the seconds it took to prepare them all."""
    feed = Feed(engine)
    running = requests(slots, 0, LONG)
    feed.put([(r.task_id, r) for r in running])
    newcomers = requests(arrivals, 100, "A short line.")
    if newcomers:
        time.sleep(0.5)  # the running rows are decoding by now
        feed.put([(r.task_id, r) for r in newcomers])
    results = {}
    while len(results) < len(running) + len(newcomers):
        for key, result in feed.next():
            if isinstance(result, Exception):
                raise result
            results[key] = result
    feed.close()
    rates = [results[r.task_id].info["generated_tokens"] / results[r.task_id].info["decoding_seconds"]
             for r in running]
    prepared = sum(results[r.task_id].stages["tokenize"] for r in newcomers)
    return statistics.mean(rates), len(newcomers), prepared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each case; the best is kept")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.getLogger("editx").setLevel(logging.ERROR)  # the newcomers' short budgets are meant
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_checkpoints.py"), str(tiny)], check=True,
                       capture_output=True)
        engine = StepAudioEngine({"model_dir": str(tiny / "Step-Audio-EditX"),
                                  "tokenizer_dir": str(tiny / "Step-Audio-Tokenizer"), "batch_size": args.slots},
                                 NullCache())
        engine.load()
        import torch

        with torch.no_grad():  # end-of-turn never drawn: the running rows decode their whole budgets
            engine.llm.lm_head.weight[EOS] = 0.0
        running_rate(engine, args.slots, 0)  # first-call costs: the tokenizer models, the cache
        alone = max(running_rate(engine, args.slots, 0)[0] for _ in range(args.repeat))
        best = None
        for _ in range(args.repeat):
            got = running_rate(engine, args.slots, 4 * args.slots)
            best = got if best is None or got[0] > best[0] else best
        engine.close()
    beside, arrived, prepare_s = best
    out = {"slots": args.slots, "newcomers": arrived, "newcomers_prepare_seconds": round(prepare_s, 3),
           "running_tokens_per_s_alone": round(alone, 1), "running_tokens_per_s_with_arrivals": round(beside, 1),
           "ratio": round(beside / alone, 3)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.slots} running rows: {alone:.1f} tokens/s each alone, {beside:.1f} while {arrived} uncached "
              f"newcomers arrived ({prepare_s:.2f} s of preparation): ratio {beside / alone:.3f}")


if __name__ == "__main__":
    main()
