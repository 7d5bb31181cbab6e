"""The run's rules, in one place: which tasks are ready, which wait for the task they read,
which fail because it failed, and which are cancelled by --fail-fast.

The in-process loop, the worker processes' dispatcher and the Ray driver all take
their work from a `Scheduler`; none of them decides readiness on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from editx_cli.report import Outcome
from editx_cli.resume import PlannedTask
from editx_cli.tasks import Task

FAIL_FAST = "not run: an earlier task failed and --fail-fast is set"


class Scheduler:
    """Tasks pending, running and finished, and the chain and fail-fast rules between them.

    A task is ready when it reads no other task, or the task it reads is done. A task
    whose input task is not in the plan (a worker is handed only ready tasks) is ready.
    """

    def __init__(self, planned: list[PlannedTask], fail_fast: bool = False,
                 on_finish: Callable[[Outcome], None] = lambda o: None) -> None:
        self.fail_fast = fail_fast
        self.pending = [p for p in planned if not p.skip]
        self.status = {p.task.id: ("done" if p.skip else "pending") for p in planned}
        self.outcomes: dict[str, Outcome] = {}
        self.on_finish = on_finish

    @property
    def finished(self) -> bool:
        return not self.pending and not self.running

    @property
    def running(self) -> int:
        return sum(1 for s in self.status.values() if s == "running")

    @property
    def stopping(self) -> bool:
        """--fail-fast and a task failed: nothing new starts, work in progress is cancelled."""
        return self.fail_fast and "failed" in self.status.values()

    def take(self, limit: int, workers: int = 1, key: Callable[[PlannedTask], float] | None = None,
             ) -> list[PlannedTask]:
        """Up to `limit` ready tasks, now running; [] when none is ready.

        With several workers, no more than an even share of what is ready, so none idles while
        another holds a queue. `key` orders the ready tasks (shortest input first, say, so a
        batch holds prompts of similar length); plan order otherwise.
        """
        self._settle()
        ready = [p for p in self.pending if self._ready(p)]
        if key is not None:
            ready.sort(key=key)
        share = -(-len(ready) // max(1, workers))
        group = ready[: max(0, min(limit, share))]
        for p in group:
            self.pending.remove(p)
            self.status[p.task.id] = "running"
        return group

    def complete(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self.status[o.id] = o.status
            self.outcomes[o.id] = o
            self.on_finish(o)

    def fail(self, group: list[PlannedTask], error: str, status: str = "failed") -> None:
        self.complete([outcome_of(p.task, status, error) for p in group])

    def stalled(self) -> bool:
        """Tasks remain, none runs and none is ready: possible only after failures."""
        self._settle()
        return bool(self.pending) and not self.running and not any(self._ready(p) for p in self.pending)

    def abandon(self, why: str) -> None:
        """Fail every pending task: nothing is left that could run it."""
        left, self.pending = self.pending, []
        self.fail(left, f"not run: {why}")

    def _ready(self, p: PlannedTask) -> bool:
        return p.task.input_task is None or self.status.get(p.task.input_task, "done") == "done"

    def _settle(self) -> None:
        """Fail the tasks whose input task failed; cancel everything under --fail-fast."""
        stop = self.stopping
        for p in list(self.pending):
            upstream = self.status.get(p.task.input_task or "")
            if stop or upstream in ("failed", "cancelled"):
                self.pending.remove(p)
                if stop:
                    self.fail([p], FAIL_FAST, "cancelled")
                else:
                    self.fail([p], f"input task {p.task.input_task!r} failed")


def group_size(engine: Any, batch_size: int) -> int:
    """Tasks run together (one wave, or one worker's group): one for an engine that does not
    batch; else the batch size times the engine's wave factor (an engine with a queue of its
    own gets several batches' worth)."""
    return max(1, batch_size) * engine.wave_factor if engine.batches else 1


def outcome_of(t: Task, status: str = "pending", error: str = "") -> Outcome:
    return Outcome(id=t.id, task=t.task, edit_type=t.edit_type, output=str(t.output), status=status, error=error,
                   seed=t.seed, intensity=t.intensity, iterations=t.iterations)
