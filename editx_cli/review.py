"""review.html: one self-contained page to listen to a run, written beside its report.

Per task, the input and output side by side (players and spectrograms), the parameters,
timings, cache use, loudness, QA scores where present, failures with their message.
Relative links only, no server and no network: the page opens from file:// and keeps
working when the folder is moved or archived with its audio. Spectrograms are small PNGs
in `review-files/`, named by the audio's content, so a second build makes only new ones.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from editx_cli import files
from editx_cli.errors import InvalidInput, Problem

PAGE = "review.html"
FILES = "review-files"
MARK = '<meta name="generator" content="editx review">'  # an earlier page of ours may be replaced
SPEC_HEIGHT, SPEC_WIDTH = 48, 320  # pixels: mel bands by columns
SLOW_SHARE = 0.1  # "slow": the slowest tenth of the finished tasks


def target(report_path: Path) -> Path:
    return report_path.parent / PAGE


def check_target(page: Path) -> None:
    """A review page may replace only an earlier one: any other file there is someone's."""
    if page.is_dir():
        raise InvalidInput([Problem("--review", None, None, f"{page} is a folder")])
    if page.exists():
        try:
            ours = MARK.encode() in page.read_bytes()[:2048]
        except OSError:
            ours = False
        if not ours:
            raise InvalidInput([Problem("--review", None, None, f"{page} exists and is not an editx review page: "
                                                                "move it, or write the report elsewhere")])


def build(report: dict[str, Any], report_path: Path) -> Path:
    """Write review.html (and the spectrograms it shows) beside `report_path`; return its path."""
    page = target(report_path)
    check_target(page)
    folder = page.parent
    (folder / FILES).mkdir(parents=True, exist_ok=True)
    tasks = report["tasks"]
    outputs = {t["id"]: t["output"] for t in tasks}
    finished = sorted((_seconds(t) for t in tasks if t["status"] == "done"), reverse=True)
    slow_from = finished[max(0, math.ceil(len(finished) * SLOW_SHARE) - 1)] if finished else math.inf
    rows = []
    for t in tasks:
        src = t.get("input", "")
        src = outputs.get(src[1:], "") if src.startswith("@") else src
        rows.append(_row(t, src, folder, slow_from))
    qa = any(_qa(t) for t in tasks)
    html_text = _page(report["run"], rows, qa)
    files.replace(page, html_text)
    return page


def _seconds(t: dict) -> float:
    return round(sum(t.get("stages", {}).values()), 3)


def _qa(t: dict) -> dict:
    qa = t.get("info", {}).get("qa")
    return qa if isinstance(qa, dict) else {}


def _link(path: str, folder: Path) -> str:
    """A relative URL from the page to `path`, or "" when there is no such file."""
    if not path or not os.path.isfile(path):
        return ""
    return quote(os.path.relpath(path, folder).replace(os.sep, "/"))


def _row(t: dict, src: str, folder: Path, slow_from: float) -> dict:
    seconds = _seconds(t)
    qa = _qa(t)
    what = t["task"] if t["task"] == "clone" else " ".join(x for x in (t["edit_type"], t.get("edit_info", "")) if x)
    chunks = (t.get("info") or {}).get("chunks")
    if isinstance(chunks, list) and chunks:  # a long task: edited in pieces
        what += f", {len(chunks)} chunks"
    return {
        "t": t, "what": what, "seconds": seconds, "qa": qa, "verdict": _verdict(qa),
        "slow": t["status"] == "done" and seconds >= slow_from and seconds > 0,
        "low": qa.get("passed") is False,
        "input": _link(src, folder), "input_name": os.path.basename(src) if src else "",
        "output": _link(t["output"], folder) if t["status"] in ("done", "skipped") else "",
        "input_spec": _spectrogram(src, folder), "output_spec": (
            _spectrogram(t["output"], folder) if t["status"] in ("done", "skipped") else ""),
    }


