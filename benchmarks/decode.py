"""Decode-loop throughput of the native Step1 on workloads shaped like real runs.

Builds Step1 from a config with random weights (no checkpoint), so it needs
nothing but torch:

    python benchmarks/decode.py                                   # tiny shape, edit30, CUDA if present
    python benchmarks/decode.py --shape released --batch-sizes 1,8,64 --json
    python benchmarks/decode.py --shape medium --workload fixed --cache-capacity 4096 --compare whole
    python benchmarks/decode.py --shape medium --prefill 8192     # one long prompt's prefill memory
    python benchmarks/decode.py --shape released --attention flex # decode attention through FlexAttention

Workloads (`--workload`):
- `edit30`: 30 s edits: prompts of about 1,350 ids, budgets of about 2,550 (the
  cache sized for them), each task ending at a length drawn around its input's
  (end-of-turn as in real runs: the rows end at different steps), a queue 4x the
  slots so admissions, chunked prefill and compaction happen; a quarter of the
  tasks guided (two rows, one task) except at batch 1, where every task is unguided
  (a guided task takes two slots: batch 1 is one slot).
- `clone`: short prompts (about 250 ids), outputs of 100-600 ids, queue 4x.
- `fixed`: one task a slot, every row to the same budget, no admissions: the
  pure step (with `--cache-capacity` to size the cache apart from the work).

Per batch size: the slots the decoder used, ms a decode step (sync to sync, prefill apart), task tokens a
second over the whole run (a guided task's two rows make one token), occupancy,
the graphs and attention that ran (from the decoder), captures and their time
apart, peak memory, and the memory floor: the bytes a step must read (weights,
plus the live keys and values) over the device's copy bandwidth measured in the
same run. On the CPU also torch ops (every op recorded), calls (the ops the
step's Python makes), work ops and host syncs a step (torch.profiler): proxies
for a GPU's launch and sync costs that a small model's wall time hides; on a GPU
the kernels a step launches (`kernels_per_step`).
`--compare whole` runs the same work with every step attending over the whole
cache (the --deterministic path, and what every step did before buckets) and
prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editx_cli.engine.stepaudio.decoder import SYNC_EVERY, SYNC_LABEL, Decoder  # noqa: E402
from editx_cli.engine.stepaudio.generate import EOS, Job, Sampling  # noqa: E402
from editx_cli.engine.stepaudio.runners import NativeRunner  # noqa: E402
from editx_cli.engine.stepaudio.step1 import StaticCache, Step1Config, Step1ForCausalLM, alibi_slopes  # noqa: E402

SHAPES = {
    "released": dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=48, num_attention_groups=4,
                     num_hidden_layers=32, vocab_size=74752),
    "medium": dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=48, num_attention_groups=4,
                   num_hidden_layers=2, vocab_size=74752),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_attention_groups=2,
                 num_hidden_layers=2, vocab_size=74752),
}
AUDIO = (65536, 70656)


def build(shape: str, device: str, dtype: torch.dtype, layers: int | None = None) -> Step1ForCausalLM:
    cfg = Step1Config(**{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})})
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
        model.lm_head.weight[EOS] = 0.0  # never in the top 50: rows end where the workload says
    model.slopes = alibi_slopes(cfg.num_attention_heads).to(device)
    return model.to(dtype).eval()


def workload(name: str, slots: int, seed: int = 0, fixed_prompt: int = 500,
             fixed_budget: int = 96, queue: int = 4) -> tuple[list[Job], int]:
    """The jobs (`queue` times the slots), and the cache length their real budgets would need
    (end-of-turn is drawn: a job's `budget` here is where it ends)."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [1, 4] + [rng.randrange(*AUDIO) for _ in range(n - 2)]

    jobs, longest = [], 0
    if name == "fixed":
        for i in range(slots):
            jobs.append(Job(ids(fixed_prompt - 8 * (i % 4)), seed=i, budget=fixed_budget))
        return jobs, fixed_prompt + fixed_budget
    for i in range(queue * slots):
        if name == "edit30":
            audio = rng.randint(1150, 1300)  # 27-31 s of input audio tokens
            prompt, budget = audio + 80, 2 * audio + 50  # its budget as the engine sets it
            ends = int(min(budget, max(200, rng.gauss(audio, 0.15 * audio))))
        else:  # clone
            prompt, budget = rng.randint(200, 300), 1300
            ends = rng.randint(100, 600)
        guided = name == "edit30" and i % 4 == 3 and slots > 1
        job = Job(ids(prompt), seed=i, budget=ends, guidance=1.5 if guided else 1.0,
                  reference=ids(prompt - 30) if guided else None)
        jobs.append(job)
        longest = max(longest, prompt + budget)
    return jobs, longest


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float:
    """Bytes a second moved by a large device-to-device copy (read + write)."""
    n = (1 << 28) if device.startswith("cuda") else (1 << 25)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n / best


def weight_bytes(model: Step1ForCausalLM) -> int:
    # the embedding is gathered, not read whole, on a step
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)


