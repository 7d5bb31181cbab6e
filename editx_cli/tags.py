"""The bracketed tags a target text may carry: paralinguistic sounds and language tags.

Spelled exactly as the 2026 model release documents them. The ten spellings of
the older docs and the official app are accepted; the four that changed get a
warning naming the new one. A language tag, where one is wanted, opens the text
(Mandarin and English take none). A polyphonic character's reading is fixed by
writing its pinyin with a tone digit in place of the character (the release's
example: guo4guo4guo1); that is text, not a tag.
"""

from __future__ import annotations

import difflib
import re

PARALINGUISTIC = (
    "sigh", "inhale", "laugh", "chuckle", "exhale", "clears throat", "snort", "giggle", "cough", "breath", "uhm",
    "Confirmation-en", "Surprise-oh", "Surprise-ah", "Surprise-wa", "Surprise-yo", "Dissatisfaction-hnn",
    "Question-ei", "Question-ah", "Question-en", "Question-yi", "Question-oh",
)
# The older docs' ten: six are spelled as today, these four changed.
OLDER = {"Breathing": "breath", "Laughter": "laugh", "Uhm": "uhm", "Sigh": "sigh"}
LANGUAGES = ("Sichuanese", "Cantonese", "Japanese", "Korean")
TAG = re.compile(r"\[([^\[\]\n]*)\]")


def check(text: str) -> list[tuple[bool, str]]:
    """(is_error, message) for each tag problem in `text`, in order."""
    out: list[tuple[bool, str]] = []
    opening = len(text) - len(text.lstrip())
    for m in TAG.finditer(text):
        tag = m.group(1)
        if tag in PARALINGUISTIC:
            continue
        if tag in LANGUAGES:
            if m.start() != opening:
                out.append((True, f"the language tag [{tag}] must open the text"))
            continue
        if tag in OLDER:
            out.append((False, f"[{tag}] is the older spelling of [{OLDER[tag]}]; write [{OLDER[tag]}]"))
            continue
        out.append((True, f"unknown tag [{tag}]{_closest(tag)} (`editx tags` lists them)"))
    return out


def _closest(tag: str) -> str:
    known = [*PARALINGUISTIC, *LANGUAGES]
    by_lower = {k.lower(): k for k in [*known, *OLDER]}
    hit = by_lower.get(tag.strip().lower()) or next(iter(difflib.get_close_matches(tag, known, n=1, cutoff=0.5)), None)
    hit = OLDER.get(hit, hit)
    return f"; did you mean [{hit}]?" if hit else ""
