"""Continuous batching: a fixed set of slots kept full, sampling on the device, CUDA graphs.

Each task's prompt is prefilled into a free slot (a guided task takes two: its edit
row and its reference row); then every step samples one token for every slot at
once on the device (`generate.sample`) and feeds it back (`Step1.decode` over the
static cache). Nothing is read back to the host on a step: every `SYNC_EVERY`
steps one small transfer brings the rows' done flags and lengths, finished tasks
leave, and queued tasks are prefilled into the freed slots, several at once. A
row that ends between two syncs idles for at most SYNC_EVERY - 1 steps (its extra
tokens are not recorded); at 41.7 tokens a second of speech a task is hundreds of
steps long, so that costs under 2 % while the host never waits on the device
inside the loop.

The step has fixed shapes for a given number of rows, so on CUDA it is captured
once per row count (powers of two up to the slot count) as a CUDA graph and
replayed; near the end, rows are moved down so a smaller graph serves them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from editx_cli.engine.stepaudio.generate import EOS, PAD, Job, Sampling, sample

log = logging.getLogger("editx")

SYNC_EVERY = 8
SYNC_LABEL = "editx::sync"  # profiler range around each device-to-host read
PREFILL_TOKENS = 8192  # most prompt positions (rows x padded width) prefilled in one forward


class NativeRunner:
    """The native Step1 over a static cache."""

    def __init__(self, model: Any, window: int) -> None:
        self.model = model
        self.vocab = model.config.vocab_size
        self.window = min(window, model.config.max_seq_len)
        self.can_capture = True
        self.cache = None

    def allocate(self, slots: int, length: int, device: str) -> None:
        from editx_cli.engine.stepaudio.step1 import StaticCache

        self.cache = None  # free the last run's cache before allocating this one
        self.cache = StaticCache(self.model.config, slots, length, device, self.model.lm_head.weight.dtype)

    def prefill(self, rows: list[list[int]], slots: list[int], device: str) -> torch.Tensor:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        return self.model.prefill(ids.to(device), last, torch.tensor(slots, device=device), self.cache)

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.model.decode(tokens, pos, self.cache)

    def move(self, src: int, dst: int) -> None:
        self.cache.move(src, dst)

    def release(self, slot: int) -> None:
        pass

    def close(self) -> None:
        self.cache = None


class UnpaddedRunner:
    """A model that ignores attention masks (the checkpoint's own code): no cache, and
    every row runs alone over its whole sequence each step, so padding never reaches it.
    Slow; a comparison path."""

    def __init__(self, model: Any, vocab: int, window: int) -> None:
        self.model, self.vocab, self.window = model, vocab, window
        self.can_capture = False
        self.seqs: list[list[int] | None] = []

    def allocate(self, slots: int, length: int, device: str) -> None:
        self.seqs = [None] * slots

    def _logits(self, seq: list[int], device: str) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([seq], device=device)).logits[0, -1].float()

    def prefill(self, rows: list[list[int]], slots: list[int], device: str) -> torch.Tensor:
        for row, s in zip(rows, slots, strict=True):
            self.seqs[s] = list(row)
        return torch.stack([self._logits(r, device) for r in rows])

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(tokens), self.vocab, device=tokens.device)
        for r, t in enumerate(tokens.tolist()):
            if self.seqs[r] is not None:
                self.seqs[r].append(t)
                out[r] = self._logits(self.seqs[r], str(tokens.device))
        return out

    def move(self, src: int, dst: int) -> None:
        self.seqs[dst], self.seqs[src] = self.seqs[src], None

    def release(self, slot: int) -> None:
        self.seqs[slot] = None

    def close(self) -> None:
        self.seqs = []


@dataclass
class Figures:
    """What one `Decoder.run` did, for the report and the benchmark."""

    slots: int = 0
    steps: int = 0
    row_tokens: int = 0  # tokens recorded over all rows (a guided task's two rows count twice)
    syncs: int = 0
    prefill_rows: int = 0
    prefill_tokens: int = 0
    prefill_padded: int = 0
    capture_seconds: float = 0.0
    graphs: list[int] = field(default_factory=list)

    @property
    def occupancy(self) -> float:
        return self.row_tokens / (self.steps * self.slots) if self.steps else 0.0


@dataclass
class _Row:
    job: Job
    reference: bool  # the guidance reference row of a guided task


class Decoder:
    """Decodes a queue of jobs through `slots` rows kept full."""

    def __init__(self, runner: Any, slots: int, sampling: Sampling, device: str, *, cuda_graphs: bool = False,
                 row_prefill: bool = False, full_window: bool = False) -> None:
        """`row_prefill`: prefill each prompt alone and `full_window`: size the cache to the
        model's window whatever the jobs: both keep a row's arithmetic independent of the
        other rows (used with --deterministic)."""
        self.runner, self.slots, self.sampling, self.device = runner, max(1, slots), sampling, device
        self.cuda_graphs = cuda_graphs and runner.can_capture and device.startswith("cuda")
        self.row_prefill, self.full_window = row_prefill, full_window

    # -- the step (captured as a CUDA graph per width) ------------------------------------

    def _step(self, w: int) -> None:
        live = ~self.done[:w]
        at = self.step[:w].clamp(max=self.max_budget - 1)[:, None]
        uniform = self.uniforms[:w].gather(1, at)[:, 0]
        token = sample(self.logits[:w], self.partner[:w] if self.guided else None, self.weight[:w],
                       self.history[:w], self.seen[:w], uniform, self.sampling)
        token = token.index_select(0, self.owner[:w])  # a reference row takes its task's token
        self.tokens[:w].scatter_(1, at, torch.where(live, token, self.tokens[:w].gather(1, at)[:, 0])[:, None])
        self.history[:w] = torch.cat([self.history[:w, 1:], token[:, None]], dim=1)
        self.seen[:w] += 1
        self.step[:w] += live
        self.done[:w] |= live & ((token == EOS) | (self.step[:w] >= self.budget[:w]))
        self.logits[:w] = self.runner.decode(token, self.pos[:w])
        self.pos[:w] = (self.pos[:w] + 1).clamp(max=self.length - 1)

    def _capture(self, widths: list[int]) -> dict[int, Any]:
        """One CUDA graph per width, captured while every slot is empty (the warm-up steps
        touch only dead rows, whose state admission resets)."""
        graphs: dict[int, Any] = {}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for w in widths:
                for _ in range(2):
                    self._step(w)
        torch.cuda.current_stream().wait_stream(side)
        pool = None
        for w in sorted(widths, reverse=True):  # the largest first, the others reuse its memory pool
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self._step(w)
            pool = g.pool()
            graphs[w] = g
        torch.cuda.synchronize()
        return graphs

    # -- the loop --------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, jobs: list[Job], on_done=None) -> Figures:
        """Decode every job to its end-of-turn or its budget; fills `job.tokens`, and calls
        on_done(job) as each finishes (the vocoder takes it from there while decoding goes on)."""
        fig = Figures()
        if not jobs:
            return fig
        need = max(2 if j.guided else 1 for j in jobs)
        slots = max(self.slots, need)
        rows_of = {id(j): [j.prompt, j.reference] if j.guided else [j.prompt] for j in jobs}
        if self.full_window:
            length = self.runner.window
        else:  # the longest row the jobs can make, rounded up
            longest = max(len(r) + j.budget for j in jobs for r in rows_of[id(j)])
            length = min(-(-longest // 64) * 64, self.runner.window)
        self.length, self.max_budget = length, max(j.budget for j in jobs)
        self.guided = any(j.guided for j in jobs)
        self._allocate(slots, length)
        fig.slots = slots
        widths = sorted({min(2**i, slots) for i in range(slots.bit_length() + 1)})
        graphs: dict[int, Any] = {}
        if self.cuda_graphs:
            t0 = time.perf_counter()
            try:
                graphs = self._capture(widths)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # an op that cannot be captured (4-bit kernels?): run eagerly
                log.warning("CUDA graph capture failed, decoding eagerly: %s", str(e).splitlines()[0])
                self.done.fill_(True)
            fig.capture_seconds = time.perf_counter() - t0
            fig.graphs = sorted(graphs)

        queue = deque(jobs)
        self.rows: list[_Row | None] = [None] * slots
        self._admit(queue, fig)
        while any(self.rows):
            w = next(x for x in widths if x > max(i for i, r in enumerate(self.rows) if r))
            for _ in range(SYNC_EVERY):
                if w in graphs:
                    graphs[w].replay()
                else:
                    self._step(w)
            fig.steps += SYNC_EVERY
            with torch.profiler.record_function(SYNC_LABEL):  # the one read-back per SYNC_EVERY steps
                flags = torch.stack([self.done[:w].long(), self.step[:w]]).cpu().tolist()
            fig.syncs += 1
            ended = [s for s in range(w) if self.rows[s] and not self.rows[s].reference and flags[0][s]]
            if ended:
                with torch.profiler.record_function(SYNC_LABEL):
                    got = self.tokens[ended].cpu().tolist()
                for s, toks in zip(ended, got, strict=True):
                    job = self.rows[s].job
                    job.tokens = toks[: flags[1][s]]
                    if on_done is not None:
                        on_done(job)
                    for r in range(slots):
                        if self.rows[r] and self.rows[r].job is job:
                            self.rows[r] = None
                            self.runner.release(r)
                            fig.row_tokens += len(job.tokens)
            self._compact(widths)
            self._admit(queue, fig)
        self.runner.close()
        return fig

    def _allocate(self, slots: int, length: int) -> None:
        dev, window = self.device, max(1, self.sampling.repetition_window)
        self.runner.allocate(slots, length, dev)
        self.logits = torch.zeros(slots, self.runner.vocab, device=dev)
        self.tokens = torch.zeros(slots, self.max_budget, dtype=torch.long, device=dev)
        self.uniforms = torch.zeros(slots, self.max_budget, device=dev)
        self.history = torch.zeros(slots, window, dtype=torch.long, device=dev)
        self.step, self.budget, self.pos, self.seen = (torch.zeros(slots, dtype=torch.long, device=dev)
                                                       for _ in range(4))
        self.done = torch.ones(slots, dtype=torch.bool, device=dev)
        self.partner = torch.arange(slots, device=dev)
        self.owner = torch.arange(slots, device=dev)
        self.weight = torch.ones(slots, device=dev)

    def _admit(self, queue: deque, fig: Figures) -> None:
        """Prefill queued jobs into free slots (lowest first), several prompts per forward."""
        free = [s for s, r in enumerate(self.rows) if r is None]
        new: list[tuple[int, _Row]] = []
        while queue and len(free) >= (2 if queue[0].guided else 1):
            job = queue.popleft()
            new.append((free.pop(0), _Row(job, False)))
            if job.guided:
                new.append((free.pop(0), _Row(job, True)))
        if not new:
            return
        for s, row in new:
            self.rows[s] = row
        self._set_state(new)
        # Prefill in groups of similar length, at most PREFILL_TOKENS padded positions each.
        order = sorted(new, key=lambda sr: len(self._ids(sr[1])))
        group: list[tuple[int, _Row]] = []
        for item in order:
            width = len(self._ids(item[1]))
            if group and (self.row_prefill or width * (len(group) + 1) > PREFILL_TOKENS):
                self._prefill(group, fig)
                group = []
            group.append(item)
        self._prefill(group, fig)

    @staticmethod
    def _ids(row: _Row) -> list[int]:
        return row.job.reference if row.reference else row.job.prompt

    def _prefill(self, group: list[tuple[int, _Row]], fig: Figures) -> None:
        rows = [self._ids(r) for _, r in group]
        slots = [s for s, _ in group]
        logits = self.runner.prefill(rows, slots, self.device)
        self.logits[torch.tensor(slots, device=self.device)] = logits
        fig.prefill_rows += len(rows)
        fig.prefill_tokens += sum(map(len, rows))
        fig.prefill_padded += len(rows) * max(map(len, rows))

    def _set_state(self, new: list[tuple[int, _Row]]) -> None:
        """Reset the slots' per-row state for their new rows (host-built, copied in at once)."""
        window = self.history.shape[1]
        slots = torch.tensor([s for s, _ in new], device=self.device)
        hist, seen, budget, pos, uni = [], [], [], [], []
        for _, r in new:
            prompt = r.job.prompt  # the repetition window runs over the task's own sequence
            hist.append(([0] * window + prompt)[-window:])
            seen.append(len(prompt))
            budget.append(r.job.budget)
            pos.append(len(self._ids(r)))
            u = torch.zeros(self.max_budget)
            u[: r.job.budget] = r.job.uniforms()
            uni.append(u)
        dev = self.device
        self.history[slots] = torch.tensor(hist, device=dev)
        self.seen[slots] = torch.tensor(seen, device=dev)
        self.budget[slots] = torch.tensor(budget, device=dev)
        self.pos[slots] = torch.tensor(pos, device=dev)
        self.uniforms[slots] = torch.stack(uni).to(dev)
        self.step[slots] = 0
        self.done[slots] = False
        self._link()

    def _link(self) -> None:
        """Owner (whose token a row takes), partner (where its reference logits are) and weight,
        from the host's table of rows."""
        slot_of = {(id(r.job), r.reference): s for s, r in enumerate(self.rows) if r}
        owner, partner, weight = list(range(len(self.rows))), list(range(len(self.rows))), [1.0] * len(self.rows)
        for s, r in enumerate(self.rows):
            if r and r.job.guided:
                if r.reference:
                    owner[s] = slot_of[(id(r.job), False)]
                else:
                    partner[s], weight[s] = slot_of[(id(r.job), True)], r.job.guidance
        self.owner.copy_(torch.tensor(owner))
        self.partner.copy_(torch.tensor(partner))
        self.weight.copy_(torch.tensor(weight))

    def _compact(self, widths: list[int]) -> None:
        """Move rows down when the busy ones would fit a smaller width (fewer rows per step)."""
        busy = [s for s, r in enumerate(self.rows) if r]
        if not busy:
            return
        target = next(x for x in widths if x >= len(busy))
        movers = [s for s in busy if s >= target]
        if not movers:
            return
        free = [s for s in range(target) if self.rows[s] is None]
        state = (self.logits, self.tokens, self.uniforms, self.history, self.step, self.budget, self.pos,
                 self.seen, self.done, self.weight)
        for src, dst in zip(movers, free, strict=False):
            for t in state:
                t[dst] = t[src]
            self.done[src] = True
            self.runner.move(src, dst)
            self.rows[dst], self.rows[src] = self.rows[src], None
        self._link()
