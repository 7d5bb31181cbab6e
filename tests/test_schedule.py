"""The scheduler: the one place that knows chains, readiness, fail-fast and grouping."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

from editx_cli.resume import PlannedTask
from editx_cli.schedule import FAIL_FAST, Scheduler, outcome_of
from editx_cli.tasks import Task


def planned(*specs: str, skip: tuple[str, ...] = ()) -> list[PlannedTask]:
    """'a' is a task reading a file; 'b<a' reads task a's output."""
    out = []
    for s in specs:
        tid, _, upstream = s.partition("<")
        t = Task(id=tid, kind="edit", source="m.csv", row=len(out) + 1, output=Path(f"{tid}.wav"),
                 input_audio=None if upstream else Path("in.wav"), input_task=upstream or None, edit_type="vad")
        out.append(PlannedTask(t, tid, Path("in.wav"), tid in skip))
    return out


def finish(sched: Scheduler, tid: str, status: str = "done") -> None:
    t = Task(id=tid, kind="edit", source="m.csv", row=None, output=Path(f"{tid}.wav"))
    sched.complete([outcome_of(t, status)])


def ids(group: list[PlannedTask]) -> list[str]:
    return [p.task.id for p in group]


def test_a_chained_task_waits_for_the_task_it_reads():
    sched = Scheduler(planned("a", "b<a", "c<b", "d"))
    assert ids(sched.take(10)) == ["a", "d"]
    assert sched.take(10) == [] and not sched.finished
    finish(sched, "a")
    assert ids(sched.take(10)) == ["b"]


def test_a_failure_fails_its_whole_chain_and_nothing_else():
    seen = []
    sched = Scheduler(planned("a", "b<a", "c<b", "d"), on_finish=lambda o: seen.append((o.id, o.status)))
    assert ids(sched.take(10)) == ["a", "d"]
    finish(sched, "a", "failed")
    assert sched.take(10) == []
    assert seen == [("a", "failed"), ("b", "failed"), ("c", "failed")]
    assert sched.outcomes["c"].error == "input task 'b' failed"
    finish(sched, "d")
    assert sched.finished and not sched.stalled()


def test_fail_fast_cancels_what_has_not_started():
    sched = Scheduler(planned("a", "b", "c", "d"), fail_fast=True)
    assert ids(sched.take(2)) == ["a", "b"]
    assert not sched.stopping
    finish(sched, "a", "failed")
    assert sched.stopping and sched.take(10) == []
    assert {sched.outcomes[t].status for t in "cd"} == {"cancelled"}
    assert sched.outcomes["c"].error == FAIL_FAST
    assert sched.running == 1 and not sched.finished  # b is the caller's to cancel or finish


def test_workers_get_an_even_share_and_tasks_done_earlier_count_as_done():
    sched = Scheduler(planned("a", "b<a", "c", "d", "e", "f", skip=("a",)))
    assert ids(sched.take(8, workers=2)) == ["b", "c", "d"]  # 5 ready between 2 workers
    assert ids(sched.take(8, workers=2)) == ["e"]
    assert ids(sched.take(8)) == ["f"]


def test_an_input_task_outside_the_plan_is_taken_as_done():
    """A worker is handed ready chained tasks without the tasks they read."""
    sched = Scheduler(planned("b<a", "c<b"))
    assert ids(sched.take(10)) == ["b"]


def test_abandon_fails_what_is_left_with_the_reason():
    sched = Scheduler(planned("a", "b<a"))
    sched.take(10)
    sched.abandon("no worker left to run it")
    assert sched.outcomes["b"].error == "not run: no worker left to run it"


def test_no_run_module_decides_readiness_on_its_own():
    """Chains and readiness live in the scheduler alone: the loop, the workers and Ray ask it."""
    for name in ("loop.py", "parallel.py", "batch.py"):
        tree = ast.parse((ROOT / "editx_cli" / name).read_text())
        reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "input_task"]
        assert not reads, f"{name} reads .{reads[0].attr} at line {reads[0].lineno}"


def test_under_fail_fast_a_chain_is_cancelled_not_failed():
    sched = Scheduler(planned("a", "b<a", "c"), fail_fast=True)
    assert ids(sched.take(1)) == ["a"]
    finish(sched, "a", "failed")
    assert [sched.outcomes[t].status for t in "bc"] == ["cancelled", "cancelled"] and sched.finished
