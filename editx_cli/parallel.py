"""Running a plan on several engines at once: worker processes (one per GPU, or N on the
CPU) or Ray actors (one per GPU of a cluster).

Each worker loads the engine once and asks for work; the dispatcher hands out
small groups of ready tasks (up to the batch size), so a slow task holds up
only its own worker, and a chained task is handed out only after the task it
reads is done. A worker that dies fails only the tasks it held; the run goes on
with the others. Workers run tasks through `loop.run`, so outputs, resume
records and per-task figures are exactly those of a single-process run.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from editx_cli.errors import InvalidInput, Problem
from editx_cli.loop import RunOptions, run
from editx_cli.report import Outcome
from editx_cli.resume import PlannedTask
from editx_cli.schedule import Scheduler, group_size

log = logging.getLogger("editx")


@dataclass
class WorkerSpec:
    """What a worker needs to build its engine; picklable."""

    engine: str
    engine_config: dict[str, Any]
    cache_dir: str | None
    use_cache: bool
    cache_size: int | None
    options: RunOptions
    gpu: int | None = None
    log_level: int = logging.WARNING
    threads: int | None = None  # CPU threads for this worker; None: the library defaults


@dataclass
class WorkerInfo:
    name: str
    device: str = ""
    load_seconds: float = 0.0
    run_info: dict[str, Any] = field(default_factory=dict)
    error: str = ""


# -- worker processes -------------------------------------------------------------------


def _worker(conn, spec: WorkerSpec) -> None:
    """A worker process: build and load the engine once, then run what it is given."""
    # Ctrl-C reaches the whole process group: the parent stops the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(spec.gpu)
    _limit_threads(spec.threads)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"editx[{os.getpid()}]: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(spec.log_level)
    log.propagate = False
    engine, cache = _build(spec)
    try:
        t0 = time.perf_counter()
        engine.load()
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}".splitlines()[0]))
        return
    conn.send(("ready", engine.device, time.perf_counter() - t0))
    while True:
        group = conn.recv()
        if group is None:
            break
        outcomes, _ = run(group, engine, spec.options)
        conn.send(("done", outcomes, engine.run_info()))
    cache.close()


def _limit_threads(threads: int | None) -> None:
    """CPU workers share the cores: each gets its part, or OpenMP threads spin against each other."""
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _build(spec: WorkerSpec):
    from editx_cli import engine as engines
    from editx_cli.cache import open_cache

    cache = open_cache(spec.cache_dir, spec.cache_size, spec.use_cache)
    return engines.build(spec.engine, spec.engine_config, cache), cache


def run_processes(planned: list[PlannedTask], specs: list[WorkerSpec],
                  on_finish: Callable[[Outcome], None]) -> tuple[list[Outcome], list[WorkerInfo]]:
    """Run the plan on one process per spec; outcomes in plan order, and what each worker did."""

    from editx_cli import engine as engines

    sched = Scheduler(planned, specs[0].options.fail_fast, on_finish)
    size = group_size(engines.get(specs[0].engine), specs[0].options.batch_size)
    ctx = mp.get_context("spawn")  # no fork: CUDA and model libraries do not survive it
    workers = []
    for i, spec in enumerate(specs):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, spec), name=f"editx-worker-{i}", daemon=True)
        proc.start()
        child.close()
        name = f"gpu {spec.gpu}" if spec.gpu is not None else f"worker {i}"
        workers.append({"proc": proc, "conn": parent, "info": WorkerInfo(name), "held": None, "ready": False})
    try:
        _dispatch(sched, workers, size)
        loaded = [w for w in workers if w["ready"]]
        if not loaded and not any(o.status == "done" for o in sched.outcomes.values()):
            errors = {w["info"].error for w in workers if w["info"].error}
            if errors:
                raise InvalidInput([Problem("workers", None, None, f"the engine failed to load: {e}")
                                    for e in sorted(errors)])
    except KeyboardInterrupt:  # the workers ignore SIGINT: no new work; what they hold, they finish
        log.warning("interrupted: the workers finish the tasks they hold (Ctrl-C again to stop now); "
                    "the rest are reported as pending")
        _drain(sched, workers, deadline=time.monotonic() + DRAIN_SECONDS)
    finally:
        for w in workers:
            if w["proc"].is_alive():
                try:
                    w["conn"].send(None)
                except (OSError, BrokenPipeError):
                    pass
        for w in workers:
            w["proc"].join(10)
            if w["proc"].is_alive():
                w["proc"].kill()
    return [sched.outcomes[p.task.id] for p in planned if p.task.id in sched.outcomes], \
        [w["info"] for w in workers]


DRAIN_SECONDS = 60


def _drain(sched: Scheduler, workers: list[dict], deadline: float) -> None:
    """After an interrupt: take in the results of the groups the workers hold, until the deadline."""
    while time.monotonic() < deadline:
        busy = [w for w in workers if w["held"] and not w.get("dead")]
        if not busy:
            return
        _listen(busy, sched)


def _dispatch(sched: Scheduler, workers: list[dict], size: int) -> None:
    """Hand ready work to idle loaded workers until the plan is finished."""
    while not sched.finished:
        alive = [w for w in workers if not w.get("dead")]
        if not alive or sched.stalled():
            sched.abandon("no worker left to run it" if not alive else "its input task never ran")
            break
        for w in alive:  # hand work to every idle, loaded worker
            if w["ready"] and w["held"] is None:
                group = sched.take(size, workers=len(alive))
                if group:
                    w["held"] = group
                    w["conn"].send(group)
        _listen(alive, sched)


def _listen(workers: list[dict], sched: Scheduler) -> None:
    """Wait up to a second for messages or deaths of these workers, and take them in."""
    from multiprocessing.connection import wait

    ready = wait([w["conn"] for w in workers] + [w["proc"].sentinel for w in workers], timeout=1.0)
    for w in workers:
        if w["conn"] in ready:
            try:
                _receive(w, w["conn"].recv(), sched)
                continue
            except (EOFError, OSError):  # the worker's end of the pipe is gone
                pass
        elif w["proc"].sentinel not in ready:
            continue
        w["proc"].join(5)
        _died(w, sched)


def _receive(w: dict, msg: tuple, sched: Scheduler) -> None:
    kind = msg[0]
    if kind == "ready":
        w["ready"], w["info"].device, w["info"].load_seconds = True, msg[1], msg[2]
        log.info("%s: engine loaded on %s in %.2f s", w["info"].name, msg[1], msg[2])
    elif kind == "error":
        w["info"].error = msg[1]
        log.error("%s: the engine failed to load: %s", w["info"].name, msg[1])
    elif kind == "done":
        w["held"] = None
        w["info"].run_info = msg[2]
        sched.complete(msg[1])


def _died(w: dict, sched: Scheduler) -> None:
    if w.get("dead"):
        return
    w["dead"] = True
    code = w["proc"].exitcode
    if w["held"]:
        ids = ", ".join(p.task.id for p in w["held"])
        log.error("%s died (exit code %s) while running %s", w["info"].name, code, ids)
        sched.fail(w["held"], f"{w['info'].name} died (exit code {code}) while running this task")
        w["held"] = None


# -- Ray ----------------------------------------------------------------------------------


def run_ray(planned: list[PlannedTask], spec: WorkerSpec, address: str | None,
            on_finish: Callable[[Outcome], None]) -> tuple[list[Outcome], list[WorkerInfo]]:
    """Run the plan on Ray actors, one per GPU of the cluster (or `--workers` CPU actors when
    it has none). Each actor holds a loaded engine; outputs go to the shared output folder."""
    try:
        import ray
    except ImportError:
        raise InvalidInput([Problem("--ray", None, None,
                                    "Ray is not installed: pip install 'editx[ray]'")]) from None
    started_here = not ray.is_initialized()
    ray.init(address=address or None, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count = gpus or max(1, int(spec.engine_config.get("workers") or 1))
    actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1 if not gpus else 0)(_EngineActor)
    actors = [actor_cls.remote(spec) for _ in range(count)]
    infos = [WorkerInfo(f"ray actor {i}") for i in range(count)]
    sched = Scheduler(planned, spec.options.fail_fast, on_finish)
    from editx_cli import engine as engines

    size = group_size(engines.get(spec.engine), spec.options.batch_size)
    ready: dict[int, bool] = {}
    in_flight: dict[Any, tuple[int, list[PlannedTask] | None]] = {a.load.remote(): (i, None)
                                                                   for i, a in enumerate(actors)}
    dead: set[int] = set()
    while in_flight or not sched.finished:
        if sched.finished:
            break
        busy = {i for i, _ in in_flight.values()}
        for i, actor in enumerate(actors):
            if ready.get(i) and i not in busy and i not in dead:
                group = sched.take(size, workers=count - len(dead))
                if group:
                    in_flight[actor.run.remote(group)] = (i, group)
        if not in_flight:
            sched.abandon("no Ray actor left to run it" if len(dead) == count else "its input task never ran")
            break
        done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        for ref in done:
            i, group = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # the actor died or its call raised
                dead.add(i)
                message = f"ray actor {i} failed: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
                if group:
                    sched.fail(group, message)
                else:
                    infos[i].error = message
                continue
            if group is None:  # the load call
                infos[i].device, infos[i].load_seconds = result
                ready[i] = True
            else:
                outcomes, infos[i].run_info = result
                sched.complete(outcomes)
    for actor in actors:
        ray.kill(actor)
    if started_here:
        ray.shutdown()
    if not ready and any(info.error for info in infos):
        raise InvalidInput([Problem("--ray", None, None, info.error) for info in infos if info.error][:1])
    return [sched.outcomes[p.task.id] for p in planned if p.task.id in sched.outcomes], infos


class _EngineActor:
    """A Ray actor holding one loaded engine."""

    def __init__(self, spec: WorkerSpec) -> None:
        _limit_threads(spec.threads)
        self.spec = spec
        self.engine, self.cache = _build(spec)

    def load(self) -> tuple[str, float]:
        t0 = time.perf_counter()
        self.engine.load()
        return self.engine.device, time.perf_counter() - t0

    def run(self, group: list[PlannedTask]) -> tuple[list[Outcome], dict]:
        outcomes, _ = run(group, self.engine, self.spec.options)
        return outcomes, self.engine.run_info()
