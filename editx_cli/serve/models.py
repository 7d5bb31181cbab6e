"""Request bodies, apart from the routes that take them."""

# No `from __future__ import annotations`: pydantic and FastAPI read these annotations.
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from editx_cli.serve.options import MODEL_ID, RESPONSE_FORMATS


class Speech(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # NaN is no number, not "unset"

    model: str = MODEL_ID
    input: str = Field(min_length=1)
    voice: str
    response_format: Literal[RESPONSE_FORMATS] = "mp3"  # the tuple subscripts as its members
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    seed: int = Field(default=0, ge=0, lt=2**32)
    loudness: float | None = None
    peak: float | None = None
    sample_rate: int | None = None
    bitrate: int | None = None
