"""Planning and resume records: which tasks an earlier run already did, and whose outputs are whose.

A task is done when its output exists, its state record (in a `.editx/` folder
beside the output) carries the same task fingerprint, and the output's content
hash matches the record. The fingerprint covers the engine, the task's
parameters and the content of its input audio, so a changed input or parameter
redoes the task, and a run killed at any moment resumes cleanly: outputs are
committed by rename only after their record is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from editx_cli import audio, files
from editx_cli.errors import InvalidInput, Problem
from editx_cli.manifest import order
from editx_cli.report import Outcome
from editx_cli.tasks import Task

STATE_DIR = ".editx"


@dataclass
class PlannedTask:
    task: Task
    fingerprint: str
    source: Path  # the audio to read: prompt/input audio, or the upstream task's output
    skip: bool  # already done by an earlier run with the same fingerprint


def plan(tasks: list[Task], engine_fingerprint: str, overwrite: bool = False,
         force: bool = False) -> list[PlannedTask]:
    """Order tasks, fingerprint them, decide which are already done.

    Raises InvalidInput when an output exists that no earlier run of this task
    wrote, unless `overwrite`: a user's file is never replaced silently; and when
    another manifest wrote it into the same folder, unless `force`.
    """
    planned: list[PlannedTask] = []
    fingerprints: dict[str, str] = {}
    outputs = {t.id: t.output for t in tasks}
    problems: list[Problem] = []
    digests: dict[Path, str] = {}
    for t in order(tasks):
        src = t.prompt_audio or t.input_audio
        if src is not None:
            if src not in digests:
                digests[src] = audio.file_digest(src)
            upstream = digests[src]
        else:
            upstream = fingerprints[t.input_task]
        payload = json.dumps(
            {"engine": engine_fingerprint, "params": t.params(), "input": upstream}, sort_keys=True
        )
        fp = hashlib.sha256(payload.encode()).hexdigest()
        fingerprints[t.id] = fp
        record = read_state(t.output)
        current = _digest_or_none(t.output) if record is not None and t.output.exists() else None
        # ours: the file is what a run of this task wrote, or what its record says the last commit
        # replaced (a crash between recording and renaming leaves the earlier file in place)
        ours = current is not None and current in {record.get("sha256"), record.get("replaces")}
        skip = ours and current == record.get("sha256") and record.get("fingerprint") == fp
        owner, mine = record.get("manifest") if record else None, manifest_of(t)
        if ours and owner and mine and owner != mine and not force:
            problems.append(Problem(t.source, t.row, _output_field(t),
                                    f"{t.output.name} belongs to another manifest, {owner} (its task "
                                    f"{record.get('task')!r}); use another --out-dir, or --force to take it over"))
        if t.output.exists() and not ours and not overwrite:
            problems.append(Problem(t.source, t.row, _output_field(t),
                                    f"{t.output} exists and was not written by this task (use --overwrite)"))
        source = src if src is not None else outputs[t.input_task]
        planned.append(PlannedTask(t, fp, source, skip))
    for folder, t in {p.task.output.parent: p.task for p in reversed(planned)}.items():
        why = unwritable(folder)
        if why and manifest_of(t) and not t.named_output:  # the folder the command line chose, not the row
            problems.append(Problem("--out-dir", None, None, why))
        elif why:
            problems.append(Problem(t.source, t.row, _output_field(t), why))
    if problems:
        raise InvalidInput(problems)
    return planned


def manifest_of(t: Task) -> str | None:
    """The manifest a task comes from, as its outputs' records name it (None: the command line)."""
    return os.path.abspath(t.source) if t.source and t.source != "command line" else None


def _output_field(t: Task) -> str:
    return "output" if manifest_of(t) else "--output"  # the command line names its option


def unwritable(folder: Path) -> str:
    """Why outputs cannot be written in `folder` (made if missing), or ""."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so the folder {folder} cannot be made"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing}"
    return ""


def _digest_or_none(path: Path) -> str | None:
    try:
        return audio.file_digest(path)
    except OSError:
        return None


def state_path(output: Path) -> Path:
    return output.parent / STATE_DIR / (output.name + ".json")


def read_state(output: Path) -> dict | None:
    try:
        record = json.loads(state_path(output).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# What a skipped task's row keeps from the run that made its output: a rerun's report and review
# page still show how long it took, what the cache did and how loud it came out.
# what a skipped task's row shows of its making (not its cache lookups: a report counts its run's own)
KEPT = {"input_seconds": (int, float), "stages": dict, "info": dict,
        "sample_rate": int, "loudness_before": (int, float), "loudness_after": (int, float), "true_peak": (int, float)}


def restore(o: Outcome, output: Path) -> None:
    """Fill a skipped task's outcome from its output's record (values of the wrong type are
    left out: a record is data on disk, not trusted)."""
    kept = (read_state(output) or {}).get("outcome")
    if isinstance(kept, dict):
        for k, kind in KEPT.items():
            v = kept.get(k)
            if isinstance(v, kind) and not isinstance(v, bool):
                setattr(o, k, v)


def commit(tmp: str, output: Path, fingerprint: str, task_id: str, manifest: str | None = None,
           outcome: Outcome | None = None, checks: dict | None = None) -> None:
    """Record, then rename: after a crash either the record or the file is stale,
    and a stale record never matches the file's hash."""
    earlier = read_state(output)
    replaces = None
    if earlier is not None and output.exists():  # the file this commit replaces, if a run of ours wrote it
        current = _digest_or_none(output)
        if current in {earlier.get("sha256"), earlier.get("replaces")}:
            replaces = current
    record = {"task": task_id, "manifest": manifest, "fingerprint": fingerprint, "sha256": audio.file_digest(tmp),
              "replaces": replaces,
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if outcome is not None:
        record["outcome"] = {k: getattr(outcome, k) for k in KEPT}
    if checks is not None:  # what `editx qa` checks the output against later
        record["checks"] = checks
    path = state_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.replace(path, json.dumps(record))
    os.replace(tmp, output)
