"""What a server is started with, and the limits and names of its API."""

from __future__ import annotations

from editx_cli.deliver import FORMATS
from editx_cli.engine.stepaudio.layout import VARIANT_DIRS
from editx_cli.serve_options import ServeOptions
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

__all__ = ["ServeOptions"]
