"""Request bodies, apart from the routes that take them."""

# No `from __future__ import annotations`: pydantic and FastAPI read these annotations.
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from editx_cli import settings
from editx_cli.serve.options import MODEL_ID, RESPONSE_FORMATS, STEP_AUDIO_MODES, VARIANTS

# The output settings (settings.DELIVERY) as optional request fields; the format is the
# request's response_format. NaN is no number, not "unset".
Output = create_model("Output", __config__=ConfigDict(allow_inf_nan=False), **{
    s.name: (s.kind | None, Field(None, description=s.help)) for s in settings.DELIVERY if s.name != "format"})


class StepAudio(BaseModel):
    """The Step-Audio API's `step_audio` object: a clone or an edit, its audio inline, by URL or
    (with /v1/audio/speech/upload) as a file."""

    model_config = ConfigDict(allow_inf_nan=False)

    mode: Literal[STEP_AUDIO_MODES] = "clone"
    model_variant: Literal[VARIANTS] | None = None  # unset: whichever the server serves
    prompt_text: str | None = None
    prompt_audio_base64: str | None = None
    prompt_audio_url: str | None = None
    input_audio_base64: str | None = None
    input_audio_url: str | None = None
    audio_text: str | None = None
    edit_info: str | None = None
    intensity: float = settings.INTENSITY.default
    n_edit_iter: int = settings.ITERATIONS.default


class Speech(Output):
    """OpenAI's speech request; with `step_audio`, the Step-Audio API's."""

    model: str = MODEL_ID
    input: str = Field(min_length=1)
    voice: str | None = None  # a registered voice (OpenAI's shape needs one)
    response_format: Literal[RESPONSE_FORMATS] | None = None  # mp3, or wav with step_audio (each API's default)
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    seed: int = Field(default=0, ge=0, lt=2**32)
    stream: bool = False  # the audio piece by piece as a long text's pieces are spoken (wav or pcm)
    metadata: dict[str, str | int | float | bool] | None = None  # echoed as X-Metadata-<key> headers
    step_audio: StepAudio | None = None


# The fields of /v1/audio/edits's form, beside its file: an edit's settings (settings.EDIT), the
# seed, the response's format, the output settings.
EditForm = create_model(
    "EditForm", __base__=Output, seed=(int, 0), response_format=(str, "wav"),
    **{s.name: (s.kind, Field(... if s.required else s.default, description=s.described)) for s in settings.EDIT})
