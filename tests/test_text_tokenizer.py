"""Prompt ids against the reference tokenizer's own: goldens recorded with transformers 4.53.3
(scripts/make_tokenizer_goldens.py) for every prompt kind, under five tokenizer folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import ROOT, invoke, model_args

from editx_cli.engine.stepaudio import prompts
from editx_cli.engine.stepaudio.text_tokenizer import TextTokenizer, TokenizerError

DATA = ROOT / "tests" / "data" / "tokenizer"
GOLDENS = json.loads((DATA / "goldens.json").read_text(encoding="utf-8"))


def model_bytes(variant: dict, tiny: Path) -> bytes:
    if variant["model"] == "toy.model":
        return (DATA / "toy.model").read_bytes()
    return (tiny / "Step-Audio-EditX" / "tokenizer.model").read_bytes()


def test_the_goldens_come_from_the_reference_version():
    assert GOLDENS["transformers"] == "4.53.3"
    assert {v["class"] for v in GOLDENS["variants"].values()} == {"LlamaTokenizerFast"}


@pytest.mark.parametrize("name", sorted(GOLDENS["variants"]))
def test_ids_equal_the_reference_tokenizer(name, tiny):
    variant = GOLDENS["variants"][name]
    tok = TextTokenizer(model_bytes(variant, tiny), variant["config"])
    for text, ids in zip(GOLDENS["texts"], variant["ids"], strict=True):
        assert tok.encode(text) == ids, text


def test_the_goldens_cover_every_string_the_prompt_kinds_encode():
    """If a prompt string changes, the goldens must be made again with the reference."""
    spec = importlib.util.spec_from_file_location("goldens", ROOT / "scripts" / "make_tokenizer_goldens.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.texts() == GOLDENS["texts"]


def test_whole_prompts_are_the_reference_ids(tiny):
    """A clone and a guided edit's two rows, as the engine builds them from the tiny folder."""
    variant = GOLDENS["variants"]["tiny-legacy"]
    reference = dict(zip(GOLDENS["texts"], variant["ids"], strict=True))
    mine = TextTokenizer.from_folder(tiny / "Step-Audio-EditX").encode
    audio = "".join(f"<audio_{n}>" for n in (3, 1023, 1024, 5119, 17, 2048, 999, 1030, 12, 4000))
    text = "Batch editing keeps every voice clip consistent, from the first take to the last."
    built = [
        lambda enc: prompts.clone_ids(enc, "clone_0123456789abcdef", text, audio,
                                      "The weather report says rain is coming later tonight, around 9 or 10 pm."),
        lambda enc: prompts.edit_ids(enc, prompts.instruction_prefix("emotion", "happy", text, ""), audio),
        lambda enc: prompts.edit_ids(enc, prompts.instruction_prefix("vad", "", text, ""), audio),
    ]
    for build, starts in zip(built, (3, 4, 4), strict=True):
        ids = build(mine)
        assert ids == build(reference.__getitem__)
        # the sequence start, then the <s> that each encode call adds after a turn opening
        # (an edit's instruction is one more call than a clone's target text)
        assert ids.count(1) == 1 + starts and ids[:2] == [1, 4]
    assert [i for i in built[0](mine) if i >= prompts.AUDIO_BASE][:4] == [prompts.AUDIO_BASE + n
                                                                          for n in (3, 1023, 1024, 5119)]


def test_audio_tokens_encode_to_their_ids(tiny):
    tok = TextTokenizer.from_folder(tiny / "Step-Audio-EditX")
    mixed = [0, 1023, 1024, 5119, 7]
    assert tok.encode(prompts.token_string(mixed)) == [1] + [prompts.AUDIO_BASE + n for n in mixed]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("tokenizer.model", b"not a model", "not a SentencePiece model"),
    ("tokenizer.model", b"", "not a SentencePiece model"),
    ("tokenizer_config.json", b"{legacy: no", "not valid JSON"),
    ("tokenizer_config.json", b"[1, 2]", "not a JSON object"),
    ("tokenizer_config.json", b'{"added_tokens_decoder": {"9": {"lstrip": true}}}', "has no content"),
])
def test_a_broken_tokenizer_folder_is_named(tiny, tmp_path, name, content, message):
    import shutil

    root = tmp_path / "ckpt"
    shutil.copytree(tiny, root, symlinks=True)
    (root / "Step-Audio-EditX" / name).write_bytes(content)
    with pytest.raises(TokenizerError, match=message):
        TextTokenizer.from_folder(root / "Step-Audio-EditX")
    out = tmp_path / "o.wav"
    r = invoke("edit", ROOT / "manifests" / "clips" / "narration.wav", "--type", "vad", *model_args(root), "-o", out)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "the engine failed to load" in r.stderr and name in r.stderr and message in r.stderr
    assert not out.exists()


