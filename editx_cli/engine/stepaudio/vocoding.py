"""Vocoding beside decoding: finished tasks are vocoded on a thread of their own while the
decoder goes on with the rest, so neither waits for the other (on CUDA on a stream of its
own). The thread takes whatever has finished, up to a group's worth, in one vocoder call.
An engine keeps one line for its life: started with its first decode run, closed with it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_END = object()
log = logging.getLogger("editx")


class VocodeLine:
    def __init__(self, vocode: Callable[[list], list], group: int, device: str,
                 on_result: Callable[[Any, Any], None], gate: Any = None) -> None:
        """`gate`: held around each call (the engine's device gate: no call while the decoder
        captures a CUDA graph). `on_result(key, result)`: where results go unless `put` names
        another place."""
        self._vocode, self._group, self._device, self._on_result = vocode, group, device, on_result
        self._gate = gate if gate is not None else contextlib.nullcontext()
        self._queue: queue.Queue = queue.Queue()
        self.busy: list[tuple[float, float, int]] = []  # (start, end, tasks) of each vocoder call
        self._thread = threading.Thread(target=self._run, name="editx-vocode", daemon=True)
        self._thread.start()

    def put(self, key: Any, item: Any, on_result: Callable[[Any, Any], None] | None = None) -> None:
        """A finished task to vocode; its result goes to on_result(key, result)."""
        self._queue.put((key, item, on_result or self._on_result))

    def drain(self) -> list[tuple[float, float, int]]:
        """Wait for everything handed over to be vocoded; the calls made since the last drain."""
        self._queue.join()
        busy, self.busy = self.busy, []
        return busy

    def finish(self) -> None:
        """Vocode everything handed over, then end the thread."""
        self._queue.put(_END)
        self._thread.join()

    def _run(self) -> None:
        stream = None
        if self._device.startswith("cuda"):
            import torch

            stream = torch.cuda.Stream(device=self._device)
        ended = False
        while not ended:
            first = self._queue.get()
            if first is _END:
                self._queue.task_done()
                return
            group = [first]
            while len(group) < self._group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _END:
                    self._queue.task_done()
                    ended = True
                    break
                group.append(more)
            t0 = time.perf_counter()
            try:
                with self._gate:
                    if stream is not None:
                        import torch

                        with torch.cuda.stream(stream):
                            outs = self._vocode([item for _, item, _ in group])
                    else:
                        outs = self._vocode([item for _, item, _ in group])
            except Exception as e:  # the call failed: each of its tasks hears why
                outs = [e] * len(group)
            self.busy.append((t0, time.perf_counter(), len(group)))
            for (key, _, on_result), out in zip(group, outs, strict=True):
                try:
                    on_result(key, out)
                except Exception:  # a listener's failure is not the task's
                    log.warning("a result listener failed", exc_info=True)
                finally:
                    self._queue.task_done()


class VocodeStats:
    """Vocoder time for the report, and how much of it ran while the decoder was decoding."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.overlap = 0.0
        self.calls = 0
        self.tasks = 0
        self.largest = 0
        self.retried = 0  # tasks vocoded alone after their group's call failed

    def add(self, busy: list[tuple[float, float, int]], decoding: tuple[float, float]) -> None:
        for start, end, tasks in busy:
            self.seconds += end - start
            self.overlap += max(0.0, min(end, decoding[1]) - max(start, decoding[0]))
            self.calls += 1
            self.tasks += tasks
            self.largest = max(self.largest, tasks)

    def summary(self) -> dict[str, Any]:
        return {"vocode_seconds": round(self.seconds, 3), "vocode_overlap_seconds": round(self.overlap, 3),
                "vocoder_calls": self.calls, "tasks_vocoded": self.tasks, "largest_vocoder_call": self.largest,
                "tasks_vocoded_alone_after_a_failed_call": self.retried}
