"""The Step-Audio API's request shape, for its clients in the field: `step_audio` inside
/v1/audio/speech (a clone or any edit, audio inline as base64, by URL or as a file of
/v1/audio/speech/upload), /v1/tags. Its requests become tasks of the same loop as every other
request; what differs is where the audio and the words come from."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.
from pathlib import Path

from fastapi import APIRouter, File, Form, UploadFile
from fastapi import Request as HttpRequest
from fastapi.responses import Response
from pydantic import ValidationError

from editx_cli import tags
from editx_cli.serve.errors import ApiError
from editx_cli.serve.models import Speech, StepAudio
from editx_cli.serve.options import MEDIA
from editx_cli.serve.state import echo_headers, remove
from editx_cli.serve.voices import record
from editx_cli.tasks import EDIT_INFOS

router = APIRouter()


async def speech(body: Speech, files: dict[str, Path], http: HttpRequest):
    """A Step-Audio request: `files` holds the audio sent as files (by step_audio's field name)."""
    serving = http.app.state.serving
    step = body.step_audio or StepAudio()
    served = serving.variant
    if step.model_variant and served and step.model_variant != served:
        raise ApiError(400, f"this server serves the {served} variant, not {step.model_variant}",
                       "step_audio.model_variant")
    fmt = body.response_format or "wav"  # the Step-Audio API's default
    saved: list[Path] = [*files.values()]  # what this request saved, removed with its task
    try:
        if step.mode == "clone":
            serving.text_limit(body.input, "input")
            prompt = files.get("prompt_audio") or await _audio(serving, step, "prompt_audio", saved)
            prompt_text = step.prompt_text
            if prompt is None:  # no audio sent: a registered voice speaks, its transcript with it
                if not body.voice:
                    raise ApiError(400, "missing: the voice to clone (prompt_audio_base64, prompt_audio_url, "
                                        "prompt_audio_file, or `voice`, a registered voice)", "step_audio.prompt_audio")
                voice = record(serving.voices, body.voice)
                prompt, prompt_text = serving.voices / f"{body.voice}.wav", prompt_text or voice["text"]
            elif not (prompt_text or "").strip():
                raise ApiError(400, "missing: the transcript of the prompt audio", "step_audio.prompt_text")
            serving.text_limit(prompt_text, "step_audio.prompt_text")
            row = {"task": "clone", "prompt_audio": str(prompt), "prompt_text": prompt_text, "text": body.input}
            labels = {"prompt_audio": "step_audio.prompt_audio", "prompt_text": "step_audio.prompt_text",
                      "text": "input", "task": "step_audio.mode"}
        else:
            source = files.get("input_audio") or await _audio(serving, step, "input_audio", saved)
            if source is None:
                raise ApiError(400, "missing: the audio to edit (input_audio_base64, input_audio_url or "
                                    "input_audio_file)", "step_audio.input_audio")
            text = body.input if step.mode == "paralinguistic" else ""  # the tagged new text
            for value, field in ((text, "input"), (step.audio_text or "", "step_audio.audio_text")):
                serving.text_limit(value, field)
            row = {"task": "edit", "input_audio": str(source), "edit_type": step.mode,
                   "edit_info": step.edit_info or "", "intensity": step.intensity, "iterations": step.n_edit_iter,
                   "audio_text": step.audio_text or "", "text": text}
            labels = {"input_audio": "step_audio.input_audio", "edit_type": "step_audio.mode", "text": "input",
                      **{k: f"step_audio.{k}" for k in ("edit_info", "intensity", "audio_text")},
                      "iterations": "step_audio.n_edit_iter"}
        task = serving.checked(serving.request_row(row, body, fmt), {**labels, "output": "response_format"})
    except BaseException:
        remove(saved)
        raise
    # the task's run removes the saved audio when it is over
    return await serving.run(task, fmt, http, body.speed, stream=body.stream, uploads=tuple(saved))


async def _audio(serving, step: StepAudio, name: str, saved: list[Path]) -> Path | None:
    """The audio of `name` ("prompt_audio" or "input_audio") sent inline or by URL, kept as an
    upload is; None when neither was sent."""
    inline, url = getattr(step, f"{name}_base64"), getattr(step, f"{name}_url")
    if inline:
        path = await serving.uploads.save_inline(inline, f"step_audio.{name}_base64")
    elif url:
        path = await serving.uploads.save_fetched(url, f"step_audio.{name}_url")
    else:
        return None
    saved.append(path)
    return path


@router.post("/v1/audio/speech/upload", response_class=Response,
             responses={200: {"content": {m: {} for m in MEDIA.values()}}})
async def speech_upload(http: HttpRequest, payload: str = Form(...),
                        prompt_audio_file: UploadFile | None = File(None),
                        input_audio_file: UploadFile | None = File(None)):
    """The Step-Audio API's multipart form: `payload`, the JSON of /v1/audio/speech, and the
    audio as files in place of its base64 fields."""
    try:
        body = Speech.model_validate_json(payload)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(["payload", *(str(x) for x in first.get("loc", ()))])
        raise ApiError(400, f"{where}: {first.get('msg', 'invalid')}", where) from None
    echoed = echo_headers(body)  # checked before anything runs
    serving = http.app.state.serving
    files: dict[str, Path] = {}
    try:
        for name, upload in (("prompt_audio", prompt_audio_file), ("input_audio", input_audio_file)):
            if upload is not None:
                files[name] = await serving.uploads.save_upload(upload, f"{name}_file")
    except BaseException:
        remove(files.values())
        raise
    response = await speech(body, files, http)  # which removes the files with its task
    response.headers.update(echoed)
    return response


@router.get("/v1/tags")
async def tag_table(http: HttpRequest):
    """What each mode takes: its edit_info values, whether it needs the audio's transcript, and
    the tags a paralinguistic text may carry."""
    engine_cls = http.app.state.serving.engine_cls
    data = [{"mode": "clone", "edit_info": [], "needs_audio_text": False}] if "clone" in engine_cls.task_kinds else []
    for mode, infos in EDIT_INFOS.items():
        if mode in engine_cls.edit_types:
            entry = {"mode": mode, "edit_info": list(infos), "needs_audio_text": mode in engine_cls.needs_transcript}
            if mode == "paralinguistic":
                entry["tags"] = list(tags.PARALINGUISTIC)
            data.append(entry)
    return {"object": "list", "data": data, "language_tags": list(tags.LANGUAGES)}
