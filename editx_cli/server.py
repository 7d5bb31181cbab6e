"""`editx serve`: one process, one engine, an OpenAI-compatible HTTP API.

    POST /v1/audio/speech   OpenAI's request shape: speak `input` in a registered voice
    POST /v1/audio/edits    multipart audio + edit settings; returns the edited audio
    POST /v1/voices         register a voice: a reference clip and its transcript
    GET  /v1/voices, DELETE /v1/voices/{name}
    GET  /v1/models, GET /healthz, OpenAPI docs at /docs

Requests are checked by the same validation as manifest rows (the same messages, naming
the request's field), decoded through the shared Service (lazy load, idle release,
concurrent requests batched), and delivered by the same code as batch outputs (format,
rate, loudness). Uploads go to a private temporary folder under names the server picks;
a client never names a path.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations, and
# the request models are local to create_app.
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from editx_cli import audio, deliver, loop
from editx_cli.engine import Engine
from editx_cli.errors import InvalidInput
from editx_cli.guard import SECURITY_HEADERS, Guard, GuardOptions
from editx_cli.manifest import ID_PATTERN, validate
from editx_cli.resume import PlannedTask
from editx_cli.service import Busy, Service
from editx_cli.tasks import Task

log = logging.getLogger("editx")
MODEL_ID = "step-audio-editx"
RESPONSE_FORMATS = ("wav", "flac", "mp3", "opus", "ogg", "pcm")
PCM_RATE = 24000  # OpenAI's "pcm": 16-bit little-endian mono at 24 kHz
MEDIA = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg; codecs=opus",
         "ogg": "audio/ogg", "pcm": "audio/pcm"}
UPLOAD_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
RATES = (8000, 192000)  # sample rates an upload may have
FORM_OVERHEAD = 2**20  # a request body may exceed the upload limit by its other form fields
VOICE_RATE = 48000  # a registered voice is kept at most at this rate, mono
# Swagger UI's page runs one inline script of FastAPI's; its files come from the installed package
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; frame-ancestors 'none'")


@dataclass(frozen=True)
class ServeOptions:
    engine: str = "stepaudio"
    engine_config: dict | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    voices_dir: Path = Path("voices")
    api_key: str | None = None
    host: str = "127.0.0.1"  # the bound address: with the loopback names, the Host names answered
    allowed_hosts: tuple[str, ...] = ()  # more names to answer (a proxy's), "*" for any
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call the API from their pages
    body_timeout: float = 30.0  # a request body that sends nothing for this long is dropped (408)
    docs: bool = True  # /docs (Swagger UI, from the installed fastapi-offline package)
    idle_unload: float = 300.0
    max_batch: int = 16
    max_queue: int = 64
    max_upload_bytes: int = 50 * 2**20
    max_audio_seconds: float = 60.0
    max_audio_channels: int = 2  # with max_audio_seconds and 96 kHz, the decoded size an upload may have
    max_text_chars: int = 2000
    whisper_model: str | None = None  # transcribe edits sent without audio_text (a resolved checkpoint or name)
    quality: dict | None = None  # qa, thresholds, max_retries: each response heard and scored (retried below)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def create_app(options: ServeOptions):
    from fastapi import FastAPI, File, Form, UploadFile
    from fastapi import Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException

    from editx_cli import engine as engines
    from editx_cli.cache import open_cache

    engine_cls: type[Engine] = engines.get(options.engine)
    cache = open_cache(options.cache_dir, enabled=options.use_cache)
    cache.open()
    # --max-batch is the decoder's slots; an engine that refills its slots from a queue of its own
    # as rows end (continuous batching) is handed several slots' worth of requests at once.
    per_call = options.max_batch * (engine_cls.wave_factor if engine_cls.batches else 1)
    wave_options = loop.RunOptions(progress=False, batch_size=options.max_batch,
                                   transcribe=bool(options.whisper_model), whisper_model=options.whisper_model or "",
                                   **(options.quality or {}))
    service = Service(lambda: engine_cls(dict(options.engine_config or {}), cache), max_batch=per_call,
                      max_queue=options.max_queue, idle_unload=options.idle_unload,
                      run_wave=lambda engine, planned: run_wave(engine, planned))
    voices = Path(options.voices_dir)
    scratch = Path(tempfile.mkdtemp(prefix="editx-serve-"))
    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        service.close()
        cache.close()
        shutil.rmtree(scratch, ignore_errors=True)

    about = {"title": "editx", "version": _version(), "lifespan": lifespan,
             "description": "Step-Audio-EditX: voice cloning and audio edits, OpenAI-compatible."}
    if options.docs:
        from fastapi_offline import FastAPIOffline  # Swagger UI's files from the package, no CDN

        app = FastAPIOffline(redoc_url=None, **about)
    else:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, **about)
    app.state.service = service
    if options.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["*"])
    # added last, so it runs first: hosts, origins, the key and body limits before any route
    app.add_middleware(Guard, options=GuardOptions(
        bind=options.host, allowed_hosts=options.allowed_hosts, cors_origins=options.cors_origins,
        api_key=options.api_key, max_body_bytes=options.max_upload_bytes + FORM_OVERHEAD,
        body_timeout=options.body_timeout, policies=(("/docs", DOCS_POLICY),)))

    # -- errors: one JSON shape, OpenAI's, never a traceback
    def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
              headers: dict | None = None):
        # the security headers here too: a 500 is answered outside the middleware that adds them
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                            status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return error(e.status, e.message, e.param, e.kind, e.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(_, e: HTTPException):  # 404, 405, a body too large or too slow
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error(e.status_code, str(e.detail), kind=kind, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_, e: RequestValidationError):
        first = e.errors()[0]
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "header", "path")]
        param = ".".join(loc) or None
        return error(400, f"{param}: {first.get('msg', 'invalid')}" if param else first.get("msg", "invalid"), param)

    @app.exception_handler(Exception)
    async def _internal(_, e: Exception):
        log.error("request failed: %s", e, exc_info=True)
        return error(500, "internal error (the server log has the details)", kind="server_error")

    async def settled(future, http: HttpRequest):
        """The engine's answer; once the client has gone, work still queued for it is dropped (a
        decode already under way finishes) and a 499 is raised that nobody reads."""
        waiter = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=0.2)
            if done:
                return waiter.result()
            if await http.is_disconnected():
                service.withdraw(future)
                raise ApiError(499, "the client closed the request", kind="client_closed")

    def queued(enqueue, work):
        """Hand work to the engine thread; a full queue (one limit for every route) answers 503."""
        try:
            return enqueue(work)
        except Busy as e:
            raise ApiError(503, f"the server is busy ({e}); retry shortly", kind="server_busy",
                           headers={"Retry-After": "2"}) from None

    # -- running one task
    async def run(task: Task, fmt: str, http: HttpRequest, speed: float = 1.0) -> Response:
        """One task through the batch loop, in a wave with whatever other requests wait: long
        inputs and texts cut and joined, iterations, a missing transcript heard, the output
        delivered as `batch` writes it; the response is that output."""
        t0 = time.perf_counter()
        src = task.prompt_audio or task.input_audio
        field = "voice" if task.task == "clone" else "file"
        # decoding, measuring and encoding run off the event loop: other requests keep flowing
        try:
            x, sr = await asyncio.to_thread(audio.load, src)
        except audio.AudioError as e:
            raise ApiError(400, private(f"not usable audio: {e}"), field) from None
        if len(x) / sr > options.max_audio_seconds:
            raise ApiError(400, f"the audio is {len(x) / sr:.1f} s; at most {options.max_audio_seconds:g} s", field)
        folder = Path(tempfile.mkdtemp(dir=scratch))
        stretch = speed != 1.0  # OpenAI's speed: applied to the output, then delivered again
        try:
            job = dataclasses.replace(task, id=folder.name,
                                      output=folder / ("out.wav" if fmt == "pcm" or stretch else f"out.{fmt}"))
            future = queued(service.submit, PlannedTask(job, "serve", Path(src), False))
            try:
                served = await settled(future, http)
            except ApiError:
                raise
            except Exception as e:  # the whole wave failed (out of memory...)
                raise ApiError(500, private(f"the engine failed: {_one_line(e)}"), kind="server_error") from None
            done = served.result
            if done.status != "done":
                if done.info.get("refused"):  # the input's fault: silent, too short, not transcribable...
                    raise ApiError(422, private(f"the engine cannot use this input: {done.error}"), field)
                raise ApiError(500, private(f"the engine failed: {done.error}"), kind="server_error")
            data, rate, level = job.output.read_bytes(), done.sample_rate, done.loudness_after
            if stretch:
                from editx_cli import loudness
                from editx_cli.engine.dsp import time_stretch  # Rubber Band, as the dsp speed edit

                y, r = audio.decode(data)
                y = await asyncio.to_thread(time_stretch, y, r, speed)
                before = await asyncio.to_thread(loudness.integrated, x, sr) if task.delivery.match_input else None
                try:
                    data, rate, measures = await asyncio.to_thread(
                        deliver.render, y, r, ".wav" if fmt == "pcm" else f".{fmt}", task.delivery, before)
                except ValueError as e:  # too short or silent to normalise
                    raise ApiError(422, _one_line(e), "loudness" if task.delivery.loudness is not None else None
                                   ) from None
                level = measures.get("loudness_after")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if fmt == "pcm":
            import io

            import soundfile as sf

            data = sf.read(io.BytesIO(data), dtype="int16")[0].astype("<i2").tobytes()
        headers = {"X-Editx-Load-Seconds": f"{served.load_seconds:.3f}", "X-Editx-Batch": str(served.batch),
                   "X-Editx-Seconds": f"{time.perf_counter() - t0:.3f}", "X-Editx-Sample-Rate": str(rate)}
        if level is not None:
            headers["X-Editx-Loudness"] = f"{level:.2f}"
        if isinstance(done.info.get("chunks"), list):  # a long input or text, cut and joined as `batch` does
            headers["X-Editx-Chunks"] = str(len(done.info["chunks"]))
        scores = done.info.get("qa")
        if isinstance(scores, dict):  # --qa: what the checks found (the kept attempt's, under --retry-below)
            headers["X-Editx-QA-Passed"] = str(bool(scores.get("passed"))).lower()
            for key in ("wer", "cer", "similarity", "duration_ratio"):
                if scores.get(key) is not None:
                    headers[f"X-Editx-QA-{key.replace('_', '-').title()}"] = str(scores[key])
            if scores.get("problems"):
                headers["X-Editx-QA-Problems"] = quote(scores["problems"])
            headers["X-Editx-QA-Attempts"] = str(len(done.info.get("qa_attempts") or [scores]))
        if done.info.get("transcribed_by"):  # what the server heard, as the edit used it
            # headers are Latin-1: percent-encoded UTF-8
            headers["X-Editx-Transcript"] = quote(done.info.get("transcript", ""))
        return Response(data, media_type=MEDIA[fmt], headers=headers)

    def run_wave(engine: Engine, planned: list) -> list:
        """The engine thread's wave: the requests waiting, through the batch loop as one run."""
        outcomes, _ = loop.run(planned, engine, wave_options,
                               transcriber=transcriber(engine) if options.whisper_model else None)
        return outcomes

    whisper: dict[str, Any] = {}

    def transcriber(engine: Engine):
        """One Whisper model for the server's life, on the engine's device (engine thread only)."""
        if "t" not in whisper:
            from editx_cli.transcribe import Transcriber

            whisper["t"] = Transcriber(options.whisper_model, engine.device, cache)
        return whisper["t"]

    def private(message: str) -> str:
        """A message with the server's own paths taken out: a client sees "upload" or "voice"."""
        for folder, word in ((scratch, "upload"), (voices.resolve(), "voice"), (voices, "voice")):
            message = re.sub(re.escape(str(folder)) + r"[^\s':)]*", word, message)
        return message

    def checked(row: dict[str, Any], labels: dict[str, str]) -> Task:
        try:
            return validate([row], source="request", base_dir=scratch, out_dir=scratch, engine=engine_cls,
                            field_labels=labels, transcribe=bool(options.whisper_model),
                            transcript_hint=("the upload", "start the server with --whisper-model"))[0]
        except InvalidInput as e:
            p = e.problems[0]
            message = "; ".join(f"{q.field}: {q.message}" if q.field else q.message for q in e.problems)
            raise ApiError(400, private(message), p.field) from None

    async def save_upload(upload: UploadFile, field: str) -> Path:
        suffix = Path(upload.filename or "").suffix.lower()
        folder = Path(tempfile.mkdtemp(dir=scratch))
        path = folder / ("upload" + (suffix if suffix in UPLOAD_SUFFIXES else ""))
        size = 0
        with open(path, "wb") as f:
            while block := await upload.read(1 << 20):
                size += len(block)
                if size > options.max_upload_bytes:
                    shutil.rmtree(folder, ignore_errors=True)
                    raise ApiError(413, f"the upload is over {options.max_upload_bytes} bytes", field)
                f.write(block)
        try:
            info = audio.probe(path)
            problem = upload_problem(info)
        except audio.AudioError as e:
            problem = private(f"not usable audio: {e}")
        if problem:
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(400, problem, field)
        return path

    def upload_problem(info: audio.AudioInfo) -> str | None:
        """What is wrong with an upload's header, before a sample of it is decoded."""
        if not RATES[0] <= info.samplerate <= RATES[1]:
            return f"a sample rate of {info.samplerate} Hz; from {RATES[0]} to {RATES[1]} Hz are taken"
        if info.seconds > options.max_audio_seconds:
            return f"the audio is {info.seconds:.1f} s; at most {options.max_audio_seconds:g} s"
        most = int(options.max_audio_seconds * 96000 * options.max_audio_channels)
        if info.frames * info.channels > most:
            return (f"the audio decodes to {info.frames * info.channels} samples ({info.channels} channels at "
                    f"{info.samplerate} Hz); at most {most}")
        return None

    def text_limit(value: str, field: str) -> None:
        if len(value) > options.max_text_chars:
            raise ApiError(400, f"{len(value)} characters; at most {options.max_text_chars}", field)

    # -- the endpoints
    class Speech(BaseModel):
        model_config = ConfigDict(allow_inf_nan=False)  # NaN is no number, not "unset"

        model: str = MODEL_ID
        input: str = Field(min_length=1)
        voice: str
        response_format: Literal["wav", "flac", "mp3", "opus", "ogg", "pcm"] = "mp3"
        speed: float = Field(default=1.0, ge=0.25, le=4.0)
        seed: int = Field(default=0, ge=0, lt=2**32)
        loudness: float | None = None
        peak: float | None = None
        sample_rate: int | None = None
        bitrate: int | None = None

    @app.post("/v1/audio/speech", response_class=Response,
              responses={200: {"content": {m: {} for m in MEDIA.values()}}})
    async def speech(body: Speech, http: HttpRequest):
        """Speak `input` in a registered voice (OpenAI's request shape)."""
        text_limit(body.input, "input")
        voice = _voice(voices, body.voice)
        row = {"id": "request", "task": "clone", "prompt_audio": str(voices / f"{body.voice}.wav"),
               "prompt_text": voice["text"], "text": body.input, "seed": body.seed,
               "output": "out." + ("wav" if body.response_format == "pcm" else body.response_format),
               "loudness": body.loudness, "peak": body.peak,
               "sample_rate": PCM_RATE if body.response_format == "pcm" else body.sample_rate,
               "bitrate": body.bitrate}
        task = checked({k: v for k, v in row.items() if v is not None},
                       {"prompt_audio": "voice", "prompt_text": "voice", "text": "input", "output": "response_format",
                        "task": "model"})
        return await run(task, body.response_format, http, body.speed)

    @app.post("/v1/audio/edits", response_class=Response,
              responses={200: {"content": {m: {} for m in MEDIA.values()}}})
    async def edits(http: HttpRequest, file: UploadFile = File(...), edit_type: str = Form(...),
                    edit_info: str = Form(""), intensity: float = Form(1.0, allow_inf_nan=False),
                    iterations: int = Form(1), seed: int = Form(0), audio_text: str = Form(""), text: str = Form(""),
                    response_format: str = Form("wav"), loudness: float | None = Form(None, allow_inf_nan=False),
                    peak: float | None = Form(None, allow_inf_nan=False), match_input: bool = Form(False),
                    sample_rate: int | None = Form(None), bitrate: int | None = Form(None)):
        """Edit an uploaded clip; post the result back for a chain of edits."""
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"unknown format {response_format!r} (one of: {', '.join(RESPONSE_FORMATS)})",
                           "response_format")
        for value, field in ((audio_text, "audio_text"), (text, "text")):
            text_limit(value, field)
        path = await save_upload(file, "file")
        try:
            row = {"id": "request", "task": "edit", "input_audio": str(path), "edit_type": edit_type,
                   "edit_info": edit_info, "intensity": intensity, "iterations": iterations, "seed": seed,
                   "audio_text": audio_text, "text": text, "loudness": loudness, "peak": peak,
                   "match_input": match_input or None, "bitrate": bitrate,
                   "sample_rate": PCM_RATE if response_format == "pcm" else sample_rate,
                   "output": "out." + ("wav" if response_format == "pcm" else response_format)}
            task = checked({k: v for k, v in row.items() if v is not None},
                           {"input_audio": "file", "output": "response_format", "task": "edit_type"})
            return await run(task, response_format, http)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    @app.post("/v1/voices", status_code=201)
    async def add_voice(name: str = Form(...), text: str = Form(...), file: UploadFile = File(...),
                        replace: bool = Form(False)):
        """Register a voice: a reference clip and its transcript. Its prompt features are
        made at once, so the first speech request in it does not pay for them."""
        if not _voice_name(name):
            raise ApiError(400, f"{name[:80]!r} is not a usable voice name (at most {VOICE_NAME_CHARS} letters, "
                                "digits, '.', '-', '_')", "name")
        if not text.strip():
            raise ApiError(400, "missing: the transcript of the clip", "text")
        text_limit(text, "text")
        if (voices / f"{name}.json").exists() and not replace:
            raise ApiError(409, f"voice {name!r} exists (send replace=true to replace it)", "name")
        path = await save_upload(file, "file")
        try:
            x, sr = await asyncio.to_thread(audio.load, path)
        except audio.AudioError as e:
            raise ApiError(400, private(f"not usable audio: {e}"), "file") from None
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        if sr > VOICE_RATE:  # a voice is a prompt: more than 48 kHz only takes disk space
            x, sr = await asyncio.to_thread(audio.resample, x, sr, VOICE_RATE), VOICE_RATE
        voices.mkdir(parents=True, exist_ok=True)
        tmp = audio.write_atomic(voices / f"{name}.wav", audio.encode(x, sr, ".wav"))
        os.replace(tmp, voices / f"{name}.wav")
        _write_json(voices / f"{name}.json", {"text": text.strip(), "seconds": round(len(x) / sr, 3)})
        cached = False
        if hasattr(engine_cls, "prompt_features"):
            digest = audio.samples_digest(x, sr)
            future = queued(service.call, lambda e: e.prompt_features(x, sr, digest))
            try:
                await asyncio.wrap_future(future)
                cached = True
            except Exception as e:  # the voice is kept; its features are made at first use instead
                log.warning("voice %s: prompt features not cached: %s", name, _one_line(e))
        return {"name": name, "text": text.strip(), "seconds": round(len(x) / sr, 3), "features_cached": cached}

    @app.get("/v1/voices")
    async def list_voices():
        return {"object": "list", "data": [{"name": n, **_voice(voices, n)} for n in _voice_names(voices)]}

    @app.delete("/v1/voices/{name}")
    async def delete_voice(name: str):
        _voice(voices, name)
        for suffix in (".json", ".wav"):
            (voices / f"{name}{suffix}").unlink(missing_ok=True)
        return {"name": name, "deleted": True}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "editx",
                                            "engine": options.engine}]}

    page, page_policy = _ui_page(engine_cls)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def ui():
        """The web page: clone and every edit, upload or record, a history of chained edits."""
        return HTMLResponse(page, headers={"Content-Security-Policy": page_policy})

    @app.get("/healthz")
    async def healthz():
        """Alive; whether the model is loaded; queue depth; device memory; decode statistics."""
        return {"status": "ok", "engine": options.engine, "loaded": service.loaded, "queue": service.queued,
                "running": service.running,
                "device": service.engine.device if service.engine is not None else None,
                "device_memory": service.device_memory(), "stats": dict(service.stats),
                "cache": cache.stats() if hasattr(cache, "stats") and options.use_cache else None}

    return app


