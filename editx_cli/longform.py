"""Audio and text longer than the model's window: where to cut, what each piece says, and how
the edited pieces are joined again.

An input is cut inside pauses (Silero VAD) into chunks of at most `chunk_seconds`,
preferring the longest pause in the second half of each window; a chunk with no pause in
it is cut at its quietest 20 ms. A long clone text is cut after sentences, then after
commas, then between words. Pieces are joined with equal-power crossfades inside the
pauses, which keep their original length (an edit) or a natural one (a clone).
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any

import numpy as np

from editx_cli.audio import resample
from editx_cli.speech_text import speech_seconds, spoken
from editx_cli.tags import LANGUAGES, TAG

CODE_VERSION = "longform-1"
VAD_RATE = 16000
LONG_PAUSE = 5.0  # seconds: a pause this long is cut at both ends, near its sounds, to be a chunk apart
LONG_PAUSE_MARGIN = 0.5
FADE_SECONDS = 0.02  # the crossfade at each seam, inside a pause
SILENCE_DB = -40.0  # below the piece's loudest 20 ms frame by this much: a pause
SENTENCE_PAUSE = 0.45  # seconds between clone pieces cut after a sentence
CLAUSE_PAUSE = 0.25  # after a comma
WORD_PAUSE = 0.12  # between words (a clause too long to say in one window)
CHUNK_SEED_STRIDE = 1000  # chunk k's seed is the task's + 1000 k; retries take the seeds between


def speech_spans(x: np.ndarray, sr: int, cache: Any, digest: str) -> tuple[list[tuple[int, int]], bool]:
    """Speech as (start, end) sample indices at the audio's own rate (Silero VAD, ONNX), through
    the feature cache; and whether the cache had them."""
    key = cache.key("vad", digest, _vad_fingerprint())
    spans, hit = cache.get_or_compute(key, lambda: _detect(x, sr))
    return [(int(a), int(b)) for a, b in spans], hit


@functools.cache
def _vad_fingerprint() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        silero = version("silero-vad")
    except PackageNotFoundError:
        silero = "missing"
    return f"{CODE_VERSION};silero-vad={silero};onnx"


def _detect(x: np.ndarray, sr: int) -> list[tuple[int, int]]:
    import torch

    model = _vad_model()  # first: it imports silero_vad, restoring torch's threads
    from silero_vad import get_speech_timestamps

    x16 = resample(np.asarray(x, np.float32), sr, VAD_RATE)
    stamps = get_speech_timestamps(torch.from_numpy(x16), model, sampling_rate=VAD_RATE, speech_pad_ms=0)
    scale = sr / VAD_RATE
    return [(round(s["start"] * scale), round(s["end"] * scale)) for s in stamps]


@functools.cache  # one per process: get_speech_timestamps resets its state on every call
def _vad_model():
    import torch

    threads = torch.get_num_threads()
    from silero_vad import load_silero_vad

    torch.set_num_threads(threads)  # importing silero_vad pins torch to one thread for the whole process
    return load_silero_vad(onnx=True)


def cut_points(spans: list[tuple[int, int]], n: int, sr: int, chunk_seconds: float,
               x: np.ndarray | None = None) -> list[int]:
    """Sample indices where an input of n samples is cut, so that no chunk is longer than
    chunk_seconds: in pauses where there are some (the longest in the second half of the
    window, or a long one anywhere), else at the quietest frame."""
    limit = int(chunk_seconds * sr)
    margin = int(LONG_PAUSE_MARGIN * sr)
    candidates = []  # (position, pause length, where the pause's silence ends for a long one's opening cut)
    for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False):
        length = b_start - a_end
        if length >= LONG_PAUSE * sr:  # silence long enough to be a chunk of its own
            candidates += [(a_end + margin, length, b_start - margin), (b_start - margin, length, None)]
        elif length > 0:
            candidates.append(((a_end + b_start) // 2, length, None))
    cuts, start = [], 0
    while n - start > limit:
        window = [c for c in candidates if start < c[0] <= start + limit]
        good = [c for c in window if c[0] >= start + limit // 2 or c[1] >= LONG_PAUSE * sr]
        if good or window:
            # the longest pause; of a long one, its opening, so that its silence is a chunk apart
            cut, _, then = max(good or window, key=lambda c: (c[1], -c[0] if c[1] >= LONG_PAUSE * sr else c[0]))
        else:
            cut, then = (_quietest(x, start + limit // 2, start + limit, sr) if x is not None else start + limit), None
        cuts.append(cut)
        if then is not None and then - cut <= limit:
            cuts.append(then)
        start = cuts[-1]
    return cuts


def _quietest(x: np.ndarray, a: int, b: int, sr: int) -> int:
    frame = max(1, int(0.02 * sr))
    energy = [float(np.mean(x[i:i + frame] ** 2)) for i in range(a, max(a + 1, b - frame), frame)]
    return a + frame * int(np.argmin(energy)) + frame // 2


def split_words(text: str, weights: list[float]) -> list[str]:
    """`text` in len(weights) consecutive pieces, each with about its share of the words,
    moved to a sentence or clause end when one is within three words."""
    words = text.split()
    total = sum(weights) or 1.0
    bounds, acc = [], 0.0
    for w in weights[:-1]:
        acc += w
        target = round(len(words) * acc / total)
        best = target
        for d in (0, 1, -1, 2, -2, 3, -3):  # the nearest sentence end, else the nearest clause end
            i = target + d
            if 0 < i < len(words) and words[i - 1][-1:] in ".!?。！？":
                best = i
                break
        else:
            for d in (0, 1, -1, 2, -2, 3, -3):
                i = target + d
                if 0 < i < len(words) and words[i - 1][-1:] in ",;:，；、":
                    best = i
                    break
        bounds.append(max(best, bounds[-1] if bounds else 0))
    edges = [0, *bounds, len(words)]
    return [" ".join(words[a:b]) for a, b in zip(edges, edges[1:], strict=False)]


def split_by_times(text: str, heard: list[tuple[str, float, float]], cuts_s: list[float]) -> list[str] | None:
    """`text` cut at the times `cuts_s` using Whisper's word timestamps of the audio: the
    given words are matched to the heard ones, and each goes to the chunk its match (or its
    matched neighbours) falls in. None when too few words match to trust."""
    words = text.split()
    norm = [spoken(w) for w in words]
    heard_norm = [spoken(w) for w, _, _ in heard]
    match = difflib.SequenceMatcher(a=norm, b=heard_norm, autojunk=False)
    times: list[float | None] = [None] * len(words)
    for block in match.get_matching_blocks():
        for k in range(block.size):
            _, start, end = heard[block.b + k]
            times[block.a + k] = (start + end) / 2
    known = [i for i, t in enumerate(times) if t is not None]
    if len(known) < max(2, len([w for w in norm if w]) // 2):
        return None
    for i in range(len(words)):  # an unmatched word takes the time of the last matched one before it
        if times[i] is None:
            before = [times[j] for j in known if j < i]
            times[i] = before[-1] if before else times[known[0]]
    pieces: list[list[str]] = [[] for _ in range(len(cuts_s) + 1)]
    for w, t in zip(words, times, strict=False):
        pieces[sum(t >= c for c in cuts_s)].append(w)
    return [" ".join(p) for p in pieces]


def split_like(new_text: str, old_pieces: list[str]) -> list[str]:
    """A paralinguistic edit's tagged text cut where its transcript was cut: its words are
    matched to the transcript's, tags stay with the word before them."""
    tokens = re.findall(r"\[[^\[\]\n]*\]|\S+", new_text)
    old_words = [spoken(w) for piece in old_pieces for w in piece.split()]
    starts, acc = [], 0
    for piece in old_pieces[:-1]:
        acc += len(piece.split())
        starts.append(acc)
    plain = [(i, spoken(t)) for i, t in enumerate(tokens) if not TAG.fullmatch(t)]
    match = difflib.SequenceMatcher(a=[w for _, w in plain], b=old_words, autojunk=False)
    where = {}  # old word index -> token index
    for block in match.get_matching_blocks():
        for k in range(block.size):
            where[block.b + k] = plain[block.a + k][0]
    bounds = []
    for s in starts:
        later = [where[j] for j in range(s, len(old_words)) if j in where]
        token = later[0] if later else len(tokens)
        bounds.append(max(token, bounds[-1] if bounds else 0))
    edges = [0, *bounds, len(tokens)]
    return [" ".join(tokens[a:b]) for a, b in zip(edges, edges[1:], strict=False)]


