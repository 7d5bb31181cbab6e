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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editx_cli import audio
from editx_cli.engine import Engine, Request, Result
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
    force: bool = False  # take over outputs that another manifest wrote into the same folder
    fail_fast: bool = False
    seed: int = 0
    progress: bool = True
    batch_size: int = 8  # tasks decoded together by engines that batch
    transcribe: bool = False  # fill empty audio_text with Whisper where the edit uses it
    whisper_model: str = "large-v3"
    allow_download: bool = False


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
        owner, mine = record.get("manifest") if record else None, _owner(t)
        if ours and owner and mine and owner != mine and not force:
            problems.append(Problem(t.source, t.row, "output",
                                    f"{t.output.name} belongs to another manifest, {owner} (its task "
                                    f"{record.get('task')!r}); use another --out-dir, or --force to take it over"))
        if t.output.exists() and not ours and not overwrite:
            problems.append(Problem(t.source, t.row, "output",
                                    f"{t.output} exists and was not written by this task (use --overwrite)"))
        source = src if src is not None else outputs[t.input_task]
        planned.append(PlannedTask(t, fp, source, skip))
    for folder, t in {p.task.output.parent: p.task for p in reversed(planned)}.items():
        why = _unwritable(folder)
        if why:
            problems.append(Problem(t.source, t.row, "output", why))
    if problems:
        raise InvalidInput(problems)
    return planned


def _owner(t: Task) -> str | None:
    """The manifest a task comes from, as its outputs' records name it (None: the command line)."""
    return os.path.abspath(t.source) if t.source and t.source != "command line" else None


def _unwritable(folder: Path) -> str:
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


def commit(tmp: str, output: Path, fingerprint: str, task_id: str, manifest: str | None = None) -> None:
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
        except KeyboardInterrupt:
            log.warning("interrupted while loading the engine: no task ran")
            return [outcomes[p.task.id] for p in planned], time.perf_counter() - t0
        except Exception as e:  # a broken install or checkpoint: nothing can run
            log.debug("engine load failed", exc_info=True)
            raise InvalidInput([Problem(f"--engine {engine.name}", None, None,
                                        f"the engine failed to load: {_one_line(e)}")]) from None
        load_seconds = time.perf_counter() - t0
        log.debug("engine %s ready on %s in %.2f s", engine.name, engine.device, load_seconds)

    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="task", file=sys.stderr, disable=not options.progress, dynamic_ncols=True)
    status = {p.task.id: ("done" if p.skip else "pending") for p in planned}
    pending = list(todo)
    lengths: dict[Path, float] = {}  # input seconds, probed once, for grouping by length
    transcriber = _transcriber(engine, options)
    active: list[_Work] = []

    def seconds_of(p: PlannedTask) -> float:
        if p.source not in lengths:
            lengths[p.source] = _seconds(p.source) or 0.0
        return lengths[p.source]

    def finish(w: _Work | PlannedTask, state: str, error: str = "") -> None:
        p = w.p if isinstance(w, _Work) else w
        o = outcomes[p.task.id]
        o.status, o.error = state, error
        status[p.task.id] = state
        if state == "failed":
            log.error("%s: task %s failed: %s", p.task.where, p.task.id, error)
        bar.update(1)

    try:
        while pending or active:
            if options.fail_fast and "failed" in status.values():
                for w in [*active, *pending]:
                    finish(w, "cancelled", "not run: an earlier task failed and --fail-fast is set")
                break
            for p in list(pending):  # a chain whose input task failed cannot run
                upstream = status.get(p.task.input_task or "")
                if upstream in ("failed", "cancelled"):
                    pending.remove(p)
                    finish(p, "failed", f"input task {p.task.input_task!r} failed")
            # An input task outside this run (a worker gets only ready tasks) is already done.
            ready = [p for p in pending if status.get(p.task.input_task or "", "done") == "done"]
            if not active and not ready:  # cannot happen with validated chains; never spin
                for p in pending:
                    finish(p, "failed", "its input task never ran")
                break
            # Fill the wave from work in progress first, then new tasks, shortest first so a
            # batch holds prompts of similar length (little padding). An engine with a queue of
            # its own gets several batches' worth at once.
            size = max(1, options.batch_size) * (engine.wave_factor if engine.batches else 1)
            room = size - min(len(active), size)
            starting = (sorted(ready, key=seconds_of) if size > 1 else ready)[:room]
            for p in starting:
                pending.remove(p)
                w = _start(p, outcomes[p.task.id], engine, transcriber)
                if w is None:
                    finish(p, "failed", outcomes[p.task.id].error)
                else:
                    active.append(w)
            wave = (sorted(active, key=lambda w: len(w.x) / w.sr) if size > 1 else active)[:size]
            if not wave:
                continue
            bar.set_postfix_str(",".join(w.p.task.id for w in wave)[:40], refresh=False)
            results = engine.run_batch([w.request() for w in wave])
            for w, result in zip(wave, results, strict=True):
                if isinstance(result, BaseException):
                    active.remove(w)
                    w.close()
                    finish(w, "failed", _one_line(result))
                    continue
                w.absorb(result)
                if w.passes == w.p.task.iterations:
                    active.remove(w)
                    error = w.commit()
                    finish(w, "failed" if error else "done", error)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what finished stays; the rest is pending
        for w in active:
            w.close()
        left = sum(1 for s in status.values() if s == "pending")
        log.warning("interrupted: %d task(s) not finished are reported as pending; a rerun goes on from here",
                    left)
    finally:
        bar.close()
    return [outcomes[p.task.id] for p in planned], load_seconds


