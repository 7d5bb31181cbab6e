"""The vocoder's throughput and precision, side by side in one run: editx's own token2wav
(flows batched, HiFT per task) against the official `stepvocoder` (one task a call, when
EDITX_SRC names a checkout), at the released shape with random weights (every parameter
drawn), on the same tasks and noise.

Reported: seconds of audio made per second of wall time at each batch size, per task;
the ratio native / official; and the error of bfloat16 and float16 against float32 (SNR in dB
of the waveform, over the same tasks).

    python benchmarks/vocoder.py [--batch-sizes 1,8] [--seconds 2] [--prompt-seconds 2] [--device cuda]

`--json` prints instead one row a batch size and attention mode with the torch ops a call
(the CPU profiler): `ops_per_call` counts the ops the vocoder's Python calls (those inside
an op are not counted again), `work_ops_per_call` the innermost ops that compute or copy
(kernels, on a GPU). `items` is the CPU's attention (an item's result to the bit its own),
`masked` the GPU's (one call a block for all items), counted here on the CPU.

`--tasks N` measures instead what a run does: N tasks vocoded in the engine's groups
(`--group`, the engine's VOCODE_BATCH), warm (one group first, untimed), in each of
`--dtypes`, one JSON line a dtype (`--shape tiny`: the tiny checkpoints' vocoder, for a
rehearsal on the CPU).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from make_tiny_checkpoints import randomise, weight_normed  # noqa: E402

from editx_cli.engine.stepaudio import VOCODE_BATCH  # noqa: E402
from editx_cli.engine.stepaudio.flow import Flow, FlowShape  # noqa: E402
from editx_cli.engine.stepaudio.hift import HiFT, HiftShape  # noqa: E402
from editx_cli.engine.stepaudio.token2wav import Token2Wav, VocodeJob, read_config  # noqa: E402
from editx_cli.engine.stepaudio.vocoder import reshape  # noqa: E402

MEL_CONF = {"num_mels": 80, "n_fft": 1920, "hop_size": 480, "win_size": 1920, "sampling_rate": 24000, "fmin": 0,
            "fmax": 8000}


def jobs(count: int, seconds: float, prompt_seconds: float) -> list[VocodeJob]:
    rng = np.random.default_rng(0)

    def tokens(groups: int) -> list[int]:
        return [int(rng.integers(0, 1024)) if i % 5 < 2 else int(rng.integers(1024, 5120)) for i in range(5 * groups)]

    groups, prompt_groups = max(1, round(seconds / 0.12)), max(1, round(prompt_seconds / 0.12))
    return [VocodeJob(tokens(groups), tokens(prompt_groups),
                      (rng.standard_normal((int(prompt_seconds * 50), 80)) * 2 - 5).astype(np.float32),
                      rng.standard_normal(192).astype(np.float32), seed) for seed in range(count)]


def timed(fn, repeat: int = 1) -> float:
    best = math.inf
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def official_vocoder(flow: Flow, hift: HiFT, device: str):
    """The official modules with the same weights, called a task at a time as the reference
    does, their noise seeded from the task as editx seeds it."""
    import test_vocoder_native as conformance

    off_flow = conformance.official_flow(flow.shape)
    off_flow.load_state_dict(flow.state_dict())
    off_hift = conformance.official_hift(hift.shape)
    off_hift.load_state_dict(weight_normed(hift.state_dict()))
    off_flow, off_hift = off_flow.to(device).eval(), off_hift.to(device).eval()

    def run(job: VocodeJob) -> np.ndarray:
        prompt, gen = reshape(job.prompt_tokens).to(device), reshape(job.tokens).to(device)
        mel = torch.from_numpy(job.prompt_mel)[None].to(torch.bfloat16).float()
        mel = torch.nn.functional.interpolate(mel.transpose(1, 2), size=2 * prompt.shape[1],
                                              mode="nearest").transpose(1, 2).to(device)
        speaker = torch.from_numpy(job.embedding)[None].to(torch.bfloat16).float().to(device)
        g = torch.Generator().manual_seed(job.seed)
        noise = torch.randn(1, 80, 2 * (prompt.shape[1] + gen.shape[1]), generator=g)
        with torch.inference_mode():
            off_flow.decoder.rand_noise[:, :, :noise.shape[2]] = noise.to(device)
            torch.set_rng_state(g.get_state())

            def length(t):
                return torch.tensor([t.shape[1]], device=device)

            out = off_flow.inference(gen, length(gen), prompt, length(prompt), mel, length(mel), speaker, 10)
            out = out[0] if isinstance(out, tuple) else out
            wave, _ = off_hift.inference(out)
        return wave.float().cpu().numpy().reshape(-1)

    return run


def snr(reference: np.ndarray, other: np.ndarray) -> float:
    noise = np.sum((reference - other) ** 2)
    return float("inf") if noise == 0 else 10 * math.log10(np.sum(reference**2) / noise)


def shapes(name: str) -> tuple[FlowShape, HiftShape]:
    if name == "released":
        return FlowShape(), HiftShape()
    import tempfile

    from make_tiny_checkpoints import COSYVOICE_YAML

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cosyvoice.yaml"
        path.write_text(COSYVOICE_YAML)
        config = read_config(path)
    return config.flow, config.hift


def engine_rows(args) -> None:
    """`args.tasks` tasks in groups of `args.group`, as the engine vocodes them, per dtype."""
    import json

    flow_shape, hift_shape = shapes(args.shape)
    work = jobs(args.tasks, args.seconds, args.prompt_seconds)
    for dtype in args.dtypes.split(","):
        torch.manual_seed(0)
        flow, hift = Flow(flow_shape), HiFT(hift_shape)
        randomise(flow, 1, scale=0.5)
        randomise(hift, 2, scale=0.5)
        vocoder = Token2Wav(flow, hift, MEL_CONF, args.device, dtype)
        vocoder(work[: args.group])  # first-call costs: allocations, kernel selection
        groups = [work[i:i + args.group] for i in range(0, len(work), args.group)]
        seconds = timed(lambda v=vocoder, g=groups: [v(group) for group in g])
        audio = args.tasks * args.seconds
        peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
        print(json.dumps({"row": {"dtype": dtype, "shape": args.shape, "tasks": args.tasks, "group": args.group,
                                  "task_seconds": args.seconds, "prompt_seconds": args.prompt_seconds,
                                  "seconds": seconds, "x_realtime": audio / seconds, "peak_memory_bytes": peak}}),
              flush=True)
        del vocoder, flow, hift
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


# Ops that only describe a tensor, beyond those decode.py names (the vocoder's own views)
VOCODER_METADATA_OPS = {f"aten::{name}" for name in (
    "numpy_T", "flatten", "view_as", "expand_as", "unfold", "detach_")}


def op_counts(fn) -> tuple[int, int]:
    """(ops the Python code called, innermost ops that compute or copy) during fn()."""
    from decode import METADATA_OPS, inside_an_op  # this folder's decode benchmark: what counts as a work op
    from torch.profiler import ProfilerActivity, profile

    metadata = METADATA_OPS | VOCODER_METADATA_OPS
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    calls = work = 0
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    has_child = {id(e.cpu_parent) for e in events if e.cpu_parent is not None}
    for e in events:
        calls += not inside_an_op(e)
        work += id(e) not in has_child and e.name not in metadata
    return calls, work


def ops_rows(args) -> None:
    """One JSON row a batch size and attention mode: ops a call, released shape, random weights."""
    import json

    from editx_cli.engine.stepaudio.flow import ITEMS, MASKED

    torch.manual_seed(0)
    flow, hift = Flow(FlowShape()), HiFT(HiftShape())
    randomise(flow, 1, scale=0.5)
    randomise(hift, 2, scale=0.5)
    native = Token2Wav(flow, hift, MEL_CONF, args.device)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    work = jobs(max(sizes), args.seconds, args.prompt_seconds)
    native([work[0]])  # first-call costs (the flow's conditions, tables) are not a call's
    for mode in (ITEMS, MASKED):
        flow.attention = mode
        for b in sizes:
            calls, kernels = op_counts(lambda b=b: native(work[:b]))
            print(json.dumps({"row": {"batch": b, "attention": mode, "ops_per_call": calls,
                                      "work_ops_per_call": kernels, "task_seconds": args.seconds,
                                      "device": args.device}}), flush=True)
    flow.attention = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--seconds", type=float, default=2.0, help="audio per task")
    ap.add_argument("--prompt-seconds", type=float, default=2.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-official", action="store_true")
    ap.add_argument("--json", action="store_true", help="ops a call, a row a batch size and attention mode")
    ap.add_argument("--tasks", type=int, default=None, help="the run's view: this many tasks in groups")
    ap.add_argument("--group", type=int, default=VOCODE_BATCH, help="tasks a vocoder call (with --tasks)")
    ap.add_argument("--dtypes", default="bfloat16,float32", help="with --tasks")
    ap.add_argument("--shape", choices=("released", "tiny"), default="released", help="with --tasks")
    args = ap.parse_args()
    if args.tasks:
        if args.device.startswith("cuda"):  # parity is stated for fp32 without TF32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        engine_rows(args)
        return
    if args.json:
        ops_rows(args)
        return
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.manual_seed(0)
    flow, hift = Flow(FlowShape()), HiFT(HiftShape())
    randomise(flow, 1, scale=0.5)
    randomise(hift, 2, scale=0.5)
    native = Token2Wav(flow, hift, MEL_CONF, args.device)
    src = os.environ.get("EDITX_SRC")
    official = None
    if src and not args.no_official and (Path(src) / "stepvocoder").is_dir():
        sys.path.insert(0, src)
        os.environ["EDITX_SRC"] = src
        official = official_vocoder(flow, hift, args.device)
    print(f"vocoder, released shape, random weights, {args.device}; {args.seconds:g} s of audio a task, "
          f"{args.prompt_seconds:g} s prompt; threads {torch.get_num_threads()}")
    print(f"  {'batch':>5} {'native s':>9} {'audio s/s':>10} {'official s':>11} {'audio s/s':>10} {'ratio':>6}")
    work = jobs(max(sizes), args.seconds, args.prompt_seconds)
    native([work[0]])  # first-call costs (allocations, kernels) are not the vocoder's
    for b in sizes:
        audio = b * args.seconds
        t_native = timed(lambda b=b: native(work[:b]))
        line = f"  {b:>5} {t_native:9.2f} {audio / t_native:10.2f}"
        if official is not None:
            t_official = timed(lambda b=b: [official(j) for j in work[:b]])
            line += f" {t_official:11.2f} {audio / t_official:10.2f} {t_official / t_native:5.2f}x"
        print(line)
    if official is not None:
        a, b = native(work[:2]), [official(j) for j in work[:2]]
        diff = max(np.abs(x - y).max() for x, y in zip(a, b, strict=True))
        print(f"  native vs official, same seeds: max |diff| {diff:.2e}")
    reference = native(work[:4])
    for dtype in ("bfloat16", "float16"):
        half = Token2Wav(flow, hift, MEL_CONF, args.device, dtype)
        t = timed(lambda half=half: half(work[:4]))
        got = half(work[:4])
        # back to float32 for the next comparison
        flow.float(), hift.float()
        ratio = np.mean([snr(r, g) for r, g in zip(reference, got, strict=True)])
        print(f"  {dtype:9s}: SNR against float32 {ratio:5.1f} dB, "
              f"{4 * args.seconds / t:.2f} audio s/s at batch 4")


if __name__ == "__main__":
    main()
