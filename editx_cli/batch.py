"""Running tasks through an engine: planning, resume, atomic outputs, the report.

Resume rule: a task is done when its output exists, its state record (in a
`.editx/` folder beside the output) carries the same task fingerprint, and the
output's content hash matches the record. The fingerprint covers the engine,
the task's parameters and the content of its input audio, so a changed input
or parameter redoes the task, and a run killed at any moment resumes cleanly:
outputs are committed by rename only after their record is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editx_cli import audio
from editx_cli.engine import Engine, Request
from editx_cli.manifest import InvalidInput, Problem, order
from editx_cli.report import Outcome
from editx_cli.tasks import Task

log = logging.getLogger("editx")
STATE_DIR = ".editx"


@dataclass
class PlannedTask:
    task: Task
    fingerprint: str
    source: Path  # the audio to read: prompt/input audio, or the upstream task's output
    skip: bool  # already done by an earlier run with the same fingerprint


@dataclass
class RunOptions:
    overwrite: bool = False
    fail_fast: bool = False
    seed: int = 0
    progress: bool = True


def plan(tasks: list[Task], engine_fingerprint: str, overwrite: bool = False) -> list[PlannedTask]:
    """Order tasks, fingerprint them, decide which are already done.

    Raises InvalidInput when an output exists that no earlier run of this task
    wrote, unless `overwrite`: a user's file is never replaced silently.
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
        ours = record is not None and t.output.exists() and record.get("sha256") == _digest_or_none(t.output)
        skip = ours and record.get("fingerprint") == fp
        if t.output.exists() and not ours and not overwrite:
            problems.append(Problem(t.source, t.row, "output",
                                    f"{t.output} exists and was not written by this task (use --overwrite)"))
        source = src if src is not None else outputs[t.input_task]
        planned.append(PlannedTask(t, fp, source, skip))
    if problems:
        raise InvalidInput(problems)
    return planned


def _digest_or_none(path: Path) -> str | None:
    try:
        return audio.file_digest(path)
    except OSError:
        return None


def state_path(output: Path) -> Path:
    return output.parent / STATE_DIR / (output.name + ".json")


def read_state(output: Path) -> dict | None:
    try:
        return json.loads(state_path(output).read_text())
    except (OSError, ValueError):
        return None


def commit(tmp: str, output: Path, fingerprint: str, task_id: str) -> None:
    """Record, then rename: after a crash either the record or the file is stale,
    and a stale record never matches the file's hash."""
    record = {"task": task_id, "fingerprint": fingerprint, "sha256": audio.file_digest(tmp),
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = state_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + f".{os.getpid()}.part")
    part.write_text(json.dumps(record))
    os.replace(part, path)
    os.replace(tmp, output)


def run(
    planned: list[PlannedTask],
    engine: Engine,
    options: RunOptions,
    on_loaded: Callable[[float], None] | None = None,
) -> tuple[list[Outcome], float]:
    """Run every task not already done; return the outcomes and the engine load time.

    The engine loads only if some task needs it.
    """
    outcomes = {p.task.id: _outcome(p.task) for p in planned}
    todo = [p for p in planned if not p.skip]
    for p in planned:
        if p.skip:
            o = outcomes[p.task.id]
            o.status = "skipped"
            o.output_seconds = _seconds(p.task.output)
    load_seconds = 0.0
    if todo:
        t0 = time.perf_counter()
        try:
            engine.load()
        except Exception as e:  # a broken install or checkpoint: nothing can run
            log.debug("engine load failed", exc_info=True)
            raise InvalidInput([Problem(f"--engine {engine.name}", None, None,
                                        f"the engine failed to load: {_one_line(e)}")]) from None
        load_seconds = time.perf_counter() - t0
        log.info("engine %s loaded on %s in %.2f s", engine.name, engine.device, load_seconds)
    if on_loaded:
        on_loaded(load_seconds)

    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="task", file=sys.stderr, disable=not options.progress, dynamic_ncols=True)
    failed_ids: set[str] = set()
    stop = False
    for p in todo:
        o = outcomes[p.task.id]
        if stop:
            o.status, o.error = "cancelled", "not run: an earlier task failed and --fail-fast is set"
            continue
        bar.set_postfix_str(p.task.id, refresh=False)
        if p.task.input_task in failed_ids:
            o.status, o.error = "failed", f"input task {p.task.input_task!r} failed"
        else:
            _run_one(p, engine, o)
        if o.status == "failed":
            failed_ids.add(p.task.id)
            log.error("%s: task %s failed: %s", p.task.where, p.task.id, o.error)
            stop = options.fail_fast
        bar.update(1)
    bar.close()
    return [outcomes[p.task.id] for p in planned], load_seconds


