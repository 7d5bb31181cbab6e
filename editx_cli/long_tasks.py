"""A task longer than the engine's window, in the run loop: cut into chunks that run as works
of their own (`split`), joined in order as they come back and delivered as one output
(`Long`). Where to cut and how to join are `longform`'s; this module keeps the loop's
account of a long task's chunks."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from editx_cli import audio, longform
from editx_cli.engine import Engine
from editx_cli.report import Outcome
from editx_cli.schedule import outcome_of
from editx_cli.speech_text import speech_seconds
from editx_cli.work import Work


class Long:
    """A task cut into chunks that run as works of their own; joined and written when all are done."""

    def __init__(self, w: Work, chunks: list[Work], starts: list[int], ends: list[int],
                 pauses: list[float] | None, split_seconds: float) -> None:
        self.work, self.chunks, self.starts, self.ends, self.pauses = w, chunks, starts, ends, pauses
        for c in chunks:
            c.whole = self
        # each finished chunk's outcome, what it said and what it should have said (for the report)
        self.done: dict[int, tuple[Outcome, str, str]] = {}
        self.work.outcome.add("split", split_seconds)
        # The join, made in order as chunks come in (each chunk's audio as soon as it is final)
        self.made: dict[int, tuple[np.ndarray, int]] = {}
        self.kept: set[int] = set()
        self.joiner: longform.Joiner | None = None
        self.joined: list[np.ndarray] = []
        self.join_seconds = 0.0

    @property
    def left(self) -> int:
        return len(self.chunks) - len(self.done)

    def span(self, c: Work) -> str:
        i = self.chunks.index(c)
        if self.work.planned.task.kind == "clone":
            return f"text {c.say[:40]!r}"
        return f"{self.starts[i] / self.work.sr:.1f}-{self.ends[i] / self.work.sr:.1f} s"

    def take(self, c: Work) -> None:
        i = self.chunks.index(c)
        self.done[i] = (c.outcome, c.start.audio_text, c.expected)
        c.offer(c.audio, c.sr)
        c.close()

    def offer(self, i: int, x: np.ndarray, sr: int) -> None:
        self.made[i] = (x, sr)
        self._join()

    def _join(self) -> None:
        """Join the chunks that are ready, in order; hand each newly final part to the task's sink."""
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
        for part in self.joined[n:]:
            if len(part):
                self.work.sink.piece(self.work.key, part, self.joiner.sr)

    def keep(self, i: int) -> None:
        """A chunk with no speech in it: the model would only make something up, so it stays as it was."""
        c = self.chunks[i]
        c.outcome.info["kept"] = "no speech: passed through unedited"
        self.done[i] = (c.outcome, "", "")
        self.kept.add(i)
        self.made[i] = (c.audio, c.sr)

    def finish(self) -> str:
        """The chunks joined in order, with the task's report of them, delivered as one output."""
        w, o = self.work, self.work.outcome
        y, spans, sr = np.concatenate(self.joined), self.joiner.spans, self.joiner.sr
        o.add("join", self.join_seconds)
        rows, scores, texts = [], [], []
        for i, c in enumerate(self.chunks):
            co, transcript, expected = self.done[i]
            o.absorb(co.stages, co.cache_hits, co.cache_misses)
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
        return w.finish()


def split(w: Work, engine: Engine, window: float | None, chunk_seconds: float | None, transcriber) -> Long | None:
    """The task's chunks, when its input or text is longer than the engine's window; else None."""
    t = w.planned.task
    if window is None:
        return None
    size = chunk_seconds or engine.chunk_seconds
    t0 = time.perf_counter()
    if t.kind == "clone":
        if speech_seconds(t.text) <= window:
            return None
        pieces = longform.split_text(t.text, size)
        if len(pieces) < 2:
            return None
        chunks = [chunk(w, i, w.audio, w.digest, w.audio_text, text) for i, (text, _) in enumerate(pieces)]
        return Long(w, chunks, [0] * len(chunks), [0] * len(chunks), [p for _, p in pieces[:-1]],
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
        chunks.append(chunk(w, i, piece, audio.samples_digest(piece, sr), texts[i], new_texts[i]))
    ratio = engine.length_ratio(t.edit_type, t.edit_info, t.intensity)
    pauses = None  # an edit whose length the engine fixes is joined as cut: its pauses are edited with it
    if ratio is None:  # else the pause at each cut as the join will measure it, from one chunk's sound to the next's
        bounds = [longform.speech_bounds(c.audio, sr) for c in chunks]
        pauses = [engine.seam_pause(t.edit_type, t.edit_info, t.intensity,
                                    (len(a.audio) - bounds[i][1] + bounds[i + 1][0]) / sr)
                  for i, a in enumerate(chunks[:-1])]
    whole = Long(w, chunks, edges[:-1], edges[1:], pauses, time.perf_counter() - t0)
    # (removing silence is what a vad edit is for; a tempo change must change silence too)
    if t.edit_type != "vad" and ratio in (None, 1.0):
        silent = [i for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))
                  if not any(s < b and e > a for s, e in spans)]
        if len(silent) < len(chunks):
            for i in silent:
                whole.keep(i)
    return whole


def chunk(w: Work, i: int, x: Any, digest: str, audio_text: str, text: str | None) -> Work:
    o = outcome_of(w.planned.task)
    o.seed = longform.chunk_seed(w.outcome.seed or 0, i)
    return Work(w.planned, o, x, w.sr, w.path if w.planned.task.kind == "clone" else "", audio_text, digest, text=text)


def _chunk_texts(w: Work, engine: Engine, transcriber, spans: list[tuple[int, int]], edges: list[int]) -> list[str]:
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
            w.outcome.add("transcribe", seconds)
            w.outcome.looked_up(hit)
            out.append(text)
        w.outcome.info["transcript_split"] = "transcribed by chunk"
        return out
    return [""] * len(pieces)


