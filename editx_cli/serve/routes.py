"""The model's routes: speech (OpenAI's shape), edits, models, the web page, health."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, Response

from editx_cli import settings
from editx_cli.guard import authorized
from editx_cli.serve.errors import ApiError
from editx_cli.serve.models import EditForm, Speech
from editx_cli.serve.options import MEDIA, MODEL_ID, RESPONSE_FORMATS
from editx_cli.serve.state import echo_headers, remove
from editx_cli.serve.stepaudio_api import speech as step_audio_speech
from editx_cli.serve.voices import record

router = APIRouter()


@router.post("/v1/audio/speech", response_class=Response,
             responses={200: {"content": {m: {} for m in MEDIA.values()}}})
async def speech(body: Speech, http: HttpRequest):
    """Speak `input` in a registered voice (OpenAI's request shape); with `step_audio`, a clone
    or an edit in the Step-Audio API's shape."""
    echoed = echo_headers(body)
    if body.step_audio is not None:
        response = await step_audio_speech(body, {}, http)
    else:
        response = await _openai_speech(body, http)
    response.headers.update(echoed)
    return response


async def _openai_speech(body: Speech, http: HttpRequest):
    serving = http.app.state.serving
    if not body.voice:
        raise ApiError(400, "missing: a registered voice (GET /v1/voices lists them)", "voice")
    serving.text_limit(body.input, "input")
    voice = record(serving.voices, body.voice)
    fmt = body.response_format or "mp3"  # OpenAI's default
    row = {"task": "clone", "prompt_audio": str(serving.voices / f"{body.voice}.wav"),
           "prompt_text": voice["text"], "text": body.input}
    task = serving.checked(serving.request_row(row, body, fmt),
                           {"prompt_audio": "voice", "prompt_text": "voice", "text": "input",
                            "output": "response_format", "task": "model"})
    return await serving.run(task, fmt, http, body.speed, stream=body.stream)


@router.post("/v1/audio/edits", response_class=Response,
             responses={200: {"content": {m: {} for m in MEDIA.values()}}})
async def edits(http: HttpRequest, file: Annotated[UploadFile, File()], form: Annotated[EditForm, Form()]):
    """Edit an uploaded clip; post the result back for a chain of edits."""
    serving = http.app.state.serving
    fmt = form.response_format
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(400, f"unknown format {fmt!r} (one of: {', '.join(RESPONSE_FORMATS)})", "response_format")
    for value, field in ((form.audio_text, "audio_text"), (form.text, "text")):
        serving.text_limit(value, field)
    path = await serving.uploads.save_upload(file, "file")
    try:
        row = {"task": "edit", "input_audio": str(path),
               **form.model_dump(include={s.name for s in settings.EDIT})}
        task = serving.checked(serving.request_row(row, form, fmt),
                               {"input_audio": "file", "output": "response_format", "task": "edit_type"})
    except BaseException:
        remove((path,))
        raise
    return await serving.run(task, fmt, http, uploads=(path,))  # which removes the upload


@router.get("/v1/models")
async def models(http: HttpRequest):
    return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "editx",
                                        "engine": http.app.state.serving.options.engine}]}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def ui(http: HttpRequest):
    """The web page: clone and every edit, upload or record, a history of chained edits."""
    page, policy = http.app.state.page
    return HTMLResponse(page, headers={"Content-Security-Policy": policy})


@router.get("/healthz")
async def healthz(http: HttpRequest):
    """Alive; whether the model is loaded; queue depth; device memory; decode statistics. A 503
    while the engine cannot be loaded (its last load failed), so a health check sees a broken
    deployment; `ok` again once a load succeeds."""
    serving = http.app.state.serving
    options, service, cache = serving.options, serving.service, serving.cache
    body = {"status": "error" if service.load_error else "ok", "engine": options.engine,
            "loaded": service.loaded, "queue": service.queued, "running": service.running,
            "device": service.engine.device if service.engine is not None else None,
            "device_memory": service.device_memory(), "stats": dict(service.stats),
            "cache": cache.stats() if hasattr(cache, "stats") and options.use_cache else None}
    if body["cache"] and not authorized(http.headers.get("authorization", ""), options.api_key):
        del body["cache"]["path"]  # the server's folders only to a client with the key
    if service.load_error:
        body["error"] = f"the engine could not be loaded: {service.load_error}"
        return JSONResponse(body, status_code=503)
    return body
