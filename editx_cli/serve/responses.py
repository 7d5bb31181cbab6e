"""What a response says of its task beyond its audio: X-Editx-* headers from the task's outcome."""

from __future__ import annotations

from urllib.parse import quote

from editx_cli.report import Outcome


def headers(done: Outcome, load_seconds: float, batch: int, seconds: float) -> dict[str, str]:
    """The engine load it waited for, the most requests decoded with it, its time, its rate and
    loudness, its chunks, what QA found and what Whisper heard."""
    out = {"X-Editx-Load-Seconds": f"{load_seconds:.3f}", "X-Editx-Batch": str(batch),
               "X-Editx-Seconds": f"{seconds:.3f}",
               "X-Editx-Sample-Rate": str(done.sample_rate)}
    if done.loudness_after is not None:
        out["X-Editx-Loudness"] = f"{done.loudness_after:.2f}"
    if isinstance(done.info.get("chunks"), list):  # a long input or text, cut and joined as `batch` does
        out["X-Editx-Chunks"] = str(len(done.info["chunks"]))
    scores = done.info.get("qa")
    if isinstance(scores, dict):  # --qa: what the checks found (the kept attempt's, under --retry-below)
        out["X-Editx-QA-Passed"] = str(bool(scores.get("passed"))).lower()
        for key in ("wer", "cer", "similarity", "duration_ratio"):
            if scores.get(key) is not None:
                out[f"X-Editx-QA-{key.replace('_', '-').title()}"] = str(scores[key])
        if scores.get("problems"):
            out["X-Editx-QA-Problems"] = quote(scores["problems"])
        out["X-Editx-QA-Attempts"] = str(len(done.info.get("qa_attempts") or [scores]))
    if done.info.get("transcribed_by"):  # what the server heard, as the edit used it
        # headers are Latin-1: percent-encoded UTF-8
        out["X-Editx-Transcript"] = quote(done.info.get("transcript", ""))
    return out
