"""Quality checks of outputs: what they say, whose voice they speak in, how long and how loud.

- Words: the output transcribed by Whisper (clips of one window decoded together), its word
  error rate against the text it should say (character error rate for Chinese, Japanese
  and Thai), after tags and punctuation are taken out of both.
- Voice: the cosine similarity of the engine's speaker embeddings (CAM++ for stepaudio) of
  the reference (a clone's prompt, an edit's input) and the output.
- Sanity: duration against what the task should give, silence, clipping.

A check passes when it has no sanity problem and meets the thresholds of the scores it
has; an output with no text to compare (a denoise of audio nobody transcribed) is judged
on the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from editx_cli.speech_text import counts_characters, speech_seconds, spoken

DEFAULT_THRESHOLDS = "wer=0.15,sim=0.5"
HEARD_CHARS = 500  # of the transcript kept in the report
SILENT_DBFS = -45.0  # a peak below this is no speech
CLIPPED = 0.999  # |sample| at or above this is at full scale
CLIPPED_SHARE = 0.001  # more than this share of samples at full scale is clipping
# Output duration over what the task should give: outside these, the model skipped, cut or ran on.
RATIO_BOUNDS = {"clone": (0.3, 3.0), "speed": (0.3, 3.0), "vad": (0.0, 1.2), "edit": (0.5, 2.0)}


class ThresholdError(ValueError):
    pass


@dataclass(frozen=True)
class Thresholds:
    """The lowest quality an output may have: most errors (wer; cer for character-counted
    languages, else wer there too) and least speaker similarity."""

    wer: float | None = None
    cer: float | None = None
    sim: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Thresholds:
        values: dict[str, float] = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            name = name.strip().lower()
            if not sep or name not in ("wer", "cer", "sim"):
                raise ThresholdError(f"{part!r}: expected wer=N, cer=N or sim=N, comma-separated")
            try:
                number = float(value)
            except ValueError:
                raise ThresholdError(f"{part!r}: {value.strip()!r} is not a number") from None
            if not 0.0 <= number <= (1.0 if name == "sim" else 10.0) or math.isnan(number):
                raise ThresholdError(f"{part!r}: out of range ({'0 to 1' if name == 'sim' else '0 to 10'})")
            values[name] = number
        if not values:
            raise ThresholdError(f"{spec!r}: no threshold given (e.g. {DEFAULT_THRESHOLDS})")
        return cls(**values)

    def key(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in (("wer", self.wer), ("cer", self.cer), ("sim", self.sim))
                        if v is not None)

    def misses(self, scores: dict[str, Any]) -> list[str]:
        """The thresholds these scores fall short of, in words."""
        out = []
        for metric in ("wer", "cer"):
            limit = self.cer if metric == "cer" and self.cer is not None else self.wer
            if scores.get(metric) is not None and limit is not None and scores[metric] > limit:
                out.append(f"{metric} {scores[metric]:.3f} > {limit:g}")
        if scores.get("similarity") is not None and self.sim is not None and scores["similarity"] < self.sim:
            out.append(f"similarity {scores['similarity']:.3f} < {self.sim:g}")
        return out


def error_rate(expected: str, heard: str) -> tuple[str, float | None]:
    """("wer" or "cer", the rate) of what was heard against what should have been said; the
    rate is None when the expected text has no words."""
    import jiwer

    metric = "cer" if counts_characters(expected) else "wer"
    reference, hypothesis = spoken(expected), spoken(heard)
    if metric == "cer":
        reference, hypothesis = reference.replace(" ", ""), hypothesis.replace(" ", "")
    if not reference:
        return metric, None
    if not hypothesis:
        return metric, 1.0
    rate = jiwer.cer(reference, hypothesis) if metric == "cer" else jiwer.wer(reference, hypothesis)
    return metric, float(rate)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def level(y: np.ndarray) -> tuple[float, float]:
    """(peak dBFS, share of samples at full scale)."""
    if y.size == 0:
        return -math.inf, 0.0
    a = np.abs(np.asarray(y, np.float32))
    peak = float(a.max())
    return (20 * math.log10(peak) if peak > 0 else -math.inf), float(np.mean(a >= CLIPPED))


@dataclass
class Check:
    """One output and what it is checked against."""

    output: np.ndarray
    sr: int
    digest: str  # samples_digest of the output (transcripts are cached by it)
    reference: np.ndarray | None  # the voice it should have: a clone's prompt, an edit's input
    reference_sr: int
    reference_digest: str
    expected_text: str  # what it should say; "" when unknown
    kind: str  # "clone" or the edit type
    input_seconds: float  # an edit's input; ignored for a clone


class Checker:
    """Scores outputs in groups: one Whisper batch and one embedding per distinct reference."""

    def __init__(self, transcriber: Any, embed: Callable[[np.ndarray, int], np.ndarray | None],
                 thresholds: Thresholds) -> None:
        self.transcriber = transcriber
        self.embed = embed
        self.thresholds = thresholds
        self._references: dict[str, np.ndarray | None] = {}  # digest -> embedding

    def __call__(self, checks: list[Check]) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The scores of each output, and seconds spent by part (transcribe, embed)."""
        import time

        seconds = {"transcribe": 0.0, "embed": 0.0}
        heard: list[str] = [""] * len(checks)
        if self.transcriber is not None:
            heard, _, seconds["transcribe"] = self.transcriber.many([(c.output, c.sr, c.digest) for c in checks])
        out = []
        for c, text in zip(checks, heard, strict=True):
            t0 = time.perf_counter()
            similarity = self._similarity(c)
            seconds["embed"] += time.perf_counter() - t0
            out.append(self.score(c, text if self.transcriber is not None else None, similarity))
        return out, seconds

    def _similarity(self, c: Check) -> float | None:
        if c.reference is None:
            return None
        if c.reference_digest not in self._references:
            self._references[c.reference_digest] = self.embed(c.reference, c.reference_sr)
        ref = self._references[c.reference_digest]
        if ref is None:  # the engine has no speaker model
            return None
        return cosine(ref, self.embed(c.output, c.sr))

    def score(self, c: Check, heard: str | None, similarity: float | None) -> dict[str, Any]:
        scores: dict[str, Any] = {}
        if heard is not None and c.expected_text.strip():
            metric, rate = error_rate(c.expected_text, heard)
            scores[metric] = None if rate is None else round(rate, 4)
        if heard is not None:  # a model that runs on repeats itself for pages: the start says enough
            scores["heard"] = heard if len(heard) <= HEARD_CHARS else heard[:HEARD_CHARS] + "…"
            scores["heard_by"] = getattr(self.transcriber, "backend", None)  # the ASR backend that heard it
        if similarity is not None:
            scores["similarity"] = round(similarity, 4)
        seconds = len(c.output) / c.sr
        if c.kind == "clone":
            expected = speech_seconds(c.expected_text)
        else:
            expected = c.input_seconds
        scores["seconds"] = round(seconds, 3)
        problems = []
        if expected and expected > 0:
            ratio = seconds / expected
            scores["duration_ratio"] = round(ratio, 3)
            low, high = RATIO_BOUNDS.get(c.kind, RATIO_BOUNDS["edit"])
            if not low <= ratio <= high:
                against = "the text's speaking time" if c.kind == "clone" else "the input's"
                problems.append(f"duration {ratio:.2f}x {against}")
        peak, clipped = level(c.output)
        scores["peak_dbfs"] = round(peak, 1) if math.isfinite(peak) else None
        if peak < SILENT_DBFS:
            problems.append(f"nearly silent (peak {peak:.0f} dBFS)")
        if clipped > CLIPPED_SHARE:
            problems.append(f"clipped ({clipped:.1%} of samples at full scale)")
        problems += self.thresholds.misses(scores)
        scores["problems"] = "; ".join(problems)
        scores["passed"] = not problems
        # a word error or a similarity was measured; else only duration and level were
        scores["scored"] = any(scores.get(k) is not None for k in ("wer", "cer", "similarity"))
        return scores


