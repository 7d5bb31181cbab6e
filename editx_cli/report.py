"""The run report: report.json (run + tasks), report.csv (one row per task), a summary."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from editx_cli import files


@dataclass
class Outcome:
    """What happened to one task; one row of the report."""

    id: str
    task: str
    edit_type: str
    status: str = "pending"  # done, skipped, failed, cancelled; pending: not run (the run was interrupted)
    output: str = ""
    input_seconds: float | None = None
    output_seconds: float | None = None
    seed: int | None = None
    intensity: float | None = None
    iterations: int | None = None
    stages: dict[str, float] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    error: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    # New columns go last: the CSV's first columns are how an earlier report is recognised.
    edit_info: str = ""
    input: str = ""  # the audio the task read: a file, or "@id" of the task whose output it edits
    sample_rate: int | None = None  # of the output file
    loudness_before: float | None = None  # LUFS, the engine's output before any gain
    loudness_after: float | None = None  # LUFS, as written
    true_peak: float | None = None  # dBTP, as written
    # A failure that is the input's fault, not the engine's: what refused it. "input": not usable
    # audio; "engine": untranscribable or refused by the engine; "output": not deliverable as asked
    refused: Literal["", "input", "engine", "output"] = ""

    def looked_up(self, hit: bool) -> None:
        """Count one feature-cache lookup."""
        self.cache_hits += hit
        self.cache_misses += not hit

    def add(self, stage: str, seconds: float) -> None:
        """Time spent in a stage, added to what it took before (another pass, chunk or attempt)."""
        self.stages[stage] = round(self.stages.get(stage, 0.0) + seconds, 4)

    def absorb(self, stages: dict[str, float], hits: int, misses: int, info: dict | None = None) -> None:
        """An engine pass's (or a chunk's) times, cache lookups and facts, added to the task's."""
        for stage, seconds in stages.items():
            self.add(stage, seconds)
        self.cache_hits += hits
        self.cache_misses += misses
        self.info.update(info or {})

    def refuse(self, by: Literal["input", "engine", "output"], error: str = "") -> None:
        """The task failed on its input: `by` says what refused it (see `refused`)."""
        self.refused = by
        self.error = error or self.error

    def settle(self, status: str, error: str = "") -> None:
        """The task's end: done, failed, cancelled, or skipped (done by an earlier run)."""
        self.status, self.error = status, error

    def delivered(self, rate: int, seconds: float, measures: dict[str, float]) -> None:
        """What the output became: its length, rate and loudness as delivered."""
        self.output_seconds, self.sample_rate = round(seconds, 3), rate
        self.loudness_before, self.loudness_after = measures.get("loudness_before"), measures.get("loudness_after")
        self.true_peak = measures["true_peak"]
        if "loudness_target" in measures:
            self.info["loudness_target"] = measures["loudness_target"]


PACKAGES = ("editx", "click", "numpy", "pandas", "soundfile", "soxr", "diskcache", "torch")


def package_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    out.update(extra or {})
    return out


def build(
    outcomes: list[Outcome],
    *,
    wall_seconds: float,
    load_seconds: float,
    engine: str,
    device: str,
    cache_dir: str | None,
    versions: dict[str, str],
    started_at: float,
    engine_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "cancelled", "pending")}
    done = [o for o in outcomes if o.status == "done"]
    ran = [o for o in outcomes if o.status != "skipped"]  # the run's own lookups, not a skipped task's making
    hits = sum(o.cache_hits for o in ran)
    misses = sum(o.cache_misses for o in ran)
    audio_out = sum(o.output_seconds or 0.0 for o in done)
    processing = sum(sum(o.stages.values()) for o in done)
    stage_totals: dict[str, float] = {}
    for o in done:
        for k, v in o.stages.items():
            stage_totals[k] = round(stage_totals.get(k, 0.0) + v, 4)
    run = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
        "engine": engine,
        "engine_info": engine_info or {},
        "device": device,
        "tasks": len(outcomes),
        **counts,
        "wall_seconds": round(wall_seconds, 3),
        "engine_load_seconds": round(load_seconds, 3),
        "tasks_per_hour": round(len(done) / wall_seconds * 3600, 1) if wall_seconds > 0 and done else 0.0,
        "output_audio_seconds": round(audio_out, 3),
        # processing seconds per second of audio produced; below 1 is faster than real time
        "real_time_factor": round(processing / audio_out, 4) if audio_out else None,
        "stage_seconds": stage_totals,
        "cache": {
            "dir": cache_dir,
            "hits": hits,
            "misses": misses,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        },
        "versions": versions,
    }
    checked = [o.info for o in outcomes if o.status in ("done", "skipped") and isinstance(o.info.get("qa"), dict)]
    if checked:
        run["qa"] = {"checked": len(checked), "passed": sum(i["qa"].get("passed") is True for i in checked),
                     "retries": sum(max(0, len(i.get("qa_attempts") or [None]) - 1) for i in checked)}
    return {"run": run, "tasks": [asdict(o) for o in outcomes]}