def _outcome(t: Task) -> Outcome:
    return Outcome(id=t.id, task=t.task, edit_type=t.edit_type, output=str(t.output),
                   seed=t.seed, intensity=t.intensity,
                   iterations=t.iterations)


def _seconds(path: Path) -> float | None:
    try:
        return round(audio.probe(path).seconds, 3)
    except audio.AudioError:
        return None


def _run_one(p: PlannedTask, engine: Engine, o: Outcome) -> None:
    t = p.task
    cache = engine.cache
    hits0, misses0 = cache.hits, cache.misses
    stages: dict[str, float] = {}

    def add(stage: str, seconds: float) -> None:
        stages[stage] = stages.get(stage, 0.0) + seconds

    try:
        t0 = time.perf_counter()
        x, sr = audio.load(p.source)
        add("read", time.perf_counter() - t0)
        o.input_seconds = round(len(x) / sr, 3)
        audio_text = t.prompt_text if t.task == "clone" else t.audio_text
        path = str(p.source)
        for _ in range(t.iterations):
            request = Request(
                kind=t.task, audio=x, sr=sr, audio_text=audio_text, text=t.text,
                edit_type=t.edit_type, edit_info=t.edit_info, intensity=t.intensity,
                seed=o.seed, audio_digest=audio.samples_digest(x, sr), path=path,
            )
            result = engine.run(request)
            for stage, seconds in result.stages.items():
                add(stage, seconds)
            o.info.update(result.info)
            x, sr, path = result.audio, result.sr, ""
            # The next pass edits this output; its transcript is what was just spoken.
            if t.edit_type == "paralinguistic":
                audio_text = t.text
        if x.size == 0:
            raise RuntimeError("the engine produced no audio")
        t0 = time.perf_counter()
        for stale in t.output.parent.glob(f".{t.output.name}.*.part"):  # left by a killed run
            stale.unlink(missing_ok=True)
        tmp = audio.write_atomic(t.output, x, sr)
        try:
            commit(tmp, t.output, p.fingerprint, t.id)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        add("write", time.perf_counter() - t0)
        o.output_seconds = round(len(x) / sr, 3)
        o.status = "done"
    except Exception as e:  # one task's failure, whatever its kind, must not stop the others
        log.debug("task %s failed", t.id, exc_info=True)
        o.status, o.error = "failed", _one_line(e)
    finally:
        o.stages = {k: round(v, 4) for k, v in stages.items()}
        o.cache_hits = cache.hits - hits0
        o.cache_misses = cache.misses - misses0


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__



@dataclass
class RunConfig:
    """Everything a run needs besides its tasks."""

    engine: str = "dsp"
    engine_config: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    use_cache: bool = True
    cache_size: int | None = None
    report: Path | None = None
    dry_run: bool = False
    options: RunOptions = field(default_factory=RunOptions)


def execute(tasks: list[Task], config: RunConfig) -> tuple[dict[str, Any] | None, list[PlannedTask]]:
    """Check the engine's options, plan, run, write the report.

    Returns (report, plan); the report is None for a dry run. Raises InvalidInput
    before anything runs when the options or outputs are wrong.
    """
    from editx_cli import engine as engines
    from editx_cli import report as reports
    from editx_cli.cache import DEFAULT_SIZE_LIMIT, FeatureCache, NullCache

    started = time.time()
    t_wall = time.perf_counter()
    engine_cls = engines.get(config.engine)
    problems = engine_cls.check_config(config.engine_config)
    if problems:
        raise InvalidInput([Problem(f"--engine {config.engine}", None, None, p) for p in problems])
    if config.use_cache:
        cache = FeatureCache(config.cache_dir, config.cache_size or DEFAULT_SIZE_LIMIT)
    else:
        cache = NullCache()
    try:
        for t in tasks:
            if t.seed is None:
                t.seed = config.options.seed
        engine = engine_cls(config.engine_config, cache)
        planned = plan(tasks, engine.fingerprint(), config.options.overwrite)
        if config.dry_run:
            return None, planned
        outcomes, load_seconds = run(planned, engine, config.options)
        report = reports.build(
            outcomes,
            wall_seconds=time.perf_counter() - t_wall,
            load_seconds=load_seconds,
            engine=engine.name,
            device=engine.device,
            cache_dir=str(cache.directory) if cache.directory else None,
            versions=reports.package_versions(engine.versions()),
            started_at=started,
            engine_info=engine.run_info(),
        )
        if config.report is not None:
            reports.write(report, config.report)
        engine.close()
        return report, planned
    finally:
        cache.close()


def exit_code(report: dict[str, Any]) -> int:
    run = report["run"]
    return 1 if run["failed"] or run["cancelled"] else 0
