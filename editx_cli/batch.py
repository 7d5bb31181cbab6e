"""A whole run: check the engine's options and the report path, plan, run in process or on
workers, write the report. Planning and resume records live in `resume.py`, the
in-process loop in `loop.py`, workers and Ray in `parallel.py`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editx_cli import review
from editx_cli.errors import InvalidInput, Problem, RunFailed
from editx_cli.loop import RunOptions, check_transcription, duration_of, progress_bar, run
from editx_cli.report import Outcome, is_report
from editx_cli.resume import PlannedTask, plan, restore, unwritable
from editx_cli.schedule import outcome_of
from editx_cli.tasks import Task

log = logging.getLogger("editx")
__all__ = ["PlannedTask", "RunConfig", "RunOptions", "execute", "exit_code", "plan", "run"]


@dataclass
class RunConfig:
    """Everything a run needs besides its tasks."""

    engine: str = "dsp"
    engine_config: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    use_cache: bool = True
    cache_size: int | None = None
    report: Path | None = None
    review: bool = False  # write review.html beside the report
    dry_run: bool = False
    options: RunOptions = field(default_factory=RunOptions)
    workers: int = 1  # worker processes on the CPU
    gpus: list[int] | None = None  # one worker process per GPU
    ray: str | None = None  # run on Ray: "local" or a cluster address
    log_level: int = logging.WARNING


def execute(tasks: list[Task], config: RunConfig) -> tuple[dict[str, Any] | None, list[PlannedTask]]:
    """Check the engine's options, plan, run, write the report.

    Returns (report, plan); the report is None for a dry run. Raises InvalidInput
    before anything runs when the options or outputs are wrong.
    """
    from editx_cli import engine as engines
    from editx_cli import report as reports
    from editx_cli.cache import CacheError, open_cache

    started = time.time()
    t_wall = time.perf_counter()
    engine_cls = engines.get(config.engine)
    problems = engine_cls.check_config(config.engine_config)
    window, chunk = engine_cls.window_seconds, config.options.chunk_seconds
    if chunk and window and chunk > window:
        problems.append(f"--chunk-seconds {chunk:g}: longer than the {config.engine} engine's window of "
                        f"{window:g} s (it edits and speaks at most that at a time)")
    if problems:
        raise InvalidInput([Problem(f"--engine {config.engine}", None, None, p) for p in problems])
    cache = open_cache(config.cache_dir, config.cache_size, config.use_cache)
    try:
        engine = engines.build(config.engine, config.engine_config, cache)
        check_transcription(tasks, engine, config.options)
        planned = plan(tasks, engine.fingerprint() + config.options.retry_key(), config.options.overwrite,
                       config.options.force)
        if config.report is not None:
            _check_report(config.report, tasks)
            if config.review:
                review.check_target(review.target(config.report))
        if config.dry_run:
            return None, planned
        try:
            cache.open()
        except CacheError as e:
            raise InvalidInput([Problem("--cache-dir", None, None, str(e))]) from None
        dump = config.engine_config.get("dump_prompts")
        if dump:  # the engine (each worker's too) appends a line per row to this run's file
            Path(dump).write_text("")
        if config.ray is not None or config.gpus or config.workers > 1:
            outcomes, load_seconds, device, info = _run_parallel(planned, config, cache)
        else:
            outcomes, load_seconds = run(planned, engine, config.options)
            device, info = engine.device, engine.run_info()
        report = reports.build(
            outcomes,
            wall_seconds=time.perf_counter() - t_wall,
            load_seconds=load_seconds,
            engine=engine.name,
            device=device,
            cache_dir=str(cache.directory) if cache.directory else None,
            versions=reports.package_versions(engine.versions()),
            started_at=started,
            engine_info=info,
        )
        engine.close()
        if config.report is not None:
            try:
                reports.write(report, config.report)
            except OSError as e:
                raise RunFailed(f"--report: {config.report}: the report could not be written "
                                f"({e.strerror or e}); the outputs are in place and a rerun skips them") from None
            if config.review:
                try:
                    review.build(report, config.report)
                except OSError as e:
                    raise RunFailed(f"--review: {review.target(config.report)}: the page could not be written "
                                    f"({e.strerror or e}); `editx review` makes it from the report") from None
        return report, planned
    finally:
        cache.close()


def _check_report(report: Path, tasks: list[Task]) -> None:
    """The report and its CSV twin must never land on an input, an output or the manifest."""
    problems = []
    if report.suffix.lower() != ".json":
        problems.append(Problem("--report", None, None, f"{report}: must name a .json file (its CSV twin, "
                                                        "same name with .csv, is written beside it)"))
    ours = [report, report.with_suffix(".csv")]
    why = unwritable(report.parent)
    if why:
        problems.append(Problem("--report", None, None, why))

    real = {os.path.realpath(m): m for m in ours}
    same = {}  # (device, inode) of an existing report file: a hard link to it clashes too
    for m in ours:
        try:
            st = os.stat(m)
            same[(st.st_dev, st.st_ino)] = m
        except OSError:
            pass

    @functools.cache  # tasks share inputs and manifests: each path is looked at once
    def clash(path: Path | str | None) -> Path | None:
        if path is None:
            return None
        if (mine := real.get(os.path.realpath(path))) is not None:
            return mine
        try:
            st = os.stat(path)
        except OSError:
            return None
        return same.get((st.st_dev, st.st_ino))

    @functools.cache
    def manifest(source: str) -> Path | None:
        return Path(source) if source and Path(source).is_file() else None

    seen: set[str] = set()
    clashed: set[Path] = set()
    for t in tasks:
        for what, path in (("the manifest", manifest(t.source)),
                           ("the prompt audio", t.prompt_audio), ("the input audio", t.input_audio),
                           ("the output", t.output)):
            mine = clash(path)
            key = f"{mine}:{path}"
            if mine is not None and key not in seen:
                seen.add(key)
                clashed.add(mine)
                row = "" if what == "the manifest" or t.row is None else f" of row {t.row}"
                problems.append(Problem("--report", None, None, f"{mine} would overwrite {what}{row} ({path})"))
    for mine in ours:  # any other file there is someone's data, unless an earlier report
        if mine in clashed:
            continue
        if mine.is_dir():
            problems.append(Problem("--report", None, None, f"{mine} is a folder"))
        elif mine.exists() and not is_report(mine):
            problems.append(Problem("--report", None, None, f"{mine} exists and is not an editx report: "
                                                            "choose another --report, or move it"))
    if problems:
        raise InvalidInput(problems)


def _run_parallel(planned: list[PlannedTask], config: RunConfig, cache) -> tuple[list[Outcome], float, str, dict]:
    from editx_cli import parallel

    todo = sum(not p.skip for p in planned)
    workers = len(config.gpus) if config.gpus else config.workers
    log.info("starting %s for %d task%s…", "Ray actors" if config.ray is not None else f"{workers} workers", todo,
             "" if todo == 1 else "s")
    bar = progress_bar(todo, config.options.progress)

    def finished(o: Outcome) -> None:
        if o.status == "failed":
            log.error("task %s failed: %s", o.id, o.error)
        bar.set_postfix_str(f"{o.status} {o.id}", refresh=False)
        bar.update(1)

    cpu_threads = None if config.gpus else max(1, (os.cpu_count() or 1) // config.workers)
    spec = parallel.WorkerSpec(config.engine, {**config.engine_config, "workers": config.workers},
                               str(cache.directory) if cache.directory else None, config.use_cache,
                               config.cache_size, config.options, log_level=config.log_level,
                               threads=cpu_threads if config.ray is None else None)
    if config.ray is not None:
        ran, workers = parallel.run_ray(planned, spec, None if config.ray == "local" else config.ray, finished)
    else:
        gpus = config.gpus or [None] * config.workers
        specs = [parallel.WorkerSpec(**{**spec.__dict__, "gpu": g}) for g in gpus]
        ran, workers = parallel.run_processes(planned, specs, finished)
    bar.close()
    by_id = {o.id: o for o in ran}
    outcomes = []
    for p in planned:
        o = by_id.get(p.task.id) or outcome_of(p.task)
        if p.skip:
            o.settle("skipped")
            o.output_seconds = duration_of(p.task.output)
            restore(o, p.task.output)
        outcomes.append(o)
    devices = sorted({w.device for w in workers if w.device})
    info = {"workers": [{"name": w.name, "device": w.device, "load_seconds": round(w.load_seconds, 3),
                         "error": w.error, **w.run_info} for w in workers]}
    return outcomes, max((w.load_seconds for w in workers), default=0.0), ", ".join(devices), info


def exit_code(report: dict[str, Any]) -> int:
    run = report["run"]
    if run.get("pending"):  # interrupted: the report covers what finished, a rerun resumes
        return 130
    return 1 if run["failed"] or run["cancelled"] else 0
