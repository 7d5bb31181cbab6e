"""Facts about text to be spoken: how long it takes to say, how to compare what was said with
what should have been, and where a long text can be split."""

from __future__ import annotations

import re
import unicodedata

from editx_cli.tags import TAG

# Speaking time of a text, by script, on the slow side: a CJK character (or kana, hangul
# syllable) is a syllable (~4 a second), a digit is read as a word, other letters ~12 a
# second.
SYLLABLE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_LETTER = re.compile(r"[^\W\d_]")
# Scripts written without spaces between words: their error rate is counted in characters.
_NO_SPACES = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f]")


def speech_seconds(text: str) -> float:
    syllables = len(SYLLABLE.findall(text))
    letters = len(_LETTER.findall(text)) - syllables
    digits = sum(c.isdigit() for c in text)
    return syllables * 0.25 + letters / 12 + digits * 0.35


def spoken(text: str) -> str:
    """The words of a text as a transcript would have them: tags and punctuation out, lower case,
    one space between words."""
    text = unicodedata.normalize("NFKC", TAG.sub(" ", text)).casefold()
    text = "".join(c if c.isalnum() or c == "'" else " " for c in text)
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))


def counts_characters(text: str) -> bool:
    """Whether an error rate of this text is counted in characters (Chinese, Japanese, Thai)."""
    return bool(_NO_SPACES.search(text))
