"""One engine for a long-running process: loaded on the first request that needs it, released
after a while without requests, and fed by one thread that decodes concurrent requests
together.

Callers (the HTTP server) hand in work items and wait for their results; the thread takes
whatever is waiting, up to `max_batch` at a time, and runs it as one wave (`run_wave`: the
server's is the batch loop itself; by default the engine's run_batch on engine Requests),
so eight clients at once make one or two decode batches, not eight.
The queue is bounded: past `max_queue` waiting requests, `submit` refuses at once
(the server answers 503 with Retry-After) rather than letting latency grow without bound.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from editx_cli.engine import Engine

log = logging.getLogger("editx")


class Busy(RuntimeError):
    """The queue is full: try again shortly."""


@dataclass
class Served:
    result: Any  # what the wave gave for this item (a Result, an Outcome)
    load_seconds: float  # the engine load this request waited for (0 when it was loaded already)
    batch: int  # requests decoded together with this one, itself included


class Service:
    def __init__(self, make_engine, *, max_batch: int = 16, max_queue: int = 64, idle_unload: float = 300.0,
                 gather: float = 0.01, run_wave: Callable[[Engine, list], list] | None = None) -> None:
        self._make = make_engine  # () -> Engine, not loaded
        self._run_wave = run_wave or (lambda engine, requests: engine.run_batch(requests))
        self.max_batch, self.max_queue, self.idle_unload, self.gather = max_batch, max_queue, idle_unload, gather
        self.engine: Engine | None = None
        self.running = 0  # requests the engine thread has in hand (loading for them, or decoding them)
        self._waiting: deque[tuple[Any, Future]] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self._last = time.monotonic()
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "loads": 0, "unloads": 0,
                      "load_seconds": None, "refused": 0, "dropped": 0}
        self._thread = threading.Thread(target=self._loop, name="editx-engine", daemon=True)
        self._thread.start()

    # -- callers
    def submit(self, item: Any) -> Future:
        """A future of Served; raises Busy when the queue is full."""
        return self._enqueue(item)

    def call(self, fn) -> Future:
        """Run fn(engine) on the engine thread, alone, the engine loaded (work that is not a
        decode, such as a new voice's prompt features); a future of its return value. The same
        queue limit holds: raises Busy when the queue is full."""
        return self._enqueue(fn)

    def withdraw(self, future: Future) -> bool:
        """Drop work whose caller has gone, if it is still waiting (work under way finishes)."""
        with self._lock:
            for entry in self._waiting:
                if entry[1] is future:
                    self._waiting.remove(entry)
                    self.stats["dropped"] += 1
                    future.cancel()
                    return True
        return False

    def _enqueue(self, work) -> Future:
        future: Future = Future()
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                self.stats["refused"] += 1
                raise Busy(f"{len(self._waiting)} requests are waiting")
            self._waiting.append((work, future))
            self._last = time.monotonic()
            self._lock.notify()
        return future

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._unload()

    # -- the engine thread
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    timeout = None
                    if self.engine is not None:
                        timeout = self._last + self.idle_unload - time.monotonic()
                        if timeout <= 0:
                            self._unload()
                            continue
                    self._lock.wait(timeout)
                if self._closed:
                    for _, f in self._waiting:
                        f.set_exception(RuntimeError("the server is shutting down"))
                    self._waiting.clear()
                    return
            self._gather()
            with self._lock:  # a call runs alone; requests go together, up to max_batch
                if not self._waiting:  # withdrawn while gathering
                    continue
                if callable(self._waiting[0][0]):
                    batch = [self._waiting.popleft()]
                else:
                    batch = []
                    while self._waiting and len(batch) < self.max_batch and not callable(self._waiting[0][0]):
                        batch.append(self._waiting.popleft())
            self.running = len(batch)
            try:
                self._work(batch)
            finally:
                self.running = 0

    def _gather(self) -> None:
        """Let requests sent at about the same moment join this wave: wait while they keep
        arriving (each `gather` seconds bringing more), at most ten such waits."""
        seen = -1
        for _ in range(10 if self.gather else 0):
            waiting = len(self._waiting)
            if waiting == seen or waiting >= self.max_batch:  # the burst is over, or the wave is full
                return
            seen = waiting
            time.sleep(self.gather)

    def _work(self, batch: list[tuple[Any, Future]]) -> None:
        try:  # outside the lock: callers can still queue, or be refused, while a model loads
            load_seconds = self._ensure_loaded()
        except Exception as e:  # a broken model folder: every waiting request hears why
            for _, f in batch:
                f.set_exception(e)
            return
        if callable(batch[0][0]):
            fn, future = batch[0]
            try:
                future.set_result(fn(self.engine))
            except Exception as e:
                future.set_exception(e)
            return
        self._run(batch, load_seconds)

    def _ensure_loaded(self) -> float:
        """Only the engine thread loads and unloads."""
        if self.engine is not None:
            return 0.0
        t0 = time.perf_counter()
        engine = self._make()
        engine.load()
        self.engine = engine
        seconds = time.perf_counter() - t0
        self.stats["loads"] += 1
        self.stats["load_seconds"] = round(seconds, 3)
        log.info("engine %s loaded on %s in %.2f s", engine.name, engine.device, seconds)
        return seconds

    def _run(self, batch: list[tuple[Any, Future]], load_seconds: float) -> None:
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        try:
            results = self._run_wave(self.engine, [r for r, _ in batch])
        except Exception as e:  # the whole batch failed (out of memory...): each request hears why
            results = [e] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(Served(result, load_seconds, len(batch)))
        with self._lock:
            self._last = time.monotonic()

    def _unload(self) -> None:
        """Drop the engine and give its device memory back."""
        if self.engine is None:
            return
        self.engine.close()
        self.stats["unloads"] += 1
        self.engine = None
        gc.collect()  # the model's reference cycles go now, not at some later collection
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("engine released after %.0f s idle", self.idle_unload)

    def device_memory(self) -> dict[str, Any]:
        """Bytes the process holds on its GPU (allocated by torch, and reserved), or {} on CPU."""
        torch = sys.modules.get("torch")
        # while the engine thread is still importing torch, its module is there but half made
        if torch is None or getattr(torch.__spec__, "_initializing", False) or not torch.cuda.is_available():
            return {}
        return {"allocated_bytes": torch.cuda.memory_allocated(), "reserved_bytes": torch.cuda.memory_reserved()}
