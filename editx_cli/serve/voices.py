"""Registered voices: a folder of <name>.wav (mono, at most 48 kHz) and <name>.json (its
transcript), and the routes that add, list and delete them."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.
import asyncio
import json
import logging
import re
import shutil
from pathlib import Path

from fastapi import APIRouter, File, Form, UploadFile
from fastapi import Request as HttpRequest

from editx_cli import audio, files
from editx_cli.errors import one_line
from editx_cli.manifest import ID_PATTERN
from editx_cli.serve.errors import ApiError
from editx_cli.serve.options import VOICE_NAME_CHARS, VOICE_RATE

log = logging.getLogger("editx")
router = APIRouter()


def names(voices: Path) -> list[str]:
    return sorted(p.stem for p in voices.glob("*.json") if ID_PATTERN.fullmatch(p.stem)) if voices.is_dir() else []


# names Windows keeps for devices, with any extension: a voices folder may be shared with it
DEVICE_NAMES = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?", re.IGNORECASE)


def valid_name(name: str) -> bool:
    return (len(name) <= VOICE_NAME_CHARS and bool(ID_PATTERN.fullmatch(name)) and not name.endswith(".")
            and not DEVICE_NAMES.fullmatch(name))


def record(voices: Path, name: str) -> dict:
    if not (valid_name(name) and (voices / f"{name}.json").is_file()):
        known = names(voices)  # listed only for the message: a request looks up one file
        raise ApiError(404, f"voice {name[:80]!r} not found (registered: {', '.join(known) or 'none'}; "
                            "POST /v1/voices adds one)", "voice")
    try:
        data = json.loads((voices / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ApiError(500, f"voice {name!r}: its record is damaged; register it again", "voice", "server_error")
    return {"text": data["text"], "seconds": data.get("seconds")}


def write_json(path: Path, data: dict) -> None:
    files.replace(path, json.dumps(data, ensure_ascii=False))


@router.post("/v1/voices", status_code=201)
async def add_voice(http: HttpRequest, name: str = Form(...), text: str = Form(...), file: UploadFile = File(...),
                    replace: bool = Form(False)):
    """Register a voice: a reference clip and its transcript. Its prompt features are
    made at once, so the first speech request in it does not pay for them."""
    serving = http.app.state.serving
    voices, engine_cls, service = serving.voices, serving.engine_cls, serving.service
    if not valid_name(name):
        raise ApiError(400, f"{name[:80]!r} is not a usable voice name (at most {VOICE_NAME_CHARS} letters, "
                            "digits, '.', '-', '_', not a device name such as CON or NUL, not ending in '.')",
                       "name")
    if not text.strip():
        raise ApiError(400, "missing: the transcript of the clip", "text")
    serving.text_limit(text, "text")
    if (voices / f"{name}.json").exists() and not replace:
        raise ApiError(409, f"voice {name!r} exists (send replace=true to replace it)", "name")
    path = await serving.uploads.save_upload(file, "file")
    try:
        x, sr = await asyncio.to_thread(audio.load, path)
    except audio.AudioError as e:
        raise ApiError(400, serving.private(f"not usable audio: {e}"), "file") from None
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    if sr > VOICE_RATE:  # a voice is a prompt: more than 48 kHz only takes disk space
        x, sr = await asyncio.to_thread(audio.resample, x, sr, VOICE_RATE), VOICE_RATE
    voices.mkdir(parents=True, exist_ok=True)
    files.replace(voices / f"{name}.wav", audio.encode(x, sr, ".wav"))
    write_json(voices / f"{name}.json", {"text": text.strip(), "seconds": round(len(x) / sr, 3)})
    cached = False
    if hasattr(engine_cls, "prompt_features"):
        digest = audio.samples_digest(x, sr)
        future = serving.queued(service.call, lambda e: e.prompt_features(x, sr, digest))
        try:
            await asyncio.wrap_future(future)
            cached = True
        except Exception as e:  # the voice is kept; its features are made at first use instead
            log.warning("voice %s: prompt features not cached: %s", name, one_line(e))
    return {"name": name, "text": text.strip(), "seconds": round(len(x) / sr, 3), "features_cached": cached}


@router.get("/v1/voices")
async def list_voices(http: HttpRequest):
    folder = http.app.state.serving.voices
    voices = [{"name": n, **record(folder, n)} for n in names(folder)]
    # `id` and `prompt_text` too: the names the Step-Audio API's clients read
    return {"object": "list", "data": [{**v, "id": v["name"], "prompt_text": v["text"]} for v in voices]}


@router.delete("/v1/voices/{name}")
async def delete_voice(name: str, http: HttpRequest):
    folder = http.app.state.serving.voices
    record(folder, name)
    for suffix in (".json", ".wav"):
        (folder / f"{name}{suffix}").unlink(missing_ok=True)
    return {"name": name, "deleted": True}
