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

import dataclasses
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from editx_cli import audio, deliver, longform, loudness
from editx_cli.engine import Engine, Request, Result
from editx_cli.errors import InvalidInput, Problem, one_line
from editx_cli.qa import DEFAULT_THRESHOLDS, Check, Checker, Thresholds, rank
from editx_cli.report import Outcome
from editx_cli.resume import PlannedTask, commit, manifest_of, restore
from editx_cli.schedule import FAIL_FAST, Scheduler, group_size, outcome_of
from editx_cli.speech_text import speech_seconds
from editx_cli.tasks import Task

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


class Source(Protocol):
    """Tasks handed to a run while it runs (a server's requests), and where their outcomes go."""

    def take(self, wait: bool, limit: int) -> list[tuple[Any, PlannedTask]] | None:
        """Up to `limit` (key, task) pairs that arrived ([] when none has; blocking until one does
        when `wait`); None once no more will come."""

    def deliver(self, key: Any, outcome: Outcome) -> None:
        """A task's outcome, settled."""

    def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever a task arrives (the run is waiting on its engine meanwhile)."""


def run(
    planned: list[PlannedTask],
    engine: Engine,
    options: RunOptions,
    transcriber=None,
    on_audio: Callable[[str, np.ndarray, int], None] | None = None,
    source: Source | None = None,
) -> tuple[list[Outcome], float]:
    """Run every task not already done; return the outcomes and the engine load time.

    The engine loads only if some task needs it. `transcriber`: a Whisper already open (a
    server's, kept for its life); else one is made when the options ask for it. A task that
    fails on its input (unreadable, untranscribable, refused by the engine, undeliverable)
    has `refused` set, so a server can tell its client's fault from its own.
    `on_audio(task id, samples, rate)`: each output as its parts become final, in order, before
    it is levelled and encoded (a long task's as its chunks are joined, each as soon as the
    engine has made it when no check can still reject it): a streamed response.
    `source`: tasks that arrive while the run runs, each joining the work under way; the run
    ends when the source says no more will come (its tasks' outcomes go to it, not in the list).
    """
    outcomes = {p.task.id: outcome_of(p.task) for p in planned}
    todo = [p for p in planned if not p.skip]
    for p in planned:
        if p.skip:
            o = outcomes[p.task.id]
            o.status = "skipped"
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

    flow = _Flow(planned, outcomes, engine, options, transcriber, on_audio, len(todo), source)
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
                 options: RunOptions, transcriber, on_audio, total: int, source: Source | None) -> None:
        self.outcomes, self.engine, self.options, self.on_audio = outcomes, engine, options, on_audio
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
        self.active: list[_Work] = []
        self.sent: dict[int, _Work] = {}  # request key -> the work whose pass it is
        self.keys = itertools.count()
        self.source = source  # None once it has said no more will come
        self.deliver = source.deliver if source is not None else None
        self.keyed: dict[str, tuple[Any, Path]] = {}  # the source's tasks: id -> (its key there, input)

    def run(self) -> None:
        from editx_cli.feed import Feed

        feed = Feed(self.engine)
        if self.source is not None:
            self.source.listen(feed.wake)
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
        w = _start(p, self.outcomes[p.task.id], self.engine, self.transcriber, self.options)
        w.on_audio = self.on_audio
        self.active.append(w)
        if w.audio is None:
            self.end(w, "failed", w.outcome.error)
            return
        try:
            whole = _split(w, self.engine, self.options,
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
        last: list[_Work] = []  # works whose final pass this was
        for key, result in results:
            w = self.sent.pop(key)
            if w not in self.active:  # its task ended (another chunk failed) while it decoded
                continue
            if isinstance(result, BaseException):
                if isinstance(result, ValueError):  # the engine's word on this input
                    (w.whole.work if w.whole else w).outcome.refused = True
                self.end(w, "failed", one_line(result))
                continue
            w.absorb(result)
            if w.passes == w.planned.task.iterations:
                last.append(w)
        if self.checker is not None and last:
            try:
                _judge(last, self.checker, self.options.max_retries)
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
            error = "" if w.whole else w.commit()  # a chunk is joined, not written
            self.end(w, "failed" if error else "done", error)

    def end(self, w: _Work, state: str, error: str = "") -> None:
        """A work is over: a task's outcome is settled, or a chunk is joined (its task settled
        when it was the last, or failed with it)."""
        if w not in self.active:  # a chunk whose task another chunk's failure has ended
            return
        self.active.remove(w)
        whole = w.whole
        if whole is None:
            w.close()
            w.outcome.status, w.outcome.error = state, error
            self.sched.complete([w.outcome])
            return
        if state == "done":  # a chunk is ready: the task is done when all are
            whole.take(w)
            if whole.left:
                return
            error = whole.commit()
            state = "failed" if error else "done"
        else:  # one chunk failed or was cancelled: so is its task, and its other chunks go
            error = f"chunk {whole.chunks.index(w) + 1} ({whole.span(w)}): {error}"
            for other in whole.chunks:
                if other in self.active:
                    self.active.remove(other)
                    other.close()
        whole.work.close()
        whole.work.outcome.status, whole.work.outcome.error = state, error
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
            self.deliver(key, o)

    def seconds_of(self, p: PlannedTask) -> float:
        if p.source not in self.lengths:
            self.lengths[p.source] = duration_of(p.source) or 0.0
        return self.lengths[p.source]


def _judge(works: list[_Work], checker: Checker, max_retries: int) -> None:
    """Score the final pass of each work in one group; keep the best attempt of those that are
    done, and send the others round again with the next seed. An output is scored as it will
    be written (levelled, encoded, decoded again); a chunk as the engine made it."""
    checks = [w.check(delivered=w.whole is None) for w in works]
    scores, seconds = checker(checks)
    share = sum(seconds.values()) / len(works)
    for w, s in zip(works, scores, strict=True):
        w.outcome.stages["qa"] = round(w.outcome.stages.get("qa", 0.0) + share, 4)
        w.judged(s, max_retries)


def duration_of(path: Path) -> float | None:
    try:
        return round(audio.probe(path).seconds, 3)
    except audio.AudioError:
        return None


@dataclass(frozen=True)
class _Input:
    """What a work starts from, and a retry starts again from: its audio and what it says."""

    audio: Any
    sr: int
    path: str
    audio_text: str
    digest: str  # samples_digest(audio, sr)


@dataclass(eq=False)  # works are told apart by identity
class _Work:
    """A task in progress: its current audio and how many passes it has had."""

    planned: PlannedTask
    outcome: Outcome
    audio: Any  # the current audio: the input, then each pass's output
    sr: int
    path: str
    audio_text: str
    digest: str  # samples_digest of the current audio
    text: str | None = None  # what to say (a clone, a paralinguistic edit), when not the task's own
    passes: int = 0
    input_loudness: float | None = None  # LUFS of the task's input, when the output is to match it
    attempt: int = 0  # 0: the first; each retry regenerates from the input with the next seed
    attempts: list | None = None  # every attempt's scores, with its seed
    rendered: tuple | None = None  # the output as it will be written, once made (see render)
    best: tuple | None = None  # (rank, audio, rate, engine info, scores) of the best attempt so far
    whole: _Long | None = None  # the long task this work is a chunk of
    on_audio: Callable[[str, np.ndarray, int], None] | None = None  # see run()
    offered: bool = False  # its final audio has gone to on_audio (or to its whole's join)

    def __post_init__(self) -> None:
        # What a retry starts again from
        self.start = _Input(self.audio, self.sr, self.path, self.audio_text, self.digest)
        self.pass_info: dict[str, Any] = {}

    def offer(self, x: np.ndarray, sr: int) -> None:
        """The final audio of this work, as soon as it is known: to on_audio, or to the whole's join."""
        if self.offered:
            return
        self.offered = True
        if self.whole is not None:
            self.whole.offer(self.whole.chunks.index(self), x, sr)
        elif self.on_audio is not None:
            self.on_audio(self.planned.task.id, x, sr)

    @property
    def say(self) -> str:
        return self.planned.task.text if self.text is None else self.text

    @property
    def seed(self) -> int:
        return ((self.outcome.seed or 0) + self.attempt) % 2**32

    def request(self) -> Request:
        t = self.planned.task
        return Request(kind=t.kind, audio=self.audio, sr=self.sr, audio_text=self.audio_text, text=self.say,
                       edit_type=t.edit_type, edit_info=t.edit_info, intensity=t.intensity, seed=self.seed,
                       audio_digest=self.digest, path=self.path, task_id=t.id)

    @property
    def kind(self) -> str:
        """What the QA bounds of its duration go by: "clone", or the edit type."""
        return "clone" if self.planned.task.kind == "clone" else self.planned.task.edit_type

    @property
    def expected(self) -> str:
        """What the output should say."""
        t = self.planned.task
        return self.say if t.kind == "clone" or t.edit_type == "paralinguistic" else self.start.audio_text

    def check(self, delivered: bool = False) -> Check:
        """The output so far (as it will be written, when `delivered`) and what it is checked
        against: the task's input voice and text."""
        x0, sr0, digest0 = self.start.audio, self.start.sr, self.start.digest
        y, sr = self.audio, self.sr
        if delivered:
            try:
                y, sr = audio.decode(self.render()[0])
            except Exception:  # cannot be delivered: committing it fails the task with the reason
                pass
        return Check(y, sr, audio.samples_digest(y, sr), x0, sr0, digest0, self.expected, self.kind, len(x0) / sr0)

    def render(self) -> tuple[bytes, int, dict, float]:
        """The output as it will be written (resampled, levelled, encoded), made once: bytes,
        rate, loudness measures, seconds taken."""
        if self.rendered is None:
            t0 = time.perf_counter()
            t = self.planned.task
            data, rate, measures = deliver.render(self.audio, self.sr, t.output.suffix.lower(), t.delivery,
                                                  self.input_loudness)
            self.rendered = (data, rate, measures, time.perf_counter() - t0)
        return self.rendered

    def judged(self, scores: dict[str, Any], max_retries: int) -> None:
        """Record an attempt's scores; retry (passes back to 0) or settle on the best attempt."""
        scores = {"attempt": self.attempt + 1, "seed": self.seed, **scores}
        self.attempts = [*(self.attempts or []), scores]
        if self.best is None or rank(scores) > self.best[0]:  # a later attempt must be better to replace
            self.best = (rank(scores), self.audio, self.sr, dict(self.pass_info), scores, self.rendered)
        if not scores["passed"] and self.attempt < max_retries:
            self.attempt += 1
            self.audio, self.sr, self.path = self.start.audio, self.start.sr, self.start.path
            self.audio_text, self.digest = self.start.audio_text, self.start.digest
            self.passes, self.rendered = 0, None
            return
        _, self.audio, self.sr, info, kept, self.rendered = self.best
        self.outcome.info.update(info)
        retried = len(self.attempts) > 1
        self.outcome.info["qa"] = {k: v for k, v in kept.items() if k not in ("attempt", "seed") or retried}
        if len(self.attempts) > 1:
            self.outcome.info["qa_attempts"] = self.attempts

    def absorb(self, result: Result) -> None:
        o = self.outcome
        for stage, seconds in result.stages.items():
            o.stages[stage] = round(o.stages.get(stage, 0.0) + seconds, 4)
        o.info.update(result.info)
        self.pass_info = dict(result.info)
        o.cache_hits += result.cache_hits
        o.cache_misses += result.cache_misses
        self.audio, self.sr, self.path = result.audio, result.sr, ""
        self.passes += 1
        if self.passes < self.planned.task.iterations:
            self.digest = audio.samples_digest(self.audio, self.sr)
        # The next pass edits this output; its transcript is what was just spoken.
        if self.planned.task.edit_type == "paralinguistic":
            self.audio_text = self.say

    def commit(self) -> str:
        """Write the output atomically; return an error message, or "" on success."""
        t, o = self.planned.task, self.outcome
        try:
            if self.audio.size == 0:
                raise RuntimeError("the engine produced no audio")
            # Temporary files of this output left by a killed run go; another live run's stay.
            audio.remove_stale_parts(t.output)
            data, rate, measures, seconds = self.render()
            o.stages["deliver"] = round(seconds, 4)  # resample, loudness, encode
            t0 = time.perf_counter()
            tmp = audio.write_atomic(t.output, data)
            o.output_seconds = round(len(self.audio) / self.sr, 3)
            o.sample_rate = rate
            o.loudness_before, o.loudness_after = measures.get("loudness_before"), measures.get("loudness_after")
            o.true_peak = measures["true_peak"]
            if "loudness_target" in measures:
                o.info["loudness_target"] = measures["loudness_target"]
            o.stages["write"] = round(time.perf_counter() - t0, 4)
            try:
                commit(tmp, t.output, self.planned.fingerprint, t.id, manifest_of(t), o,
                       {"reference": os.path.abspath(self.planned.source), "text": self.expected, "kind": self.kind,
                        "input_seconds": round(len(self.start.audio) / self.start.sr, 3)})
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return ""
        except Exception as e:  # one task's failure must not stop the others
            log.debug("task %s failed", t.id, exc_info=True)
            if isinstance(e, ValueError):  # not deliverable as asked (too short or silent to level...)
                o.refused = True
            return one_line(e)
        finally:
            self.close()

    def close(self) -> None:
        self.audio = self.start = self.best = self.rendered = None


def _start(p: PlannedTask, o: Outcome, engine: Engine, transcriber, options: RunOptions) -> _Work:
    """Read a task's input (and transcribe it when asked to); on failure, a work item with no
    audio and the error in its outcome."""
    t = p.task
    text = t.prompt_text if t.kind == "clone" else t.audio_text
    try:
        t0 = time.perf_counter()
        x, sr = audio.load(p.source, max_rate=audio.MAX_INPUT_RATE)
        digest = audio.samples_digest(x, sr)
        o.stages["read"] = round(time.perf_counter() - t0, 4)
        try:
            level = loudness.integrated(x, sr) if t.delivery.match_input else None
        except loudness.LoudnessError as e:
            raise loudness.LoudnessError(f"match_input: the input audio: {e}") from None
        long = _window(engine, options) is not None and len(x) / sr > _window(engine, options)
        if transcriber and t.kind == "edit" and not text.strip() and not long and \
                engine.wants_transcript(t.edit_type, t.intensity):  # a long input: each chunk, later
            text, hit, seconds = transcriber(x, sr, digest)
            o.stages["transcribe"] = round(seconds, 4)
            o.looked_up(hit)
            o.info["transcript"] = text
            o.info["transcribed_by"] = transcriber.backend
    except Exception as e:
        o.error = one_line(e)
        o.refused = True  # the input could not be read or heard
        return _Work(p, o, None, 0, str(p.source), text, "")
    o.input_seconds = round(len(x) / sr, 3)
    return _Work(p, o, x, sr, str(p.source), text, digest, input_loudness=level)


def _window(engine: Engine, options: RunOptions) -> float | None:
    """Inputs longer than this many seconds are cut (None: none is)."""
    return options.chunk_seconds or engine.window_seconds


class _Long:
    """A task cut into chunks that run as works of their own; joined and written when all are done."""

    def __init__(self, w: _Work, chunks: list[_Work], starts: list[int], ends: list[int],
                 pauses: list[float] | None, split_seconds: float) -> None:
        self.work, self.chunks, self.starts, self.ends, self.pauses = w, chunks, starts, ends, pauses
        for c in chunks:
            c.whole = self
        # each finished chunk's outcome, what it said and what it should have said (for the report)
        self.done: dict[int, tuple[Outcome, str, str]] = {}
        self.work.outcome.stages["split"] = round(split_seconds, 4)
        # The join, made in order as chunks come in (each chunk's audio as soon as it is final)
        self.made: dict[int, tuple[np.ndarray, int]] = {}
        self.kept: set[int] = set()
        self.joiner: longform.Joiner | None = None
        self.joined: list[np.ndarray] = []
        self.join_seconds = 0.0

    @property
    def left(self) -> int:
        return len(self.chunks) - len(self.done)

    def span(self, c: _Work) -> str:
        i = self.chunks.index(c)
        if self.work.planned.task.kind == "clone":
            return f"text {c.say[:40]!r}"
        return f"{self.starts[i] / self.work.sr:.1f}-{self.ends[i] / self.work.sr:.1f} s"

    def take(self, c: _Work) -> None:
        i = self.chunks.index(c)
        self.done[i] = (c.outcome, c.start.audio_text, c.expected)
        c.offer(c.audio, c.sr)
        c.close()

    def offer(self, i: int, x: np.ndarray, sr: int) -> None:
        self.made[i] = (x, sr)
        self._join()

    def _join(self) -> None:
        """Join the chunks that are ready, in order; hand each newly final part to on_audio."""
        t0 = time.perf_counter()
        if self.joiner is None:  # the engine's rate: a kept chunk waits for the first it made
            rate = next((r for i, (_, r) in sorted(self.made.items()) if i not in self.kept), None)
            if rate is None:
                return
            self.joiner = longform.Joiner(self.pauses, rate)
        n = len(self.joined)
        while len(self.joined) < len(self.chunks) and len(self.joined) in self.made:
            x, r = self.made.pop(len(self.joined))
            self.joined.append(self.joiner.add(x if r == self.joiner.sr else audio.resample(x, r, self.joiner.sr)))
        if len(self.joined) == len(self.chunks) and n < len(self.joined):
            self.joined.append(self.joiner.finish())
        self.join_seconds += time.perf_counter() - t0
        if self.work.on_audio is not None:
            for part in self.joined[n:]:
                if len(part):
                    self.work.on_audio(self.work.planned.task.id, part, self.joiner.sr)

    def keep(self, i: int) -> None:
        """A chunk with no speech in it: the model would only make something up, so it stays as it was."""
        c = self.chunks[i]
        c.outcome.info["kept"] = "no speech: passed through unedited"
        self.done[i] = (c.outcome, "", "")
        self.kept.add(i)
        self.made[i] = (c.audio, c.sr)

    def commit(self) -> str:
        """Join the chunks in order, with the task's report of them, and write the output."""
        w, o = self.work, self.work.outcome
        y, spans, sr = np.concatenate(self.joined), self.joiner.spans, self.joiner.sr
        o.stages["join"] = round(self.join_seconds, 4)
        rows, scores, texts = [], [], []
        for i, c in enumerate(self.chunks):
            co, transcript, expected = self.done[i]
            for stage, seconds in co.stages.items():
                o.stages[stage] = round(o.stages.get(stage, 0.0) + seconds, 4)
            o.cache_hits += co.cache_hits
            o.cache_misses += co.cache_misses
            row = {"index": i + 1, "text": c.say if w.planned.task.kind == "clone" else transcript,
                   "seed": co.seed, "output_start": longform.seconds(spans[i][0], sr),
                   "output_end": longform.seconds(spans[i][1], sr),
                   "seconds": round(sum(co.stages.values()), 4), "cache_hits": co.cache_hits,
                   "cache_misses": co.cache_misses,
                   **{k: v for k, v in co.info.items() if k in ("generated_tokens", "stopped", "decoded_with",
                                                               "transcript", "qa", "qa_attempts", "kept")}}
            if w.planned.task.kind == "edit":
                row = {"index": i + 1, "start": longform.seconds(self.starts[i], w.sr),
                       "end": longform.seconds(self.ends[i], w.sr), **row}
            if c.text is not None and w.planned.task.kind == "edit":
                row["new_text"] = c.text
            rows.append(row)
            texts.append(row["text"])
            if isinstance(co.info.get("qa"), dict):
                scores.append((co.info["qa"], expected))
        o.info["chunks"] = rows
        if scores:
            from editx_cli.qa import combine

            o.info["qa"] = combine(scores, len(y) / sr, len(w.audio) / w.sr)
        w.start = dataclasses.replace(w.start, audio_text=" ".join(texts))  # what `editx qa` compares with
        w.audio, w.sr = y, sr
        return w.commit()


def _split(w: _Work, engine: Engine, options: RunOptions, transcriber) -> _Long | None:
    """The task's chunks, when its input or text is longer than the engine's window; else None."""
    window = _window(engine, options)
    t = w.planned.task
    if window is None:
        return None
    size = options.chunk_seconds or engine.chunk_seconds
    t0 = time.perf_counter()
    if t.kind == "clone":
        if speech_seconds(t.text) <= window:
            return None
        pieces = longform.split_text(t.text, size)
        if len(pieces) < 2:
            return None
        chunks = [_chunk(w, i, w.audio, w.digest, w.audio_text, text) for i, (text, _) in enumerate(pieces)]
        return _Long(w, chunks, [0] * len(chunks), [0] * len(chunks), [p for _, p in pieces[:-1]],
                     time.perf_counter() - t0)
    x, sr = w.audio, w.sr
    if len(x) / sr <= window:
        return None
    spans, hit = longform.speech_spans(x, sr, engine.cache, w.digest)
    w.outcome.looked_up(hit)
    cuts = longform.cut_points(spans, len(x), sr, size, x)
    edges = [0, *cuts, len(x)]
    texts = _chunk_texts(w, engine, transcriber, spans, edges)
    new_texts = longform.split_like(t.text, texts) if t.edit_type == "paralinguistic" else [None] * len(texts)
    chunks = []
    for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False)):
        piece = x[a:b]
        chunks.append(_chunk(w, i, piece, audio.samples_digest(piece, sr), texts[i], new_texts[i]))
    ratio = engine.length_ratio(t.edit_type, t.edit_info, t.intensity)
    pauses = None  # an edit whose length the engine fixes is joined as cut: its pauses are edited with it
    if ratio is None:  # else the pause at each cut as the join will measure it, from one chunk's sound to the next's
        bounds = [longform.speech_bounds(c.audio, sr) for c in chunks]
        pauses = [engine.seam_pause(t.edit_type, t.edit_info, t.intensity,
                                    (len(a.audio) - bounds[i][1] + bounds[i + 1][0]) / sr)
                  for i, a in enumerate(chunks[:-1])]
    whole = _Long(w, chunks, edges[:-1], edges[1:], pauses, time.perf_counter() - t0)
    # (removing silence is what a vad edit is for; a tempo change must change silence too)
    if t.edit_type != "vad" and ratio in (None, 1.0):
        silent = [i for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))
                  if not any(s < b and e > a for s, e in spans)]
        if len(silent) < len(chunks):
            for i in silent:
                whole.keep(i)
    return whole


