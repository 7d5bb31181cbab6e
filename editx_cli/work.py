"""A task in progress through the run loop: its audio pass after pass, its retries, its output
rendered once and handed to its sink. `start` reads a task's input; `judge` scores a group
of final passes."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from editx_cli import audio, deliver, loudness
from editx_cli.engine import Engine, Request, Result
from editx_cli.errors import one_line
from editx_cli.qa import Check, Checker, rank
from editx_cli.report import Outcome
from editx_cli.resume import PlannedTask

log = logging.getLogger("editx")


@dataclass(frozen=True)
class Input:
    """What a work starts from, and a retry starts again from: its audio and what it says."""

    audio: Any
    sr: int
    path: str
    audio_text: str
    digest: str  # samples_digest(audio, sr)


@dataclass(eq=False)  # works are told apart by identity
class Work:
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
    whole: Any = None  # the long task (long_tasks.Long) this work is a chunk of
    sink: Any = None  # where its output goes (sinks.Sink), under `key`; a chunk's goes to its whole
    key: Any = None
    offered: bool = False  # its final audio has gone to its sink's stream (or to its whole's join)

    def __post_init__(self) -> None:
        # What a retry starts again from
        self.start = Input(self.audio, self.sr, self.path, self.audio_text, self.digest)
        self.pass_info: dict[str, Any] = {}

    def offer(self, x: np.ndarray, sr: int) -> None:
        """The final audio of this work, as soon as it is known: to its sink's stream, or to the
        whole's join."""
        if self.offered:
            return
        self.offered = True
        if self.whole is not None:
            self.whole.offer(self.whole.chunks.index(self), x, sr)
        elif self.sink is not None:
            self.sink.piece(self.key, x, sr)

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
                data, rate = self.render()[:2]
                y, sr = _decoded(data, rate, self.planned.task.output.suffix.lower())
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
        self.outcome.absorb(result.stages, result.cache_hits, result.cache_misses, result.info)
        self.pass_info = dict(result.info)
        self.audio, self.sr, self.path = result.audio, result.sr, ""
        self.passes += 1
        if self.passes < self.planned.task.iterations:
            self.digest = audio.samples_digest(self.audio, self.sr)
        # The next pass edits this output; its transcript is what was just spoken.
        if self.planned.task.edit_type == "paralinguistic":
            self.audio_text = self.say

    def finish(self) -> str:
        """Render the output and hand it to the sink; return an error message, or "" on success."""
        t, o = self.planned.task, self.outcome
        try:
            if self.audio.size == 0:
                raise RuntimeError("the engine produced no audio")
            data, rate, measures, seconds = self.render()
            o.add("deliver", seconds)  # stretch, resample, loudness, encode
            o.delivered(rate, len(self.audio) / self.sr / (t.delivery.speed or 1.0), measures)
            self.sink.output(self.key, self.planned, o, data,
                             {"text": self.expected, "kind": self.kind,
                              "input_seconds": round(len(self.start.audio) / self.start.sr, 3)})
            return ""
        except Exception as e:  # one task's failure must not stop the others
            log.debug("task %s failed", t.id, exc_info=True)
            if isinstance(e, ValueError):  # not deliverable as asked (too short or silent to level...)
                o.refuse("output")
            return one_line(e)
        finally:
            self.close()

    def close(self) -> None:
        self.audio = self.start = self.best = self.rendered = None


def start(p: PlannedTask, o: Outcome, engine: Engine, transcriber, window: float | None) -> Work:
    """Read a task's input, and transcribe it when asked to (an input longer than `window`
    seconds is cut first, and its chunks heard); on failure, a work item with no audio and the
    error in its outcome."""
    t = p.task
    text = t.prompt_text if t.kind == "clone" else t.audio_text
    try:
        t0 = time.perf_counter()
        x, sr = audio.load(p.source, max_rate=audio.MAX_INPUT_RATE)
        digest = audio.samples_digest(x, sr)
        o.add("read", time.perf_counter() - t0)
        try:
            level = loudness.integrated(x, sr) if t.delivery.match_input else None
        except loudness.LoudnessError as e:
            raise loudness.LoudnessError(f"match_input: the input audio: {e}") from None
        long = window is not None and len(x) / sr > window
        if transcriber and t.kind == "edit" and not text.strip() and not long and \
                engine.wants_transcript(t.edit_type, t.intensity):  # a long input: each chunk, later
            text, hit, seconds = transcriber(x, sr, digest)
            o.add("transcribe", seconds)
            o.looked_up(hit)
            o.info["transcript"] = text
            o.info["transcribed_by"] = transcriber.backend
    except audio.AudioError as e:  # not audio, or not usable audio: its words are the whole story
        o.refuse("input", str(e).strip().splitlines()[0])
        return Work(p, o, None, 0, str(p.source), text, "")
    except Exception as e:  # audio that cannot be used as asked (too quiet to match, not transcribable)
        o.refuse("engine", one_line(e))
        return Work(p, o, None, 0, str(p.source), text, "")
    o.input_seconds = round(len(x) / sr, 3)
    return Work(p, o, x, sr, str(p.source), text, digest, input_loudness=level)




def judge(works: list[Work], checker: Checker, max_retries: int) -> None:
    """Score the final pass of each work in one group; keep the best attempt of those that are
    done, and send the others round again with the next seed. An output is scored as it will
    be written (levelled, encoded, decoded again); a chunk as the engine made it."""
    checks = [w.check(delivered=w.whole is None) for w in works]
    scores, seconds = checker(checks)
    share = sum(seconds.values()) / len(works)
    for w, s in zip(works, scores, strict=True):
        w.outcome.add("qa", share)
        w.judged(s, max_retries)


def _decoded(data: bytes, rate: int, suffix: str) -> tuple[np.ndarray, int]:
    """An output's samples as a listener will hear them."""
    if suffix != ".pcm":
        return audio.decode(data)
    import soundfile as sf

    x, _ = sf.read(io.BytesIO(data), dtype="float32", format="RAW", subtype="PCM_16", samplerate=rate,
                   channels=1, endian="LITTLE")
    return x, rate
