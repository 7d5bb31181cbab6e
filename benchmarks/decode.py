"""Decode-loop throughput of the native Step1: the continuous-batching decoder vs. the old loop.

Builds Step1 from a config with random weights (no checkpoint), so it needs
nothing but torch:

    python benchmarks/decode.py                                # tiny shape on the CPU
    python benchmarks/decode.py --shape released --device cuda # the 3B shape, bf16, CUDA graphs
    python benchmarks/decode.py --shape released --device cuda --no-cuda-graphs --json

Per batch size: ms a step and tokens/s of each loop (a step's time is the
difference between a long and a short run over the same prompts, so prefill is
left out), the ratio between them, and the ratio to the memory floor (the bytes
of weights read once a step over a measured device-copy bandwidth). On the CPU,
also torch ops and host syncs per decode step, counted with torch.profiler:
proxies for a GPU's launch and sync costs that a tiny model's wall time hides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editx_cli.engine.stepaudio.decoder import SYNC_LABEL, Decoder, NativeRunner  # noqa: E402
from editx_cli.engine.stepaudio.generate import EOS, PAD, Job, Sampling, draw, guide, mask_repetition  # noqa: E402
from editx_cli.engine.stepaudio.step1 import Step1Config, Step1ForCausalLM, alibi_slopes  # noqa: E402

SHAPES = {
    "released": dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=48, num_attention_groups=4,
                     num_hidden_layers=32, vocab_size=74752),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_attention_groups=2,
                 num_hidden_layers=2, vocab_size=74752),
}
PROMPTS = {"released": (400, 800), "tiny": (100, 200)}


def build(shape: str, device: str, dtype: torch.dtype) -> Step1ForCausalLM:
    cfg = Step1Config(**SHAPES[shape])
    with torch.device("meta"):
        model = Step1ForCausalLM(cfg)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        model.lm_head.weight[EOS] = 0.0  # never in the top 50: every run decodes its whole budget
    model.slopes = alibi_slopes(cfg.num_attention_heads).to(device)
    return model.to(dtype).eval()


def jobs(batch: int, shape: str, budget: int) -> list[Job]:
    lo, hi = PROMPTS[shape]
    out = []
    for i in range(batch):
        g = torch.Generator().manual_seed(i)
        n = lo + (hi - lo) * i // max(1, batch - 1)
        out.append(Job([1, 4] + torch.randint(65536, 70656, (n - 2,), generator=g).tolist(), seed=i, budget=budget))
    return out


def legacy_run(jobs: list[Job], model: Step1ForCausalLM, device: str) -> None:
    """The loop this decoder replaced: a growing cache concatenated every step and reordered
    when rows end, the bias rebuilt every step, one row at a time sampled on the host."""
    rows = [(j, False) for j in range(len(jobs))]
    seqs = [jobs[j].prompt for j, _ in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s)
        mask[r, width - len(s):] = True
    ids, mask = ids.to(device), mask.to(device)
    gens = [torch.Generator(device=device).manual_seed(int(job.seed)) for job in jobs]
    histories = [list(job.prompt) for job in jobs]
    logits, past = model(ids, mask, None)
    logits = logits[:, -1]
    while rows:
        step: dict[int, int] = {}
        for r, (j, _) in enumerate(rows):
            lg = guide(logits[r], logits[r], 1.0)
            token = draw(mask_repetition(lg, histories[j]), gens[j])
            jobs[j].tokens.append(token)
            histories[j].append(token)
            step[j] = token
        keep = [r for r, (j, _) in enumerate(rows) if step[j] != EOS and len(jobs[j].tokens) < jobs[j].budget]
        if not keep:
            break
        rows = [rows[r] for r in keep]
        index = torch.tensor(keep, device=device)
        past = [(k[index], v[index]) for k, v in past]
        mask = torch.cat([mask[index], torch.ones((len(keep), 1), dtype=torch.bool, device=device)], dim=1)
        new = torch.tensor([[step[j]] for j, _ in rows], device=device)
        logits, past = model(new, mask, past)
        logits = logits[:, -1]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def copy_bandwidth(device: str) -> float:
    """Bytes a second moved by a large device-to-device copy (read + write)."""
    n = (1 << 28) if device.startswith("cuda") else (1 << 25)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src), device) for _ in range(5))
    return 2 * n / best


def weight_bytes(model: Step1ForCausalLM) -> int:
    # the embedding is gathered, not read whole, on a step
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)


def per_step(run, batch: int, shape: str, budget: int, short: int, device: str) -> float:
    """Seconds a decode step: (long run - short run) / (budget - short), prefill cancelling out."""
    run(jobs(batch, shape, short))  # warm-up (allocations, graph capture paths)
    t_short = min(timed(lambda: run(jobs(batch, shape, short)), device) for _ in range(2))
    t_long = min(timed(lambda: run(jobs(batch, shape, budget)), device) for _ in range(2))
    return (t_long - t_short) / (budget - short)


def profile_counts(run, batch: int, shape: str, budget: int, short: int) -> tuple[float, float]:
    """Torch ops and host syncs per decode step (CPU profiler, same difference method)."""
    from torch.profiler import ProfilerActivity, profile

    def counts(n: int) -> tuple[int, int]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(jobs(batch, shape, n))
        ops = syncs = 0
        for e in prof.key_averages():
            if e.key.startswith("aten::"):
                ops += e.count
            if e.key in ("aten::_local_scalar_dense", SYNC_LABEL):
                syncs += e.count
        return ops, syncs

    (o1, s1), (o2, s2) = counts(short), counts(budget)
    return (o2 - o1) / (budget - short), (s2 - s1) / (budget - short)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 400 on CUDA, 96 on the CPU")
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--no-baseline", action="store_true", help="skip the old loop")
    ap.add_argument("--baseline-up-to", type=int, default=64, help="largest batch to run the old loop at")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    budget = args.new_tokens or (400 if cuda else 96)
    short = 16
    model = build(args.shape, args.device, dtype)
    floor = weight_bytes(model) / copy_bandwidth(args.device)
    rows = []
    with torch.inference_mode():
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            def new(js, b=b):
                Decoder(NativeRunner(model, 8192), b, Sampling(), args.device, cuda_graphs=not args.no_cuda_graphs
                        ).run(js)

            def old(js):
                legacy_run(js, model, args.device)

            row = {"batch": b, "new_ms": 1000 * per_step(new, b, args.shape, budget, short, args.device)}
            row["new_tokens_s"] = b / row["new_ms"] * 1000
            row["floor_ratio"] = row["new_ms"] / 1000 / floor
            if not args.no_baseline and b <= args.baseline_up_to:
                row["old_ms"] = 1000 * per_step(old, b, args.shape, budget, short, args.device)
                row["old_tokens_s"] = b / row["old_ms"] * 1000
                row["speedup"] = row["old_ms"] / row["new_ms"]
            if not cuda:
                row["new_ops"], row["new_syncs"] = profile_counts(new, b, args.shape, budget // 2, short)
                if "old_ms" in row:
                    row["old_ops"], row["old_syncs"] = profile_counts(old, b, args.shape, budget // 2, short)
            rows.append(row)
            if not args.json:
                print(_line(row), flush=True) if len(rows) > 1 else print(_header(cuda) + "\n" + _line(row), flush=True)
    meta = {"shape": args.shape, "device": args.device, "dtype": str(dtype).replace("torch.", ""),
            "new_tokens": budget, "cuda_graphs": cuda and not args.no_cuda_graphs,
            "floor_ms": round(floor * 1000, 3), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if cuda else None}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=1))
    else:
        print(f"\n{meta}")
        one = next((r for r in rows if r["batch"] == 1), None)
        eight = next((r for r in rows if r["batch"] == 8), None)
        if one and eight:
            print(f"batch 8 / batch 1 tokens/s: {eight['new_tokens_s'] / one['new_tokens_s']:.2f}x", end="")
            if "new_ops" in one:
                print(f"; ops a step, batch 8 / batch 1: {eight['new_ops'] / one['new_ops']:.2f}x", end="")
            print()


def _header(cuda: bool) -> str:
    cols = "batch | new ms/step | new tok/s | x floor | old ms/step | old tok/s | speed-up"
    return cols + ("" if cuda else " | new ops/step | new syncs/step | old ops/step | old syncs/step")


def _line(r: dict) -> str:
    def f(key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    out = (f"{r['batch']:>5} | {f('new_ms', '11.2f')} | {f('new_tokens_s', '9.0f')} | {f('floor_ratio', '7.1f')} | "
           f"{f('old_ms', '11.2f')} | {f('old_tokens_s', '9.0f')} | {f('speedup', '7.1f')}x")
    if "new_ops" in r:
        out += (f" | {f('new_ops', '12.0f')} | {f('new_syncs', '14.3f')} | {f('old_ops', '12.0f')} | "
                f"{f('old_syncs', '14.2f')}")
    return out


if __name__ == "__main__":
    main()
