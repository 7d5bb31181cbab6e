"""The CLI end to end: the demo manifest, single commands, exit codes, outputs, report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pandas as pd
from conftest import CLIPS, ROOT, duration, invoke, run_editx, write_manifest


def test_demo_manifest_runs_through_a_real_subprocess(tmp_path):
    out = tmp_path / "out"
    p = run_editx("batch", ROOT / "manifests" / "demo.csv", "--engine", "dsp", "--out-dir", out)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(out / "report.json")
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["done"] == 9 and report["run"]["failed"] == 0
    for t in report["tasks"]:
        assert t["status"] == "done"
        assert duration(t["output"]) > 0.5
        assert "process" in t["stages"] and "write" in t["stages"]
    assert (out / "pauses-slower-x2.flac").exists()
    csv = pd.read_csv(out / "report.csv")
    assert list(csv["id"]) == [t["id"] for t in report["tasks"]]
    assert "process_s" in csv.columns
    assert "9 done" in p.stderr  # the summary
    assert "Traceback" not in p.stderr


def test_jsonl_twin_gives_the_same_outputs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert invoke("batch", ROOT / "manifests" / "demo.csv", "--engine", "dsp", "-o", a, "-q").exit_code == 0
    assert invoke("batch", ROOT / "manifests" / "demo.jsonl", "--engine", "dsp", "-o", b, "-q").exit_code == 0
    names = sorted(p.name for p in a.glob("*.wav"))
    assert names == sorted(p.name for p in b.glob("*.wav")) and len(names) == 8
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_single_edit_command_prints_output_path(tmp_path):
    out = tmp_path / "fast.wav"
    r = invoke("edit", CLIPS / "narration.wav", "--type", "speed", "--info", "faster", "--engine", "dsp",
               "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert abs(duration(out) - duration(CLIPS / "narration.wav") / 1.2) < 0.1
    # the same command again is already done: skipped, same file
    mtime = out.stat().st_mtime_ns
    r = invoke("edit", CLIPS / "narration.wav", "--type", "speed", "--info", "faster", "--engine", "dsp",
               "-o", out, "--report", tmp_path / "r.json")
    assert r.exit_code == 0
    assert json.loads((tmp_path / "r.json").read_text())["tasks"][0]["status"] == "skipped"
    assert out.stat().st_mtime_ns == mtime


def test_changed_parameters_redo_the_task(tmp_path):
    out = tmp_path / "o.wav"
    base = ["edit", CLIPS / "narration.wav", "--type", "speed", "--engine", "dsp", "-o", out, "-q"]
    assert invoke(*base, "--info", "faster").exit_code == 0
    d1 = duration(out)
    assert invoke(*base, "--info", "slower").exit_code == 0  # our own output: replaced without --overwrite
    assert duration(out) > d1 * 1.3


def test_changed_input_content_redoes_the_task(tmp_path):
    clip = tmp_path / "in.wav"
    shutil.copy(CLIPS / "narration.wav", clip)
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type", "edit_info"],
                       [["a", "edit", "in.wav", "speed", "faster"]])
    r1 = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out", "-q")
    assert r1.exit_code == 0
    r2 = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out", "-q")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["tasks"][0]["status"] == "skipped"
    shutil.copy(CLIPS / "pauses.wav", clip)  # same name, new content
    r2 = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out", "-q")
    assert r2.exit_code == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["tasks"][0]["status"] == "done"
    assert abs(duration(tmp_path / "out" / "a.wav") - duration(CLIPS / "pauses.wav") / 1.2) < 0.1


def test_foreign_output_is_not_overwritten_without_flag(tmp_path):
    out = tmp_path / "o.wav"
    out.write_bytes(b"precious")
    args = ["edit", CLIPS / "narration.wav", "--type", "vad", "--engine", "dsp", "-o", out, "-q"]
    r = invoke(*args)
    assert r.exit_code == 2
    assert "exists and was not written by this task" in r.stderr and "--overwrite" in r.stderr
    assert out.read_bytes() == b"precious"
    assert invoke(*args, "--overwrite").exit_code == 0
    assert duration(out) > 1


def test_a_failing_task_does_not_stop_the_others(tmp_path):
    # A silent input passes validation (a valid audio file) and fails its task when read.
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type", "edit_info", "output"], [
        ["ok1", "edit", str(CLIPS / "narration.wav"), "speed", "faster", ""],
        ["bad", "edit", str(tmp_path / "silent.wav"), "denoise", "", ""],
        ["after-bad", "edit", "@bad", "vad", "", ""],
        ["ok2", "edit", str(CLIPS / "noisy.wav"), "denoise", "", ""],
    ])
    out = tmp_path / "out"
    r = invoke("batch", m, "--engine", "dsp", "-o", out)
    assert r.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    status = {t["id"]: t["status"] for t in report["tasks"]}
    assert status == {"ok1": "done", "bad": "failed", "after-bad": "failed", "ok2": "done"}
    errors = {t["id"]: t["error"] for t in report["tasks"]}
    assert "the audio is silent" in errors["bad"]
    assert "input task 'bad' failed" in errors["after-bad"]
    assert "failed bad:" in r.stderr and "Traceback" not in r.stderr
    assert (out / "ok2.wav").exists()
    # --fail-fast stops after the failure
    r = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out2", "--fail-fast", "--batch-size", "1", "-q")
    assert r.exit_code == 1
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert [t["status"] for t in report["tasks"]] == ["done", "failed", "cancelled", "cancelled"]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = invoke("batch", ROOT / "manifests" / "demo.csv", "--engine", "dsp", "-o", out, "--dry-run")
    assert r.exit_code == 0
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 9
    ids = [ln.split("\t")[0] for ln in lines]
    assert ids.index("noisy-clean") < ids.index("noisy-clean-faster")
    assert not out.exists()


def test_chained_task_runs_after_its_input_even_when_listed_first(tmp_path):
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type", "edit_info"], [
        ["second", "edit", "@first", "speed", "faster"],
        ["first", "edit", str(CLIPS / "pauses.wav"), "vad", ""],
    ])
    r = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0
    d_first = duration(tmp_path / "out" / "first.wav")
    assert d_first < duration(CLIPS / "pauses.wav") - 2
    assert abs(duration(tmp_path / "out" / "second.wav") - d_first / 1.2) < 0.1


def test_help_does_not_import_torch_and_is_fast():
    heavy = "('torch', 'numpy', 'pandas', 'funasr', 'whisper', 'transformers')"
    code = f"import sys, editx_cli.main; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    t0 = time.perf_counter()
    p = run_editx("--help")
    assert p.returncode == 0 and "batch" in p.stdout
    assert time.perf_counter() - t0 < 5  # generous bound for a loaded CI machine; the benchmark gives the figure


def test_cache_command_stats_and_clear(tmp_path, isolated_cache):
    invoke("batch", ROOT / "manifests" / "demo.csv", "--engine", "dsp", "-o", tmp_path / "out", "-q")
    r = invoke("cache", "stats", "--json")
    s = json.loads(r.stdout)
    assert s["path"] == str(isolated_cache) and s["entries"] == 1 and s["hits"] == 1 and s["misses"] == 1
    assert invoke("cache", "path").stdout.strip() == str(isolated_cache)
    assert "hit rate: 50.0%" in invoke("cache").stdout
    assert "cleared 1 entries" in invoke("cache", "clear", "--yes").stdout
    assert json.loads(invoke("cache", "stats", "--json").stdout)["entries"] == 0


def test_doctor_lists_packages_devices_and_engines():
    r = invoke("doctor", "--engine", "dsp")
    assert r.exit_code == 0
    assert "engine dsp: ready" in r.stdout
    assert "torch" in r.stdout and "onnxruntime providers" in r.stdout
    r = invoke("doctor", "--engine", "stepaudio")
    assert r.exit_code == 1
    assert "engine stepaudio: NOT READY" in r.stdout and "--model-dir (EDITX_MODEL_DIR) is not set" in r.stdout
    r = invoke("doctor")  # every engine: a machine where dsp alone is ready is a working machine
    assert r.exit_code == 0 and "engine dsp: ready" in r.stdout and "engine stepaudio: NOT READY" in r.stdout


def test_no_cache_flag_leaves_no_cache(tmp_path, isolated_cache):
    r = invoke("batch", ROOT / "manifests" / "demo.csv", "--engine", "dsp", "-o", tmp_path / "o", "-q", "--no-cache")
    assert r.exit_code == 0
    assert not isolated_cache.exists()
    assert json.loads((tmp_path / "o" / "report.json").read_text())["run"]["cache"]["hits"] == 0
