"""Where a finished task's output goes: the one place the run loop hands it over.

The loop renders each output once (stretched, resampled, levelled, encoded: `deliver.render`)
and gives the bytes to its task's sink. `batch` writes them into place atomically with the
resume record beside them (`Files`); a server hands them to the waiting request, and a
streamed request's audio to its stream as it is made (the service is that sink), with no
file in between."""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

import numpy as np

from editx_cli import audio
from editx_cli.report import Outcome
from editx_cli.resume import PlannedTask, commit, manifest_of


class Sink(Protocol):
    def piece(self, key: Any, x: np.ndarray, sr: int) -> None:
        """A task's output audio as it becomes final, part after part, before it is rendered
        (a long task's as its chunks are joined): for a stream."""

    def output(self, key: Any, planned: PlannedTask, outcome: Outcome, data: bytes, checks: dict) -> None:
        """The task's rendered output (its outcome filled in but for its status); raising fails
        the task with the error. `checks`: what `editx qa` checks the output against later."""


class Files:
    """`batch`'s sink: each output written atomically into its path, its resume record beside it."""

    def piece(self, key: Any, x: np.ndarray, sr: int) -> None:
        pass

    def output(self, key: Any, planned: PlannedTask, outcome: Outcome, data: bytes, checks: dict) -> None:
        t = planned.task
        t0 = time.perf_counter()
        # Temporary files of this output left by a killed run go; another live run's stay.
        audio.remove_stale_parts(t.output)
        tmp = audio.write_atomic(t.output, data)
        try:
            outcome.add("write", time.perf_counter() - t0)
            commit(tmp, t.output, planned.fingerprint, t.id, manifest_of(t), outcome,
                   {**checks, "reference": os.path.abspath(planned.source)})
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