_SENTENCE = re.compile(r"(?<=[.!?。！？…])[\"'”’)\]]*\s+|(?<=[。！？])")
_CLAUSE = re.compile(r"(?<=[,;:，；、])\s*")


def split_text(text: str, chunk_seconds: float) -> list[tuple[str, float]]:
    """A clone text in pieces that each take at most chunk_seconds to say (by the speaking-time
    estimate), with the pause that follows each. A language tag that opens the text opens
    every piece."""
    text = text.strip()
    lead = ""
    m = TAG.match(text)
    if m and m.group(1) in LANGUAGES:
        lead, text = m.group(0) + " ", text[m.end():].strip()

    def fits(s: str) -> bool:
        return speech_seconds(s) <= chunk_seconds

    units: list[tuple[str, float]] = []  # (text, pause after) that each fit
    for sentence in (s.strip() for s in _SENTENCE.split(text) if s and s.strip()):
        if fits(sentence):
            units.append((sentence, SENTENCE_PAUSE))
            continue
        clauses = [c.strip() for c in _CLAUSE.split(sentence) if c.strip()]
        for i, clause in enumerate(clauses):
            last = i == len(clauses) - 1
            if fits(clause):
                units.append((clause, SENTENCE_PAUSE if last else CLAUSE_PAUSE))
                continue
            words = clause.split() if " " in clause else list(clause)  # unspaced scripts by character
            joiner = " " if " " in clause else ""
            piece: list[str] = []
            for w in words:
                if piece and not fits(joiner.join([*piece, w])):
                    units.append((joiner.join(piece), WORD_PAUSE))
                    piece = []
                piece.append(w)
            units.append((joiner.join(piece), SENTENCE_PAUSE if last else CLAUSE_PAUSE))
    pieces: list[tuple[str, float]] = []
    for unit, pause in units:  # as many units to a piece as fit
        if pieces and fits(f"{pieces[-1][0]} {unit}") and pieces[-1][1] != WORD_PAUSE:
            pieces[-1] = (f"{pieces[-1][0]} {unit}", pause)
        else:
            pieces.append((unit, pause))
    return [(lead + p, pause) for p, pause in pieces]