def _chunk(w: _Work, i: int, x: Any, digest: str, audio_text: str, text: str | None) -> _Work:
    o = outcome_of(w.planned.task)
    o.seed = longform.chunk_seed(w.outcome.seed or 0, i)
    return _Work(w.planned, o, x, w.sr, w.path if w.planned.task.kind == "clone" else "", audio_text, digest, text=text)


def _chunk_texts(w: _Work, engine: Engine, transcriber, spans: list[tuple[int, int]], edges: list[int]) -> list[str]:
    """Each chunk's part of the transcript: the given one cut where Whisper's word timestamps put
    the cuts (in proportion to each chunk's speech without Whisper); else each chunk transcribed."""
    t, x, sr = w.planned.task, w.audio, w.sr
    pieces = list(zip(edges, edges[1:], strict=False))
    if w.audio_text.strip():
        if transcriber is not None:
            words, hit = transcriber.words(x, sr, w.digest)
            w.outcome.looked_up(hit)
            split = longform.split_by_times(w.audio_text, words, [e / sr for e in edges[1:-1]])
            if split is not None:
                w.outcome.info["transcript_split"] = "whisper"
                return split
        speech = [sum(max(0, min(b, e) - max(a, s)) for s, e in spans) + 1 for a, b in pieces]
        w.outcome.info["transcript_split"] = "speech time"
        return longform.split_words(w.audio_text, speech)
    if transcriber is not None and engine.wants_transcript(t.edit_type, t.intensity):
        out = []
        for a, b in pieces:
            text, hit, seconds = transcriber(x[a:b], sr, audio.samples_digest(x[a:b], sr))
            w.outcome.stages["transcribe"] = round(w.outcome.stages.get("transcribe", 0.0) + seconds, 4)
            w.outcome.looked_up(hit)
            out.append(text)
        w.outcome.info["transcript_split"] = "transcribed by chunk"
        return out
    return [""] * len(pieces)


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

