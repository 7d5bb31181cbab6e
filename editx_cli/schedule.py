"""The run's rules, in one place: which tasks are ready, which wait for the task they read,
which fail because it failed, and which are cancelled by --fail-fast.

The in-process loop, the worker processes' dispatcher and the Ray driver all take
their work from a `Scheduler`; none of them decides readiness on its own.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any

from editx_cli.report import Outcome
from editx_cli.resume import PlannedTask
from editx_cli.tasks import Task

FAIL_FAST = "not run: an earlier task failed and --fail-fast is set"


class Scheduler:
    """Tasks waiting, ready, running and finished, and the chain and fail-fast rules between them.

    A task is ready when it reads no other task, or the task it reads is done. A task
    whose input task is not in the plan (a worker is handed only ready tasks) is ready.
    Every step is proportional to the tasks it touches, not to the plan: a manifest of
    100,000 rows is scheduled as fast as one of ten.
    """

    def __init__(self, planned: list[PlannedTask], fail_fast: bool = False,
                 on_finish: Callable[[Outcome], None] = lambda o: None,
                 key: Callable[[PlannedTask], float] | None = None) -> None:
        self.fail_fast = fail_fast
        self.on_finish = on_finish
        self.outcomes: dict[str, Outcome] = {}
        self.running = 0
        self.stopping = False  # --fail-fast and a task failed: nothing new starts
        self._key = key  # orders ready tasks (shortest input first, say); plan order otherwise
        self._status = {p.task.id: ("done" if p.skip else "pending") for p in planned}
        self._index = {p.task.id: i for i, p in enumerate(planned)}
        self._count = len(planned)  # the next index, for tasks added later
        self._ready: list[tuple[float, int, PlannedTask]] = []  # a heap
        self._waiting: dict[str, list[PlannedTask]] = {}  # upstream id -> tasks that read it
        self._pending = 0
        for p in planned:
            if not p.skip:
                self._add(p)

    @property
    def ready(self) -> int:
        """Tasks that could start now."""
        return len(self._ready)

    @property
    def finished(self) -> bool:
        return not self._pending and not self.running

    def add(self, tasks: list[PlannedTask]) -> None:
        """Tasks that arrived while the run runs (a server's requests), after those planned."""
        for p in tasks:
            self._index[p.task.id] = self._count
            self._count += 1
            self._status[p.task.id] = "pending"
            self._add(p)

    def forget(self, task_id: str) -> None:
        """A finished task that nothing can read any more (a server's request, answered)."""
        for table in (self._index, self._status, self.outcomes):
            table.pop(task_id, None)

    def take(self, limit: int, workers: int = 1) -> list[PlannedTask]:
        """Up to `limit` ready tasks, now running; [] when none is ready.

        With several workers, no more than an even share of what is ready, so none idles while
        another holds a queue.
        """
        share = -(-len(self._ready) // max(1, workers))
        group = [heapq.heappop(self._ready)[2] for _ in range(max(0, min(limit, share)))]
        for p in group:
            self._status[p.task.id] = "running"
        self._pending -= len(group)
        self.running += len(group)
        return group

    def complete(self, outcomes: list[Outcome]) -> None:
        queue = deque(outcomes)  # a worklist, not recursion: a chain may be thousands long
        while queue:
            o = queue.popleft()
            if self._status.get(o.id) == "running":
                self.running -= 1
            self._status[o.id] = o.status
            self.outcomes[o.id] = o
            self.on_finish(o)
            if o.status == "failed" and self.fail_fast and not self.stopping:
                self.stopping = True  # everything not started is cancelled, chains included
                queue.extend(self._clear(FAIL_FAST, "cancelled"))
            if o.status == "done":
                for p in self._waiting.pop(o.id, []):
                    self._push(p)
            elif o.status in ("failed", "cancelled"):
                downstream = self._waiting.pop(o.id, [])
                self._pending -= len(downstream)
                queue.extend(outcome_of(p.task, "failed", f"input task {o.id!r} failed") for p in downstream)

    def fail(self, group: list[PlannedTask], error: str, status: str = "failed") -> None:
        self.complete([outcome_of(p.task, status, error) for p in group])

    def stalled(self) -> bool:
        """Tasks remain, none runs and none is ready: possible only after failures."""
        return bool(self._pending) and not self.running and not self._ready

    def abandon(self, why: str) -> None:
        """Fail every pending task: nothing is left that could run it."""
        self.complete(self._clear(f"not run: {why}", "failed"))

    def _add(self, p: PlannedTask) -> None:
        self._pending += 1
        upstream = p.task.input_task
        state = self._status.get(upstream or "", "done")
        if upstream is None or state == "done":
            self._push(p)
        else:  # the plan is in chain order: whatever it reads is not finished yet
            self._waiting.setdefault(upstream, []).append(p)

    def _push(self, p: PlannedTask) -> None:
        i = self._index[p.task.id]
        heapq.heappush(self._ready, (self._key(p) if self._key else i, i, p))

    def _clear(self, error: str, status: str) -> list[Outcome]:
        """Every pending task, now out of the plan, as an outcome with this status and error."""
        left = [r[2] for r in self._ready] + [p for group in self._waiting.values() for p in group]
        self._ready, self._waiting, self._pending = [], {}, 0
        left.sort(key=lambda p: self._index[p.task.id])
        return [outcome_of(p.task, status, error) for p in left]


def group_size(engine: Any, batch_size: int) -> int:
    """Tasks in progress at once (in the loop, or one worker's group): one for an engine that
    does not batch; else the batch size times the engine's wave factor (an engine with a queue
    of its own holds several batches' worth, to refill its slots from as rows end)."""
    return max(1, batch_size) * engine.wave_factor if engine.batches else 1


def outcome_of(t: Task, status: str = "pending", error: str = "") -> Outcome:
    return Outcome(id=t.id, task=t.kind, edit_type=t.edit_type, output=str(t.output), status=status, error=error,
                   seed=t.seed, intensity=t.intensity, iterations=t.iterations, edit_info=t.edit_info,
                   input=str(t.prompt_audio or t.input_audio or f"@{t.input_task}"))
