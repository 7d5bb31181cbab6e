"""Conformance against the released checkpoints; skipped unless they are present.

    EDITX_MODEL_DIR=/models/Step-Audio-EditX \\
    EDITX_TOKENIZER_DIR=/models/Step-Audio-Tokenizer \\
    EDITX_SRC=/src/Step-Audio-EditX  make conformance

Runs one clone and one edit through the CLI on the real model, checks the
tokenizer rates, compares the native LLM's logits with the checkpoint's own
code, and, where the reference tokenizer is importable from EDITX_SRC, compares
wav2token codes with it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS, invoke, read_audio

# Read at import: the autouse fixture clears EDITX_* variables for every other test.
MODEL = os.environ.get("EDITX_MODEL_DIR")
TOKENIZER = os.environ.get("EDITX_TOKENIZER_DIR")
SRC = os.environ.get("EDITX_SRC")
pytestmark = pytest.mark.skipif(not (MODEL and TOKENIZER and SRC),
                                reason="set EDITX_MODEL_DIR, EDITX_TOKENIZER_DIR and EDITX_SRC to run")
TEXT = "Batch editing keeps every voice clip consistent, from the first take to the last."


def args() -> list[str]:
    return ["--engine", "stepaudio", "--model-dir", MODEL, "--tokenizer-dir", TOKENIZER, "--editx-src", SRC]


def _has_chat_template() -> bool:
    try:
        return bool(json.loads((Path(MODEL) / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError, TypeError):
        return False


@pytest.mark.parametrize("fmt", ["legacy", "chat"])
def test_clone_and_edit_give_speech_length_24khz_audio(tmp_path, fmt):
    if fmt == "chat" and not _has_chat_template():
        pytest.skip("this model folder has no chat_template (a release before 2026)")
    m = tmp_path / "m.csv"
    m.write_text("id,task,prompt_audio,prompt_text,text,input_audio,audio_text,edit_type,edit_info\n"
                 f"c,clone,{CLIPS / 'narration.wav'},{TEXT},Good morning and welcome to the show.,,,,\n"
                 f"e,edit,,,,{CLIPS / 'narration.wav'},{TEXT},emotion,happy\n")
    dump = tmp_path / "prompts.jsonl"  # the ids fed to the model, to compare with the official code's
    r = invoke("batch", m, *args(), "-o", tmp_path / "out", "-q", "--prompt-format", fmt, "--dump-prompts", dump)
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert {x["format"] for x in rows} == {fmt} and len(rows) == 2
    print(f"{fmt} prompt ids written to {dump}")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for t in report["tasks"]:
        info = sf.info(t["output"])
        assert info.samplerate == 24000
        assert 1.0 < info.frames / info.samplerate < 20.0
        assert t["info"]["stopped"] == "end"


def test_vq06_runs_at_25_tokens_per_second():
    from editx_cli.engine.stepaudio.layout import FUNASR_ID
    from editx_cli.engine.stepaudio.wav2token import AudioTokenizer, preprocess

    tok = AudioTokenizer(Path(TOKENIZER), FUNASR_ID, "cuda:0" if _cuda() else "cpu")
    x, sr = read_audio(CLIPS / "narration.wav")
    x16 = preprocess(x, sr)
    vq02, vq06 = tok(x16)
    seconds = len(x16) / 16000
    assert abs(len(vq06) / seconds - 25) < 1
    assert abs(len(vq02) / seconds - 50 / 3) < 1


def test_native_logits_match_the_checkpoint_code():
    import torch
    from transformers import AutoModelForCausalLM

    from editx_cli.engine.stepaudio.step1 import Step1ForCausalLM
    from editx_cli.engine.stepaudio.text_tokenizer import TextTokenizer

    device = "cuda:0" if _cuda() else "cpu"
    tok = TextTokenizer.from_folder(Path(MODEL))
    ids = torch.tensor([tok.encode("Make the following audio more happy.<audio_12><audio_2000><audio_7>")],
                       device=device)
    native = Step1ForCausalLM.from_folder(Path(MODEL), device, torch.bfloat16)
    with torch.no_grad():
        mine, _ = native(ids, torch.ones_like(ids, dtype=torch.bool), all_logits=True)
    del native
    remote = AutoModelForCausalLM.from_pretrained(MODEL, trust_remote_code=True, local_files_only=True,
                                                  dtype=torch.bfloat16).to(device).eval()
    with torch.no_grad():
        theirs = remote(input_ids=ids).logits.float()
    assert (mine.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.95
    assert torch.allclose(mine, theirs, atol=0.25, rtol=0.05)  # bf16 tolerance


def test_codes_match_the_reference_tokenizer():
    sys.path.insert(0, SRC)
    try:
        from tokenizer import StepAudioTokenizer  # the reference's module, from EDITX_SRC
    except Exception as e:  # noqa: BLE001 - whatever stops the import, there is nothing to compare
        pytest.skip(f"reference tokenizer not importable from EDITX_SRC: {e}")
    from editx_cli.engine.stepaudio.layout import FUNASR_ID
    from editx_cli.engine.stepaudio.wav2token import AudioTokenizer, preprocess

    x, sr = read_audio(CLIPS / "narration.wav")
    ref = StepAudioTokenizer(TOKENIZER)
    import torch

    _, ref02, ref06 = ref.wav2token(torch.from_numpy(x)[None], sr)
    ours02, ours06 = AudioTokenizer(Path(TOKENIZER), FUNASR_ID, "cuda:0" if _cuda() else "cpu")(preprocess(x, sr))
    assert len(ours06) == len(ref06)
    # resampler differences (soxr vs torchaudio) move a few codes; the reference's fbank dither more
    assert np.mean(np.array(ours06) == np.array(ref06)) > 0.9
    n = min(len(ours02), len(ref02))
    assert abs(len(ours02) - len(ref02)) <= 1 and np.mean(np.array(ours02[:n]) == np.array(ref02[:n])) > 0.8


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