def live_key_bytes(jobs: list[Job], steps: int, cfg: Step1Config, elem: int) -> float:
    """Keys and values a step must read on average: every row's positions so far, over its life."""
    positions = 0
    for j in jobs:
        for row in ([j.prompt, j.reference] if j.guided else [j.prompt]):
            n = len(j.tokens)
            positions += n * len(row) + n * (n - 1) // 2
    per_position = 2 * cfg.num_hidden_layers * cfg.num_attention_groups * cfg.head_dim * elem
    return positions * per_position / max(1, steps)


class PeakRss:
    """The process's peak resident memory while the block runs, above what it held before
    (sampled every 2 ms: the CPU has no allocator statistics)."""

    def __enter__(self) -> PeakRss:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    @property
    def above(self) -> int:
        return self.peak - self.base


def run_once(model, slots: int, args, device: str, whole: bool, decoder=None, cap: int | None = None):
    """The workload through a decoder (a new one when none is given); `cap`: the same prompts,
    at most that many tokens each (the warm-up, and the profiler's short runs)."""
    jobs, longest = workload(args.workload, slots, fixed_prompt=args.fixed_prompt, fixed_budget=args.new_tokens,
                             queue=args.queue)
    if cap:
        jobs = [Job(j.prompt, j.seed, min(j.budget, cap), j.guidance, j.reference) for j in jobs]
    capacity = args.cache_capacity or longest
    if decoder is None:
        decoder = Decoder(NativeRunner(model, capacity if whole else 8192), slots, Sampling(), device,
                          cuda_graphs=not args.no_cuda_graphs, deterministic=whole)
        decoder.reserve(capacity)  # sized as the real budgets would size it
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    fig = decoder.run(jobs)
    sync(device)
    return decoder, jobs, fig, time.perf_counter() - t0


def measure(model, slots: int, args, device: str, bandwidth: float, whole: bool) -> dict:
    decoder, _, _, _ = run_once(model, slots, args, device, whole, cap=4 * SYNC_EVERY)  # allocations, graphs
    with PeakRss() as rss:
        _, jobs, fig, wall = run_once(model, slots, args, device, whole, decoder)
    cfg, elem = model.config, model.lm_head.weight.element_size()
    floor = (weight_bytes(model) + live_key_bytes(jobs, fig.steps, cfg, elem)) / bandwidth
    row = {
        "batch": slots, "slots": fig.slots, "shape": args.shape, "workload": args.workload, "tasks": len(jobs),
        "ms_per_step": 1000 * fig.decode_seconds / fig.steps,
        # over the whole run (prefill and admissions in), captures apart
        "task_tokens_per_s": fig.task_tokens / (wall - fig.capture_seconds),
        "row_tokens_per_s": fig.row_tokens / (wall - fig.capture_seconds),
        "occupancy": fig.occupancy,
        "running_share": fig.decode_seconds / (fig.decode_seconds + fig.prefill_seconds),
        "prefill_s": fig.prefill_seconds, "wall_s": wall,
        "graphs": fig.graphs, "attention": fig.attention, "keys": fig.keys, "cache_length": fig.cache_length,
        "captures": fig.captures, "capture_s": fig.capture_seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else rss.peak,
        "floor_ms_per_step": 1000 * floor,
    }
    row["x_floor"] = row["ms_per_step"] / row["floor_ms_per_step"]
    if device.startswith("cuda"):  # every slot, at the longest keys this run used
        try:  # a profiler that cannot trace this device costs the column, not the row
            row["kernels_per_step"] = kernels_per_step(decoder, (decoder.slots, fig.keys[-1], False))
        except Exception as e:
            row["kernels_per_step_error"] = f"{type(e).__name__}: {e}"[:200]
    else:
        row["ops_per_step"], row["calls_per_step"], row["work_ops_per_step"], row["syncs_per_step"] = \
            profile_counts(model, slots, args, device, whole, decoder)
    return row