def rank(scores: dict[str, Any]) -> tuple:
    """Orders attempts, best last: passed, fewer problems, fewer errors, more similar."""
    errors = next((scores[m] for m in ("wer", "cer") if scores.get(m) is not None), 0.0)
    problems = scores.get("problems") or ""
    return (bool(scores.get("passed")), -len(problems.split("; ")) if problems else 0, -errors,
            scores.get("similarity") or -1.0)


def combine(chunks: list[tuple[dict[str, Any], str]], seconds: float, input_seconds: float) -> dict[str, Any]:
    """A long task's scores from its chunks' (scores, expected text): error rates weighted by
    each chunk's words, the least similarity, every chunk's problems by number."""
    out: dict[str, Any] = {}
    for metric in ("wer", "cer"):
        rated = [(s[metric], max(1, len(spoken(text).split()) if metric == "wer" else len(spoken(text))))
                 for s, text in chunks if s.get(metric) is not None]
        if rated:
            out[metric] = round(sum(r * n for r, n in rated) / sum(n for _, n in rated), 4)
    sims = [s["similarity"] for s, _ in chunks if s.get("similarity") is not None]
    if sims:
        out["similarity"] = min(sims)
    out["seconds"] = round(seconds, 3)
    if input_seconds:
        out["duration_ratio"] = round(seconds / input_seconds, 3)
    out["problems"] = "; ".join(f"chunk {i}: {s['problems']}" for i, (s, _) in enumerate(chunks, 1)
                                if s.get("problems"))
    out["passed"] = all(s.get("passed") for s, _ in chunks)
    return out
