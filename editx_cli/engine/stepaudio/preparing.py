"""Preparing beside decoding: newcomers' prompts and features (FunASR, the vq06 ONNX model,
CAM++, the prompt mel; seconds for an uncached long input) are made on a thread of their own,
one request at a time, and handed to the decoder ready at its next sync, so the rows already
decoding never stall while a newcomer is tokenised.

The thread is the engine stream's only caller of `take`: it asks for more whenever it has
nothing left to prepare (waiting), and between two preparations (not waiting), so a stop
(`take` raising) is heard within one request's preparation and passed on to the decoder.

What one `take` brought is an arrival. An idle decoder waits for the whole of the first
arrival it gets (a batch's tasks start decoding together, prefilled side by side); a running
one takes each request as soon as it is ready.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Preparation:
    def __init__(self, prepare: Callable[[Any, dict], Any], take: Callable[[bool], list | None]) -> None:
        """`prepare(request, shared)`: a request's prepared form, or an exception of its own
        (requests of one arrival share `shared`: rows with the same audio compute it once)."""
        self._prepare, self._take = prepare, take
        self._ready: list[tuple[int, Any, Any]] = []  # (arrival, key, prepared or its exception), in order
        self._arrivals = 0  # arrivals taken so far; each ready item is numbered by its own
        self._prepared = 0  # arrivals wholly prepared
        self._cond = threading.Condition()
        self._ended = False  # the source will bring nothing more, and all it brought is prepared
        self._error: BaseException | None = None  # what `take` raised (a stop), for the decoder
        self._thread = threading.Thread(target=self._run, name="editx-prepare", daemon=True)
        self._thread.start()

    def get(self, wait: bool) -> list[tuple[Any, Any]] | None:
        """What is ready ([] when nothing is and `wait` is False; with `wait`, once the first
        ready request's whole arrival is); None once the source has ended and everything is
        handed over. Raises what stopped the source."""
        with self._cond:
            while wait and not (self._ready and self._ready[0][0] <= self._prepared) and not self._ended \
                    and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if self._ready:
                out, self._ready = [(key, item) for _, key, item in self._ready], []
                return out
            return None if self._ended else []

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        pending: list = []  # (arrival, key, request)
        shared: dict = {}  # features by audio digest, within an arrival; later ones go through the cache
        ended = False
        try:
            while pending or not ended:
                if not ended:
                    got = self._take(not pending)
                    if got is None:
                        ended = True
                    elif got:
                        self._arrivals += 1
                        pending += [(self._arrivals, key, request) for key, request in got]
                if not pending:
                    continue
                arrival, key, request = pending.pop(0)
                last = not pending or pending[0][0] != arrival  # of its arrival
                shared_now = shared
                if last:
                    shared = {}
                try:
                    item = self._prepare(request, shared_now)
                except Exception as e:  # this request's own problem: it is answered with it
                    item = e
                with self._cond:
                    self._ready.append((arrival, key, item))
                    if last:
                        self._prepared = arrival
                    self._cond.notify_all()
        except BaseException as e:  # the source stopped (Ctrl-C) or failed: the decoder hears it
            with self._cond:
                self._error = e
                self._cond.notify_all()
            return
        with self._cond:
            self._ended = True
            self._cond.notify_all()
