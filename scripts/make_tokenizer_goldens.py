"""Golden prompt ids from the reference's tokenizer, for tests/data/tokenizer/.

The released code tokenizes with transformers 4.53.3's AutoTokenizer; editx must
produce the same ids whatever transformers it has installed. This script, run
once in a throwaway environment with that version, records what it produces:

    python -m venv /tmp/tf453 && /tmp/tf453/bin/pip install transformers==4.53.3 sentencepiece protobuf \
        jinja2 diskcache
    python scripts/make_tokenizer_goldens.py train              # any environment with sentencepiece
    python scripts/make_tiny_checkpoints.py /tmp/tiny           # the tiny checkpoints' tokenizer
    PYTHONPATH=. /tmp/tf453/bin/python scripts/make_tokenizer_goldens.py goldens --tiny /tmp/tiny

`train` writes toy.model: a small BPE SentencePiece model shaped like the Step
tokenizer (byte fallback, <|EOT|> and <|BOT|> as control pieces 3 and 4,
<audio_N> as user-defined pieces). `goldens` encodes every string editx hands
to `encode` for every prompt kind, under each tokenizer folder variant, and
writes goldens.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "tokenizer"
sys.path.insert(0, str(ROOT))

CORPUS = [
    "Batch editing keeps every voice clip consistent, from the first take to the last.",
    "First, open the file. Then wait for the signal. Finally, save your work.",
    "The weather report says rain is coming later tonight, around 9 or 10 pm.",
    "You know, I just finished that big project and feel so relieved.",
    "我总觉得，有人在跟着我，我能听到奇怪的脚步声。",
    "比如在工作间隙，做一些简单的伸展运动，放松一下身体。",
    "我觉得这个计划大概是可行的，不过还需要再仔细考虑一下。",
    "今天天气真好，我想出去散步。他说：“好的！”然后就走了。",
    "Call 555-0199 before 12:30, or email support at 3.5 percent off.",
    "    indented  by   runs    of     spaces,  as   code  is",
]


def train() -> None:
    import sentencepiece as spm

    from editx_cli.engine.stepaudio import prompts

    lines = list(CORPUS)
    lines += [prompts.EDIT_SYSTEM_PROMPT, prompts.CLONE_SYSTEM_TEMPLATE, prompts.DENOISE_PREFIX, prompts.VAD_PREFIX]
    lines += [prompts.instruction_prefix(t, i, CORPUS[0], CORPUS[1]) for t, i in
              [("emotion", "happy"), ("style", "whisper"), ("style", "remove"), ("paralinguistic", "")]]
    lines = [line.replace("\n", " ") for line in lines] * 20
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "toy"), model_type="bpe", vocab_size=5900,
            hard_vocab_limit=False, byte_fallback=True, character_coverage=0.98, split_digits=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=["<|EOT|>", "<|BOT|>"],
            user_defined_symbols=[f"<audio_{n}>" for n in range(5120)], num_threads=1,
            remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2,
            allow_whitespace_only_pieces=True,
        )
        shutil.copy(Path(tmp) / "toy.model", DATA / "toy.model")
    print(DATA / "toy.model")


def texts() -> list[str]:
    """Every string editx passes to `encode` for the prompt kinds below, in first-seen order."""
    from editx_cli.engine.stepaudio import prompts

    seen: dict[str, None] = {}

    def record(text: str) -> list[int]:
        seen.setdefault(text)
        return []

    audio = "".join(f"<audio_{n}>" for n in (3, 1023, 1024, 5119, 17, 2048, 999, 1030, 12, 4000))
    transcripts = [
        CORPUS[0], CORPUS[4], "Mixed 中英文 text, with 3 numbers: 42, 3.14 and 2026.",
        "  leading and trailing spaces  ", "two  spaces\tand a tab", "我想出去散步 and then some English.",
        "<|BOT|> and <audio_7> inside a transcript", "", "indented    by  runs   of spaces", "  ",
        "emoji 🎙️ and rare 龘 characters", "tags <s> and </s> and <unk> and <audio_99999>",
        "turns <|BOT|>  human and  <|EOT|> closed", " <|BOT|> first",
    ]
    targets = [
        CORPUS[2], CORPUS[6], " starts with a space", "ends with a space ", "[laugh] Well, that was [sigh] fun.",
        "[Cantonese]今日天气好好。", "你好(ni3)吗？", "Number 12345 and 6.78.", "\nnew line first", "line\nbreak",
    ]
    speakers = ["clone_0123456789abcdef"]
    for i, t in enumerate(transcripts):
        prompts.clone_ids(record, speakers[0], t, audio, targets[i % len(targets)])
    for target in targets:
        prompts.clone_ids(record, speakers[0], CORPUS[0], audio, target)
    infos = {
        "emotion": ["happy", "angry", "sad", "humour", "confusion", "disgusted", "empathy", "embarrass", "fear",
                    "surprised", "excited", "depressed", "coldness", "admiration", "remove"],
        "style": ["serious", "arrogant", "child", "older", "girl", "pure", "sister", "sweet", "ethereal", "whisper",
                  "gentle", "recite", "generous", "act_coy", "warm", "shy", "comfort", "authority", "chat", "radio",
                  "soulful", "story", "vivid", "program", "news", "advertising", "roar", "murmur", "shout", "deeply",
                  "loudly", "remove", "exaggerated"],
        "speed": ["faster", "slower", "more faster", "more slower"],
        "denoise": [""], "vad": [""], "paralinguistic": [""],
    }
    for edit_type, values in infos.items():
        for n, info in enumerate(values):
            text = transcripts[n % len(transcripts)]
            new = targets[4] if edit_type == "paralinguistic" else ""
            prompts.edit_ids(record, prompts.instruction_prefix(edit_type, info, text, new), audio)
    prompts.edit_ids(record, prompts.instruction_prefix("paralinguistic", "", CORPUS[4], "我[laugh]想出去散步"), audio)
    return list(seen)


def chat_turns() -> list[tuple[str, str]]:
    """(system, human) turns of chat-format prompts: a clone and each kind of edit."""
    from editx_cli.engine.stepaudio import prompts

    audio = "".join(f"<audio_{n}>" for n in (3, 1023, 1024, 5119, 17, 2048, 999, 1030, 12, 4000))
    turns = [prompts.chat_clone_text(CORPUS[0], audio, CORPUS[6]),
             prompts.chat_clone_text(CORPUS[4], audio, " starts with a space"),
             prompts.chat_clone_text(CORPUS[0], audio, "[Cantonese]今日天气好好。"),
             prompts.chat_clone_text(CORPUS[0], audio, "你hao3吗？ chong2新.")]
    for edit_type, info, new in [("emotion", "happy", ""), ("style", "remove", ""), ("speed", "more faster", ""),
                                 ("denoise", "", ""), ("vad", "", ""), ("paralinguistic", "", "So [laugh] fun.")]:
        turns.append(prompts.chat_edit_text(prompts.instruction_prefix(edit_type, info, CORPUS[1], new), audio))
    return turns


def chat_goldens(folder: Path) -> list[dict]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return [{"system": s, "human": h,
             "ids": tok.apply_chat_template([{"role": "system", "content": s}, {"role": "user", "content": h}],
                                            add_generation_prompt=True, tokenize=True)}
            for s, h in chat_turns()]


def goldens(tiny: Path) -> None:
    import transformers
    from transformers import AutoTokenizer

    base = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "<|EOT|>", "unk_token": "<unk>",
            "model_max_length": 32768}
    variants = {
        # as the released folder: legacy off, add_bos_token left to the class default
        "toy-released": ("toy.model", {**base, "legacy": False}),
        "toy-legacy": ("toy.model", {**base, "legacy": True, "add_bos_token": True, "add_eos_token": False}),
        "tiny-legacy": ("tiny", json.loads((tiny / "Step-Audio-EditX" / "tokenizer_config.json").read_text())),
        "tiny-released": ("tiny", {**base, "legacy": False}),
        # turn tokens declared in the config, one eating the spaces on its right, one on its left
        "toy-added": ("toy.model", {**base, "legacy": False, "added_tokens_decoder": {
            "3": {"content": "<|EOT|>", "lstrip": True, "rstrip": False, "normalized": False, "special": True},
            "4": {"content": "<|BOT|>", "lstrip": False, "rstrip": True, "normalized": False, "special": True}}}),
    }
    strings = texts()
    out = {"transformers": transformers.__version__, "texts": strings, "variants": {}}
    for name, (model, config) in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            src = DATA / "toy.model" if model == "toy.model" else tiny / "Step-Audio-EditX" / "tokenizer.model"
            shutil.copy(src, Path(tmp) / "tokenizer.model")
            (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(config))
            tok = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
            out["variants"][name] = {"model": model, "config": config, "class": type(tok).__name__,
                                     "ids": [tok.encode(s) for s in strings]}
    out["chat"] = chat_goldens(tiny / "Step-Audio-EditX-2026")
    (DATA / "goldens.json").write_text(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(DATA / "goldens.json", len(strings), "strings")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    sub.add_parser("train")
    g = sub.add_parser("goldens")
    g.add_argument("--tiny", type=Path, required=True, help="a folder made by make_tiny_checkpoints.py")
    args = ap.parse_args()
    train() if args.step == "train" else goldens(args.tiny)


if __name__ == "__main__":
    main()