def _verdict(qa: dict) -> dict:
    """The QA cell: a mark and a word at a glance, the main scores under it, every score and the
    problems on hover; `rank` sorts failures first."""
    if not qa:
        return {"rank": ""}
    scores = ", ".join(f"{k} {qa[k]:.2f}" for k in ("wer", "cer", "similarity") if isinstance(qa.get(k), (int, float)))
    detail = "; ".join(f"{k} {v}" for k, v in qa.items() if k not in ("passed", "scored", "problems"))
    if qa.get("passed") is False:
        return {"kind": "fail", "mark": "\u2717", "label": "fail", "rank": 0, "scores": scores,
                "detail": f"{qa.get('problems') or 'below the thresholds'}\n{detail}"}
    if qa.get("scored") is False:
        return {"kind": "unscored", "mark": "\u2013", "label": "not scored", "rank": 1, "scores": scores,
                "detail": f"no text to hear it against, no speaker model: duration and level only\n{detail}"}
    return {"kind": "pass", "mark": "\u2713", "label": "pass", "rank": 2, "scores": scores, "detail": detail}


def _spectrogram(path: str, folder: Path) -> str:
    """A small mel spectrogram of the file as a PNG in review-files/, made once per content;
    its relative URL, or "" when the file cannot be read."""
    if not path or not os.path.isfile(path):
        return ""
    try:
        with open(path, "rb") as f:
            name = hashlib.sha256(f.read()).hexdigest()[:24] + ".png"
        png = folder / FILES / name
        if not png.exists():
            _write_png(_mel_image(path), png)
    except Exception:  # an unreadable file shows as a missing picture, not a failed page
        return ""
    return quote(f"{FILES}/{name}")


def _mel_image(path: str) -> np.ndarray:
    import librosa
    import soundfile as sf

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    n_fft = 1 << max(8, round(math.log2(sr * 0.032)))  # 32 ms windows
    hop = max(n_fft // 4, math.ceil(len(x) / SPEC_WIDTH))
    mel = librosa.feature.melspectrogram(y=x, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=SPEC_HEIGHT,
                                         fmax=min(sr / 2, 11025), center=True, norm=None)
    # levels against full scale, not against the file's own loudest bin: silence stays dark
    # (against its own peak, a silent file's faint noise would be drawn as loud as speech)
    full_scale = (n_fft / 4) ** 2  # a full-scale sine's power in its bin, through a Hann window
    db = librosa.power_to_db(mel, ref=full_scale, amin=1e-12, top_db=None)
    level = np.clip((db + FLOOR_DB) / FLOOR_DB, 0.0, 1.0)[::-1]  # low frequencies at the bottom
    return np.round(level * (LEVELS - 1)).astype(np.uint8)


FLOOR_DB = 90.0  # drawn darkest at and below 90 dB under full scale

# LEVELS steps from dark blue through teal to yellow, quiet to loud, readable for most colour
# vision; an 8-bit palette image of 32 levels is a few kB where full colour takes tens.
LEVELS = 32
_ANCHORS = np.array([[13, 8, 48], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
_PALETTE = np.stack([np.interp(np.linspace(0, 4, LEVELS), np.arange(5), _ANCHORS[:, c]) for c in range(3)],
                    axis=1).round().astype(np.uint8)


def _write_png(levels: np.ndarray, path: Path) -> None:
    from PIL import Image

    image = Image.frombytes("P", (levels.shape[1], levels.shape[0]), np.ascontiguousarray(levels).tobytes())
    image.putpalette(_PALETTE.ravel().tolist())
    files.replace(path, lambda part: image.save(part, format="PNG", optimize=True))


def _page(run: dict, rows: list[dict], qa: bool) -> str:
    import jinja2

    template = resources.files("editx_cli").joinpath("review.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda v, nd=2: "" if v is None else f"{v:.{nd}f}"
    return env.from_string(template).render(run=run, rows=rows, qa=qa, mark=MARK, made=time.strftime(
        "%Y-%m-%d %H:%M"), counts={s: sum(r["t"]["status"] == s for r in rows) for s in
                                   ("done", "skipped", "failed", "cancelled", "pending")},
        slow=sum(r["slow"] for r in rows), low=sum(r["low"] for r in rows))
