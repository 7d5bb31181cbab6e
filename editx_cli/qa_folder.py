"""`editx qa OUT_DIR`: the quality checks of `--qa` on outputs an earlier run wrote, nothing
regenerated.

Each output's record (`.editx/NAME.json` beside it) says what it is checked against: the
reference audio and the text it should say. An output changed since its run wrote it, or
written before records carried that, is named and left out. The scores go to `qa.json`
(and its CSV twin) in OUT_DIR and, when OUT_DIR holds the run's report, into the report's
task rows, so that `editx review` shows them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from editx_cli import audio, files
from editx_cli.qa import Check, Checker
from editx_cli.report import is_report
from editx_cli.resume import STATE_DIR, read_state

BATCH = 16  # outputs checked together (one Whisper batch)


def outputs(folder: Path) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(output, its record's checks) for every output in `folder` that can be checked, and a
    line for each one that cannot."""
    found, skipped = [], []
    for here, dirs, _ in os.walk(folder):
        dirs.sort()
        if STATE_DIR not in dirs:
            continue
        dirs.remove(STATE_DIR)  # records, not outputs
        for name in sorted(os.listdir(Path(here) / STATE_DIR)):
            if not name.endswith(".json"):
                continue
            output = Path(here) / name[: -len(".json")]
            record = read_state(output)
            if record is None or not output.is_file():
                continue
            checks = record.get("checks")
            if not (isinstance(checks, dict) and isinstance(checks.get("reference"), str)
                    and isinstance(checks.get("text"), str) and isinstance(checks.get("kind"), str)
                    and isinstance(checks.get("input_seconds"), (int, float))):
                skipped.append(f"{output}: its record says nothing to check it against (written before "
                               "editx kept that; a rerun with --overwrite writes it)")
                continue
            if audio.file_digest(output) != record.get("sha256"):
                skipped.append(f"{output}: changed since editx wrote it; not checked")
                continue
            found.append((output, {**checks, "task": str(record.get("task", ""))}))
    return found, skipped


def engine_of(report: Path) -> str | None:
    """The engine an editx report in an output folder names, or None."""
    if not (report.is_file() and is_report(report)):
        return None
    try:
        engine = json.loads(report.read_text(encoding="utf-8")).get("run", {}).get("engine")
    except (OSError, ValueError, AttributeError):
        return None
    return engine if isinstance(engine, str) else None


def check(found: list[tuple[Path, dict]], checker: Checker) -> list[dict[str, Any]]:
    """One row per output: id, output, and its scores (or the error that stopped its check)."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(found), BATCH):
        group, checks = [], []
        for output, spec in found[start:start + BATCH]:
            row: dict[str, Any] = {"id": spec["task"], "output": str(output)}
            rows.append(row)
            try:
                y, sr = audio.load(output)
                ref, ref_sr, ref_digest = None, 0, ""
                if os.path.isfile(spec["reference"]):
                    ref, ref_sr = audio.load(spec["reference"])
                    ref_digest = audio.samples_digest(ref, ref_sr)
                else:
                    row["note"] = f"reference {spec['reference']} is gone: no similarity"
            except audio.AudioError as e:
                row["error"] = str(e)
                continue
            group.append(row)
            checks.append(Check(y, sr, audio.samples_digest(y, sr), ref, ref_sr, ref_digest, spec["text"],
                                spec["kind"], float(spec["input_seconds"])))
        if checks:
            scores, _ = checker(checks)
            for row, s in zip(group, scores, strict=True):
                row["qa"] = s
    return rows


def write(rows: list[dict[str, Any]], folder: Path, thresholds: str, skipped: list[str]) -> Path:
    """qa.json and qa.csv in `folder`; the scores into folder/report.json's rows when it is ours."""
    import pandas as pd

    scored = [r for r in rows if "qa" in r]
    summary = {"checked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "thresholds": thresholds,
               "checked": len(scored), "passed": sum(r["qa"]["passed"] for r in scored),
               "errors": sum("error" in r for r in rows), "not_checked": skipped}
    path = folder / "qa.json"
    files.replace(path, json.dumps({"qa": summary, "outputs": rows}, indent=2, ensure_ascii=False) + "\n")
    flat = [{"id": r["id"], "output": r["output"], **r.get("qa", {}), "error": r.get("error", ""),
             "note": r.get("note", "")} for r in rows]
    files.replace(path.with_suffix(".csv"), pd.DataFrame(flat).to_csv(index=False))
    return path


def into_report(rows: list[dict[str, Any]], report: Path) -> dict | None:
    """Put the scores into an editx report's task rows (JSON and CSV); the report, or None when
    `report` is not one."""
    from editx_cli import report as reports

    if not is_report(report) or report.suffix.lower() != ".json":
        return None
    data = json.loads(report.read_text(encoding="utf-8"))
    by_output = {os.path.realpath(r["output"]): r["qa"] for r in rows if "qa" in r}
    for t in data["tasks"]:
        qa = by_output.get(os.path.realpath(t.get("output") or ""))
        if qa is not None and isinstance(t.get("info"), dict):
            t["info"]["qa"] = qa
    reports.write(data, report)
    return data
