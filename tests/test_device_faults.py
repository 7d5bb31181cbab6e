"""What goes wrong only on a GPU, closed where the CPU can reach it and, where it cannot, with
the fault injected: a graph capture that fails, vocoding while a graph is captured, a vocoder
call that runs out of memory, slots halved by an out-of-memory, --deterministic's one width,
the vocoder's numerics in half precision."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
import torch
from conftest import CLIPS

from editx_cli.engine import collect
from editx_cli.engine.stepaudio.decoder import Decoder, Figures
from editx_cli.engine.stepaudio.generate import EOS, Job, Sampling
from editx_cli.engine.stepaudio.runners import NativeRunner
from editx_cli.engine.stepaudio.step1 import Step1ForCausalLM
from editx_cli.engine.stepaudio.vocoding import VocodeLine

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def endless(tiny):
    """The tiny LM with end-of-turn never in its top 50: every row decodes its whole budget."""
    model = copy.deepcopy(Step1ForCausalLM.from_folder(tiny / "Step-Audio-EditX", "cpu", torch.float32))
    with torch.no_grad():
        model.lm_head.weight[EOS] = 0.0
    return model


def _jobs(budgets: list[int], prompt: int = 200) -> list[Job]:
    out = []
    for i, b in enumerate(budgets):
        g = torch.Generator().manual_seed(i)
        out.append(Job([1, 4] + torch.randint(65536, 70656, (prompt + 3 * i,), generator=g).tolist(), i, b))
    return out


class _Replay:
    """What a captured graph does, on the CPU: one step of its shape."""

    def __init__(self, decoder: Decoder, shape: tuple) -> None:
        self.decoder, self.shape = decoder, shape

    def replay(self) -> None:
        self.decoder._step(*self.shape)


def _capturing(decoder: Decoder, fail: set | None = None, seconds: float = 0.0, log: list | None = None) -> Decoder:
    """The decoder with captures on the CPU: the fault injected is the capture itself (a CUDA
    graph cannot be made here); everything around it is the decoder's own."""
    decoder.cuda_graphs = True

    def capture(shape):
        t0 = time.monotonic()
        time.sleep(seconds)
        if log is not None:
            log.append((t0, time.monotonic(), shape))
        if fail and shape in fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        return _Replay(decoder, shape)

    decoder._capture = capture
    return decoder


def test_a_failed_capture_runs_that_shape_eagerly_and_keeps_graphs_for_the_others(endless):
    budgets = [90, 60, 40, 20]
    plain = _jobs(budgets)
    with torch.inference_mode():
        Decoder(NativeRunner(endless, 8192), 4, Sampling(), "cpu").run(plain)
    log: list = []
    probe = _capturing(Decoder(NativeRunner(endless, 8192), 4, Sampling(), "cpu"), log=log)
    with torch.inference_mode():
        probe.run(_jobs(budgets))
    shapes = [shape for _, _, shape in log]
    assert len(shapes) >= 3  # several widths and key lengths: something to keep when one fails
    bad = shapes[1]
    decoder = _capturing(Decoder(NativeRunner(endless, 8192), 4, Sampling(), "cpu"), fail={bad})
    jobs = _jobs(budgets)
    with torch.inference_mode():
        fig = decoder.run(jobs)
    assert fig.capture_failures == 1 and fig.captures == len(shapes) - 1
    assert decoder.cuda_graphs and bad in decoder.uncapturable and bad not in decoder.graphs
    assert [j.tokens for j in jobs] == [j.tokens for j in plain]  # the eager shape decoded the same


def test_no_vocoder_call_runs_while_a_graph_is_captured(endless):
    """Captures happen as rows grow past key buckets while finished tasks are vocoded; with
    the engine's gate none overlaps a vocoder call. Without it they do (the test can tell)."""

    def overlaps(gate) -> int:
        captures: list = []
        calls: list = []

        def vocode(items):
            t0 = time.monotonic()
            time.sleep(0.03)
            calls.append((t0, time.monotonic()))
            return items

        decoder = _capturing(Decoder(NativeRunner(endless, 8192), 4, Sampling(), "cpu", gate=gate), seconds=0.05,
                             log=captures)
        line = VocodeLine(vocode, 1, "cpu", lambda key, out: None, gate)
        jobs = _jobs([8, 8, 16, 16, 24, 24, 32, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 240])
        with torch.inference_mode():
            decoder.run(jobs, on_done=lambda job: line.put(id(job), job))
        line.finish()
        assert len(calls) == len(jobs) and len(captures) >= 3
        return sum(a < d and c < b for a, b, _ in captures for c, d in calls)

    assert overlaps(threading.Lock()) == 0
    assert overlaps(None) > 0


def test_deterministic_decoding_steps_one_width_whatever_the_batch(endless):
    """On CUDA cuBLAS picks kernels by row count: every step runs all the slots, and at most
    `limit` rows hold tasks (a guided task's two rows start alone)."""
    figs, tokens = {}, {}
    for limit in (1, 8):
        log: list = []
        decoder = _capturing(Decoder(NativeRunner(endless, 8192), 8, Sampling(), "cpu", deterministic=True,
                                     limit=limit), log=log)
        jobs = _jobs([12, 20, 7, 15, 9])
        ref = _jobs([10], prompt=180)[0]
        jobs.append(Job(jobs[0].prompt, 99, 14, 1.5, ref.prompt))  # guided: two rows
        with torch.inference_mode():
            figs[limit] = decoder.run(jobs)
        assert {shape[0] for _, _, shape in log} == {8}
        tokens[limit] = [j.tokens for j in jobs]
    assert tokens[1] == tokens[8]
    assert figs[1].steps > 2 * figs[8].steps  # one task (or one guided pair) at a time


