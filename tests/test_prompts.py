"""Golden tests: prompt scaffolds, instruction strings and token forms, exactly as trained."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from editx_cli.engine.stepaudio import prompts
from editx_cli.engine.stepaudio.vocoder import reshape

# The strings as published with the model, written out here independently of the module.
CLONE_SYS = ("Generate audio with the following timbre, prosody and speaking style\n\n[speaker_start]\n"
             "speaker name: {speaker}\nspeaker prompt text: \n{prompt_text}\nspeaker audio tokens: \n"
             "{prompt_wav_tokens}\n[speaker_end]\n")
EDIT_SYS = ("As a highly skilled audio editing and tuning specialist, you excel in interpreting user "
            "instructions and applying precise adjustments to meet their needs. Your expertise spans a wide "
            "range of enhancement capabilities, including but not limited to:\n# Emotional Enhancement\n"
            "# Speaking Style Transfer\n# Non-linguistic Adjustments\n# Audio Tuning & Editing\nNote: You will "
            "receive instructions in natural language and are expected to accurately interpret and execute the "
            "most suitable audio edits and enhancements.\n")


def fake_encode(text: str) -> list[int]:
    """A deterministic stand-in tokenizer that, like SentencePiece, prepends a BOS."""
    return [1] + [ord(c) + 1000 for c in text]


@pytest.mark.parametrize("edit_type,info,expected", [
    ("emotion", "happy", "Make the following audio more happy. The text corresponding to the audio is: hi there\n"),
    ("emotion", "remove", "Remove any emotion in the following audio and the reference text is: hi there\n"),
    ("speed", "more faster",
     "Make the following audio more more faster. The text corresponding to the audio is: hi there\n"),
    ("speed", "remove", "Remove any emotion in the following audio and the reference text is: hi there\n"),
    ("style", "whisper",
     "Make the following audio more whisper style. The text corresponding to the audio is: hi there\n"),
    ("style", "remove", "Remove any speaking styles in the following audio and the reference text is: hi there\n"),
    ("denoise", "", "Remove any noise from the given audio while preserving the voice content clearly. Ensure "
     "that the speech quality remains intact with minimal distortion, and eliminate all noise from the audio.\n"),
    ("vad", "", "Remove any silent portions from the given audio while preserving the voice content clearly. "
     "Ensure that the speech quality remains intact with minimal distortion, and eliminate all silence from the "
     "audio.\n"),
    ("paralinguistic", "", "Add some non-verbal sounds to make the audio more natural, the new text is : "
     " hi [Laughter] there\n  The text corresponding to the audio is: hi there\n"),
])
def test_instruction_prefixes(edit_type, info, expected):
    assert prompts.instruction_prefix(edit_type, info, "  hi there ", " hi [Laughter] there") == expected


def test_unknown_edit_type_is_refused():
    with pytest.raises(ValueError, match="Unsupported edit_type: karaoke"):
        prompts.instruction_prefix("karaoke", "", "", "")


def test_clone_ids_golden():
    tokens = "<audio_1><audio_1030>"
    ids = prompts.clone_ids(fake_encode, "clone_0123456789abcdef", "prompt words", tokens, "new words")
    system = CLONE_SYS.format(speaker="clone_0123456789abcdef", prompt_text="prompt words", prompt_wav_tokens=tokens)
    target = fake_encode("\nnew words")[2:]  # the newline's ids (BOS + '\n') removed
    assert target == [ord(c) + 1000 for c in "new words"]
    expected = ([1, 4] + fake_encode("system\n" + system) + [3] + [4] + fake_encode("human\n") + target + [3]
                + [4] + fake_encode("assistant\n"))
    assert ids == expected


def test_edit_ids_golden():
    prefix = prompts.instruction_prefix("emotion", "sad", "hello", None)
    ids = prompts.edit_ids(fake_encode, prefix, " <audio_5><audio_2000> ")
    human = fake_encode("Make the following audio more sad. The text corresponding to the audio is: hello\n"
                        "\n<audio_5><audio_2000>\n")
    expected = ([1, 4] + fake_encode("system\n" + EDIT_SYS) + [3] + [4] + fake_encode("human\n") + human + [3]
                + [4] + fake_encode("assistant\n"))
    assert ids == expected


def test_interleave_and_string_form():
    vq02 = [10, 11, 12, 13, 14]  # one left over
    vq06 = [0, 1, 2, 3, 4, 5, 6, 7]  # two left over
    mixed = prompts.interleave(vq02, vq06)
    assert mixed == [10, 11, 1024, 1025, 1026, 12, 13, 1027, 1028, 1029]
    assert prompts.token_string(mixed[:3]) == "<audio_10><audio_11><audio_1024>"


def test_vocoder_reshape():
    pairs = reshape([10, 11, 1024, 1025, 1026])
    assert pairs.tolist() == [[[10, 1025], [11, 1026], [1024, 1027]]]
    padded = reshape([10, 11, 1024])  # an incomplete group is padded as the reference does
    assert padded.shape == (1, 3, 2) and padded[0, 2].tolist() == [1024, 1025]
    assert padded.dtype == torch.long


def test_clone_speaker_name():
    raw = np.arange(3000, dtype=np.float32).reshape(2, 1500) / 3000  # two channels
    flat = raw.reshape(-1)
    h = hashlib.sha256(b"hi").hexdigest()
    expected = hashlib.sha256(b"hi" + np.concatenate([flat[:1000], flat[-1000:]]).astype("<f4").tobytes())
    assert h != expected.hexdigest()
    assert prompts.clone_speaker_name("hi", raw) == "clone_" + expected.hexdigest()[:16]
    short = np.ones((1, 10), np.float32)
    assert prompts.clone_speaker_name("", short) == "clone_" + hashlib.sha256(short.tobytes()).hexdigest()[:16]
