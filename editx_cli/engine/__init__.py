"""Engines behind one small interface, looked up by name.

An engine module must be cheap to import: its class attributes say what it
supports, so a manifest is checked against it before any model library loads.
Heavy imports happen in `load()`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

REGISTRY: dict[str, str] = {
    "dsp": "editx_cli.engine.dsp:DspEngine",
    "stepaudio": "editx_cli.engine.stepaudio:StepAudioEngine",
}


@dataclass
class Request:
    """One pass of the model: audio in, instructions, audio out."""

    kind: str  # "clone" or "edit"
    audio: np.ndarray  # mono float32: the prompt voice (clone) or the audio to edit
    sr: int
    audio_text: str = ""  # transcript of `audio`
    text: str = ""  # clone: text to speak; paralinguistic: the tagged new text
    edit_type: str = ""
    edit_info: str = ""
    intensity: float = 1.0
    seed: int = 0
    audio_digest: str = ""  # samples_digest(audio, sr), computed once by the caller
    path: str = ""  # the file `audio` was read from, when it was read from one
    task_id: str = ""  # for messages and dumps


@dataclass
class Result:
    audio: np.ndarray
    sr: int
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    info: dict[str, Any] = field(default_factory=dict)  # engine facts worth reporting
    cache_hits: int = 0  # feature-cache lookups this pass made
    cache_misses: int = 0


class Engine:
    """Base class. Subclasses set the class attributes and implement `load` and `run`."""

    name: ClassVar[str]
    task_kinds: ClassVar[frozenset[str]]
    edit_types: ClassVar[frozenset[str]]
    # Edit types that need a transcript of the input audio.
    needs_transcript: ClassVar[frozenset[str]] = frozenset()
    # Whether stream decodes several requests at once (worth handing a worker a group).
    batches: ClassVar[bool] = False
    # Requests held at once, per unit of batch size: above 1 when the engine keeps a queue of
    # its own (continuous batching refills its rows from it as tasks end).
    wave_factor: ClassVar[int] = 1
    # Inputs (and clone texts, by their speaking time) longer than this many seconds are cut in
    # pauses into chunks of at most chunk_seconds, edited apart and joined; None: never.
    window_seconds: ClassVar[float | None] = None
    chunk_seconds: ClassVar[float] = 25.0

    def __init__(self, config: dict[str, Any], cache: Any) -> None:
        self.config = config
        self.cache = cache
        self.device = "cpu"

    @classmethod
    def wants_transcript(cls, edit_type: str, intensity: float) -> bool:
        """Whether an edit of this kind uses the input's transcript (asked at validation too)."""
        return edit_type in cls.needs_transcript

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> list[str]:
        """Problems with the engine's options (missing folders...), found without loading."""
        return []

    @classmethod
    def check_code(cls, config: dict[str, Any]) -> list[str]:
        """Problems found by importing the code the engine would load (slower than
        check_config: `editx doctor` asks, runs do not)."""
        return []

    def fingerprint(self) -> str:
        """Identity of what produces the output (code and checkpoint versions); cheap."""
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def run(self, request: Request) -> Result:
        """One request's result: what an engine that runs a request at a time implements (the
        default stream calls it); callers go through `stream` (or `collect`)."""
        raise NotImplementedError

    def stream(self, take: Callable[[bool], list | None], deliver: Callable[[Any, Result | Exception], None]) -> None:
        """The engine's one entry point: run requests as they are handed over, until `take`
        says no more will come.

        `take(wait)`: the (key, Request) pairs that arrived since it was last asked ([] when
        none has, blocking until one does when `wait`), or None once no more will come.
        `deliver(key, result or error)`: once per request, as each is ready, from any thread.
        Engines that admit requests into work already running override this; the default
        runs each request in turn, a failure that request's alone."""
        while (arrived := take(True)) is not None:
            for key, request in arrived:
                try:
                    result = self.run(request)
                except Exception as e:
                    result = e
                deliver(key, result)

    def seam_pause(self, edit_type: str, edit_info: str, intensity: float, seconds: float) -> float:
        """The pause the output keeps where the input was cut in a pause this long."""
        return seconds

    def length_ratio(self, edit_type: str, edit_info: str, intensity: float) -> float | None:
        """Output samples per input sample where the edit fixes it (1 for an edit that keeps
        length, 1/tempo for a tempo change), None where the engine's output decides. A long
        input of such an edit is joined by plain concatenation of its chunks, so the whole
        keeps the ratio to the sample (and is exactly as long as its input at 1)."""
        return None

    def speaker_embedding(self, x: np.ndarray, sr: int) -> np.ndarray | None:
        """A vector of who speaks in `x` (cosine-comparable), or None when the engine has no
        speaker model."""
        return None

    def versions(self) -> dict[str, str]:
        return {}

    def run_info(self) -> dict[str, Any]:
        """Facts about this run worth reporting (what was loaded, which variant)."""
        return {}

    def close(self) -> None:
        pass


def collect(stream: Callable, requests: list[Request],
            on_result: Callable[[int, Result | Exception], None] | None = None) -> list[Result | Exception]:
    """A list of requests through an engine's stream: handed over at once, the results (or the
    errors that stopped them) in their order (`on_result(index, result)` as each is ready)."""
    results: list[Result | Exception | None] = [None] * len(requests)
    given = False

    def take(wait: bool) -> list | None:
        nonlocal given
        if given:
            return None
        given = True
        return list(enumerate(requests))

    def deliver(i: int, result: Result | Exception) -> None:
        results[i] = result
        if on_result is not None:
            on_result(i, result)

    stream(take, deliver)
    return results  # type: ignore[return-value]


def build(name: str, config: dict[str, Any], cache: Any) -> Engine:
    """The engine of this name with its options and the feature cache it reads and fills: what
    every front door (batch, a worker, Ray, serve, qa) runs on."""
    return get(name)(dict(config), cache)


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> type[Engine]:
    module_name, _, class_name = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