def test_dump_prompts_writes_each_rows_ids(tiny, tmp_path):
    from conftest import write_manifest

    clip = ROOT / "manifests" / "clips" / "narration.wav"
    text = "Batch editing keeps every voice clip consistent, from the first take to the last."
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "audio_text", "edit_type", "edit_info",
                                            "intensity"],
                       [["plain", "edit", clip, text, "emotion", "happy", ""],
                        ["guided", "edit", clip, text, "emotion", "happy", "1.5"]])
    dump = tmp_path / "prompts.jsonl"
    dump.write_text("stale line from an earlier run\n")
    r = invoke("batch", m, *model_args(tiny), "-o", tmp_path / "o", "--dump-prompts", dump, "-q")
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert sorted((x["id"], x["row"]) for x in lines) == [("guided", "reference"), ("guided", "task"),
                                                          ("plain", "task")]
    rows = {(x["id"], x["row"]): x for x in lines}
    assert {x["format"] for x in lines} == {"legacy"}
    # the same edit prompt whatever the intensity; the reference row is a clone prompt of the input
    assert rows[("plain", "task")]["ids"] == rows[("guided", "task")]["ids"]
    tok = TextTokenizer.from_folder(tiny / "Step-Audio-EditX")
    prefix = prompts.instruction_prefix("emotion", "happy", text, "")
    human = tok.encode(prefix + "\n")[:-1]  # the instruction's ids, before the audio tokens
    ids = rows[("plain", "task")]["ids"]
    assert ids[:2] == [1, 4] and any(ids[i:i + len(human)] == human for i in range(len(ids)))
    assert rows[("guided", "reference")]["ids"] != ids


def test_chat_prompts_equal_the_reference_chat_template(tiny):
    """The 2026 format: the folder's template rendered in the sandbox, then tokenized, against
    transformers 4.53.3's own apply_chat_template."""
    spec = importlib.util.spec_from_file_location("goldens", ROOT / "scripts" / "make_tokenizer_goldens.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert [(c["system"], c["human"]) for c in GOLDENS["chat"]] == script.chat_turns()
    tok = TextTokenizer.from_folder(tiny / "Step-Audio-EditX-2026")
    for case in GOLDENS["chat"]:
        text = prompts.render_chat(tok.chat_template, case["system"], case["human"], tok.special, "here")
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == case["ids"]
        assert ids.count(1) == 1 and ids[:2] == [1, 4]  # <s> once, then the first turn


def test_a_chat_template_cannot_reach_outside_its_sandbox(tiny):
    from editx_cli.engine.stepaudio.prompts import TemplateError

    tok = TextTokenizer.from_folder(tiny / "Step-Audio-EditX-2026")
    for evil in ["{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ messages.append(1) }}",
                 "{{ raise_exception('no') }}", "{% for %}"]:
        with pytest.raises(TemplateError, match="here: the chat template"):
            prompts.render_chat(evil, "s", "h", tok.special, "here")


def _chat_run(tiny, tmp_path, folder: str, *extra: str):
    from conftest import write_manifest

    clip = ROOT / "manifests" / "clips" / "narration.wav"
    text = "Batch editing keeps every voice clip consistent, from the first take to the last."
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "prompt_audio", "prompt_text", "text", "input_audio",
                                            "audio_text", "edit_type", "edit_info", "intensity"],
                       [["c", "clone", clip, text, "A new line to say.", "", "", "", "", ""],
                        ["e", "edit", "", "", "", clip, text, "emotion", "happy", "1.5"]])
    args = ["--model-dir", tiny / folder, *model_args(tiny)[4:]]
    dump = tmp_path / "dump.jsonl"
    r = invoke("batch", m, "--engine", "stepaudio", *args, "-o", tmp_path / "o", "--dump-prompts", dump, "-q", *extra)
    return r, dump, tmp_path / "o" / "report.json"


def test_the_2026_folder_prompts_in_its_chat_format_end_to_end(tiny, tmp_path):
    r, dump, report = _chat_run(tiny, tmp_path, "Step-Audio-EditX-2026")
    assert r.exit_code == 0, r.stderr
    run = json.loads(report.read_text())["run"]
    assert run["done"] == 2
    info = run["engine_info"]
    assert info["prompt_format"] == "chat"
    assert info["sampling"] == {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "repetition_window": 0}
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert {x["format"] for x in rows} == {"chat"} and len(rows) == 3  # clone, edit and its reference row
    for row in rows:
        assert row["ids"].count(1) == 1 and row["ids"][:2] == [1, 4]
    import sentencepiece as spm

    words = spm.SentencePieceProcessor(model_file=str(tiny / "Step-Audio-EditX-2026" / "tokenizer.model"))
    clone = words.decode([i for i in rows[0]["ids"] if i < words.get_piece_size()])
    assert "speaker name: debug\n" in clone and "clone_" not in clone  # the 2026 release's speaker name


def test_prompt_format_and_sampling_can_be_chosen(tiny, tmp_path):
    r, dump, report = _chat_run(tiny, tmp_path, "Step-Audio-EditX-2026", "--prompt-format", "legacy",
                                "--top-k", "7", "--top-p", "0.9", "--repetition-mask", "--temperature", "0.9")
    assert r.exit_code == 0, r.stderr
    info = json.loads(report.read_text())["run"]["engine_info"]
    assert info["prompt_format"] == "legacy"
    assert info["sampling"] == {"temperature": 0.9, "top_k": 7, "top_p": 0.9, "repetition_window": 10}
    assert {json.loads(line)["format"] for line in dump.read_text().splitlines()} == {"legacy"}


def test_chat_format_needs_a_chat_template(tiny, tmp_path):
    r, _, report = _chat_run(tiny, tmp_path, "Step-Audio-EditX", "--prompt-format", "chat")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "tokenizer_config.json: no chat_template, so --prompt-format chat cannot be used" in r.stderr
    assert not report.exists()
    r, _, _ = _chat_run(tiny, tmp_path, "Step-Audio-EditX", "--top-p", "0")
    assert r.exit_code == 2 and "top-p" in r.stderr