def _outcome(t: Task) -> Outcome:
    return Outcome(id=t.id, task=t.task, edit_type=t.edit_type, output=str(t.output),
                   seed=t.seed, intensity=t.intensity, iterations=t.iterations)


def _seconds(path: Path) -> float | None:
    try:
        return round(audio.probe(path).seconds, 3)
    except audio.AudioError:
        return None


@dataclass
class _Work:
    """A task in progress: its current audio and how many passes it has had."""

    p: PlannedTask
    o: Outcome
    x: Any
    sr: int
    path: str
    audio_text: str
    digest: str  # samples_digest of the current audio
    passes: int = 0

    def request(self) -> Request:
        t = self.p.task
        return Request(kind=t.task, audio=self.x, sr=self.sr, audio_text=self.audio_text, text=t.text,
                       edit_type=t.edit_type, edit_info=t.edit_info, intensity=t.intensity, seed=self.o.seed,
                       audio_digest=self.digest, path=self.path, task_id=t.id)

    def absorb(self, result: Result) -> None:
        o = self.o
        for stage, seconds in result.stages.items():
            o.stages[stage] = round(o.stages.get(stage, 0.0) + seconds, 4)
        o.info.update(result.info)
        o.cache_hits += result.cache_hits
        o.cache_misses += result.cache_misses
        self.x, self.sr, self.path = result.audio, result.sr, ""
        self.passes += 1
        if self.passes < self.p.task.iterations:
            self.digest = audio.samples_digest(self.x, self.sr)
        # The next pass edits this output; its transcript is what was just spoken.
        if self.p.task.edit_type == "paralinguistic":
            self.audio_text = self.p.task.text

    def commit(self) -> str:
        """Write the output atomically; return an error message, or "" on success."""
        t, o = self.p.task, self.o
        try:
            if self.x.size == 0:
                raise RuntimeError("the engine produced no audio")
            t0 = time.perf_counter()
            # Temporary files of this output left by a killed run go; another live run's stay.
            audio.remove_stale_parts(t.output)
            tmp = audio.write_atomic(t.output, self.x, self.sr)
            try:
                commit(tmp, t.output, self.p.fingerprint, t.id, _owner(t))
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            o.stages["write"] = round(time.perf_counter() - t0, 4)
            o.output_seconds = round(len(self.x) / self.sr, 3)
            return ""
        except Exception as e:  # one task's failure must not stop the others
            log.debug("task %s failed", t.id, exc_info=True)
            return _one_line(e)
        finally:
            self.close()

    def close(self) -> None:
        self.x = None


