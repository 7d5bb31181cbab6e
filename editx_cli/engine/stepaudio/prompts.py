"""The token scaffolds of Step-Audio-EditX prompts, byte-exact with how the model was trained.

All text goes through an `encode` that gives the reference tokenizer's ids
(`text_tokenizer.TextTokenizer`); whatever it adds (a BOS, a dummy prefix) is
part of the trained format. The raw ids 1 (start), 4 (turn open) and 3 (turn close) wrap the turns.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np

START, TURN_OPEN, TURN_CLOSE = 1, 4, 3
AUDIO_BASE = 65536  # id of <audio_0>
N_VQ02 = 1024
N_VQ06 = 4096

Encode = Callable[[str], list[int]]

CLONE_SYSTEM_TEMPLATE = (
    "Generate audio with the following timbre, prosody and speaking style\n\n"
    "[speaker_start]\nspeaker name: {speaker}\nspeaker prompt text: \n{prompt_text}\n"
    "speaker audio tokens: \n{prompt_wav_tokens}\n[speaker_end]\n"
)

EDIT_SYSTEM_PROMPT = (
    "As a highly skilled audio editing and tuning specialist, you excel in interpreting user instructions "
    "and applying precise adjustments to meet their needs. Your expertise spans a wide range of enhancement "
    "capabilities, including but not limited to:\n# Emotional Enhancement\n# Speaking Style Transfer\n"
    "# Non-linguistic Adjustments\n# Audio Tuning & Editing\nNote: You will receive instructions in natural "
    "language and are expected to accurately interpret and execute the most suitable audio edits and "
    "enhancements.\n"
)

DENOISE_PREFIX = (
    "Remove any noise from the given audio while preserving the voice content clearly. Ensure that the speech "
    "quality remains intact with minimal distortion, and eliminate all noise from the audio.\n"
)
VAD_PREFIX = (
    "Remove any silent portions from the given audio while preserving the voice content clearly. Ensure that "
    "the speech quality remains intact with minimal distortion, and eliminate all silence from the audio.\n"
)


def instruction_prefix(edit_type: str, edit_info: str, audio_text: str | None, text: str | None) -> str:
    """The human-turn instruction for an edit, as trained (quirks included: speed reuses the
    emotion wording, the paralinguistic one has 'is :' and two leading spaces)."""
    audio_text = (audio_text or "").strip()
    if edit_type in ("emotion", "speed"):
        if edit_info == "remove":
            return f"Remove any emotion in the following audio and the reference text is: {audio_text}\n"
        return f"Make the following audio more {edit_info}. The text corresponding to the audio is: {audio_text}\n"
    if edit_type == "style":
        if edit_info == "remove":
            return f"Remove any speaking styles in the following audio and the reference text is: {audio_text}\n"
        return (f"Make the following audio more {edit_info} style. "
                f"The text corresponding to the audio is: {audio_text}\n")
    if edit_type == "denoise":
        return DENOISE_PREFIX
    if edit_type == "vad":
        return VAD_PREFIX
    if edit_type == "paralinguistic":
        return (f"Add some non-verbal sounds to make the audio more natural, the new text is : {text}\n"
                f"  The text corresponding to the audio is: {audio_text}\n")
    raise ValueError(f"Unsupported edit_type: {edit_type}")


def interleave(vq02: Sequence[int], vq06: Sequence[int]) -> list[int]:
    """Mixed N values: groups of [vq02 x2, 1024 + vq06 x3]; leftovers of either stream dropped."""
    groups = min(len(vq02) // 2, len(vq06) // 3)
    out: list[int] = []
    for g in range(groups):
        out += [int(vq02[2 * g]), int(vq02[2 * g + 1])]
        out += [N_VQ02 + int(c) for c in vq06[3 * g : 3 * g + 3]]
    return out


def token_string(mixed: Sequence[int]) -> str:
    """The string form the LLM reads: `<audio_N>` per token, no separators."""
    return "".join(f"<audio_{n}>" for n in mixed)


def clone_speaker_name(prompt_text: str, raw_channels: np.ndarray) -> str:
    """'clone_' + 16 hex digits of sha256(prompt text + raw float32 samples of the file).

    `raw_channels` is the file as read, (channels, samples), before mono-mixing and
    normalisation; more than 2000 values hash only the first and last 1000.
    """
    flat = np.ascontiguousarray(raw_channels, dtype="<f4").reshape(-1)
    if flat.size > 2000:
        flat = np.concatenate([flat[:1000], flat[-1000:]])
    h = hashlib.sha256(prompt_text.encode("utf-8"))
    h.update(flat.tobytes())
    return "clone_" + h.hexdigest()[:16]


def _turns(encode: Encode, system: str, human_ids: list[int]) -> list[int]:
    return (
        [START, TURN_OPEN] + encode("system\n" + system) + [TURN_CLOSE]
        + [TURN_OPEN] + encode("human\n") + human_ids + [TURN_CLOSE]
        + [TURN_OPEN] + encode("assistant\n")
    )


def clone_ids(encode: Encode, speaker: str, prompt_text: str, prompt_tokens: str, target_text: str) -> list[int]:
    system = CLONE_SYSTEM_TEMPLATE.format(speaker=speaker, prompt_text=prompt_text, prompt_wav_tokens=prompt_tokens)
    # Encode the target after a newline and drop the newline's ids: this strips whatever
    # prefix `encode` adds, exactly as the trained format does.
    target = encode("\n" + target_text)[len(encode("\n")) :]
    return _turns(encode, system, target)


def edit_ids(encode: Encode, prefix: str, audio_tokens: str) -> list[int]:
    return _turns(encode, EDIT_SYSTEM_PROMPT, encode(prefix + "\n" + audio_tokens.strip() + "\n"))


# -- the 2026 release: the tokenizer's chat template ------------------------------------------


class TemplateError(ValueError):
    pass


def render_chat(template: str, system: str, human: str, special: dict[str, str], where: str) -> str:
    """The prompt text the folder's `chat_template` makes of a system and a human turn, with
    the generation prompt; rendered in Jinja's immutable sandbox, as transformers renders it
    (a template is data: the sandbox lets it call nothing unsafe)."""
    from jinja2 import TemplateError as JinjaError

    messages = [{"role": "system", "content": system}, {"role": "user", "content": human}]
    try:
        return _compiled(template).render(messages=messages, add_generation_prompt=True, **special)
    except _Refused as e:
        raise TemplateError(f"{where}: the chat template refused the prompt: {e}") from None
    except JinjaError as e:
        raise TemplateError(f"{where}: the chat template failed: {e}") from None


class _Refused(Exception):
    pass


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    """A template compiled once per run, not once per prompt."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise _Refused(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


# The 2026 release names every clone's speaker this, where the legacy code hashed the prompt
CHAT_SPEAKER = "debug"


def chat_clone_text(prompt_text: str, prompt_tokens: str, target_text: str) -> tuple[str, str]:
    """(system, human) turns of a clone in the chat format: the legacy scaffold's texts, with the
    2026 release's speaker name."""
    return CLONE_SYSTEM_TEMPLATE.format(speaker=CHAT_SPEAKER, prompt_text=prompt_text,
                                        prompt_wav_tokens=prompt_tokens), target_text


def chat_edit_text(prefix: str, audio_tokens: str) -> tuple[str, str]:
    return EDIT_SYSTEM_PROMPT, prefix + "\n" + audio_tokens.strip() + "\n"


def raw_channels(path: str, audio: np.ndarray) -> np.ndarray:
    """The prompt file's samples as read, (channels, samples), for the speaker name hash."""
    import soundfile as sf

    if path and os.path.exists(path):
        data, _ = sf.read(path, dtype="float32", always_2d=True)
        return data.T
    return np.asarray(audio, np.float32)[None]
