"""The stepaudio engine end to end on tiny checkpoints in the released layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS, invoke, model_args, write_manifest

from editx_cli.engine.stepaudio.decoder import buckets

OFFICIAL_SRC = os.environ.get("EDITX_SRC")  # read before the fixtures clear EDITX_*
needs_official = pytest.mark.skipif(
    OFFICIAL_SRC is None or not (Path(OFFICIAL_SRC) / "stepvocoder" / "cosyvoice2").is_dir(),
    reason="EDITX_SRC names no checkout with the official stepvocoder")

TEXT = "Batch editing keeps every voice clip consistent, from the first take to the last."
NARRATION = str(CLIPS / "narration.wav")
HEADER = ["id", "task", "prompt_audio", "prompt_text", "text", "input_audio", "audio_text", "edit_type",
          "edit_info", "intensity", "iterations", "seed"]


def edit_row(id_, edit_type, info="", intensity="", iterations="", text="", audio_text=TEXT, src=NARRATION):
    return [id_, "edit", "", "", text, src, audio_text, edit_type, info, intensity, iterations, ""]


ROWS = [
    ["clone", "clone", NARRATION, TEXT, "Hello from a cloned voice.", "", "", "", "", "", "", ""],
    edit_row("happy", "emotion", "happy"),
    edit_row("calm", "emotion", "remove"),
    edit_row("whisper", "style", "whisper"),
    edit_row("fast", "speed", "faster"),
    edit_row("laugh", "paralinguistic", text="Batch editing [laugh] keeps every voice clip consistent."),
    edit_row("clean", "denoise", audio_text=""),
    edit_row("tight", "vad", audio_text=""),
    edit_row("happy-twice", "emotion", "happy", iterations="2"),
    edit_row("happy-strong", "emotion", "happy", intensity="2.0"),
    edit_row("clone-then-sad", "emotion", "sad", audio_text="Hello from a cloned voice.", src="@clone"),
]


@pytest.fixture(scope="module")
def first_run(tiny, tmp_path_factory):
    """One batch of every task kind, run twice against one cache folder."""
    base = tmp_path_factory.mktemp("run")
    m = write_manifest(base / "m.csv", HEADER, ROWS)
    cache = base / "cache"
    r1 = invoke("batch", m, *model_args(tiny), "-o", base / "o1", "--cache-dir", cache, "-q")
    r2 = invoke("batch", m, *model_args(tiny), "-o", base / "o2", "--cache-dir", cache, "-q")
    reports = [json.loads((base / o / "report.json").read_text()) for o in ("o1", "o2")]
    return base, (r1, r2), reports


def test_every_task_kind_produces_24khz_audio_of_plausible_length(first_run):
    base, (r1, _), (report, _) = first_run
    assert r1.exit_code == 0, r1.stderr
    assert report["run"]["done"] == len(ROWS)
    for t in report["tasks"]:
        info = sf.info(t["output"])
        assert info.samplerate == 24000 and info.channels == 1
        seconds = info.frames / info.samplerate
        # each 5-token group is 0.12 s of audio; the decode never passes its token budget
        groups = (t["info"]["generated_tokens"] - 1) // 5 + 1
        assert 0.1 < seconds <= groups * 0.12 + 1e-6, t["id"]
        assert t["info"]["generated_tokens"] <= t["info"]["token_budget"]
        assert {"tokenize", "generate", "vocode", "write"} <= set(t["stages"])
        x, _ = sf.read(t["output"])
        assert np.abs(x).max() > 0.01  # not silence
    # the tiny model ends its decodes itself (end-of-turn, id 3, dropped before the vocoder), but
    # for one whose random walk runs to its budget (which the report then says)
    for t in report["tasks"]:
        assert t["info"]["stopped"] == "end" or t["info"]["generated_tokens"] == t["info"]["token_budget"], t["id"]
    assert sum(t["info"]["stopped"] == "end" for t in report["tasks"]) >= len(ROWS) - 1


def test_tasks_are_vocoded_while_the_decoder_goes_on(first_run):
    """A task is vocoded as soon as the decoder has finished it, on a thread of its own, in
    groups of what has finished; the report says how long, and how much of it overlapped."""
    _, _, (report, _) = first_run
    vocode = report["run"]["engine_info"]["vocode"]
    assert vocode["tasks_vocoded"] == len(ROWS) + 1  # happy-twice is vocoded after each of its two passes
    assert 1 <= vocode["vocoder_calls"] <= len(ROWS) and 1 <= vocode["largest_vocoder_call"] <= 8
    assert 0 < vocode["vocode_overlap_seconds"] <= vocode["vocode_seconds"]
    for t in report["tasks"]:
        assert t["stages"]["vocode"] > 0 and t["info"]["vocoded_with"] >= 1


def test_second_run_hits_the_cache_and_never_loads_the_tokenizer(first_run):
    base, (_, r2), (one, two) = first_run
    assert r2.exit_code == 0
    assert one["run"]["engine_info"]["audio_tokenizer_loaded"] is True
    assert two["run"]["engine_info"]["audio_tokenizer_loaded"] is False
    assert two["run"]["cache"]["misses"] == 0 and two["run"]["cache"]["hit_rate"] == 1.0
    # distinct audio seen in run 1: the clip, the clone output, two intermediate outputs
    assert one["run"]["cache"]["misses"] >= 2
    for t in one["tasks"]:  # same seed, same output
        assert Path(t["output"]).read_bytes() == (base / "o2" / Path(t["output"]).name).read_bytes(), t["id"]


def _differ(base: Path, a: str, b: str) -> bool:
    x, _ = sf.read(base / "o1" / f"{a}.wav")
    y, _ = sf.read(base / "o1" / f"{b}.wav")
    return x.shape != y.shape or not np.array_equal(x, y)


def test_intensity_changes_the_output(first_run):
    assert _differ(first_run[0], "happy", "happy-strong")
    tasks = {t["id"]: t for t in first_run[2][0]["tasks"]}
    assert tasks["happy-strong"]["info"]["guided"] is True and tasks["happy"]["info"]["guided"] is False


def test_iterations_chain_the_edit(first_run):
    assert _differ(first_run[0], "happy", "happy-twice")
    tasks = {t["id"]: t for t in first_run[2][0]["tasks"]}
    # the second pass re-tokenised the first pass's output: a second cache lookup
    assert tasks["happy-twice"]["cache_hits"] + tasks["happy-twice"]["cache_misses"] == 2


def test_a_different_seed_gives_a_different_output(tiny, tmp_path):
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"s{seed}.wav"
        r = invoke("edit", NARRATION, "--type", "style", "--info", "child", "--audio-text", TEXT, "--seed", seed,
                   *model_args(tiny), "-o", out, "-q")
        assert r.exit_code == 0, r.stderr
        outs.append(sf.read(out)[0])
    assert outs[0].shape != outs[1].shape or not np.array_equal(*outs)


def test_guided_denoise_without_transcript_is_refused_before_the_run(tiny, tmp_path):
    r = invoke("edit", NARRATION, "--type", "denoise", "--intensity", "2", *model_args(tiny),
               "-o", tmp_path / "o.wav", "--report", tmp_path / "r.json", "-q")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "--audio-text" in r.stderr and "intensity 2 on a denoise edit needs the transcript" in r.stderr
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "r.json").exists()


def test_transcript_required_for_emotion(tiny, tmp_path):
    r = invoke("edit", NARRATION, "--type", "emotion", "--info", "sad", *model_args(tiny), "-o", tmp_path / "o.wav")
    assert r.exit_code == 2
    assert "--audio-text" in r.stderr and "needs the transcript" in r.stderr


def test_missing_model_folders_are_named(tmp_path):
    r = invoke("edit", NARRATION, "--type", "vad", "--engine", "stepaudio", "--model-dir", tmp_path / "nope",
               "--tokenizer-dir", tmp_path, "-o", tmp_path / "o.wav")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"{tmp_path / 'nope'}: folder not found" in r.stderr
    assert "linguistic_tokenizer.npy: missing" in r.stderr
    assert "editx-src" not in r.stderr  # editx's own vocoder needs no source checkout
    assert not (tmp_path / "o.wav").exists()
    r = invoke("edit", NARRATION, "--type", "vad", "--engine", "stepaudio", "--model-dir", tmp_path / "nope",
               "--tokenizer-dir", tmp_path, "--vocoder", "official", "-o", tmp_path / "o.wav")
    assert "--editx-src (EDITX_SRC) is not set: --vocoder official needs a Step-Audio-EditX source checkout" in r.stderr
    r = invoke("edit", NARRATION, "--type", "vad", "--engine", "stepaudio", "--model-dir", tmp_path / "nope",
               "--tokenizer-dir", tmp_path, "--vocoder", "official", "--editx-src", tmp_path, "-o", tmp_path / "o.wav")
    assert "no stepvocoder/cosyvoice2 package" in r.stderr


def test_doctor_is_ready_with_the_model_and_tokenizer_folders_alone(tiny):
    r = invoke("doctor", "--engine", "stepaudio", *model_args(tiny)[2:])
    assert r.exit_code == 0 and "engine stepaudio: ready" in r.stdout


@pytest.mark.parametrize("tag", [
    "!new:os.system\n        command: echo owned",
    "!apply:builtins.exec\n        - print(1)",
    "!!python/object/apply:os.system ['echo owned']",
    "!name:subprocess.Popen\n        args: x",
])
def test_unsafe_vocoder_yaml_is_refused(tiny, tmp_path, tag):
    import shutil

    root = tmp_path / "ckpt"
    shutil.copytree(tiny, root, symlinks=True)
    yaml_path = root / "Step-Audio-EditX" / "CosyVoice-300M-25Hz" / "cosyvoice.yaml"
    yaml_path.write_text(yaml_path.read_text() + f"evil: {tag}\n")
    r = invoke("edit", NARRATION, "--type", "vad", *model_args(root), "-o", tmp_path / "o.wav")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "the engine failed to load" in r.stderr
    assert "not allowed" in r.stderr or "refusing to construct" in r.stderr or "not valid YAML" in r.stderr
    assert not (tmp_path / "o.wav").exists()


BATCH_ROWS = [edit_row(f"e{i}", "emotion", info, intensity=w) for i, (info, w) in
              enumerate([("happy", ""), ("sad", "1.5"), ("angry", ""), ("fear", "0.5")])] + [
    ["c", "clone", str(CLIPS / "pauses.wav"), "First, open the file. Then wait for the signal. "
     "Finally, save your work.", "A short line.", "", "", "", "", "", "", ""],
    ["c2", "clone", NARRATION, TEXT, "Another voice line.", "", "", "", "", "", "", ""],
]
# The generated ids of each task under --deterministic (float32, no TF32, each prompt
# prefilled alone, a fixed cache length). Pinned, so that any change to prompts, sampling or
# the model's arithmetic shows here; update them only for a change meant to alter outputs.
DETERMINISTIC_IDS = {
    "e0": "4afc1f23bf467eda", "e1": "62dc63a25218fa30", "e2": "45afe648a8c502b0", "e3": "0035882440e4edf1",
    "c": "5477552e3b5e9688", "c2": "cbc6c1349680b3f5",
}


def test_deterministic_outputs_do_not_depend_on_the_batch(tiny, tmp_path):
    m = write_manifest(tmp_path / "m.csv", HEADER, BATCH_ROWS)
    reports = {}
    for size in ("1", "8"):
        out = tmp_path / f"b{size}"
        r = invoke("batch", m, *model_args(tiny), "-o", out, "--batch-size", size, "--deterministic", "-q")
        assert r.exit_code == 0, r.stderr
        reports[size] = json.loads((out / "report.json").read_text())
    for row in BATCH_ROWS:
        assert (tmp_path / "b1" / f"{row[0]}.wav").read_bytes() == (tmp_path / "b8" / f"{row[0]}.wav").read_bytes()
    ids = {t["id"]: t["info"]["tokens_digest"] for t in reports["8"]["tasks"]}
    assert ids == DETERMINISTIC_IDS
    one, eight = (reports[s]["run"]["engine_info"]["decode"] for s in ("1", "8"))
    assert reports["8"]["run"]["engine_info"]["deterministic"] is True
    assert eight["attended_keys"] == [8192]  # every step reads the whole window: no neighbour changes it
    # one decode width whatever --batch-size (on CUDA cuBLAS picks kernels by the row count):
    # batch 1 holds one task at a time (a guided task's two rows together), batch 8 all six
    assert set(one["batch_sizes"]) == set(eight["batch_sizes"]) == {"8"}
    assert max(t["info"]["decoded_with"] for t in reports["1"]["tasks"]) == 1
    assert max(t["info"]["decoded_with"] for t in reports["8"]["tasks"]) > 1
    assert eight["steps"] < one["steps"] and eight["generated_tokens"] == one["generated_tokens"]
    # and one task a vocoder call
    assert {r["run"]["engine_info"]["vocode"]["largest_vocoder_call"] for r in reports.values()} == {1}


def test_continuous_batching_figures_and_shared_features(tiny, tmp_path):
    m = write_manifest(tmp_path / "m.csv", HEADER, BATCH_ROWS)
    out = tmp_path / "nocache"
    # rows sharing a prompt audio share its features: with no cache at all, one call decoding
    # all six tasks computes the narration clip's features once
    r = invoke("batch", m, *model_args(tiny), "-o", out, "--batch-size", "3", "--no-cache", "-q")
    assert r.exit_code == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    tasks = report["tasks"]
    assert sum(t["cache_misses"] for t in tasks) == 2  # narration + pauses
    # decoded_with: the most tasks decoding at once with it, never more than the slots hold
    assert {t["info"]["slots"] for t in tasks} == {3} and max(t["info"]["decoded_with"] for t in tasks) > 1
    assert all(1 <= t["info"]["decoded_with"] <= 3 for t in tasks)
    decode = report["run"]["engine_info"]["decode"]
    assert decode["batch_sizes"] == {"3": 1}
    # one read-back every 8 steps, whatever the number of rows
    assert decode["host_syncs_per_step"] == 0.125
    # two guided tasks (two rows each) and four plain ones through three slots: refilled as rows end
    assert 0.5 < decode["slot_occupancy"] <= 1
    assert decode["steps"] * 3 >= sum(t["info"]["generated_tokens"] for t in tasks)
    assert 0 <= decode["padding_waste"] < 1 and decode["tokens_per_second"] > 0
    assert decode["cuda_graphs"] == [] and decode["graph_captures"] == 0  # on the CPU the step runs eagerly
    # the steps read the keys their rows have, in buckets, not the whole window
    assert decode["attention"] == "sdpa over live-key buckets"
    assert set(decode["attended_keys"]) <= set(buckets(8192)) and max(decode["attended_keys"]) < 8192


def test_one_decoder_and_one_cache_serve_every_engine_call(tiny, tmp_path):
    """Twelve tasks through two slots, the loop holding four slots' worth at a time: the later
    ones join the decoding under way (or start a run of their own if it has just drained), and
    the decoder made for the first keeps its cache for every run."""
    rows = [edit_row(f"e{i}", "emotion", info) for i, info in enumerate(["happy", "sad", "angry"] * 4)]
    m = write_manifest(tmp_path / "m.csv", HEADER, rows)
    r = invoke("batch", m, *model_args(tiny), "-o", tmp_path / "out", "--batch-size", "2", "-q")
    assert r.exit_code == 0, r.stderr
    decode = json.loads((tmp_path / "out" / "report.json").read_text())["run"]["engine_info"]["decode"]
    assert set(decode["batch_sizes"]) == {"2"} and decode["cache_allocations"] == 1


def test_clone_budgets_fit_the_target_whatever_its_script():
    from editx_cli.engine.stepaudio import TOKENS_PER_SECOND, _clone_budget

    def seconds(prompt_seconds: float, target: str) -> float:
        return _clone_budget([0] * int(prompt_seconds * TOKENS_PER_SECOND), TEXT, target) / TOKENS_PER_SECOND

    chinese = ("我总觉得，有人在跟着我，我能听到奇怪的脚步声。比如在工作间隙，做一些简单的伸展运动，放松一下身体。"
               "今天天气真好，我想出去散步。")[:60]
    assert len(chinese) == 60 and seconds(5.0, chinese) >= 20  # an English prompt, a Chinese target
    assert seconds(5.0, TEXT) >= 2 * 5.0  # the prompt's own text, twice over
    assert seconds(12.0, TEXT) >= 2 * 12.0  # a slow speaker gets more, never less
    assert seconds(5.0, "Hi.") >= 5.0 and seconds(5.0, "12345") >= 3.5  # digits are read as words


@needs_official
def test_doctor_imports_the_official_vocoder_code_and_names_a_missing_package(tiny, tmp_path):
    import shutil

    from conftest import run_editx

    src = tmp_path / "editx-src"
    shutil.copytree(Path(OFFICIAL_SRC) / "stepvocoder", src / "stepvocoder")
    dit = src / "stepvocoder" / "cosyvoice2" / "flow" / "decoder_dit.py"
    dit.write_text(dit.read_text().replace("from einops import", "from einops_not_installed import"))
    args = ["--model-dir", tiny / "Step-Audio-EditX", "--tokenizer-dir", tiny / "Step-Audio-Tokenizer",
            "--vocoder", "official"]
    ok = run_editx("doctor", "--engine", "stepaudio", *args, "--editx-src", OFFICIAL_SRC)
    assert ok.returncode == 0 and "engine stepaudio: ready" in ok.stdout, ok.stdout
    broken = run_editx("doctor", "--engine", "stepaudio", *args, "--editx-src", src)
    assert broken.returncode != 0 and "Traceback" not in broken.stderr
    assert "NOT READY" in broken.stdout
    assert "needs the 'einops_not_installed' package, which is not installed" in broken.stdout


def test_a_tasks_audio_does_not_depend_on_what_was_vocoded_before_it(tiny, tmp_path):
    """The vocoder draws fresh noise on every call: each task vocodes under its own seed."""
    same = edit_row("first", "emotion", "happy")
    rows = [same, edit_row("b", "emotion", "sad"), edit_row("c", "style", "child"),
            edit_row("d", "speed", "faster"), ["fifth", *same[1:]]]
    m = write_manifest(tmp_path / "m.csv", HEADER, rows)
    r = invoke("batch", m, *model_args(tiny), "-o", tmp_path / "o", "--batch-size", "1", "-q")
    assert r.exit_code == 0, r.stderr
    first, fifth = (sf.read(tmp_path / "o" / f"{n}.wav")[0] for n in ("first", "fifth"))
    assert np.array_equal(first, fifth)


def test_the_vocoder_draws_its_noise_from_the_task_seed_alone(tiny):
    import torch

    from editx_cli.engine.stepaudio.token2wav import Token2Wav, VocodeJob

    vocoder = Token2Wav.from_folder(tiny / "Step-Audio-EditX" / "CosyVoice-300M-25Hz")
    g = np.random.default_rng(0)
    tokens = [int(v) for v in np.column_stack([g.integers(0, 1024, (12, 2)), g.integers(1024, 5120, (12, 3))]).ravel()]
    mel, emb = g.standard_normal((40, 80)).astype(np.float32), g.standard_normal(192).astype(np.float32)
    state = torch.random.get_rng_state()
    a, b, c = vocoder([VocodeJob(tokens[:30], tokens[30:], mel, emb, seed) for seed in (3, 4, 3)])
    assert np.array_equal(a, c) and not np.array_equal(a, b)  # same tokens: only the noise differs
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator is left alone
    (alone,) = vocoder([VocodeJob(tokens[:30], tokens[30:], mel, emb, 3)])
    assert np.array_equal(alone, a)  # and nothing of its neighbours'


@pytest.mark.slow
def test_an_interrupt_stops_the_decoder_at_its_next_sync(tiny, tmp_path):
    """The decoder runs on a thread of its own: Ctrl-C still stops it within a sync period, not
    at the end of the work it holds; what finished stays, the rest is pending."""
    import signal
    import subprocess
    import time

    from conftest import EDITX

    rows = [edit_row(f"e{i:02d}", "emotion", ["happy", "sad", "angry"][i % 3]) for i in range(24)]
    m = write_manifest(tmp_path / "m.csv", HEADER, rows)
    out = tmp_path / "out"
    cmd = [EDITX, "batch", m, *map(str, model_args(tiny)), "-o", out, "-q", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("e*.wav")):
        time.sleep(0.01)
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    stopped = time.time() - t0
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    status = [t["status"] for t in json.loads((out / "report.json").read_text())["tasks"]]
    assert status.count("pending") > 8 and set(status) <= {"done", "pending"}
    assert stopped < 10  # the eight tasks it held would take longer to finish
