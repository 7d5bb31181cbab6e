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
import contextlib
import hmac
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

from editx_cli import audio, deliver
from editx_cli.engine import Engine, Request
from editx_cli.errors import InvalidInput
from editx_cli.manifest import ID_PATTERN, validate
from editx_cli.service import Busy, Service
from editx_cli.tasks import Task

log = logging.getLogger("editx")
MODEL_ID = "step-audio-editx"
RESPONSE_FORMATS = ("wav", "flac", "mp3", "opus", "ogg", "pcm")
PCM_RATE = 24000  # OpenAI's "pcm": 16-bit little-endian mono at 24 kHz
MEDIA = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg; codecs=opus",
         "ogg": "audio/ogg", "pcm": "audio/pcm"}
UPLOAD_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")


@dataclass(frozen=True)
class ServeOptions:
    engine: str = "stepaudio"
    engine_config: dict | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    voices_dir: Path = Path("voices")
    api_key: str | None = None
    idle_unload: float = 300.0
    max_batch: int = 16
    max_queue: int = 64
    max_upload_bytes: int = 50 * 2**20
    max_audio_seconds: float = 60.0
    max_text_chars: int = 2000
    whisper_model: str | None = None  # transcribe edits sent without audio_text (a resolved checkpoint or name)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def create_app(options: ServeOptions):
    from fastapi import Depends, FastAPI, File, Form, Header, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, Field

    from editx_cli import engine as engines
    from editx_cli.cache import FeatureCache, NullCache

    engine_cls: type[Engine] = engines.get(options.engine)
    cache = FeatureCache(options.cache_dir) if options.use_cache else NullCache()
    cache.open()
    # --max-batch is the decoder's slots; an engine that refills its slots from a queue of its own
    # as rows end (continuous batching) is handed several slots' worth of requests at once.
    per_call = options.max_batch * (engine_cls.wave_factor if engine_cls.batches else 1)
    service = Service(lambda: engine_cls(dict(options.engine_config or {}), cache), max_batch=per_call,
                      max_queue=max(options.max_queue, per_call), idle_unload=options.idle_unload)
    voices = Path(options.voices_dir)
    scratch = Path(tempfile.mkdtemp(prefix="editx-serve-"))
    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        service.close()
        cache.close()
        shutil.rmtree(scratch, ignore_errors=True)

    app = FastAPI(title="editx", version=_version(), lifespan=lifespan,
                  description="Step-Audio-EditX: voice cloning and audio edits, OpenAI-compatible.")
    app.state.service = service

    # -- errors: one JSON shape, OpenAI's, never a traceback
    def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
              headers: dict | None = None):
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                            status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_, e: ApiError):
        return error(e.status, e.message, e.param, e.kind, e.headers)

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

    @app.middleware("http")
    async def _limits(request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > options.max_upload_bytes:
            return error(413, f"the request body is {int(size)} bytes; at most {options.max_upload_bytes}")
        return await call_next(request)

    def authorized(authorization: str | None = Header(default=None)) -> None:
        if options.api_key is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), options.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                           kind="authentication_error")

    guarded = [Depends(authorized)]

    # -- running one task
    async def run(task: Task, fmt: str, speed: float = 1.0) -> Response:
        t0 = time.perf_counter()
        src = task.prompt_audio or task.input_audio
        # decoding, measuring and encoding run off the event loop: other requests keep flowing
        x, sr = await asyncio.to_thread(audio.load, src)
        if len(x) / sr > options.max_audio_seconds:
            field = "voice" if task.task == "clone" else "file"
            raise ApiError(400, f"the audio is {len(x) / sr:.1f} s; at most {options.max_audio_seconds:g} s", field)
        request = Request(kind=task.task, audio=x, sr=sr, audio_text=task.prompt_text or task.audio_text,
                          text=task.text, edit_type=task.edit_type, edit_info=task.edit_info,
                          intensity=task.intensity, seed=task.seed, audio_digest=audio.samples_digest(x, sr),
                          path=str(src), task_id="request")
        transcript = ""
        if (options.whisper_model and task.task == "edit" and not task.audio_text.strip()
                and engine_cls.wants_transcript(task.edit_type, task.intensity)):
            try:
                transcript = await asyncio.wrap_future(service.call(
                    lambda e: transcriber(e)(x, sr, request.audio_digest)[0]))
            except Exception as e:
                raise ApiError(422, f"audio_text: missing, and the upload could not be transcribed "
                                    f"({_one_line(e)})", "audio_text") from None
            request.audio_text = transcript
        level = None
        if task.delivery.match_input:
            from editx_cli import loudness

            level = await asyncio.to_thread(loudness.integrated, x, sr)
        load_seconds, batch = 0.0, 0
        for n in range(task.iterations):
            try:
                served = await asyncio.wrap_future(service.submit(request))
            except Busy as e:
                raise ApiError(503, f"the server is busy ({e}); retry shortly", kind="server_busy",
                               headers={"Retry-After": "2"}) from None
            except Exception as e:
                raise ApiError(500, f"the engine failed: {_one_line(e)}", kind="server_error") from None
            load_seconds, batch = load_seconds + served.load_seconds, max(batch, served.batch)
            result = served.result
            if n + 1 < task.iterations:
                text = task.text if task.edit_type == "paralinguistic" else request.audio_text
                request = Request(**{**request.__dict__, "audio": result.audio, "sr": result.sr, "audio_text": text,
                                     "audio_digest": audio.samples_digest(result.audio, result.sr), "path": ""})
        y = result.audio
        if speed != 1.0:
            import librosa

            y = await asyncio.to_thread(librosa.effects.time_stretch, y, rate=speed)
        suffix = ".wav" if fmt == "pcm" else f".{fmt}"
        try:
            data, rate, measures = await asyncio.to_thread(deliver.render, y, result.sr, suffix, task.delivery,
                                                           level)
        except ValueError as e:  # too short or silent to normalise, NaN from the engine
            raise ApiError(422, _one_line(e), "loudness" if task.delivery.loudness is not None else None) from None
        if fmt == "pcm":
            import io

            import soundfile as sf

            data = sf.read(io.BytesIO(data), dtype="int16")[0].astype("<i2").tobytes()
        headers = {"X-Editx-Load-Seconds": f"{load_seconds:.3f}", "X-Editx-Batch": str(batch),
                   "X-Editx-Seconds": f"{time.perf_counter() - t0:.3f}", "X-Editx-Sample-Rate": str(rate)}
        if "loudness_after" in measures:
            headers["X-Editx-Loudness"] = f"{measures['loudness_after']:.2f}"
        if transcript:
            headers["X-Editx-Transcript"] = quote(transcript)  # headers are Latin-1: percent-encoded UTF-8
        return Response(data, media_type=MEDIA[fmt], headers=headers)

    whisper: dict[str, Any] = {}

    def transcriber(engine: Engine):
        """One Whisper model for the server's life, on the engine's device (engine thread only)."""
        if "t" not in whisper:
            from editx_cli.transcribe import Transcriber

            whisper["t"] = Transcriber(options.whisper_model, engine.device, cache)
        return whisper["t"]

    def private(message: str) -> str:
        """A message with the server's own upload paths taken out: a client sees "upload"."""
        return re.sub(re.escape(str(scratch)) + r"[^\s':)]*", "upload", message)

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
        except audio.AudioError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(400, private(f"not usable audio: {e}"), field) from None
        if info.seconds > options.max_audio_seconds:
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(400, f"the audio is {info.seconds:.1f} s; at most {options.max_audio_seconds:g} s", field)
        return path

    def text_limit(value: str, field: str) -> None:
        if len(value) > options.max_text_chars:
            raise ApiError(400, f"{len(value)} characters; at most {options.max_text_chars}", field)

    # -- the endpoints
    class Speech(BaseModel):
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

    @app.post("/v1/audio/speech", dependencies=guarded, response_class=Response,
              responses={200: {"content": {m: {} for m in MEDIA.values()}}})
    async def speech(body: Speech):
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
        return await run(task, body.response_format, body.speed)

    @app.post("/v1/audio/edits", dependencies=guarded, response_class=Response,
              responses={200: {"content": {m: {} for m in MEDIA.values()}}})
    async def edits(file: UploadFile = File(...), edit_type: str = Form(...), edit_info: str = Form(""),
                    intensity: float = Form(1.0), iterations: int = Form(1), seed: int = Form(0),
                    audio_text: str = Form(""), text: str = Form(""), response_format: str = Form("wav"),
                    loudness: float | None = Form(None), peak: float | None = Form(None),
                    match_input: bool = Form(False), sample_rate: int | None = Form(None),
                    bitrate: int | None = Form(None)):
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
            return await run(task, response_format)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    @app.post("/v1/voices", dependencies=guarded, status_code=201)
    async def add_voice(name: str = Form(...), text: str = Form(...), file: UploadFile = File(...),
                        replace: bool = Form(False)):
        """Register a voice: a reference clip and its transcript. Its prompt features are
        made at once, so the first speech request in it does not pay for them."""
        if not ID_PATTERN.fullmatch(name) or len(name) > 64:
            raise ApiError(400, f"{name!r} is not a usable voice name (letters, digits, '.', '-', '_')", "name")
        if not text.strip():
            raise ApiError(400, "missing: the transcript of the clip", "text")
        text_limit(text, "text")
        if (voices / f"{name}.json").exists() and not replace:
            raise ApiError(409, f"voice {name!r} exists (send replace=true to replace it)", "name")
        path = await save_upload(file, "file")
        try:
            x, sr = await asyncio.to_thread(audio.load, path)
        except audio.AudioError as e:
            raise ApiError(400, f"not usable audio: {e}", "file") from None
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        voices.mkdir(parents=True, exist_ok=True)
        tmp = audio.write_atomic(voices / f"{name}.wav", audio.encode(x, sr, ".wav"))
        os.replace(tmp, voices / f"{name}.wav")
        _write_json(voices / f"{name}.json", {"text": text.strip(), "seconds": round(len(x) / sr, 3)})
        cached = False
        if hasattr(engine_cls, "prompt_features"):
            digest = audio.samples_digest(x, sr)
            try:
                await asyncio.wrap_future(service.call(lambda e: e.prompt_features(x, sr, digest)))
                cached = True
            except Exception as e:  # the voice is kept; its features are made at first use instead
                log.warning("voice %s: prompt features not cached: %s", name, _one_line(e))
        return {"name": name, "text": text.strip(), "seconds": round(len(x) / sr, 3), "features_cached": cached}

    @app.get("/v1/voices", dependencies=guarded)
    async def list_voices():
        return {"object": "list", "data": [{"name": n, **_voice(voices, n)} for n in _voice_names(voices)]}

    @app.delete("/v1/voices/{name}", dependencies=guarded)
    async def delete_voice(name: str):
        _voice(voices, name)
        for suffix in (".json", ".wav"):
            (voices / f"{name}{suffix}").unlink(missing_ok=True)
        return {"name": name, "deleted": True}

    @app.get("/v1/models", dependencies=guarded)
    async def models():
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "editx",
                                            "engine": options.engine}]}

    page = _ui_page(engine_cls)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def ui():
        """The web page: clone and every edit, upload or record, a history of chained edits."""
        return page

    @app.get("/healthz")
    async def healthz():
        """Alive; whether the model is loaded; queue depth; device memory; decode statistics."""
        return {"status": "ok", "engine": options.engine, "loaded": service.loaded, "queue": service.queued,
                "device": service.engine.device if service.engine is not None else None,
                "device_memory": service.device_memory(), "stats": dict(service.stats),
                "cache": cache.stats() if hasattr(cache, "stats") and options.use_cache else None}

    return app


def _ui_page(engine_cls: type[Engine]) -> str:
    """ui.html with what this engine can do written in, so the page needs no extra request."""
    from importlib import resources

    from editx_cli.tasks import EDIT_INFOS

    options = {"formats": ["wav", "mp3", "flac", "opus", "ogg"],
               "edit_types": [t for t in EDIT_INFOS if t in engine_cls.edit_types],
               "edit_infos": {t: list(v) for t, v in EDIT_INFOS.items()}, "clone": "clone" in engine_cls.task_kinds}
    page = resources.files("editx_cli").joinpath("ui.html").read_text(encoding="utf-8")
    return page.replace("__EDITX_OPTIONS__", json.dumps(options).replace("</", "<\\/"))


def _voice_names(voices: Path) -> list[str]:
    return sorted(p.stem for p in voices.glob("*.json") if ID_PATTERN.fullmatch(p.stem)) if voices.is_dir() else []


def _voice(voices: Path, name: str) -> dict:
    if not (ID_PATTERN.fullmatch(name) and (voices / f"{name}.json").is_file()):
        known = _voice_names(voices)  # listed only for the message: a request looks up one file
        raise ApiError(404, f"voice {name!r} not found (registered: {', '.join(known) or 'none'}; "
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
