"""One engine for a long-running process: loaded on the first request that needs it, released
after a while without requests, and fed by one thread (the runner) that runs requests as
they come.

Callers (the HTTP server) hand in work items and await futures of their results. The runner
waits in one place, its inbox (`events`): each submission puts a token there, and while a
run is on, the engine's results come back there too. It loads the engine and runs it
(`run(engine, source)`: the server's is the batch loop, with this service as its source; by
default the engine's own stream on engine Requests) until it has been idle for
`idle_unload` seconds; a request that arrives while others are decoding joins them at the
decoder's next sync, so eight clients at once decode together, and none waits for another's
batch to end. The queue is bounded: past `max_queue` waiting requests, `submit` refuses at
once (the server answers 503 with Retry-After) rather than letting latency grow without
bound.
"""

from __future__ import annotations

import gc
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from editx_cli.engine import Engine
from editx_cli.errors import one_line
from editx_cli.feed import ARRIVED

log = logging.getLogger("editx")


class Busy(RuntimeError):
    """The queue is full: try again shortly."""


@dataclass
class Served:
    result: Any  # what the run gave for this item (a Result, an Outcome)
    load_seconds: float  # the engine load this request waited for (0 when it was loaded already)
    batch: int  # the most requests the engine held at once while it held this one, itself included
    data: bytes | None = None  # a task's rendered output (the run loop's, as its sink)


def engine_stream(engine: Engine, source: Service) -> None:
    """The default run: engine Requests through the engine's own stream."""
    engine.stream(source.take, source.deliver)


@dataclass
class _Item:
    work: Any  # an engine Request, a PlannedTask, or a call: fn(engine)
    future: Future
    queued: float  # time.monotonic() when it was submitted
    peers: int = 1
    listener: Callable[[Any, int], None] | None = None  # a task's audio as it is made (a stream)
    data: bytes | None = None


