"""Continuous batching: a fixed set of slots kept full, sampling on the device, CUDA graphs.

Each task's prompt is prefilled into a free slot (a guided task takes two: its edit
row and its reference row); then every step samples one token for every slot at
once on the device (`generate.sample`) and feeds it back (`Step1.decode` over the
static cache). Nothing is read back to the host on a step: every `SYNC_EVERY`
steps one small transfer brings the rows' done flags and lengths, finished tasks
leave, and queued tasks take the freed slots. A row that ends between two syncs
idles for at most SYNC_EVERY - 1 steps (its extra tokens are not recorded); at
41.7 tokens a second of speech a task is hundreds of steps long, so that costs
under 2 % while the host never waits on the device inside the loop.

Newcomers' prompts are prefilled a chunk (`step1.PREFILL_CHUNK` positions) at a
time between decode periods, taking at most `PREFILL_SHARE` of the time while
most slots are decoding, so the running rows keep producing while the queue
drains (vLLM's chunked prefill, between steps rather than inside them). A row
being prefilled is idle in the steps and writes to a scratch position.

A step attends over the first `keys` cache positions, `keys` the smallest of a
few bucket lengths above the longest live row (`buckets`): a step reads the keys
its rows have, not the cache's length. Buckets rather than FlexAttention: plain
SDPA over a slice runs on every backend and device with no compiler, is captured
in a CUDA graph as it is, and the per-step bias is the bucket's size; FlexAttention
needs torch.compile (Triton, or a C++ toolchain on the CPU) and a block mask
rebuilt from the lengths outside the graph. The cost is at most 1.5x the live keys
and about two graph shapes per doubling of the length.

On CUDA each (rows, keys) shape is captured as a graph the first time it is
needed and replayed after; near the end, rows are moved down so a smaller graph
serves them. A shape whose capture fails runs eagerly (counted); the others keep
their graphs. While a graph is captured the caching allocator cannot free cached
blocks to retry a failed allocation, for any thread: the capture holds the engine's
device gate, which the vocoder's calls hold too, so none runs meanwhile.

Under `deterministic` every step runs all `slots` rows (one width, whatever the
number of tasks: on CUDA cuBLAS picks its kernels by the row count, so a row's
arithmetic would otherwise depend on how many rows ran beside it) and at most
`limit` rows hold tasks at once. The cache, the state and the graphs belong to the decoder, which an
engine keeps for its life: later runs reuse them, growing the cache only when a
longer job arrives.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from editx_cli.engine.stepaudio.generate import EOS, Job, Sampling, sample
from editx_cli.engine.stepaudio.runners import to_device

log = logging.getLogger("editx")

SYNC_EVERY = 8
SYNC_LABEL = "editx::sync"  # profiler range around each device-to-host read
PREFILL_TOKENS = 8192  # most keys (rows x positions so far) one prefill forward attends over
PREFILL_SHARE = 0.2  # of the time, for newcomers' prefill while most slots are decoding
LENGTH_STEP = 1024  # the cache grows in steps of this many positions


def buckets(length: int) -> list[int]:
    """The key lengths a decode step may attend over: 256, 384, 512, 768, 1024, ... (alternately
    x1.5 and x1.33), then the cache's length. A step reads at most 1.5x the keys its longest
    row needs, with about two graph shapes per doubling of the length."""
    out, b = [], 256
    while b < length:
        out.append(b)
        b = b * 3 // 2 if b & (b - 1) == 0 else b * 4 // 3
    return out + [length]


@dataclass
class Figures:
    """What one `Decoder.run` did, for the report and the benchmark."""

    slots: int = 0
    steps: int = 0
    row_tokens: int = 0  # tokens recorded over all rows (a guided task's two rows count twice)
    task_tokens: int = 0  # tokens of the tasks (a guided task's two rows make one)
    syncs: int = 0
    prefill_rows: int = 0
    prefill_tokens: int = 0
    prefill_padded: int = 0
    prefill_chunks: int = 0
    prefill_seconds: float = 0.0  # prefill run while rows were decoding (device time)
    decode_seconds: float = 0.0  # decode steps, sync to sync
    allocations: int = 0  # static caches allocated (0: the last run's was reused)
    captures: int = 0
    capture_seconds: float = 0.0
    capture_failures: int = 0  # shapes whose capture failed: they ran eagerly
    cache_length: int = 0
    attention: str = ""
    graphs: list[str] = field(default_factory=list)  # "rows x keys" shapes replayed from CUDA graphs ("g": guided)
    keys: list[int] = field(default_factory=list)  # the key lengths the steps attended over

    @property
    def occupancy(self) -> float:
        return self.row_tokens / (self.steps * self.slots) if self.steps else 0.0


@dataclass
class _Row:
    job: Job
    reference: bool  # the guidance reference row of a guided task
    filled: bool = False  # its whole prompt is in the cache
    offset: int = 0  # the next prompt position to prefill

    @property
    def ids(self) -> list[int]:
        return self.job.reference if self.reference else self.job.prompt


class _State(NamedTuple):
    """Each row's decoding state, on the device (the decoder's, or views of its first rows)."""

    logits: torch.Tensor  # (rows, vocab) float32: the logits the next token is drawn from
    tokens: torch.Tensor  # (rows, length) the tokens drawn so far
    uniforms: torch.Tensor  # (rows, length) each step's draw
    history: torch.Tensor  # (rows, window) the last ids of the row's sequence
    step: torch.Tensor  # tokens drawn
    budget: torch.Tensor  # tokens allowed
    pos: torch.Tensor  # where the next token goes in the cache
    seen: torch.Tensor  # ids the row's sequence holds
    done: torch.Tensor  # ended (or idle)
    partner: torch.Tensor  # the row holding this row's reference logits (itself when unguided)
    owner: torch.Tensor  # the row whose token this row takes (itself but for a reference row)
    weight: torch.Tensor  # guidance weight


class Decoder:
    """Decodes queues of jobs through `slots` rows kept full, over one static cache and one
    set of CUDA graphs kept from run to run (an engine makes one decoder)."""

    def __init__(self, runner: Any, slots: int, sampling: Sampling, device: str, *, cuda_graphs: bool = False,
                 deterministic: bool = False, limit: int | None = None,
                 gate: threading.Lock | contextlib.nullcontext | None = None) -> None:
        """`deterministic`: prefill each prompt alone, attend over the whole cache, sized to
        the model's window whatever the jobs, and step every slot: a row's arithmetic is then
        independent of the other rows (--deterministic), at the cost of reading every key each
        step. `limit`: the most rows that hold tasks at once (default: every slot). `gate`: held
        while a graph is captured (the engine's device gate)."""
        self.runner, self.slots, self.sampling, self.device = runner, max(1, slots), sampling, device
        self.limit = max(1, limit or self.slots)
        self.cuda_graphs = cuda_graphs and runner.can_capture and device.startswith("cuda")
        self.deterministic = deterministic
        self.gate = gate if gate is not None else contextlib.nullcontext()
        self.length = 0  # positions per slot in the cache (0: none allocated); one more is scratch
        self.graphs: dict[tuple[int, int, bool], Any] = {}  # (rows, keys, guided) -> its graph
        self.uncapturable: set[tuple[int, int, bool]] = set()  # shapes whose capture failed: run eagerly
        self.pool = None
        self.views: dict[int, _State] = {}  # width -> the state's first rows (`_rows`)

    # -- the step (captured as a CUDA graph per rows x keys x guided) ------------------------

    def _step(self, w: int, keys: int, guided: bool) -> None:
        """`guided`: some row among the first w is guided (else the guidance arithmetic over
        every row's vocabulary is skipped: the host knows, as it admits the rows)."""
        r = self._rows(w)
        live = ~r.done
        at = r.step.clamp(max=self.length - 1)[:, None]
        uniform = r.uniforms.gather(1, at)  # (rows, 1)
        token = sample(r.logits, r.partner if guided else None, r.weight, r.history, r.seen, uniform, self.sampling)
        if guided:
            token = token.index_select(0, r.owner)  # a reference row takes its task's token
        column = token[:, None]
        r.tokens.scatter_(1, at, torch.where(live[:, None], column, r.tokens.gather(1, at)))
        r.history.copy_(torch.cat([r.history[:, 1:], column], dim=1))
        r.seen.add_(1)
        r.step.add_(live)
        r.done.logical_or_((token == EOS) | (r.step >= r.budget))  # a row not live is done already
        r.logits.copy_(self.runner.decode(token, r.pos, keys))
        r.pos.add_(live).clamp_(max=self.length)  # an ended row stays where it was

    def _rows(self, w: int) -> _State:
        """The state's first w rows, as views made once a width (a slice is two ops, and a step
        would take a dozen)."""
        if w not in self.views:
            self.views[w] = _State(*(t[:w] for t in self._state()))
        return self.views[w]

    def _state(self) -> _State:
        return _State(self.logits, self.tokens, self.uniforms, self.history, self.step, self.budget, self.pos,
                      self.seen, self.done, self.partner, self.owner, self.weight)

    def trial(self, shape: tuple[int, int, bool], steps: int = 2) -> None:
        """Steps of this shape (to warm allocations and library handles, or to profile one) with
        the decoder's state put back after: rows that are decoding go on as if nothing ran. The
        keys the steps wrote are written again, identically, by the real steps before any query
        reads them."""
        saved = [t.clone() for t in self._state()]
        for _ in range(steps):
            self._step(*shape)
        for t, old in zip(self._state(), saved, strict=True):
            t.copy_(old)

    def _graph(self, shape: tuple[int, int, bool], fig: Figures) -> Any:
        """The CUDA graph of this shape, captured the first time it is needed, then kept (graphs
        share one memory pool: only one ever runs at a time). None: this shape runs eagerly
        (no graphs, or its capture failed: that shape alone, so one odd shape never turns a
        whole run eager, at about 7,000 ops a step)."""
        if not self.cuda_graphs or shape in self.uncapturable:
            return None
        if shape not in self.graphs:
            t0 = time.perf_counter()
            try:
                with self.gate:  # no vocoding while the allocator cannot free and retry
                    self.graphs[shape] = self._capture(shape)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # an op that cannot be captured (4-bit kernels?): this shape runs eagerly
                log.warning("CUDA graph capture of %d rows x %d keys failed; that shape runs eagerly: %s",
                            shape[0], shape[1], (str(e).splitlines() or [type(e).__name__])[0])
                self.uncapturable.add(shape)
                fig.capture_failures += 1
                return None
            fig.captures += 1
            fig.capture_seconds += time.perf_counter() - t0
        return self.graphs[shape]

    def _capture(self, shape: tuple[int, int, bool]) -> Any:
        """Warm the shape on a side stream, then capture one step of it."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.trial(shape)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the run loop's thread keeps using the device while this thread
        # captures ("global" would fail its calls, or the capture)
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self._step(*shape)
        self.pool = graph.pool()
        torch.cuda.synchronize()
        return graph

    # -- the loop --------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, jobs: list[Job], on_done=None, more=None) -> Figures:
        """Decode every job to its end-of-turn or its budget; fills `job.tokens`, and calls
        on_done(job) as each finishes (the vocoder takes it from there while decoding goes on).
        `more()`: jobs that arrived since (each `fits`), asked for at every sync; the run goes
        on while it brings any.

        Newcomers' prompts are prefilled a chunk at a time between decode periods, within a
        share of the time (`PREFILL_SHARE`) while most slots are decoding, so running rows
        keep producing while the queue drains; at full speed while most slots are empty.
        Each job's `seconds` is its share of the device time (a period's time split among the
        rows it decoded, a prefill's among the rows it filled); `peers` the most tasks that
        decoded at once with it, itself included."""
        fig = Figures(attention=self.runner.attention)
        if not jobs:
            return fig
        self._reserve(jobs, fig)
        fig.slots, fig.cache_length = self.slots, self.length
        widths = [self.slots] if self.deterministic else \
            sorted({min(2**i, self.slots) for i in range(self.slots.bit_length() + 1)})
        sizes = [self.length] if self.deterministic else buckets(self.length)
        used: set[tuple[int, int, bool]] = set()
        queue = deque(jobs)
        self.rows: list[_Row | None] = [None] * self.slots
        self.done.fill_(True)
        self.pos.fill_(self.length)
        self.steps_seen = [0] * self.slots  # each row's steps at the last sync
        credit = 0.0  # seconds of prefill earned by decode periods while newcomers wait
        self._admit(queue, fig, more)
        while any(self.rows):
            live = self._live()
            waiting = any(r and not r.filled for r in self.rows)
            if len(live) * 2 < self.slots:  # most slots idle: fill them at full speed
                self._fill(fig, chunks=None)
                if not live:
                    continue
                live = self._live()
            elif waiting and credit > 0:
                credit -= self._fill(fig, chunks=1)
                live = self._live()
            elif not waiting:
                credit = 0.0
            w = next(x for x in widths if x > max(live))
            need = max(len(self.rows[s].ids) + self.steps_seen[s] + SYNC_EVERY for s in live)
            keys = next(k for k in sizes if k >= min(need, self.length))
            shape = (w, keys, any(r and r.job.guided for r in self.rows[:w]))
            used.add(shape)
            graph = self._graph(shape, fig)
            t0 = time.perf_counter()
            for _ in range(SYNC_EVERY):
                if graph is not None:
                    graph.replay()
                else:
                    self._step(*shape)
            fig.steps += SYNC_EVERY
            with torch.profiler.record_function(SYNC_LABEL):  # the one read-back per SYNC_EVERY steps
                flags = torch.stack([self.done[:w].long(), self.step[:w]]).cpu().tolist()
            fig.syncs += 1
            period = time.perf_counter() - t0
            fig.decode_seconds += period
            self._share(live, period)
            credit += period * PREFILL_SHARE / (1 - PREFILL_SHARE)
            for s in live:
                self.steps_seen[s] = flags[1][s]
            self._finish([s for s in live if not self.rows[s].reference and flags[0][s]], flags[1], fig, on_done)
            self._compact(widths)
            self._admit(queue, fig, more)
        fig.graphs = sorted(f"{w}x{k}{'g' if g else ''}" for w, k, g in used if (w, k, g) in self.graphs)
        fig.keys = sorted({k for _, k, _ in used})
        return fig

    def fits(self, job: Job) -> bool:
        """Whether a running decode can take this job: the cache holds its rows, and its
        rows fit the slots."""
        rows = [job.prompt, job.reference] if job.guided else [job.prompt]
        return len(rows) <= self.slots and max(len(r) for r in rows) + job.budget <= self.length

    def _share(self, live: list[int], seconds: float) -> None:
        """A period's time split among the rows that decoded in it; the tasks' peers."""
        tasks = {id(self.rows[s].job): self.rows[s].job for s in live}
        for s in live:
            self.rows[s].job.seconds += seconds / len(live)
        for job in tasks.values():
            job.peers = max(job.peers, len(tasks))

    def _live(self) -> list[int]:
        """The slots whose rows are decoding (their prompts are in)."""
        return [s for s, r in enumerate(self.rows) if r and r.filled]

    def _finish(self, ended: list[int], steps: list[int], fig: Figures, on_done) -> None:
        """Hand over the tasks whose rows ended and free their slots."""
        if not ended:
            return
        with torch.profiler.record_function(SYNC_LABEL):
            got = self.tokens[ended].cpu().tolist()
        now = time.perf_counter()
        for s, toks in zip(ended, got, strict=True):
            job = self.rows[s].job
            job.tokens = toks[: steps[s]]
            job.ended_at = now
            fig.task_tokens += len(job.tokens)
            if on_done is not None:
                on_done(job)
            for r, row in enumerate(self.rows):
                if row and row.job is job:
                    self.rows[r] = None
                    self.runner.release(r)
                    fig.row_tokens += len(job.tokens)

    def _reserve(self, jobs: list[Job], fig: Figures) -> None:
        """A cache and state big enough for these jobs: the one already made when it is (its
        graphs with it), else a new one (growing in steps of LENGTH_STEP positions)."""
        slots = max(self.slots, *(2 if j.guided else 1 for j in jobs))
        longest = max(len(r) + j.budget for j in jobs for r in ([j.prompt, j.reference] if j.guided else [j.prompt]))
        self.reserve(longest, slots, fig)

    def reserve(self, positions: int, slots: int = 0, fig: Figures | None = None) -> None:
        """Make the cache hold `positions` a row (rounded up) in at least `slots` slots, unless it
        already does (a server can size it once for its longest request)."""
        slots = max(slots, self.slots)
        if self.deterministic:
            length = self.runner.window
        else:
            length = min(max(-(-positions // LENGTH_STEP) * LENGTH_STEP, self.length), self.runner.window)
        if self.length >= length and self.slots >= slots:
            return
        self.graphs, self.pool, self.uncapturable, self.views = {}, None, set(), {}
        self.slots, self.length = slots, length
        dev, window = self.device, max(1, self.sampling.repetition_window)
        self.runner.allocate(slots, length + 1, dev)  # position `length`: where idle rows write
        self.logits = torch.zeros(slots, self.runner.vocab, device=dev)
        self.tokens = torch.zeros(slots, length, dtype=torch.long, device=dev)
        self.uniforms = torch.zeros(slots, length, device=dev)
        self.history = torch.zeros(slots, window, dtype=torch.long, device=dev)
        self.step, self.budget, self.pos, self.seen = (torch.zeros(slots, dtype=torch.long, device=dev)
                                                       for _ in range(4))
        self.done = torch.ones(slots, dtype=torch.bool, device=dev)
        self.partner = torch.arange(slots, device=dev)
        self.owner = torch.arange(slots, device=dev)
        self.weight = torch.ones(slots, device=dev)
        if fig is not None:
            fig.allocations += 1

    def close(self) -> None:
        """Free the cache, the state and the graphs (the engine is being released)."""
        self.graphs, self.pool, self.length, self.views = {}, None, 0, {}
        for name in ("logits", "tokens", "uniforms", "history", "step", "budget", "pos", "seen", "done",
                     "partner", "owner", "weight"):
            self.__dict__.pop(name, None)
        self.runner.close()

    def _admit(self, queue: deque, fig: Figures, more=None) -> None:
        """Give queued jobs the free slots (lowest first); their prompts wait to be prefilled.
        Jobs that arrived (`more`) join the end of the queue first. At most `limit` rows hold
        tasks (a job that needs more starts alone)."""
        free = [s for s, r in enumerate(self.rows) if r is None]
        busy = self.slots - len(free)
        if more is not None:  # asked at every sync, so that a stop is heard within one period
            queue.extend(more())
        new: list[tuple[int, _Row]] = []
        while queue and len(free) >= (need := 2 if queue[0].guided else 1) and \
                (busy + len(new) + need <= self.limit or busy + len(new) == 0):
            job = queue.popleft()
            new.append((free.pop(0), _Row(job, False)))
            if job.guided:
                new.append((free.pop(0), _Row(job, True)))
        if not new:
            return
        for s, row in new:
            self.rows[s] = row
        self._set_state(new)

    def _fill(self, fig: Figures, chunks: int | None) -> float:
        """Prefill waiting prompts, `chunks` forwards (None: all of them), rows at the same offset
        and of similar lengths together, at most PREFILL_TOKENS positions of keys a forward;
        start the tasks whose rows are all in. Returns the seconds it took on the device."""
        t0 = time.perf_counter()
        beside = any(r and r.filled for r in self.rows)  # rows are decoding: this time is taken from them
        done = 0
        forwards: list[list[Job]] = []  # each forward's rows' jobs, to share the time among
        while chunks is None or done < chunks:
            # the rows furthest along first (they start soonest), similar lengths together
            waiting = sorted((-r.offset, len(r.ids), s) for s, r in enumerate(self.rows) if r and not r.filled)
            if not waiting:
                break
            offset = -waiting[0][0]
            group: list[int] = []
            for o, n, s in waiting:
                if -o != offset or (group and (self.deterministic or
                                              (len(group) + 1) * min(n, offset + self.runner.chunk) > PREFILL_TOKENS)):
                    break
                group.append(s)
            rows = [self.rows[s].ids for s in group]
            ended, logits = self.runner.prefill(rows, group, offset, self.device)
            if ended:
                self.logits[to_device(torch.tensor([group[i] for i in ended]), self.device)] = logits
            width = min(self.runner.chunk, max(map(len, rows)) - offset)
            for i, s in enumerate(group):
                self.rows[s].offset += width
                self.rows[s].filled = i in ended
            fig.prefill_chunks += 1
            forwards.append([self.rows[s].job for s in group])
            fig.prefill_tokens += sum(max(0, min(width, len(r) - offset)) for r in rows)
            fig.prefill_padded += len(rows) * width
            fig.prefill_rows += len(ended)
            done += 1
            self._start([s for i, s in enumerate(group) if i in ended])
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()  # so the time is the device's
        seconds = time.perf_counter() - t0
        for group in forwards:
            for job in group:
                job.seconds += seconds / len(forwards) / len(group)
        if beside:
            fig.prefill_seconds += seconds
        return seconds

    def _start(self, filled: list[int]) -> None:
        """Rows whose tasks have every row in the cache start decoding (a guided task's two rows
        start together: each step reads both)."""
        ready = []
        for s in filled:
            job = self.rows[s].job
            mine = [r for r, row in enumerate(self.rows) if row and row.job is job]
            if all(self.rows[r].filled for r in mine):
                ready += [r for r in mine if r not in ready]
        if not ready:
            return
        now = time.perf_counter()
        for s in ready:
            self.steps_seen[s] = 0
            self.rows[s].job.started_at = now
        at = to_device(torch.tensor(ready), self.device)
        self.pos[at] = to_device(torch.tensor([len(self.rows[s].ids) for s in ready]), self.device)
        self.done[at] = False

    def _set_state(self, new: list[tuple[int, _Row]]) -> None:
        """Reset the slots' per-row state for their new rows (host-built, copied in at once); they
        stay idle, writing to the scratch position, until their prompts are in."""
        window = self.history.shape[1]
        hist, seen, budget, uni = [], [], [], []
        for _, r in new:
            prompt = r.job.prompt  # the repetition window runs over the task's own sequence
            hist.append(([0] * window + prompt)[-window:])
            seen.append(len(prompt))
            budget.append(r.job.budget)
            u = torch.zeros(self.length)
            u[: r.job.budget] = r.job.uniforms()
            uni.append(u)
        dev = self.device
        slots = to_device(torch.tensor([s for s, _ in new]), dev)
        self.history[slots] = to_device(torch.tensor(hist), dev)
        self.seen[slots] = to_device(torch.tensor(seen), dev)
        self.budget[slots] = to_device(torch.tensor(budget), dev)
        self.uniforms[slots] = to_device(torch.stack(uni), dev)
        self.pos[slots] = self.length
        self.step[slots] = 0
        self.done[slots] = True
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
        self.owner.copy_(to_device(torch.tensor(owner), self.device), non_blocking=True)
        self.partner.copy_(to_device(torch.tensor(partner), self.device), non_blocking=True)
        self.weight.copy_(to_device(torch.tensor(weight), self.device), non_blocking=True)

    def _compact(self, widths: list[int]) -> None:
        """Move decoding rows down when the busy slots would fit a smaller width (fewer rows a
        step); rows still being prefilled stay where they are."""
        busy = [s for s, r in enumerate(self.rows) if r]
        if not busy:
            return
        target = next(x for x in widths if x >= len(busy))
        movers = [s for s in busy if s >= target and self.rows[s].filled]
        if not movers:
            return
        free = [s for s in range(target) if self.rows[s] is None]
        state = (self.logits, self.tokens, self.uniforms, self.history, self.step, self.budget, self.pos,
                 self.seen, self.done, self.weight)
        for src, dst in zip(movers, free, strict=False):
            for t in state:
                t[dst] = t[src]
            self.done[src] = True
            self.pos[src] = self.length
            self.runner.move(src, dst)
            self.rows[dst], self.rows[src] = self.rows[src], None
            self.steps_seen[dst] = self.steps_seen[src]
        self._link()
