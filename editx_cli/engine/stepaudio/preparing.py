"""Preparing beside decoding: newcomers' prompts and features (FunASR, the vq06 ONNX model,
CAM++, the prompt mel; seconds for an uncached long input) are made on a thread of their own,
one request at a time, and handed to the decoder ready at its next sync, so the rows already
decoding never stall while a newcomer is tokenised.

The thread is the engine stream's only caller of `take`: it asks for more whenever it has
nothing left to prepare (waiting), and between two preparations (not waiting), so a stop
(`take` raising) is heard within one request's preparation and passed on to the decoder.
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
        self._ready: list[tuple[Any, Any]] = []  # (key, prepared or its exception), in arrival order
        self._cond = threading.Condition()
        self._ended = False  # the source will bring nothing more, and all it brought is prepared
        self._error: BaseException | None = None  # what `take` raised (a stop), for the decoder
        self._thread = threading.Thread(target=self._run, name="editx-prepare", daemon=True)
        self._thread.start()

    def get(self, wait: bool) -> list[tuple[Any, Any]] | None:
        """What is ready ([] when nothing is and `wait` is False); None once the source has
        ended and everything is handed over. Raises what stopped the source."""
        with self._cond:
            while wait and not self._ready and not self._ended and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if self._ready:
                out, self._ready = self._ready, []
                return out
            return None if self._ended else []

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        pending: list = []
        shared: dict = {}
        ended = False
        try:
            while pending or not ended:
                if not ended:
                    got = self._take(not pending)
                    if got is None:
                        ended = True
                    else:
                        pending += got
                if not pending:
                    continue
                key, request = pending.pop(0)
                try:
                    item = self._prepare(request, shared)
                except Exception as e:  # this request's own problem: it is answered with it
                    item = e
                if not pending:
                    shared = {}  # an arrival's requests share features; later ones go through the cache
                with self._cond:
                    self._ready.append((key, item))
                    self._cond.notify_all()
        except BaseException as e:  # the source stopped (Ctrl-C) or failed: the decoder hears it
            with self._cond:
                self._error = e
                self._cond.notify_all()
            return
        with self._cond:
            self._ended = True
            self._cond.notify_all()