def speech_bounds(y: np.ndarray, sr: int) -> tuple[int, int]:
    """First and last sample of a piece louder than SILENCE_DB under its loudest 20 ms."""
    frame = max(1, int(0.02 * sr))
    n = len(y) // frame
    if n == 0:
        return 0, len(y)
    rms = np.sqrt(np.mean(np.asarray(y[: n * frame], np.float64).reshape(n, frame) ** 2, axis=1))
    threshold = rms.max() * 10 ** (SILENCE_DB / 20)
    loud = np.flatnonzero(rms > threshold)
    if loud.size == 0:
        return 0, len(y)
    # to the sample, inside the first and last loud frames
    first = np.asarray(y[loud[0] * frame:(loud[0] + 1) * frame])
    last = np.asarray(y[loud[-1] * frame:(loud[-1] + 1) * frame])
    start = loud[0] * frame + int(np.argmax(np.abs(first) > threshold))
    end = loud[-1] * frame + len(last) - int(np.argmax(np.abs(last[::-1]) > threshold))
    return int(start), int(end)


def join(pieces: list[np.ndarray], pauses: list[float], sr: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Pieces in order with pauses[i] seconds between the speech of piece i and i+1, each pause
    made of the pieces' own edge sound (silence where they have less), crossfaded with
    equal-power curves in its middle. Returns the audio and each piece's span in it."""
    joiner = Joiner(pauses, sr)
    out = [joiner.add(p) for p in pieces]
    out.append(joiner.finish())
    return np.concatenate(out), joiner.spans


class Joiner:
    """`join` a piece at a time: each call returns the samples that are final once that piece is
    known (all but the crossfade still to come), so a long output can be sent as it is made."""

    def __init__(self, pauses: list[float] | None, sr: int) -> None:
        # pauses None: the pieces end to end, as they were cut (in pauses): the join of an edit whose
        # output length follows its input's, so the whole keeps that length to the sample
        self.pauses, self.sr = pauses, sr
        self.fade = max(1, int(FADE_SECONDS * sr))
        self.spans: list[tuple[int, int]] = []
        self._held = np.zeros(0, np.float32)  # the end of the last part, which the next may fade into
        self._last = 0  # length of that last part (a crossfade needs `fade` samples of it)
        self._at = 0  # samples joined so far

    def add(self, p: np.ndarray) -> np.ndarray:
        i = len(self.spans)
        if self.pauses is None:
            self.spans.append((self._at, self._at + len(p)))
            self._at += len(p)
            return np.asarray(p, np.float32)
        fade, sr, pauses, last = self.fade, self.sr, self.pauses, i == len(self.pauses)
        start, end = speech_bounds(p, sr)
        if i > 0:
            gap = max(int(round(pauses[i - 1] * sr)), fade)
            head = _edge(p[:start][::-1], (gap + fade) // 2)[::-1]  # this piece's lead-in, up to half
        else:
            head = p[:start]
        if not last:
            gap = max(int(round(pauses[i] * sr)), fade)
            tail = _edge(p[end:], gap + fade - (gap + fade) // 2)
        else:
            tail = p[end:]
        body = np.concatenate([head, p[start:end], tail]).astype(np.float32)
        if i > 0 and self._last >= fade and len(body) >= fade:
            theta = np.linspace(0, np.pi / 2, fade, dtype=np.float32)
            done = [self._held[:-fade], self._held[-fade:] * np.cos(theta) + body[:fade] * np.sin(theta)]
            rest = body[fade:]
            self._at -= fade
        else:
            done, rest = [self._held], body
        self.spans.append((self._at, self._at + len(body)))
        self._at += len(body)
        keep = min(fade, len(rest))
        self._held, self._last = rest[len(rest) - keep:], len(rest)
        return np.concatenate([*done, rest[:len(rest) - keep]])

    def finish(self) -> np.ndarray:
        held, self._held = self._held, np.zeros(0, np.float32)
        return held


def _edge(x: np.ndarray, n: int) -> np.ndarray:
    """The first n samples of x, padded with silence when x is shorter."""
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), np.float32)])


def chunk_seed(seed: int, index: int) -> int:
    return (seed + CHUNK_SEED_STRIDE * index) % 2**32


def seconds(samples: int, sr: int) -> float:
    return round(samples / sr, 3)
