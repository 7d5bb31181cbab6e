"""An engine's stream on a thread of its own, fed by the run loop.

The loop hands each request over as soon as it is ready and takes each result back as soon
as the engine has made it, so no request waits for others to end before it starts, and none
is answered only when the slowest of its batch is: a server's new requests, a task's next
pass and a long task's next chunk all join the decoding already under way (`Engine.stream`).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from editx_cli.engine import Engine, Request

log = logging.getLogger("editx")

ARRIVED = object()  # an event that says "look at the source again", not a result


class Stopped(Exception):
    """The run is interrupted: the engine stops at its next chance (a decoder's next sync)."""


class Feed:
    def __init__(self, engine: Engine, events: queue.Queue | None = None) -> None:
        """`events`: the queue results come back on (a runner's inbox, where new work is
        announced too: its thread then waits in one place); a queue of its own by default."""
        self._engine = engine
        self._inbox: list[tuple[Any, Request]] = []
        self._lock = threading.Condition()
        self._closing = False
        self._aborted = False
        self._dead: BaseException | None = None  # what stopped the engine's thread, if it stopped
        self._owed: set = set()  # keys handed over whose results have not come back
        self._events: queue.Queue = queue.Queue() if events is None else events  # (key, result) pairs, and ARRIVED
        self._thread = threading.Thread(target=self._run, name="editx-engine", daemon=True)
        self._thread.start()

    # -- the run loop's side
    def put(self, items: list[tuple[Any, Request]]) -> None:
        """Requests for the engine, each under a key its result comes back with."""
        with self._lock:
            if self._dead is None:
                self._inbox.extend(items)
                self._owed.update(key for key, _ in items)
                self._lock.notify()
                return
        for key, _ in items:  # the engine is gone: each request hears why at once
            self._events.put((key, self._dead))

    def wake(self) -> None:
        """Make `next` return (a source has tasks for the loop); callable from any thread."""
        self._events.put(ARRIVED)

    def next(self) -> list[tuple[Any, Any]]:
        """Block until a result is ready or `wake` is called; every result ready by then."""
        first = self._get()
        out = [] if first is ARRIVED else [first]
        while True:
            try:
                more = self._events.get_nowait()
            except queue.Empty:
                return out
            if more is not ARRIVED:
                out.append(more)

    def _get(self) -> Any:
        while True:  # a timeout, so that Ctrl-C reaches a waiting main thread on every platform
            try:
                return self._events.get(timeout=1.0)
            except queue.Empty:
                continue

    def close(self, abort: bool = False) -> None:
        """End the stream: once what was handed over is done, or at once (`abort`: work under
        way is dropped at the engine's next chance)."""
        with self._lock:
            self._closing = True
            self._aborted = abort
            if abort:
                self._inbox.clear()
            self._lock.notify_all()
        self._thread.join(timeout=None if not abort else 60)

    # -- the engine's thread
    def _take(self, wait: bool) -> list[tuple[Any, Request]] | None:
        with self._lock:
            if self._aborted:
                raise Stopped
            while wait and not self._inbox and not self._closing:
                self._lock.wait()
            if self._aborted:
                raise Stopped
            if not self._inbox and self._closing:
                return None
            items, self._inbox = self._inbox, []
            return items

    def _deliver(self, key: Any, result: Any) -> None:
        with self._lock:
            self._owed.discard(key)
        self._events.put((key, result))

    def _run(self) -> None:
        try:
            self._engine.stream(self._take, self._deliver)
        except Stopped:
            pass
        except BaseException as e:  # a fault of the engine itself: what is in flight fails with it
            log.debug("the engine's stream stopped", exc_info=True)
            with self._lock:
                self._dead = RuntimeError(f"the engine stopped: {type(e).__name__}: {e}")
                owed, self._owed, self._inbox = self._owed, set(), []
            for key in owed:
                self._events.put((key, self._dead))
            return
        with self._lock:  # an engine that ended without answering some: they hear so
            owed, self._owed = self._owed, set()
        for key in owed:
            self._events.put((key, RuntimeError("the engine did not answer this request")))
