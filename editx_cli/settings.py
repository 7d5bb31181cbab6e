"""An edit's settings and the output settings, each declared once. From these come the command
line's options (`--sample-rate`, environment `EDITX_SAMPLE_RATE`; `editx edit --type`), the
manifest's fields (`sample_rate`, `edit_type`), and the server's request fields (JSON and
form); the manifest's validation checks them, `deliver` applies the output's. Cheap to
import: the command line reads it to build its options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str  # the manifest field, the request field
    kind: type  # str, int, float or bool (a flag on the command line)
    help: str
    default: Any = None  # None: unset
    required: bool = False
    flag: str = ""  # the command line's option, where it is not --name-with-dashes
    range: tuple[float, float] | None = None  # the values it may take, both ends included

    @property
    def described(self) -> str:
        """Its help, with its range."""
        return f"{self.help} ({self.range[0]} to {self.range[1]})." if self.range else self.help

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def envvar(self) -> str:
        return "EDITX_" + self.name.upper()


INTENSITY = Setting("intensity", float, "Strength of the edit", 1.0, range=(0.1, 3.0))
ITERATIONS = Setting("iterations", int, "Apply the edit this many times in a row", 1, range=(1, 10))
EDIT = (
    Setting("edit_type", str, "emotion, style, speed, paralinguistic, denoise or vad.", required=True, flag="--type"),
    Setting("edit_info", str, "e.g. happy, whisper, faster, remove.", "", flag="--info"),
    INTENSITY,
    ITERATIONS,
    Setting("audio_text", str, "Transcript of the audio to edit.", ""),
    Setting("text", str, "Paralinguistic edits: the new text with tags such as [laugh] (`editx tags` lists them).",
            ""),
)

DELIVERY = (
    Setting("format", str, "Output format: wav, flac, mp3, ogg (Vorbis) or opus, for outputs not named with an "
                           "extension of their own [default: wav]."),
    Setting("sample_rate", int, "Resample outputs to this rate in Hz [default: the model's; mp3 and opus: the "
                                "nearest rate the codec has]."),
    Setting("bitrate", int, "kbit/s: mp3 outputs at this constant bitrate; opus outputs with this variable-bitrate "
                            "target."),
    Setting("loudness", float, "Normalise each output to this loudness in LUFS (ITU-R BS.1770), e.g. -16 for "
                               "podcasts, -23 for broadcast."),
    Setting("peak", float, "True-peak ceiling in dBTP, held by a look-ahead limiter [default with --loudness or "
                           "--match-input: -1]."),
    Setting("match_input", bool, "Give each output the loudness of its input (an edit's input audio, a clone's "
                                 "prompt)."),
)
FIELDS = tuple(s.name for s in DELIVERY)
OPTION_OF = {s.name: s.option for s in DELIVERY}  # a command-line default is named by its option
