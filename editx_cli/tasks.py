"""Tasks: one clone or one edit, as read from a manifest or the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from editx_cli.deliver import Delivery
from editx_cli.settings import INTENSITY

TASK_KINDS = ("clone", "edit")

# Allowed edit_info per edit type, as the released model was trained (facts §6.1).
# An empty tuple means the edit takes no edit_info.
EDIT_INFOS: dict[str, tuple[str, ...]] = {
    "emotion": (
        "happy", "angry", "sad", "humour", "confusion", "disgusted", "empathy", "embarrass",
        "fear", "surprised", "excited", "depressed", "coldness", "admiration", "remove",
    ),
    "style": (
        "serious", "arrogant", "child", "older", "girl", "pure", "sister", "sweet", "ethereal",
        "whisper", "gentle", "recite", "generous", "act_coy", "warm", "shy", "comfort",
        "authority", "chat", "radio", "soulful", "story", "vivid", "program", "news",
        "advertising", "roar", "murmur", "shout", "deeply", "loudly", "remove", "exaggerated",
    ),
    "speed": ("faster", "slower", "more faster", "more slower"),
    "paralinguistic": (),
    "denoise": (),
    "vad": (),
}
EDIT_TYPES = tuple(EDIT_INFOS)



@dataclass
class Task:
    id: str
    kind: str  # "clone" or "edit" (a manifest's `task` column)
    source: str  # the manifest file, or "command line"
    row: int | None  # 1-based data row; None for the command line
    output: Path
    named_output: bool = False  # the row's own `output`; else <id>.<format> in --out-dir
    prompt_audio: Path | None = None
    prompt_text: str = ""
    text: str = ""
    input_audio: Path | None = None
    input_task: str | None = None  # set when input_audio is "@other_id"
    audio_text: str = ""
    edit_type: str = ""
    edit_info: str = ""
    intensity: float = INTENSITY.default
    iterations: int = 1
    seed: int = 0  # settled in validation: the row's, else --seed
    delivery: Delivery = field(default_factory=Delivery)
    extra: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return self.source if self.row is None else f"{self.source}: row {self.row}"

    def params(self) -> dict:
        """What decides the output, besides the input audio content and the engine."""
        return {
            "task": self.kind,
            "prompt_text": self.prompt_text,
            "text": self.text,
            "audio_text": self.audio_text,
            "edit_type": self.edit_type,
            "edit_info": self.edit_info,
            "intensity": self.intensity,
            "iterations": self.iterations,
            "seed": self.seed,
            "format": self.output.suffix.lower(),
            # only when set, so that outputs of runs before these settings existed stay done
            **({"delivery": self.delivery.key()} if self.delivery.key() else {}),
        }