def _engine(tiny, **config):
    from editx_cli.cache import NullCache
    from editx_cli.engine.stepaudio import StepAudioEngine

    engine = StepAudioEngine({"model_dir": str(tiny / "Step-Audio-EditX"),
                              "tokenizer_dir": str(tiny / "Step-Audio-Tokenizer"), **config}, NullCache())
    engine.load()
    return engine


def _requests(n: int):
    from editx_cli import audio
    from editx_cli.engine import Request

    x, sr = audio.load(CLIPS / "narration.wav")
    digest = audio.samples_digest(x, sr)
    return [Request(kind="clone", audio=x, sr=sr, audio_text=TEXT, text=f"Line {i} in the cloned voice.", seed=i,
                    audio_digest=digest, task_id=f"c{i}") for i in range(n)]


def test_a_failed_vocoder_group_is_retried_one_task_at_a_time(tiny):
    engine = _engine(tiny, batch_size=4)
    try:
        plain = collect(engine.stream, _requests(4))
        assert all(not isinstance(r, Exception) for r in plain)
        vocoder, calls = engine.vocoder, []

        class RunsOutOfMemoryOnGroups:  # the fault: a group's call fails, as a passing GPU peak would
            def __getattr__(self, name):
                return getattr(vocoder, name)

            def __call__(self, jobs):
                calls.append(len(jobs))
                if len(calls) == 1:
                    time.sleep(1.0)  # the tasks that end meanwhile make the next call a group
                if len(jobs) > 1:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return vocoder(jobs)

        engine.vocoder = RunsOutOfMemoryOnGroups()
        again = collect(engine.stream, _requests(4))
    finally:
        engine.close()
    assert any(n > 1 for n in calls) and calls.count(1) >= 4, calls
    assert all(not isinstance(r, Exception) for r in again)
    for a, b in zip(plain, again, strict=True):  # alone, each task's audio is what its group made
        assert np.array_equal(a.audio, b.audio)
    assert engine.vocode_stats.summary()["tasks_vocoded_alone_after_a_failed_call"] >= 2


def test_slots_halved_by_an_out_of_memory_grow_back_after_a_clean_stretch(tiny, monkeypatch):
    from editx_cli.engine import stepaudio
    from editx_cli.engine.stepaudio import decoder as decoding

    monkeypatch.setattr(stepaudio, "REGROW_AFTER", 3)
    run, faults = decoding.Decoder.run, [1]

    def runs_out_of_memory_once(self, jobs, *args, **kw) -> Figures:  # the fault: the first run's peak
        if faults:
            faults.pop()
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return run(self, jobs, *args, **kw)

    monkeypatch.setattr(decoding.Decoder, "run", runs_out_of_memory_once)
    engine = _engine(tiny, batch_size=4)
    try:
        slots = []
        for _ in range(3):
            results = collect(engine.stream, _requests(2))
            assert all(not isinstance(r, Exception) for r in results)
            slots.append((engine.max_batch, engine.decoder.slots))
    finally:
        engine.close()
    # halved to 2 by the fault; 2 clean tasks are not yet a stretch of 3; 4 are: back to 4
    assert slots == [(2, 2), (2, 2), (4, 4)]
    assert engine.stats.summary()["out_of_memory_halvings"] == 1


def test_the_flow_schedule_and_snake_are_float32_in_every_dtype():
    from editx_cli.engine.stepaudio.flow import STEPS, FlowMatching, FlowShape
    from editx_cli.engine.stepaudio.hift import Snake

    shape = FlowShape(dit_width=32, dit_depth=1, dit_heads=2, dit_head_dim=16)
    flow = FlowMatching(shape).to(torch.bfloat16)
    seen = []
    flow.estimator.t_embedder.register_forward_hook(lambda m, args, out: seen.extend(args[0].tolist()))
    x = torch.randn(1, shape.mel, 10, dtype=torch.bfloat16)
    with torch.inference_mode():
        flow(x, [10], torch.randn(1, shape.mel, 10, dtype=torch.bfloat16),
             torch.randn(1, shape.mel, dtype=torch.bfloat16), torch.zeros(1, shape.mel, 10, dtype=torch.bfloat16))
    span = 1 - torch.cos(torch.linspace(0, 1, STEPS + 1) * 0.5 * torch.pi)
    t, dt, expected = span[0], span[1] - span[0], []
    for step in range(1, STEPS + 1):  # the official loop's t, accumulated in float32
        expected.append(t.item())
        t = t + dt
        if step < STEPS:
            dt = span[step + 1] - t
    assert seen == expected
    assert abs(1000 * seen[2] - 48.94) < 0.01  # bf16 would make it 50.75

    snake = Snake(4)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.0, 1e-8, 0.5, 2.0]))
    x = torch.randn(1, 4, 16)
    half = snake.half()(x.half())
    assert torch.isfinite(half).all()  # 1 / (0 + 1e-9) in fp16 was 1 / 0
    assert torch.allclose(half.float(), snake.float()(x), atol=2e-3)