# Ops that only describe a tensor (a view, a shape, an empty allocation, a no-op resolve): no
# arithmetic and no copy, so no kernel on a GPU. The rest are "work ops".
METADATA_OPS = {f"aten::{name}" for name in (
    "as_strided", "view", "reshape", "_reshape_alias", "_unsafe_view", "transpose", "t", "permute", "expand",
    "slice", "select", "narrow", "split", "split_with_sizes", "chunk", "unsqueeze", "squeeze", "resolve_conj",
    "resolve_neg", "empty", "empty_strided", "empty_like", "result_type", "detach", "alias", "to", "lift_fresh",
    "unbind", "contiguous")}


def profile_counts(model, slots: int, args, device: str, whole: bool, decoder) -> tuple[float, float, float, float]:
    """Torch ops (every op the profiler records, those called inside others too), calls (the
    ops the step's Python calls), work ops (those that compute or copy: kernels on a GPU) and
    host syncs per decode step (CPU profiler): the difference between runs of the same tasks
    capped at 48 and at 16 tokens, over the difference in steps (so the prompts' prefill
    cancels out; a profile of a whole run would hold millions of events)."""
    from torch.profiler import ProfilerActivity, profile

    def counts(cap: int) -> tuple[int, int, int, int, int]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _, _, fig, _ = run_once(model, slots, args, device, whole, decoder, cap=cap)
        ops = calls = work = syncs = 0
        for e in prof.events():
            if e.name.startswith("aten::"):
                ops += 1
                calls += not inside_an_op(e)
                work += e.name not in METADATA_OPS
            if e.name in ("aten::_local_scalar_dense", SYNC_LABEL):
                syncs += 1
        return ops, calls, work, syncs, fig.steps

    first, second = counts(2 * SYNC_EVERY), counts(6 * SYNC_EVERY)
    steps = second[-1] - first[-1]
    return tuple((b - a) / steps for a, b in zip(first[:-1], second[:-1], strict=True))


def inside_an_op(event) -> bool:
    """Whether a profiler event was recorded inside an aten op (not called by Python itself)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def kernels_per_step(decoder, shape: tuple[int, int, bool]) -> float:
    """CUDA kernels one decode step of this shape launches, counted eagerly (a CUDA graph
    replays the same kernels from one launch): the difference between 2 and 10 steps, over 8,
    so that putting the decoder's state back is not counted."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(steps: int) -> int:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            decoder.trial(shape, steps)
            torch.cuda.synchronize()
        return sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)

    return (kernels(10) - kernels(2)) / 8


