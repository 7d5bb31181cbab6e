"""What a server is started with, and the limits and names of its API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from editx_cli.deliver import FORMATS
from editx_cli.engine.stepaudio.layout import VARIANT_DIRS
from editx_cli.tasks import EDIT_TYPES

MODEL_ID = "step-audio-editx"
STEP_AUDIO_MODES = ("clone", *EDIT_TYPES)  # the Step-Audio API's step_audio.mode
VARIANTS = tuple(VARIANT_DIRS)
STREAM_FORMATS = ("wav", "pcm")  # formats that can be sent before the whole is known
METADATA_KEYS = 32  # metadata entries a request may ask to have echoed
RESPONSE_FORMATS = (*FORMATS, "pcm")  # batch's formats, and OpenAI's raw 16-bit PCM
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


VOICE_NAME_CHARS = 64


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
    body_deadline: float = 300.0  # a request body not complete this long after it began is dropped (408)
    docs: bool = True  # /docs (Swagger UI, from the installed fastapi-offline package)
    idle_unload: float = 300.0
    max_batch: int = 16
    max_queue: int = 64
    max_upload_bytes: int = 50 * 2**20
    max_audio_seconds: float = 300.0
    max_audio_channels: int = 2  # with max_audio_seconds and 96 kHz, the decoded size an upload may have
    max_text_chars: int = 5000
    allow_url_fetch: bool = False  # prompt_audio_url / input_audio_url: fetched (public addresses only)
    url_fetch_timeout: float = 30.0
    whisper_model: str | None = None  # transcribe edits sent without audio_text (a resolved checkpoint or name)
    quality: dict | None = None  # qa, thresholds, max_retries: each response heard and scored (retried below)