def write(report: dict[str, Any], json_path: Path) -> Path:
    """Write report.json and its CSV twin (same name, .csv); return the JSON path."""
    import pandas as pd

    json_path.parent.mkdir(parents=True, exist_ok=True)
    files.replace(json_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    fields = [f.name for f in dataclasses.fields(Outcome) if f.name not in ("stages", "info")]
    found = {k for t in report["tasks"] for k in t["stages"]}
    stages = [*STAGES, *sorted(found - set(STAGES))]
    rows = []
    for t in report["tasks"]:
        row = {k: t.get(k) for k in fields}
        row.update({f"{k}_s": t["stages"].get(k) for k in stages})
        row["info"] = json.dumps(t["info"], ensure_ascii=False) if t["info"] else ""
        rows.append(row)
    columns = [*fields, *(f"{k}_s" for k in stages), "info"]
    csv_path = json_path.with_suffix(".csv")
    files.replace(csv_path, pd.DataFrame(rows, columns=columns).to_csv(index=False))
    return json_path


# The CSV's columns, the same in every report: the Outcome's fields, then a `<stage>_s` column
# for each stage any engine times, in the pipeline's order (empty where a task had none).
STAGES = ("split", "read", "transcribe", "features", "tokenize", "generate", "process", "vocode", "join", "write",
          "deliver", "qa")


CSV_HEADER = "id,task,edit_type,status,"


def is_report(path: Path) -> bool:
    """Whether an existing file is an editx report (JSON or its CSV twin), which a run may
    replace; any other file at a report's path is someone's data."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, "rb") as f:
                return f.read(len(CSV_HEADER)) == CSV_HEADER.encode()
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("run"), dict) and isinstance(data.get("tasks"), list)


def summary(report: dict[str, Any]) -> str:
    r = report["run"]
    cache = r["cache"]
    lines = [
        f"editx: {r['tasks']} task{'' if r['tasks'] == 1 else 's'} on {r['engine']} ({r['device']}): "
        f"{r['done']} done, {r['skipped']} skipped, {r['failed']} failed"
        + (f", {r['cancelled']} cancelled" if r["cancelled"] else "")
        + (f", {r['pending']} pending (interrupted; a rerun goes on)" if r.get("pending") else ""),
        f"  wall {r['wall_seconds']:.2f} s (engine load {r['engine_load_seconds']:.2f} s), "
        f"{r['tasks_per_hour']:.0f} tasks/h, real-time factor "
        + (f"{r['real_time_factor']:.3f}" if r["real_time_factor"] is not None else "n/a"),
        "  cache: " + (
            f"{cache['hits']} hits, {cache['misses']} misses ({cache['hit_rate']:.0%})"
            if cache["hit_rate"] is not None else "not used"
        ),
    ]
    if r.get("qa"):
        qa = r["qa"]
        lines.append(f"  qa: {qa['checked']} checked, {qa['passed']} passed, {qa['checked'] - qa['passed']} "
                     f"below thresholds, {qa['retries']} retries")
    for t in report["tasks"]:
        if t["status"] in ("failed", "cancelled"):
            lines.append(f"  {t['status']} {t['id']}: {t['error']}")
        elif (t.get("info") or {}).get("qa", {}).get("passed") is False:
            lines.append(f"  low quality {t['id']}: {t['info']['qa'].get('problems')}")
    return "\n".join(lines)
