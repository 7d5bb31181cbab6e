"""The engine's stream on its own thread: results come back by key as each is made, and an
engine that fails answers every request it held instead of leaving the loop waiting."""

from __future__ import annotations

import threading
import time

import numpy as np

from editx_cli.cache import NullCache
from editx_cli.engine import Request
from editx_cli.engine.dsp import DspEngine
from editx_cli.feed import Feed


def _request(info: str) -> Request:
    x = (0.1 * np.sin(np.arange(16000) / 8)).astype(np.float32)
    return Request(kind="edit", audio=x, sr=16000, edit_type="speed", edit_info=info)


def _results(feed: Feed, n: int, within: float = 60.0) -> dict:
    """n results, or a failure after `within` seconds (a wake-up ends the wait for one)."""
    got: dict = {}
    deadline = time.monotonic() + within
    timer = threading.Timer(within, feed.wake)
    timer.start()
    try:
        while len(got) < n:
            assert time.monotonic() < deadline, f"{len(got)} of {n} results came back"
            got.update(feed.next())
    finally:
        timer.cancel()
    return got


def test_results_come_back_by_key_and_later_requests_join():
    engine = DspEngine({}, NullCache())
    engine.load()
    feed = Feed(engine)
    try:
        feed.put([("a", _request("faster")), ("b", _request("slower"))])
        first = _results(feed, 2)
        feed.put([("c", _request("faster"))])
        later = _results(feed, 1)
    finally:
        feed.close()
    assert set(first) == {"a", "b"} and set(later) == {"c"}
    assert len(first["a"].audio) < 16000 < len(first["b"].audio)  # each its own request's audio
    assert np.array_equal(first["a"].audio, later["c"].audio)


class _Broken(DspEngine):
    def stream(self, take, deliver):
        while take(True) is not None:  # takes work, then dies with it
            raise SystemError("the device fell over")


def test_an_engine_that_dies_answers_everything_it_held():
    feed = Feed(_Broken({}, NullCache()))
    try:
        feed.put([("a", _request("faster")), ("b", _request("slower"))])
        got = _results(feed, 2)
        feed.put([("c", _request("faster"))])  # handed to an engine that is gone: answered at once
        got.update(_results(feed, 1))
    finally:
        feed.close()
    assert set(got) == {"a", "b", "c"}
    assert all(isinstance(e, RuntimeError) and "the device fell over" in str(e) for e in got.values())
