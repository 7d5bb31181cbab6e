"""The serving objects of one app (kept on `app.state.serving`): the engine's Service, the
feature cache, the voices folder, the private scratch folder, the one Whisper; and what the
routes share: turning a request into a task of the batch loop and its output into a response."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from editx_cli import loop, settings
from editx_cli.engine import Engine
from editx_cli.errors import InvalidInput, one_line
from editx_cli.manifest import validate
from editx_cli.resume import PlannedTask
from editx_cli.schedule import group_size
from editx_cli.serve.errors import ApiError
from editx_cli.serve.options import (
    MEDIA,
    METADATA_KEYS,
    PCM_RATE,
    STREAM_FORMATS,
    ServeOptions,
)
from editx_cli.serve.responses import headers as response_headers
from editx_cli.serve.uploads import Uploads
from editx_cli.service import Busy, Service
from editx_cli.tasks import Task

log = logging.getLogger("editx")

if TYPE_CHECKING:
    from fastapi import Request as HttpRequest
    from fastapi.responses import Response


class Serving:
    def __init__(self, options: ServeOptions) -> None:
        from editx_cli import engine as engines
        from editx_cli.cache import open_cache

        self.options = options
        self.engine_cls: type[Engine] = engines.get(options.engine)
        self.cache = open_cache(options.cache_dir, enabled=options.use_cache)
        self.cache.open()
        # --max-batch is the decoder's slots; the loop holds a few slots' worth of requests (an
        # engine that refills its slots as rows end has the next ones ready)
        self.run_options = loop.RunOptions(progress=False, batch_size=options.max_batch,
                                           transcribe=bool(options.whisper_model),
                                           whisper_model=options.whisper_model or "", **(options.quality or {}))
        self.service = Service(lambda: engines.build(options.engine, options.engine_config or {}, self.cache),
                               max_batch=group_size(self.engine_cls, options.max_batch),
                               max_queue=options.max_queue, idle_unload=options.idle_unload, run=self.run_tasks)
        self.voices = Path(options.voices_dir)
        self.scratch = Path(tempfile.mkdtemp(prefix="editx-serve-"))
        self.uploads = Uploads(self.scratch, options, self.private)
        self.whisper = None  # opened by the first request that needs it, kept for the server's life
        self._numbers = itertools.count(1)  # a request's task id, as the log names it: "request-7"
        # the model variant served (the Step-Audio API's model_variant names one)
        config = options.engine_config or {}
        self.variant = (config.get("variant") or "base") if options.engine == "stepaudio" else None

    def request_id(self) -> str:
        return f"request-{next(self._numbers)}"

    def close(self) -> None:
        self.service.close()
        self.cache.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    async def settled(self, future, http: HttpRequest, work=None):
        """The engine's answer (or `future`'s, an asyncio one, for `work`); once the client has
        gone, work still queued for it is dropped (a decode already under way finishes) and a
        499 is raised that nobody reads."""
        work = work or future
        waiter = future if asyncio.isfuture(future) else asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=0.2)
            if done:
                return waiter.result()
            if await http.is_disconnected():
                self.service.withdraw(work)
                waiter.cancel()
                raise ApiError(499, "the client closed the request", kind="client_closed")

    def queued(self, enqueue, work):
        """Hand work to the engine thread; a full queue (one limit for every route) answers 503."""
        try:
            return enqueue(work)
        except Busy as e:
            raise ApiError(503, f"the server is busy ({e}); retry shortly", kind="server_busy",
                           headers={"Retry-After": "2"}) from None

    async def run(self, task: Task, fmt: str, http: HttpRequest, speed: float = 1.0, stream: bool = False,
                  uploads: tuple[Path, ...] = ()) -> Response:
        """One task through the batch loop, beside whatever other requests are running: its input
        read once (there, on the loop's thread), long inputs and texts cut and joined,
        iterations, a missing transcript heard, the output rendered as `batch` renders it
        (OpenAI's `speed` and `pcm` as stages of that one render) and handed back, with no file
        written; the response is that output (`stream`: sent as it is made, see streaming.py).
        `uploads`: the request's saved audio, removed once the task is over (a streamed one's
        when its last byte has gone: a clone's speaker name is the hash of its prompt file)."""
        streaming = False
        try:
            job = dataclasses.replace(task, id=self.request_id(), delivery=dataclasses.replace(
                task.delivery, speed=speed if speed != 1.0 else None))
            if fmt == "pcm":
                job = dataclasses.replace(job, output=job.output.with_suffix(".pcm"))
            planned = PlannedTask(job, "serve", Path(task.prompt_audio or task.input_audio), False)
            if stream:
                response = await self._streamed(planned, fmt, speed, uploads, http)
                streaming = True
                return response
            return await self._whole(planned, http)
        finally:
            if not streaming:
                remove(uploads)

    def _failure(self, task: Task, error: BaseException | None, done: Any = None) -> ApiError:
        """Why a task has no output, as the client hears it: its input's fault (400: not audio;
        422: audio the engine cannot use, or an output that cannot be delivered as asked), or
        the server's (500)."""
        field = "voice" if task.kind == "clone" else "file"
        if error is not None:  # the engine's run failed (out of memory...)
            return ApiError(500, self.private(f"the engine failed: {one_line(error)}"), kind="server_error")
        if done.refused == "input":
            return ApiError(400, self.private(f"not usable audio: {done.error}"), field)
        if done.refused:  # silent, too short, not transcribable, too quiet to level...
            return ApiError(422, self.private(f"the engine cannot use this input: {done.error}"), field)
        return ApiError(500, self.private(f"the engine failed: {done.error}"), kind="server_error")

    async def _whole(self, planned: PlannedTask, http: HttpRequest) -> Response:
        """The response made whole: the output as `batch` renders it, with what the run found in headers."""
        task, t0 = planned.task, time.perf_counter()
        future = self.queued(self.service.submit, planned)
        try:
            served = await self.settled(future, http)
        except ApiError:
            raise
        except Exception as e:
            raise self._failure(task, e) from None
        done = served.result
        if done.status != "done":
            raise self._failure(task, None, done)
        headers = response_headers(done, served.load_seconds, served.batch, time.perf_counter() - t0)
        from fastapi.responses import Response

        fmt = task.output.suffix.lstrip(".")
        return Response(served.data, media_type=MEDIA[fmt], headers=headers)

    async def _streamed(self, planned: PlannedTask, fmt: str, speed: float, uploads: tuple[Path, ...],
                        http: HttpRequest) -> Response:
        """The response of a streamed request: its audio parts as the loop hands them over. The
        status is sent with the first part, so an input that cannot be used is still refused
        with its own status."""
        from fastapi.responses import StreamingResponse

        from editx_cli.serve.streaming import AudioStream

        if fmt not in STREAM_FORMATS:
            raise ApiError(400, f"a stream is sent as {' or '.join(STREAM_FORMATS)}, not {fmt}", "response_format")
        d = planned.task.delivery
        for field, given in (("speed", speed != 1.0), ("loudness", d.loudness is not None),
                             ("peak", d.peak is not None), ("match_input", d.match_input)):
            if given:
                raise ApiError(400, f"{field} needs the whole output before any of it is sent; not with stream",
                               field)
        parts = AudioStream(d.sample_rate, wav=fmt == "wav")
        future = self.queued(lambda work: self.service.submit(work, listener=parts.put), planned)
        future.add_done_callback(lambda _: parts.close())  # settled (or dropped): the stream ends
        chunks = parts.chunks()
        try:
            first = await self.settled(asyncio.ensure_future(anext(chunks, None)), http, future)
        except ApiError:
            raise
        except Exception as e:
            raise self._failure(planned.task, e) from None
        if first is None:  # ended before any audio: the task failed
            try:
                done = (await asyncio.wrap_future(future)).result
            except Exception as e:
                raise self._failure(planned.task, e) from None
            raise self._failure(planned.task, None, done)

        async def body():
            finished = False
            try:
                yield first
                async for chunk in chunks:
                    yield chunk
                done = (await asyncio.wrap_future(future)).result
                if done.status != "done":  # the status line has gone: all a stream can do is stop short
                    log.error("a streamed request failed: %s", self.private(done.error))
                    raise RuntimeError("the streamed task failed")
                finished = True
            finally:
                if not finished:  # failed, or the client went away: its queued work goes too
                    self.service.withdraw(future)
                remove(uploads)

        headers = {"X-Editx-Stream": "true", **({"X-Editx-Sample-Rate": str(d.sample_rate)} if d.sample_rate else {})}
        return StreamingResponse(body(), media_type=MEDIA[fmt], headers=headers)

    def run_tasks(self, engine: Engine, source: Service) -> None:
        """The engine thread's run: the requests as tasks of the batch loop, each joining the
        work under way as it arrives, until the service says no more will come; their outputs
        go back through the service (the loop's sink for them), never through a file."""
        loop.run([], engine, self.run_options, source=source,
                 transcriber=self.transcriber(engine) if self.options.whisper_model else None)

    def transcriber(self, engine: Engine):
        """One Whisper model for the server's life, on the engine's device (engine thread only)."""
        if self.whisper is None:
            from editx_cli.transcribe import Transcriber

            self.whisper = Transcriber(self.options.whisper_model, engine.device, self.cache)
        return self.whisper

    def private(self, message: str) -> str:
        """A message with the server's own paths taken out: a client sees "upload" or "voice"."""
        for folder, word in ((self.scratch, "upload"), (self.voices.resolve(), "voice"), (self.voices, "voice")):
            message = re.sub(re.escape(str(folder)) + r"[^\s':)]*", word, message)
        return message

    def checked(self, row: dict[str, Any], labels: dict[str, str]) -> Task:
        try:
            return validate([row], source="request", base_dir=self.scratch, out_dir=self.scratch,
                            engine=self.engine_cls, field_labels=labels, transcribe=bool(self.options.whisper_model),
                            transcript_hint=("the upload", "start the server with --whisper-model"))[0]
        except InvalidInput as e:
            p = e.problems[0]
            message = "; ".join(f"{q.field}: {q.message}" if q.field else q.message for q in e.problems)
            raise ApiError(400, self.private(message), p.field) from None

    def request_row(self, row: dict[str, Any], body: Any, fmt: str) -> dict[str, Any]:
        """A speech request's task row: the task's fields, its seed and how it is delivered."""
        full = {"id": "request", **row, "seed": body.seed, "output": "out." + ("wav" if fmt == "pcm" else fmt),
                **{s.name: getattr(body, s.name) for s in settings.DELIVERY if s.name != "format"}}
        if fmt == "pcm":
            full["sample_rate"] = PCM_RATE
        return {k: v for k, v in full.items() if v is not None and v is not False}

    def text_limit(self, value: str, field: str) -> None:
        if len(value) > self.options.max_text_chars:
            raise ApiError(400, f"{len(value)} characters; at most {self.options.max_text_chars}", field)


METADATA_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def echo_headers(body: Any) -> dict[str, str]:
    """What the Step-Audio API echoes: the model asked for (X-StepAudio-Model) and each metadata
    entry as X-Metadata-<key> (percent-encoded UTF-8, as headers are Latin-1)."""
    headers = {"X-StepAudio-Model": quote(body.model[:200], safe=SAFE)}
    metadata = body.metadata or {}
    if len(metadata) > METADATA_KEYS:
        raise ApiError(400, f"{len(metadata)} entries; at most {METADATA_KEYS}", "metadata")
    for key, value in metadata.items():
        if not METADATA_KEY.fullmatch(key):
            raise ApiError(400, f"{key[:40]!r} cannot be a header name (letters, digits, '-', '_'; at most 64)",
                           "metadata")
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > 1024:
            raise ApiError(400, f"{key}: {len(text)} characters; at most 1024", "metadata")
        headers[f"X-Metadata-{key}"] = quote(text, safe=SAFE)
    return headers


SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")  # printable ASCII goes as it is


def remove(uploads) -> None:
    """Each upload's private folder, with the upload in it."""
    for path in uploads:
        shutil.rmtree(Path(path).parent, ignore_errors=True)