def prefill_memory(model, width: int, device: str) -> dict:
    """One prompt of `width` ids prefilled into a one-slot cache: peak memory above the weights
    and the cache, and what the one-shot W x W bias it replaced would take."""
    cfg = model.config
    cache = StaticCache(cfg, 1, width + 1, device, model.lm_head.weight.dtype)
    ids = torch.randint(*AUDIO, (1, width), device=device)
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with torch.inference_mode(), PeakRss() as rss:
        model.prefill(ids, [width - 1], torch.tensor([0], device=device), cache)
        sync(device)
    above = torch.cuda.max_memory_allocated() - base if device.startswith("cuda") else rss.above
    one_shot = cfg.num_attention_heads * width * width * (4 + 4 + model.lm_head.weight.element_size())
    return {"prefill_width": width, "seconds": time.perf_counter() - t0, "peak_above_weights_and_cache": above,
            "one_shot_bias_bytes": one_shot}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--batch-sizes", default=None, help="default: 1,2,4,8,16,32,64 on CUDA, 1,8 on the CPU")
    ap.add_argument("--workload", choices=("edit30", "clone", "fixed"), default="edit30")
    ap.add_argument("--queue", type=int, default=4, help="tasks per slot (edit30 and clone; default 4)")
    ap.add_argument("--cache-capacity", type=int, default=None, help="cache positions (default: the jobs' need)")
    ap.add_argument("--fixed-prompt", type=int, default=500, help="prompt length of the fixed workload")
    ap.add_argument("--new-tokens", type=int, default=96, help="tokens a row of the fixed workload")
    ap.add_argument("--prefill", type=int, default=None, metavar="W", help="measure one W-id prefill and stop")
    ap.add_argument("--compare", choices=("whole",), default=None, help="also attend over the whole cache")
    ap.add_argument("--layers", type=int, default=None,
                    help="override the shape's layer count (two runs give the ops a layer and the fixed ops a step)")
    ap.add_argument("--attention", choices=("sdpa", "flex"), default="sdpa",
                    help="the decode step's attention: folded SDPA (the default) or FlexAttention")
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--jsonl", action="store_true", help="one JSON line as each row is measured (meta first)")
    args = ap.parse_args()

    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    if not cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    model = build(args.shape, args.device, dtype, args.layers)
    model.use_flex(args.attention == "flex")
    meta = {"shape": args.shape, "layers": model.config.num_hidden_layers, "device": args.device,
            "dtype": str(dtype).replace("torch.", ""), "workload": args.workload, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if cuda else None, "threads": torch.get_num_threads()}
    if args.prefill:
        out = {"meta": meta, "prefill": prefill_memory(model, args.prefill, args.device)}
        print(json.dumps(out) if args.jsonl else json.dumps(out, indent=1) if args.json else out)
        return
    bandwidth = copy_bandwidth(args.device)
    meta["copy_bandwidth_gb_s"] = round(bandwidth / 1e9, 1)
    if args.jsonl:
        print(json.dumps({"meta": meta}), flush=True)
    sizes = args.batch_sizes or ("1,2,4,8,16,32,64" if cuda else "1,8")
    rows = []
    for b in [int(x) for x in sizes.split(",")]:
        row = measure(model, b, args, args.device, bandwidth, whole=False)
        if args.compare:
            base = measure(model, b, args, args.device, bandwidth, whole=True)
            row["whole_ms_per_step"] = base["ms_per_step"]
            row["whole_task_tokens_per_s"] = base["task_tokens_per_s"]
            row["speedup"] = base["ms_per_step"] / row["ms_per_step"]
        rows.append(row)
        if args.jsonl:
            print(json.dumps({"row": row}), flush=True)
        elif not args.json:
            print((_header() + "\n" if len(rows) == 1 else "") + _line(row), flush=True)
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=1))
    elif not args.jsonl:
        print(f"\n{meta}")


def _header() -> str:
    return ("batch | slots | ms/step | task tok/s | occupancy | running | x floor | keys | graphs | captures (s) | "
            "peak MiB | whole ms/step | speed-up | ops/step | calls/step | work ops/step | syncs/step | kernels/step")


def _line(r: dict) -> str:
    def f(key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "-"

    keys = f"{r['keys'][0]}-{r['keys'][-1]}" if len(r["keys"]) > 1 else str(r["keys"][0])
    return (f"{r['batch']:>5} | {r['slots']:>5} | {f('ms_per_step', '7.2f')} | {f('task_tokens_per_s', '10.0f')} | "
            f"{f('occupancy', '9.2f')} | {f('running_share', '7.2f')} | {f('x_floor', '7.2f')} | {keys} | "
            f"{len(r['graphs'])} | {r['captures']} ({r['capture_s']:.2f}) | {r['peak_memory_bytes'] / 2**20:8.0f} | "
            f"{f('whole_ms_per_step', '13.2f')} | {f('speedup', '7.2f')}x | {f('ops_per_step', '8.0f')} | "
            f"{f('calls_per_step', '10.0f')} | {f('work_ops_per_step', '13.0f')} | {f('syncs_per_step', '10.3f')} | "
            f"{f('kernels_per_step', '12.0f')}")


if __name__ == "__main__":
    main()
