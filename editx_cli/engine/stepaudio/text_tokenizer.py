"""Prompt text to ids exactly as the reference tokenizes it, whatever transformers is installed.

The released code calls `AutoTokenizer.from_pretrained(dir).encode(text)` under
transformers 4.53.3, which builds a LlamaTokenizerFast from `tokenizer.model` and
`tokenizer_config.json`. Later transformers build a different tokenizer from the
same files (other ids for the same text), so editx reproduces 4.53.3's behaviour
with SentencePiece itself:

1. Added tokens are split out first, leftmost-longest: the model's unknown,
   control and user-defined pieces (`<unk>`, `<s>`, `<|BOT|>`, `<|EOT|>`,
   `<audio_N>`...), the config's named special tokens, and its
   `added_tokens_decoder` entries (with their lstrip/rstrip).
2. Each remaining piece has its spaces written as "▁", and gets a leading "▁":
   with `legacy` (the default) every piece does; without it, only a piece at the
   very start of the text, and only if it does not start with a space already.
3. The piece is segmented by the SentencePiece model as it stands, with no
   normalisation of its own (the fast tokenizer applies none).
4. `<s>` (id 1) opens every call's ids when `add_bos_token` (default true).

tests/data/tokenizer/goldens.json holds 4.53.3's own ids for every prompt kind
under four folder variants; the tests hold this module to them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

SPACE = "\u2581"  # SentencePiece's visible space
UNKNOWN, CONTROL, USER_DEFINED = 2, 3, 4  # SentencePiece piece types
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class TokenizerError(ValueError):
    pass


@dataclass(frozen=True)
class _Added:
    content: str
    id: int
    lstrip: bool = False
    rstrip: bool = False


def _content(value) -> str:
    return value.get("content", "") if isinstance(value, dict) else (value or "")


def chat_template_of(value) -> str | None:
    """The folder's chat template: a string, or the 'default' of a list of named ones."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        found = named.get("default")
        return found if isinstance(found, str) else None
    return None


class TextTokenizer:
    def __init__(self, model: bytes, config: dict, where: str = "tokenizer.model") -> None:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        try:
            proto.ParseFromString(model)
        except Exception as e:
            raise TokenizerError(f"{where}: not a SentencePiece model ({e})") from None
        if not proto.pieces:
            raise TokenizerError(f"{where}: not a SentencePiece model (no pieces)")
        added = {p.piece: _Added(p.piece, i) for i, p in enumerate(proto.pieces)
                 if p.type in (UNKNOWN, CONTROL, USER_DEFINED)}
        ids = {p.piece: i for i, p in enumerate(proto.pieces)}
        for key in SPECIAL_KEYS:  # the named special tokens are added tokens too, where the model has them
            value = config.get(key)
            content = value.get("content") if isinstance(value, dict) else value
            if isinstance(content, str) and content in ids:
                added.setdefault(content, _Added(content, ids[content]))
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
                raise TokenizerError(f"tokenizer_config.json: added_tokens_decoder[{key!r}] has no content")
            added[entry["content"]] = _Added(entry["content"], int(key), bool(entry.get("lstrip")),
                                             bool(entry.get("rstrip")))
        alternatives = []  # longest first: a regex alternation then matches leftmost-longest
        for tok in sorted(added.values(), key=lambda t: len(t.content), reverse=True):
            left, right = ("\\s*" if tok.lstrip else ""), ("\\s*" if tok.rstrip else "")
            alternatives.append(left + re.escape(tok.content) + right)
        self._split = re.compile("|".join(alternatives)) if alternatives else None
        self._by_match = {t.content: t.id for t in added.values()}

        # The fast tokenizer normalises nothing beyond the spaces: segment the pieces as given.
        proto.normalizer_spec.name = "identity"
        proto.normalizer_spec.precompiled_charsmap = b""
        proto.normalizer_spec.add_dummy_prefix = False
        proto.normalizer_spec.remove_extra_whitespaces = False
        proto.normalizer_spec.escape_whitespaces = False
        proto.trainer_spec.split_by_whitespace = False
        proto.ClearField("denormalizer_spec")
        self._sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

        self.legacy = config.get("legacy", True) is not False  # None (unset) means legacy, as 4.53.3
        self.add_prefix_space = config.get("add_prefix_space", True) is not False
        self.add_bos = config.get("add_bos_token", True) is not False
        self.add_eos = bool(config.get("add_eos_token", False))
        self.bos_id, self.eos_id = proto.trainer_spec.bos_id, proto.trainer_spec.eos_id
        self.chat_template = chat_template_of(config.get("chat_template"))
        self.special = {k: _content(config.get(k)) for k in SPECIAL_KEYS}

    @classmethod
    def from_folder(cls, folder: Path) -> TextTokenizer:
        folder = Path(folder)
        path, cfg_path = folder / "tokenizer.model", folder / "tokenizer_config.json"
        try:
            model = path.read_bytes()
        except OSError as e:
            raise TokenizerError(f"{path}: {e.strerror}") from None
        config: dict = {}
        if cfg_path.exists():
            try:
                config = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise TokenizerError(f"{cfg_path}: not valid JSON ({e})") from None
            if not isinstance(config, dict):
                raise TokenizerError(f"{cfg_path}: not a JSON object")
        return cls(model, config, str(path))

    def _piece(self, text: str, at_start: bool) -> list[int]:
        if not text:
            return []
        text = text.replace(" ", SPACE)
        if self.add_prefix_space and (self.legacy or (at_start and not text.startswith(SPACE))):
            text = SPACE + text
        return self._sp.encode(text)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """`add_special_tokens=False`: no <s>/</s> added (a rendered chat template carries its own)."""
        ids = [self.bos_id] if add_special_tokens and self.add_bos and self.bos_id >= 0 else []
        pos = 0
        if self._split is not None:
            for m in self._split.finditer(text):
                ids += self._piece(text[pos : m.start()], pos == 0)
                token = m.group()
                ids.append(self._by_match[token if token in self._by_match else token.strip()])
                pos = m.end()
        ids += self._piece(text[pos:], pos == 0)
        if add_special_tokens and self.add_eos and self.eos_id >= 0:
            ids.append(self.eos_id)
        return ids
