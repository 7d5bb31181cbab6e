"""The in-process run loop: tasks through an engine, outputs committed as they finish.

The engine runs on a thread of its own (`feed.Feed`): each request goes to it as soon as
it is ready (a new task, a task's next pass, a retry, a long task's chunks) and each
result is settled as soon as it is made, so nothing waits for a batch to end, and a
server's requests (a `Source`) join the decoding under way. At most a group's worth of
tasks is in progress (an engine that decodes several at once holds a few batches'
worth); chained tasks wait for the task they read; a task's failure is its own. Ctrl-C
or SIGTERM stops the loop: what finished stays, the rest is reported as pending.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from editx_cli import audio
from editx_cli.engine import Engine, Result
from editx_cli.errors import InvalidInput, Problem, one_line
from editx_cli.long_tasks import split
from editx_cli.qa import DEFAULT_THRESHOLDS, Checker, Thresholds
from editx_cli.report import Outcome
from editx_cli.resume import PlannedTask, restore
from editx_cli.schedule import FAIL_FAST, Scheduler, group_size, outcome_of
from editx_cli.sinks import Files, Sink
from editx_cli.tasks import Task
from editx_cli.work import Work, judge, start

log = logging.getLogger("editx")


@dataclass
class RunOptions:
    overwrite: bool = False
    force: bool = False  # take over outputs that another manifest wrote into the same folder
    fail_fast: bool = False
    progress: bool = True
    batch_size: int = 8  # tasks decoded together by engines that batch
    transcribe: bool = False  # fill empty audio_text with Whisper where the edit uses it
    whisper_model: str = "large-v3"
    allow_download: bool = False
    qa: bool = False  # score every output (words, voice, duration, level) in the report
    thresholds: str = DEFAULT_THRESHOLDS  # what a passing output scores at least (--retry-below)
    max_retries: int = 0  # regenerate an output below the thresholds this many times, next seed each
    chunk_seconds: float | None = None  # cut longer inputs and texts (None: the engine's window decides)

    def retry_key(self) -> str:
        """What retrying and a chosen chunk length add to a task's identity: the output depends on
        them (nothing when unset, so that earlier outputs stay done)."""
        key = f";chunk={self.chunk_seconds:g}" if self.chunk_seconds else ""
        if not (self.qa and self.max_retries):
            return key
        return f"{key};retry={self.thresholds};max={self.max_retries};whisper={self.whisper_model}"


class Source(Sink, Protocol):
    """Tasks handed to a run while it runs (a server's requests), and where their outputs and
    outcomes go (the source is their sink)."""

    events: queue.Queue  # where the run waits: the source puts feed.ARRIVED there as a task arrives,
    # and the engine's results come back there too

    def take(self, wait: bool, limit: int) -> list[tuple[Any, PlannedTask]] | None:
        """Up to `limit` (key, task) pairs that arrived ([] when none has; blocking until one does
        when `wait`); None once no more will come."""

    def deliver(self, key: Any, outcome: Outcome) -> None:
        """A task's outcome, settled."""


def run(
    planned: list[PlannedTask],
    engine: Engine,
    options: RunOptions,
    transcriber=None,
    sink: Sink | None = None,
    source: Source | None = None,
) -> tuple[list[Outcome], float]:
    """Run every task not already done; return the outcomes and the engine load time.

    The engine loads only if some task needs it. `transcriber`: a Whisper already open (a
    server's, kept for its life); else one is made when the options ask for it. A task that
    fails on its input has `refused` set to what refused it ("input": not usable audio;
    "engine": untranscribable, or refused by the engine; "output": undeliverable as asked), so
    a server can tell its client's fault from its own.
    `sink`: where the planned tasks' outputs go (default: written into place with their resume
    records, `sinks.Files`).
    `source`: tasks that arrive while the run runs, each joining the work under way; the run
    ends when the source says no more will come (its tasks' outputs and outcomes go to it, not
    in the list).
    """
    outcomes = {p.task.id: outcome_of(p.task) for p in planned}
    todo = [p for p in planned if not p.skip]
    for p in planned:
        if p.skip:
            o = outcomes[p.task.id]
            o.settle("skipped")
            o.output_seconds = duration_of(p.task.output)
            restore(o, p.task.output)
    load_seconds = 0.0
    if todo:
        t0 = time.perf_counter()
        log.info("loading the %s engine for %d task%s…", engine.name, len(todo), "" if len(todo) == 1 else "s")
        try:
            engine.load()
        except KeyboardInterrupt:
            log.warning("interrupted while loading the engine: no task ran")
            return [outcomes[p.task.id] for p in planned], time.perf_counter() - t0
        except Exception as e:  # a broken install or checkpoint: nothing can run
            log.debug("engine load failed", exc_info=True)
            raise InvalidInput([Problem(f"--engine {engine.name}", None, None,
                                        f"the engine failed to load: {one_line(e)}")]) from None
        load_seconds = time.perf_counter() - t0
        log.info("%s engine ready on %s in %.1f s", engine.name, engine.device, load_seconds)

    flow = _Flow(planned, outcomes, engine, options, transcriber, sink or Files(), len(todo), source)
    try:
        flow.run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what finished stays; the rest is pending
        flow.drop()
        left = sum(1 for o in outcomes.values() if o.status == "pending")
        log.warning("interrupted: %d task(s) not finished are reported as pending; a rerun goes on from here",
                    left)
    finally:
        flow.bar.close()
    return [outcomes[p.task.id] for p in planned], load_seconds


def progress_bar(total: int, enabled: bool):
    """The tasks' bar on stderr, each finished task named at its end. A terminal that reports no
    size (0 columns or 0 lines: some CI consoles, a pty nobody sized) is taken as 80 x 24: tqdm
    would hide the bar as lying outside the screen."""
    from tqdm import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        columns, lines = size.columns, size.lines
    except (OSError, ValueError, AttributeError):
        columns = lines = 0
    sized = columns > 0 and lines > 0
    return tqdm(total=total, unit="task", file=sys.stderr, disable=not enabled, dynamic_ncols=sized,
                ncols=None if sized else columns or 80, nrows=None if sized else lines or 24)


class _Flow:
    """The tasks of one run through the engine's stream: a work's request goes in as soon as it
    is ready (a new task, a task's next pass, a retry, a long task's chunks), and each result
    is settled as soon as it comes back; at most a group's worth of works at a time."""

    def __init__(self, planned: list[PlannedTask], outcomes: dict[str, Outcome], engine: Engine,
                 options: RunOptions, transcriber, sink: Sink, total: int, source: Source | None) -> None:
        self.outcomes, self.engine, self.options, self.sink = outcomes, engine, options, sink
        self.bar = progress_bar(total, options.progress)
        self.where = {p.task.id: p.task.where for p in planned}
        self.lengths: dict[Path, float] = {}  # input seconds, probed once, for ordering by length
        self.size = group_size(engine, options.batch_size)
        # Shortest input first when tasks are decoded together, so those decoding at once have
        # prompts of similar length (little padding).
        self.sched = Scheduler(planned, options.fail_fast, self.finished,
                               key=self.seconds_of if self.size > 1 else None)
        self.transcriber = transcriber or _transcriber(engine, options)
        self.checker = _checker(engine, options, self.transcriber)
        self.active: list[Work] = []
        self.sent: dict[int, Work] = {}  # request key -> the work whose pass it is
        self.keys = itertools.count()
        self.source = source  # None once it has said no more will come
        self.origin = source  # where the source's tasks go back (their sink), kept after it has ended
        self.keyed: dict[str, tuple[Any, Path]] = {}  # the source's tasks: id -> (its key there, input)

    def run(self) -> None:
        from editx_cli.feed import Feed

        feed = Feed(self.engine, self.source.events if self.source is not None else None)
        ended = False
        try:
            while self.step(feed):
                pass
            ended = not self.sched.stopping
        finally:
            feed.close(abort=not ended)  # interrupted, or --fail-fast: the engine stops now

    def step(self, feed) -> bool:
        """Start what there is room for, hand the engine every work that is ready, settle what
        came back; False when the run is over."""
        room = self.size - min(len(self.active), self.size)
        if self.source is not None:  # asked even with no room: a source may have other work to do
            self.arrived(self.source.take(False, max(0, room - self.sched.ready)))
        starting = self.sched.take(room)
        if self.sched.stopping:  # --fail-fast: work in progress is cancelled too
            for w in list(self.active):
                self.end(w, "cancelled", FAIL_FAST)
            return False
        for p in starting:
            self.start(p)
        with_engine = set(self.sent.values())
        ready = [w for w in self.active if w not in with_engine]
        if ready:
            keys = [next(self.keys) for _ in ready]
            self.sent.update(zip(keys, ready, strict=True))
            feed.put([(key, w.request()) for key, w in zip(keys, ready, strict=True)])
        if not self.sent:
            if starting:  # all failed to start: others may be ready now
                return True
            if self.source is not None:  # idle: wait for the source's next task (or its end)
                self.arrived(self.source.take(True, self.size))
                return True
            if not self.sched.finished:  # cannot happen with validated chains; never spin
                self.sched.abandon("its input task never ran")
            return False
        self.settle(feed.next())
        return True

    def arrived(self, tasks: list[tuple[Any, PlannedTask]] | None) -> None:
        """The source's new tasks join the run (None: no more will come)."""
        if tasks is None:
            self.source = None
            return
        for key, p in tasks:
            self.keyed[p.task.id] = (key, p.source)
            self.outcomes[p.task.id] = outcome_of(p.task)
            self.where[p.task.id] = p.task.where
        self.sched.add([p for _, p in tasks])
        self.bar.total += len(tasks)

    def start(self, p: PlannedTask) -> None:
        """A task's input read (and heard, when asked); a long one cut, its chunks working in its place."""
        window = self.options.chunk_seconds or self.engine.window_seconds
        w = start(p, self.outcomes[p.task.id], self.engine, self.transcriber, window)
        keyed = self.keyed.get(p.task.id)
        w.sink, w.key = (self.origin, keyed[0]) if keyed else (self.sink, p.task.id)
        self.active.append(w)
        if w.audio is None:
            self.end(w, "failed", w.outcome.error)
            return
        try:
            whole = split(w, self.engine, window, self.options.chunk_seconds,
                          self.transcriber or (self.checker and self.checker.transcriber))
        except Exception as e:
            log.debug("task %s could not be cut", p.task.id, exc_info=True)
            self.end(w, "failed", f"cutting the long input: {one_line(e)}")
            return
        if whole is not None:
            self.active.remove(w)
            self.active.extend(c for i, c in enumerate(whole.chunks) if i not in whole.done)

    def settle(self, results: list[tuple[int, Result | Exception]]) -> None:
        """Each work absorbs its pass; final passes are checked (when asked, those that came
        back together in one group) and committed, or sent round again."""
        last: list[Work] = []  # works whose final pass this was
        for key, result in results:
            w = self.sent.pop(key)
            if w not in self.active:  # its task ended (another chunk failed) while it decoded
                continue
            if isinstance(result, BaseException):
                if isinstance(result, ValueError):  # the engine's word on this input
                    (w.whole.work if w.whole else w).outcome.refuse("engine")
                self.end(w, "failed", one_line(result))
                continue
            w.absorb(result)
            if w.passes == w.planned.task.iterations:
                last.append(w)
        if self.checker is not None and last:
            try:
                judge(last, self.checker, self.options.max_retries)
            except Exception as e:  # Whisper or the speaker model failed: these tasks, not the run
                log.debug("quality checks failed", exc_info=True)
                for w in last:
                    self.end(w, "failed", f"quality checks: {one_line(e)}")
                last = []
        for w in last:
            if w.passes == 0:  # below the thresholds: back in the queue with the next seed
                continue
            if w.whole is None:
                w.offer(w.audio, w.sr)
            error = "" if w.whole else w.finish()  # a chunk is joined, not delivered
            self.end(w, "failed" if error else "done", error)

    def end(self, w: Work, state: str, error: str = "") -> None:
        """A work is over: a task's outcome is settled, or a chunk is joined (its task settled
        when it was the last, or failed with it)."""
        if w not in self.active:  # a chunk whose task another chunk's failure has ended
            return
        self.active.remove(w)
        whole = w.whole
        if whole is None:
            w.close()
            w.outcome.settle(state, error)
            self.sched.complete([w.outcome])
            return
        if state == "done":  # a chunk is ready: the task is done when all are
            whole.take(w)
            if whole.left:
                return
            error = whole.finish()
            state = "failed" if error else "done"
        else:  # one chunk failed or was cancelled: so is its task, and its other chunks go
            error = f"chunk {whole.chunks.index(w) + 1} ({whole.span(w)}): {error}"
            for other in whole.chunks:
                if other in self.active:
                    self.active.remove(other)
                    other.close()
        whole.work.close()
        whole.work.outcome.settle(state, error)
        self.sched.complete([whole.work.outcome])

    def drop(self) -> None:
        """Interrupted: the works in progress let go of their audio."""
        for w in self.active:
            w.close()

    def finished(self, o: Outcome) -> None:
        self.outcomes[o.id] = o
        if o.status == "failed":
            log.error("%s: task %s failed: %s", self.where[o.id], o.id, o.error)
        self.bar.set_postfix_str(f"{o.status} {o.id}", refresh=False)
        self.bar.update(1)
        if o.id in self.keyed:  # a source's task: its outcome goes back there, and nothing of it stays
            del self.outcomes[o.id], self.where[o.id]
            self.sched.forget(o.id)
            key, source = self.keyed.pop(o.id)
            self.lengths.pop(source, None)
            self.origin.deliver(key, o)

    def seconds_of(self, p: PlannedTask) -> float:
        if p.source not in self.lengths:
            self.lengths[p.source] = duration_of(p.source) or 0.0
        return self.lengths[p.source]


def duration_of(path: Path) -> float | None:
    try:
        return round(audio.probe(path).seconds, 3)
    except audio.AudioError:
        return None


def check_transcription(tasks: list[Task], engine: Engine, options: RunOptions) -> None:
    """A Whisper model that cannot be opened is bad usage, found before anything runs."""
    needed = [t for t in tasks if t.kind == "edit" and not t.audio_text.strip()
              and engine.wants_transcript(t.edit_type, t.intensity)]
    if not ((options.transcribe and needed) or (options.qa and tasks)):
        return
    from editx_cli.transcribe import TranscriptionError, resolve

    try:
        resolve(options.whisper_model, options.allow_download)
    except TranscriptionError as e:
        raise InvalidInput([Problem("--whisper-model", None, None, str(e))]) from None


def _checker(engine: Engine, options: RunOptions, transcriber) -> Checker | None:
    if not options.qa:
        return None
    if transcriber is None:
        from editx_cli.transcribe import Transcriber

        transcriber = Transcriber(options.whisper_model, engine.device, engine.cache, options.allow_download)
    return Checker(transcriber, engine.speaker_embedding, Thresholds.parse(options.thresholds))


def _transcriber(engine: Engine, options: RunOptions):
    if not options.transcribe:
        return None
    from editx_cli.transcribe import Transcriber

    return Transcriber(options.whisper_model, engine.device, engine.cache, options.allow_download)