class Service:
    def __init__(self, make_engine, *, max_batch: int = 16, max_queue: int = 64, idle_unload: float = 300.0,
                 run: Callable[[Engine, Service], None] = engine_stream) -> None:
        self._make = make_engine  # () -> Engine, not loaded
        self._run = run
        self.max_batch, self.max_queue, self.idle_unload = max_batch, max_queue, idle_unload
        self.engine: Engine | None = None
        self._waiting: deque[_Item] = deque()
        self._held: dict[Future, _Item] = {}  # taken by the run, not yet delivered
        self._lock = threading.Lock()
        self.events: queue.Queue = queue.Queue()  # the runner's inbox: ARRIVED tokens, and a run's results
        self._closed = False
        self._last = time.monotonic()
        self._ready_at = 0.0  # when the engine last finished loading
        self._load_seconds = 0.0
        self.load_error: str | None = None  # why the last load failed; None once one succeeds
        self.stats = {"requests": 0, "largest_batch": 0, "loads": 0, "unloads": 0,
                      "load_seconds": None, "refused": 0, "dropped": 0}
        self._thread = threading.Thread(target=self._loop, name="editx-runner", daemon=True)
        self._thread.start()

    # -- callers
    def submit(self, item: Any, listener: Callable[[Any, int], None] | None = None) -> Future:
        """A future of Served; raises Busy when the queue is full. `listener(samples, rate)`: a
        task's output audio as it is made (called on the run's thread)."""
        return self._enqueue(item, listener)

    def call(self, fn) -> Future:
        """Run fn(engine) on the engine's side, the engine loaded (work that is not a decode,
        such as a new voice's prompt features), beside any decoding; a future of its return
        value. The same queue limit holds: raises Busy when the queue is full."""
        return self._enqueue(fn)

    def withdraw(self, future: Future) -> bool:
        """Drop work whose caller has gone, if it is still waiting (work under way finishes)."""
        with self._lock:
            for item in self._waiting:
                if item.future is future:
                    self._waiting.remove(item)
                    self.stats["dropped"] += 1
                    future.cancel()
                    return True
        return False

    def _enqueue(self, work, listener=None) -> Future:
        future: Future = Future()
        with self._lock:
            # while there is no engine, the requests it will take first once loaded (a batch's
            # room) are not waiting: they are what its load is for
            room = max(self.max_batch - len(self._held), 0) if self.engine is None else 0
            if len(self._waiting) - room >= self.max_queue:
                self.stats["refused"] += 1
                raise Busy(f"{len(self._waiting)} requests are waiting")
            self._waiting.append(_Item(work, future, time.monotonic(), listener=listener))
            self._last = time.monotonic()
        self.events.put(ARRIVED)  # the runner looks at the queue now, whatever it was waiting for
        return future

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests the engine holds (decoding, or queued in it)."""
        return len(self._held)

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.events.put(ARRIVED)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._unload()

    # -- the run's side: the service is its source of work
    def take(self, wait: bool, limit: int | None = None) -> list[tuple[Future, Any]] | None:
        """Up to `limit` waiting items as (future, work) pairs, at most `max_batch` held at once;
        calls waiting are run here, first. With `wait`, blocks until an item comes; None once
        the service closes or after `idle_unload` seconds without any (the engine is released)."""
        while True:
            call = None
            with self._lock:
                if self._closed:
                    return None
                if self._waiting and callable(self._waiting[0].work):
                    call = self._waiting.popleft()
                elif self._waiting or not wait:
                    return self._hand_over(limit)
                else:
                    timeout = self._last + self.idle_unload - time.monotonic()
                    if timeout <= 0 and not self._held:
                        return None
            if call is not None:
                self._call(call)
                continue
            try:  # the inbox: a token says work arrived (nothing else comes while a run waits for work)
                event = self.events.get(timeout=max(timeout, 0.05))
            except queue.Empty:
                continue
            if event is not ARRIVED:  # a result after all: back for the run's own wait, which reads it
                self.events.put(event)
                with self._lock:
                    return self._hand_over(limit)

    def _hand_over(self, limit: int | None) -> list[tuple[Future, Any]]:
        room = self.max_batch - len(self._held)
        room = room if limit is None else min(room, limit)
        items = []
        while self._waiting and len(items) < room and not callable(self._waiting[0].work):
            items.append(self._waiting.popleft())
        for item in items:
            self._held[item.future] = item
        held = len(self._held)
        for item in self._held.values():
            item.peers = max(item.peers, held)
        self.stats["requests"] += len(items)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], held)
        return [(item.future, item.work) for item in items]

    def _call(self, item: _Item) -> None:
        try:
            item.future.set_result(item.work(self.engine))
        except Exception as e:
            item.future.set_exception(e)

    def piece(self, future: Future, x, sr: int) -> None:
        """A task's audio as it is made, to its listener (the run loop's sink: the run's thread)."""
        item = self._held.get(future)
        if item is not None and item.listener is not None:
            item.listener(x, sr)

    def output(self, future: Future, planned, outcome, data: bytes, checks: dict) -> None:
        """A task's rendered output, kept for its caller until its outcome is delivered."""
        item = self._held.get(future)
        if item is not None:
            item.data = data

    def deliver(self, future: Future, result: Any) -> None:
        """An item's result (or the error that stopped it), from any thread."""
        with self._lock:
            item = self._held.pop(future, None)
            self._last = time.monotonic()
        if item is None or future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            load = self._load_seconds if item.queued < self._ready_at else 0.0
            future.set_result(Served(result, load, item.peers, item.data))

    # -- the engine thread
    def _loop(self) -> None:
        while True:
            with self._lock:
                idle = not self._waiting and not self._closed
                if self._closed:
                    for item in self._waiting:
                        item.future.set_exception(RuntimeError("the server is shutting down"))
                    self._waiting.clear()
                    return
            if idle:  # nothing to do: wait in the inbox for the next submission
                self.events.get()
                continue
            try:  # outside the lock: callers can still queue, or be refused, while a model loads
                self._ensure_loaded()
            except Exception as e:  # a broken model folder: every waiting request hears why
                self.load_error = one_line(e)
                log.error("the engine could not be loaded: %s", self.load_error)
                with self._lock:
                    failed, self._waiting = list(self._waiting), deque()
                for item in failed:
                    item.future.set_exception(e)
                continue
            try:
                self._run(self.engine, self)
            except Exception as e:  # the run itself failed: what it held hears why
                log.error("the engine's run failed: %s", e, exc_info=True)
                with self._lock:
                    held, self._held = list(self._held.values()), {}
                for item in held:
                    if not item.future.done():
                        item.future.set_exception(e)
            with self._lock:
                idle = not self._waiting and not self._closed
            if idle:  # the run ended as nothing came for idle_unload seconds
                self._unload()

    def _ensure_loaded(self) -> None:
        """Only the engine thread loads and unloads."""
        if self.engine is not None:
            return
        t0 = time.perf_counter()
        engine = self._make()
        engine.load()
        self.engine, self.load_error = engine, None
        seconds = time.perf_counter() - t0
        self._ready_at, self._load_seconds = time.monotonic(), seconds
        self.stats["loads"] += 1
        self.stats["load_seconds"] = round(seconds, 3)
        log.info("engine %s loaded on %s in %.2f s", engine.name, engine.device, seconds)

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
            torch.cuda.synchronize()
            # cuBLAS keeps a workspace per handle and stream in the caching allocator: without
            # this the memory the engine's products used stays allocated after it is gone
            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # private: absent from some builds
            if clear is not None:
                clear()
            torch.cuda.empty_cache()
        log.info("engine released after %.0f s idle", self.idle_unload)

    def device_memory(self) -> dict[str, Any]:
        """Bytes the process holds on its GPU (allocated by torch, and reserved), or {} on CPU."""
        torch = sys.modules.get("torch")
        # while the engine thread is still importing torch, its module is there but half made
        if torch is None or getattr(torch.__spec__, "_initializing", False) or not torch.cuda.is_available():
            return {}
        return {"allocated_bytes": torch.cuda.memory_allocated(), "reserved_bytes": torch.cuda.memory_reserved()}