def _start(p: PlannedTask, o: Outcome, engine: Engine, transcriber) -> _Work | None:
    """Read a task's input (and transcribe it when asked to); None if that fails."""
    t = p.task
    text = t.prompt_text if t.task == "clone" else t.audio_text
    try:
        t0 = time.perf_counter()
        x, sr = audio.load(p.source)
        digest = audio.samples_digest(x, sr)
        o.stages["read"] = round(time.perf_counter() - t0, 4)
        if transcriber and t.task == "edit" and not text.strip() and engine.wants_transcript(t.edit_type,
                                                                                              t.intensity):
            text, hit, seconds = transcriber(x, sr, digest)
            o.stages["transcribe"] = round(seconds, 4)
            o.cache_hits, o.cache_misses = o.cache_hits + hit, o.cache_misses + (not hit)
            o.info["transcript"] = text
    except Exception as e:
        o.error = _one_line(e)
        return None
    o.input_seconds = round(len(x) / sr, 3)
    return _Work(p, o, x, sr, str(p.source), text, digest)


def _check_transcription(tasks: list[Task], engine: Engine, options: RunOptions) -> None:
    """A Whisper model that cannot be opened is bad usage, found before anything runs."""
    needed = [t for t in tasks if t.task == "edit" and not t.audio_text.strip()
              and engine.wants_transcript(t.edit_type, t.intensity)]
    if not (options.transcribe and needed):
        return
    from editx_cli.transcribe import TranscriptionError, resolve

    try:
        resolve(options.whisper_model, options.allow_download)
    except TranscriptionError as e:
        raise InvalidInput([Problem("--whisper-model", None, None, str(e))]) from None


def _transcriber(engine: Engine, options: RunOptions):
    if not options.transcribe:
        return None
    from editx_cli.transcribe import Transcriber

    return Transcriber(options.whisper_model, engine.device, engine.cache, options.allow_download)


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
    from editx_cli.cache import DEFAULT_SIZE_LIMIT, CacheError, FeatureCache, NullCache

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
        _check_transcription(tasks, engine, config.options)
        planned = plan(tasks, engine.fingerprint(), config.options.overwrite, config.options.force)
        if config.report is not None:
            _check_report(config.report, tasks)
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
        if config.report is not None:
            reports.write(report, config.report)
        engine.close()
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

    def clash(path: Path | str | None) -> Path | None:
        if path is None:
            return None
        for mine in ours:
            if os.path.realpath(mine) == os.path.realpath(path):
                return mine
            try:
                if os.path.samefile(mine, path):  # a hard link
                    return mine
            except OSError:
                pass
        return None

    seen: set[str] = set()
    for t in tasks:
        for what, path in (("the manifest", Path(t.source) if t.source and Path(t.source).is_file() else None),
                           ("the prompt audio", t.prompt_audio), ("the input audio", t.input_audio),
                           ("the output", t.output)):
            mine = clash(path)
            key = f"{mine}:{path}"
            if mine is not None and key not in seen:
                seen.add(key)
                row = "" if what == "the manifest" or t.row is None else f" of row {t.row}"
                problems.append(Problem("--report", None, None, f"{mine} would overwrite {what}{row} ({path})"))
    if problems:
        raise InvalidInput(problems)


def _run_parallel(planned: list[PlannedTask], config: RunConfig, cache) -> tuple[list[Outcome], float, str, dict]:
    from tqdm import tqdm

    from editx_cli import parallel

    todo = sum(not p.skip for p in planned)
    bar = tqdm(total=todo, unit="task", file=sys.stderr, disable=not config.options.progress, dynamic_ncols=True)

    def finished(o: Outcome) -> None:
        if o.status == "failed":
            log.error("task %s failed: %s", o.id, o.error)
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
        o = by_id.get(p.task.id) or _outcome(p.task)
        if p.skip:
            o.status, o.output_seconds = "skipped", _seconds(p.task.output)
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