def _ui_page(engine_cls: type[Engine]) -> tuple[str, str]:
    """ui.html with what this engine can do written in, so the page needs no extra request, and
    its Content-Security-Policy: its own inline script and style (by hash), nothing else inline."""
    from importlib import resources

    from editx_cli.tasks import EDIT_INFOS

    options = {"formats": ["wav", "mp3", "flac", "opus", "ogg"],
               "edit_types": [t for t in EDIT_INFOS if t in engine_cls.edit_types],
               "edit_infos": {t: list(v) for t, v in EDIT_INFOS.items()}, "clone": "clone" in engine_cls.task_kinds}
    page = resources.files("editx_cli").joinpath("ui.html").read_text(encoding="utf-8")
    page = page.replace("__EDITX_OPTIONS__", json.dumps(options).replace("</", "<\\/"))
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)

    def hashes(blocks: list[str]) -> str:
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (f"default-src 'none'; script-src {hashes(scripts)}; style-src {hashes(styles)}; img-src 'self' data:; "
              "media-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
              "frame-ancestors 'none'")
    return page, policy


def _voice_names(voices: Path) -> list[str]:
    return sorted(p.stem for p in voices.glob("*.json") if ID_PATTERN.fullmatch(p.stem)) if voices.is_dir() else []


VOICE_NAME_CHARS = 64


def _voice_name(name: str) -> bool:
    return len(name) <= VOICE_NAME_CHARS and bool(ID_PATTERN.fullmatch(name))


def _voice(voices: Path, name: str) -> dict:
    if not (_voice_name(name) and (voices / f"{name}.json").is_file()):
        known = _voice_names(voices)  # listed only for the message: a request looks up one file
        raise ApiError(404, f"voice {name[:80]!r} not found (registered: {', '.join(known) or 'none'}; "
                            "POST /v1/voices adds one)", "voice")
    try:
        data = json.loads((voices / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ApiError(500, f"voice {name!r}: its record is damaged; register it again", "voice", "server_error")
    return {"text": data["text"], "seconds": data.get("seconds")}


def _write_json(path: Path, data: dict) -> None:
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(part, path)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _version() -> str:
    from editx_cli import __version__

    return __version__
