"""Hostile files: model folders and caches are data, never code. Each case plants code that
would create a marker file if it ever ran, and checks the exact outcome: exit code, message,
no marker, and nothing written or changed."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from conftest import CLIPS, invoke, model_args

from editx_cli import datafiles

NARRATION = CLIPS / "narration.wav"
FUNASR_ID = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ckpt(tiny, tmp_path) -> Path:
    root = tmp_path / "ckpt"
    shutil.copytree(tiny, root, symlinks=True)
    return root


def run_edit(root: Path, out: Path, *extra: str):
    return invoke("edit", NARRATION, "--type", "vad", *model_args(root), "-o", out, *extra)


def refused(r, out: Path, marker: Path, *needles: str) -> None:
    assert r.exit_code == 2, r.stderr
    assert "Traceback" not in r.stderr and "the engine failed to load" in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("config", [
    "trust_remote_code: true\nremote_code: evil.py\n",
    "remote_code: ./evil.py\n",
    "model_conf:\n  trust_remote_code: True\n",
])
def test_funasr_config_asking_for_remote_code_is_refused(ckpt, tmp_path, config):
    folder = ckpt / "Step-Audio-Tokenizer" / FUNASR_ID
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('owned')\n")
    cfg = folder / "config.yaml"
    cfg.write_text(cfg.read_text() + config)
    out = tmp_path / "o.wav"
    refused(run_edit(ckpt, out, "--no-cache"), out, marker, f"{cfg}:", "asks to run Python code")


def test_funasr_configuration_json_asking_for_remote_code_is_refused(ckpt, tmp_path):
    folder = ckpt / "Step-Audio-Tokenizer" / FUNASR_ID
    marker = tmp_path / "ran"
    (folder / "configuration.json").write_text(json.dumps({"framework": "pytorch", "remote_code": "evil.py"}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('owned')\n")
    out = tmp_path / "o.wav"
    refused(run_edit(ckpt, out, "--no-cache"), out, marker, "configuration.json", "asks to run Python code")


def test_a_pickle_in_the_funasr_checkpoint_never_runs(ckpt, tmp_path):
    import torch

    marker = tmp_path / "ran"
    model = ckpt / "Step-Audio-Tokenizer" / FUNASR_ID / "model.pt"
    state = torch.load(model, weights_only=True)
    state["evil"] = Payload(marker)
    torch.save(state, model)
    out = tmp_path / "o.wav"
    # the paraformer loads on first use, so this is the task's failure (exit 1), named
    r = run_edit(ckpt, out, "--no-cache")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert "the paraformer did not load as data (UnpicklingError" in r.stderr and FUNASR_ID in r.stderr
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("which", ["vocoder", "funasr"])
def test_a_yaml_alias_bomb_is_refused_at_once(ckpt, tmp_path, which):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = (ckpt / "Step-Audio-EditX" / "CosyVoice-300M-25Hz" / "cosyvoice.yaml" if which == "vocoder"
            else ckpt / "Step-Audio-Tokenizer" / FUNASR_ID / "config.yaml")
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    out = tmp_path / "o.wav"
    refused(run_edit(ckpt, out, "--no-cache"), out, tmp_path / "never", str(path), "YAML aliases",
            "possible alias bomb")


def test_an_oversized_config_is_refused_unread(ckpt, tmp_path):
    path = ckpt / "Step-Audio-EditX" / "CosyVoice-300M-25Hz" / "cosyvoice.yaml"
    path.write_text(path.read_text() + "# " + "x" * datafiles.MAX_CONFIG_BYTES + "\n")
    out = tmp_path / "o.wav"
    refused(run_edit(ckpt, out, "--no-cache"), out, tmp_path / "never", str(path), "more than a config file has")


def _plant(cache_dir: Path, value) -> int:
    """Overwrite every entry of an editx cache with `value`, through diskcache's own pickling."""
    import diskcache

    raw = diskcache.Cache(str(cache_dir))
    keys = list(raw.iterkeys())
    for key in keys:
        raw.set(key, value)
    raw.close()
    return len(keys)


@pytest.mark.parametrize("engine", ["dsp", "stepaudio"])
def test_a_pickle_planted_in_a_shared_cache_never_runs(tiny, tmp_path, engine):
    cache, marker = tmp_path / "shared-cache", tmp_path / "ran"
    args = (["--engine", "dsp"] if engine == "dsp" else model_args(tiny)[:])
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    r = invoke("edit", NARRATION, "--type", "vad", *args, "-o", first, "--cache-dir", cache)
    assert r.exit_code == 0, r.stderr
    assert _plant(cache, Payload(marker)) >= 1
    r = invoke("edit", NARRATION, "--type", "vad", *args, "-o", second, "--cache-dir", cache)
    assert r.exit_code == 0, r.stderr
    assert not marker.exists()
    assert "ignoring an entry that editx did not write" in r.stderr and "Traceback" not in r.stderr
    assert digest(first) == digest(second)  # computed again, the same result
    # and the entry is rewritten in editx's own form: the next run hits it
    third = tmp_path / "third.wav"
    r = invoke("edit", NARRATION, "--type", "vad", *args, "-o", third, "--cache-dir", cache, "--report",
               tmp_path / "r.json")
    assert r.exit_code == 0 and "ignoring" not in r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["run"]["cache"]["misses"] == 0


def test_cache_values_are_stored_without_pickle(tmp_path):
    import numpy as np

    from editx_cli.cache import FeatureCache, UnsafeEntry, pack, unpack

    cache = FeatureCache(tmp_path / "c")
    cache.set("k", {"codes": [1, 2], "mel": np.ones((2, 3), np.float32)})
    cache.close()
    import sqlite3

    rows = sqlite3.connect(tmp_path / "c" / "cache.db").execute("SELECT mode, value FROM Cache").fetchall()
    assert [mode for mode, _ in rows] == [1]  # raw bytes, never diskcache's pickle mode (4)
    assert b"editx-cache-1" in rows[0][1] and pickle.PROTO not in rows[0][1][:2]
    with pytest.raises(UnsafeEntry):
        unpack(pickle.dumps({"codes": [1]}))
    with pytest.raises(UnsafeEntry):
        unpack(pack({"a": 1})[:-7])  # truncated
    with pytest.raises(TypeError):
        pack({"x": np.array([object()], dtype=object)})


# -- data loss: reports, silent input, temp files, modes ------------------------------------------

DSP = ["--engine", "dsp"]


def _manifest(path: Path, rows: list[list], header=("id", "input_audio", "edit_type", "output")) -> Path:
    from conftest import write_manifest

    return write_manifest(path, ["task", *header], [["edit", *r] for r in rows])


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["twin-is-manifest", "default-is-manifest", "not-json", "input-audio"])
def test_a_report_never_lands_on_the_manifest_or_an_input(tmp_path, case):
    work = tmp_path / "w"
    work.mkdir()
    clip = work / "clip.wav"
    shutil.copy(NARRATION, clip)
    out = work / "out"
    out.mkdir()
    if case == "default-is-manifest":
        m = _manifest(out / "report.csv", [["a", str(clip), "vad", ""]])
        extra: list = []
        expected = f"{out / 'report.csv'} would overwrite the manifest"
    else:
        m = _manifest(work / "m.csv", [["a", str(clip), "vad", ""]])
        report = {"twin-is-manifest": work / "m.json", "not-json": work / "r.txt",
                  "input-audio": work / "clip.json"}[case]
        extra = ["--report", report]
        expected = {"twin-is-manifest": f"{work / 'm.csv'} would overwrite the manifest",
                    "not-json": "r.txt: must name a .json file",
                    "input-audio": "would overwrite the input audio of row 1"}[case]
        if case == "input-audio":  # an input named like the report's CSV twin
            shutil.move(clip, work / "clip.csv.wav")
            clip = work / "clip.csv"
            shutil.copy(NARRATION, clip)
            m = _manifest(work / "m.csv", [["a", str(clip), "vad", "a.wav"]])
    before = _hashes(work)
    r = invoke("batch", m, *DSP, "-o", out, *extra)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "error: --report: " in r.stderr and expected in r.stderr, r.stderr
    assert _hashes(work) == before  # nothing written, nothing changed


@pytest.mark.parametrize(("samples", "message"), [
    ("zeros", "the audio is silent (every sample is zero)"),
    ("nan", "the audio holds NaN or infinite samples"),
    ("inf", "the audio holds NaN or infinite samples"),
])
@pytest.mark.parametrize("edit", ["vad", "denoise"])
def test_silent_or_nan_input_is_a_task_error_and_writes_nothing(tmp_path, samples, message, edit):
    import numpy as np
    import soundfile as sf

    x = np.zeros(16000, np.float32)
    if samples != "zeros":
        x[:] = 0.1
        x[500] = np.nan if samples == "nan" else np.inf
    bad = tmp_path / "bad.wav"
    sf.write(bad, x, 16000, subtype="FLOAT")
    m = _manifest(tmp_path / "m.csv", [["bad", str(bad), edit, ""], ["good", str(NARRATION), edit, ""]])
    r = invoke("batch", m, *DSP, "-o", tmp_path / "o", "-q")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    tasks = {t["id"]: t for t in json.loads((tmp_path / "o" / "report.json").read_text())["tasks"]}
    assert tasks["bad"]["status"] == "failed" and message in tasks["bad"]["error"]
    assert tasks["good"]["status"] == "done"
    assert not (tmp_path / "o" / "bad.wav").exists()


def test_the_engine_output_is_never_written_with_nan_or_full_scale_dc(tmp_path):
    import numpy as np

    from editx_cli import audio

    for x, message in [(np.full(100, np.nan, np.float32), "NaN"), (np.full(100, -1.0, np.float32), "constant"),
                       (np.full(100, 3.0, np.float32), "constant")]:
        with pytest.raises(audio.AudioError, match=message):
            audio.write_atomic(tmp_path / "o.wav", x, 16000)
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_cleanup_removes_only_a_dead_runs_temporary_files_of_that_output(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    out = tmp_path / "o"
    out.mkdir()
    stale = out / f".a[b].wav.{host}.{dead.pid}.k1.part"  # left by a killed run: goes
    others = [out / f".ab.wav.{host}.{dead.pid}.x1.part",  # what a glob of the name would also match
              out / f".a[b].wav.{host}.{os.getpid()}.x2.part",  # a live run writing the same output
              out / f".a[b].wav.otherhost.{dead.pid}.x3.part",  # another machine's, on a shared folder
              out / ".a[b].wav.not-editx.part", out / f".other.wav.{host}.{dead.pid}.x4.part"]
    for p in [stale, *others]:
        p.write_bytes(b"someone else's")
    m = _manifest(tmp_path / "m.csv", [["a", str(NARRATION), "vad", "a[b].wav"]])
    r = invoke("batch", m, *DSP, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    assert (out / "a[b].wav").exists() and not stale.exists()
    assert all(p.read_bytes() == b"someone else's" for p in others)
    assert sorted(out.glob(".*.part")) == sorted(others)  # and none of its own left


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        r = invoke("edit", NARRATION, "--type", "vad", *DSP, "-o", tmp_path / "o.wav")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "o.wav").stat().st_mode & 0o777 == 0o640


# -- manifests: JSON edge cases ----------------------------------------------------------------


def _jsonl(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("line", "message"), [
    ('{"task": "edit", "input_audio": "%s", "edit_type": "vad", "intensity": NaN}',
     "row 1: not valid JSON (NaN is not a JSON number; write a number, or null for none)"),
    ('{"task": "edit", "input_audio": "%s", "edit_type": "vad", "seed": -Infinity}',
     "row 1: not valid JSON (-Infinity is not a JSON number"),
    ('{"task": "edit", "input_audio": "%s", "edit_type": "vad", "seed": 1180591620717411303424}',
     "row 1, field 'seed': 1180591620717411303424 is outside 0–4294967295"),
    ('{"task": "edit", "input_audio": "%s", "edit_type": "vad", "iterations": 1' + "0" * 400 + "}",
     "row 1, field 'iterations': 1" + "0" * 19 + "... is far too large"),
    ('{"task": "edit", "input_audio": "%s", "edit_type": "vad", "intensity": [1]}',
     "row 1, field 'intensity': expected a text or a number, got list"),
])
def test_json_values_that_are_not_plain_numbers_are_named(tmp_path, line, message):
    m = _jsonl(tmp_path / "m.jsonl", line % NARRATION)
    r = invoke("batch", m, *DSP, "-o", tmp_path / "o", "--dry-run")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"m.jsonl: {message}" in r.stderr, r.stderr


def test_a_line_separator_inside_a_json_string_is_a_character(tmp_path):
    text = "Batch editing\u2028keeps every voice clip\u2029consistent."
    m = _jsonl(tmp_path / "m.jsonl", json.dumps({"id": "a", "task": "edit", "input_audio": str(NARRATION),
                                                   "edit_type": "vad", "audio_text": text}, ensure_ascii=False),
               json.dumps({"id": "b", "task": "edit", "input_audio": str(NARRATION), "edit_type": "speed",
                           "edit_info": "faster", "intensity": None}))
    r = invoke("batch", m, *DSP, "-o", tmp_path / "o", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("[run]") == 2


@pytest.mark.parametrize("seed", ["-1", "4294967296", "1e3", "x"])
def test_the_seed_option_is_range_checked(tmp_path, seed):
    r = invoke("edit", NARRATION, "--type", "vad", *DSP, "--seed", seed, "-o", tmp_path / "o.wav")
    assert r.exit_code == 2 and "--seed" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.wav").exists()


# -- tracebacks where a clear message belongs -------------------------------------------------


def test_a_chain_of_1500_tasks_plans_and_runs_in_order(tmp_path):
    from editx_cli import manifest

    rows = [["t0", str(NARRATION), "vad", ""]] + [[f"t{i}", f"@t{i - 1}", "vad", ""] for i in range(1, 1500)]
    m = _manifest(tmp_path / "m.csv", list(reversed(rows)))
    r = invoke("batch", m, *DSP, "-o", tmp_path / "o", "--dry-run")
    assert r.exit_code == 0 and "Traceback" not in r.stderr
    ids = [line.split("\t")[0] for line in r.stdout.splitlines()]
    assert ids == [f"t{i}" for i in range(1500)]  # each after the task it reads
    cyclic = [["a", "@c", "vad", ""], ["b", "@a", "vad", ""], ["c", "@b", "vad", ""]]
    r = invoke("batch", _manifest(tmp_path / "c.csv", cyclic), *DSP, "-o", tmp_path / "o", "--dry-run")
    assert r.exit_code == 2 and "chain forms a cycle: @a -> @c -> @b -> @a" in r.stderr
    assert manifest  # the module under test, imported for the record


@pytest.mark.parametrize(("row", "message"), [
    (["x" * 220, str(NARRATION), "vad", ""], "field 'id': xxxxxxxxxxxxxxxxxxxxxxxx...: 224 bytes, too long"),
    (["a", str(NARRATION), "vad", "o" * 230 + ".wav"], "field 'output': oooooooooooooooooooooooo...: 234 bytes"),
    (["a", str(NARRATION), "vad", "bad\x00name.wav"], "field 'output': contains a NUL byte"),
    (["a", str(NARRATION) + "\x00", "vad", ""], "field 'input_audio': contains a NUL byte"),
])
def test_names_a_file_system_cannot_hold_are_refused_at_validation(tmp_path, row, message):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps(dict(zip(["id", "input_audio", "edit_type", "output"], row, strict=True),
                                 task="edit")) + "\n")
    r = invoke("batch", m, *DSP, "-o", tmp_path / "o", "--dry-run")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"m.jsonl: row 1, {message}" in r.stderr, r.stderr


def test_an_out_dir_under_a_regular_file_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    m = _manifest(tmp_path / "m.csv", [["a", str(NARRATION), "vad", ""]])
    for extra in (["--dry-run"], []):
        r = invoke("batch", m, *DSP, "-o", blocker / "out", *extra)
        assert r.exit_code == 2 and "Traceback" not in r.stderr
        assert f"{blocker} is a file, so the folder {blocker / 'out'} cannot be made" in r.stderr
    assert blocker.read_text() == "I am a file"


def test_a_guided_denoise_without_a_transcript_fails_validation_not_the_run(tiny, tmp_path):
    r = invoke("edit", NARRATION, "--type", "denoise", "--intensity", "2", *model_args(tiny),
               "-o", tmp_path / "o.wav", "--dry-run")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "intensity 2 on a denoise edit needs the transcript of input_audio" in r.stderr


def test_an_unusable_cache_folder_is_named_and_a_refused_run_creates_none(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = invoke("edit", NARRATION, "--type", "vad", *DSP, "-o", tmp_path / "o.wav", "--cache-dir", blocker / "c")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"--cache-dir: {blocker / 'c'}: the feature cache cannot be used" in r.stderr
    assert not (tmp_path / "o.wav").exists()
    for args in (["cache", "--cache-dir", blocker / "c"], ["cache", "--cache-dir", blocker / "c", "clear", "--yes"]):
        r = invoke(*args)
        assert r.exit_code == 2 and "the feature cache cannot be used" in r.stderr and "Traceback" not in r.stderr
    # a run refused for bad input leaves no cache behind
    cache = tmp_path / "fresh-cache"
    r = invoke("edit", NARRATION, "--type", "emotion", *DSP, "-o", tmp_path / "o.wav", "--cache-dir", cache)
    assert r.exit_code == 2 and not cache.exists()


def test_a_damaged_cache_database_is_set_aside_and_recreated(tmp_path):
    cache = tmp_path / "c"
    assert invoke("edit", NARRATION, "--type", "vad", *DSP, "-o", tmp_path / "a.wav", "--cache-dir", cache
                  ).exit_code == 0
    (cache / "cache.db").write_bytes(b"this is not a database" * 100)
    r = invoke("cache", "--cache-dir", cache, "clear", "--yes")
    assert r.exit_code == 0 and "Traceback" not in r.stderr, r.stderr
    assert "the database was damaged" in r.stderr and list(cache.glob("cache.db.damaged-*"))
    (cache / "cache.db").write_bytes(b"again, not a database" * 100)
    r = invoke("edit", NARRATION, "--type", "vad", *DSP, "-o", tmp_path / "b.wav", "--cache-dir", cache)
    assert r.exit_code == 0 and "the database was damaged" in r.stderr
    assert digest(tmp_path / "a.wav") == digest(tmp_path / "b.wav")


def test_a_state_record_that_is_not_an_object_is_a_stale_record(tmp_path):
    out = tmp_path / "o"
    m = _manifest(tmp_path / "m.csv", [["a", str(NARRATION), "vad", ""]])
    assert invoke("batch", m, *DSP, "-o", out, "-q").exit_code == 0
    for junk in ("[1, 2]", "42", '"text"', "null"):
        (out / ".editx" / "a.wav.json").write_text(junk)
        r = invoke("batch", m, *DSP, "-o", out, "-q")
        assert r.exit_code == 2 and "Traceback" not in r.stderr
        assert "a.wav exists and was not written by this task (use --overwrite)" in r.stderr


def test_resume_converges_after_a_crash_between_record_and_rename(tmp_path):
    """The record of a new commit is written, the rename never happens, the parameters change
    again: the next run must take the file in place as its own and go on."""
    from editx_cli import resume as batch

    out = tmp_path / "o"
    rows = lambda info: [["edit", "a", str(NARRATION), "speed", info]]  # noqa: E731
    from conftest import write_manifest

    header = ["task", "id", "input_audio", "edit_type", "edit_info"]
    assert invoke("batch", write_manifest(tmp_path / "m.csv", header, rows("faster")), *DSP, "-o", out,
                  "-q").exit_code == 0
    first = digest(out / "a.wav")
    # simulate the crash: the next commit's record is written, its file never renamed into place
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith("a.wav"):
            raise KeyboardInterrupt("killed between record and rename")
        return real_replace(src, dst)

    batch.os.replace = crash
    try:  # Click turns the interrupt into "Aborted!"
        r = invoke("batch", write_manifest(tmp_path / "m.csv", header, rows("slower")), *DSP, "-o", out, "-q")
        assert r.exit_code != 0
    finally:
        batch.os.replace = real_replace
    assert digest(out / "a.wav") == first  # the old file, under a record that names the new one
    r = invoke("batch", write_manifest(tmp_path / "m.csv", header, rows("more slower")), *DSP, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    assert digest(out / "a.wav") != first
    r = invoke("batch", tmp_path / "m.csv", *DSP, "-o", out, "-q", "--report", tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["tasks"][0]["status"] == "skipped"


# -- interruption ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "workers"), [("SIGINT", "1"), ("SIGTERM", "1"), ("SIGINT", "2")])
def test_an_interrupted_run_reports_what_finished_exits_130_and_resumes(tmp_path, sig, workers):
    import signal
    import subprocess
    import time

    import numpy as np
    import soundfile as sf
    from conftest import EDITX, read_audio

    x, sr = read_audio(NARRATION)
    sf.write(tmp_path / "long.wav", np.tile(x, 8), sr)
    n = 16
    rows = [[f"t{i:02d}", "long.wav", "speed", ["faster", "slower"][i % 2]] for i in range(n)]
    m = _manifest(tmp_path / "m.csv", rows, header=("id", "input_audio", "edit_type", "edit_info"))
    out = tmp_path / "out"
    cmd = [EDITX, "batch", m, "--engine", "dsp", "-o", out, "-q", "--workers", workers]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("t*.wav"))) < 2:
        time.sleep(0.01)
    os.killpg(proc.pid, getattr(signal, sig)) if sig == "SIGINT" else proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    report = json.loads((out / "report.json").read_text())
    status = {t["id"]: t["status"] for t in report["tasks"]}
    done = sorted(k for k, v in status.items() if v == "done")
    assert report["run"]["pending"] == sum(v == "pending" for v in status.values()) > 0
    assert set(status.values()) <= {"done", "pending"} and len(done) >= 2
    assert sorted(p.stem for p in out.glob("t*.wav")) == done  # every done task's file, no other
    assert not list(out.glob(".*.part"))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    second = {t["id"]: t["status"] for t in json.loads((out / "report.json").read_text())["tasks"]}
    assert sorted(k for k, v in second.items() if v == "skipped") == done
    assert sum(v == "done" for v in second.values()) == n - len(done)


def test_two_manifests_sharing_an_out_dir_never_overwrite_each_other(tmp_path):
    from conftest import write_manifest

    out = tmp_path / "out"
    header = ["task", "input_audio", "edit_type", "edit_info"]  # no ids: both rows become 1.wav
    a = write_manifest(tmp_path / "a.csv", header, [["edit", str(NARRATION), "speed", "faster"]])
    b = write_manifest(tmp_path / "b.csv", header, [["edit", str(NARRATION), "speed", "slower"]])
    assert invoke("batch", a, *DSP, "-o", out, "-q", "--report", tmp_path / "ra.json").exit_code == 0
    first = digest(out / "1.wav")
    r = invoke("batch", b, *DSP, "-o", out, "-q", "--report", tmp_path / "rb.json")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert f"b.csv: row 1, field 'output': 1.wav belongs to another manifest, {a}" in r.stderr
    assert digest(out / "1.wav") == first and not (tmp_path / "rb.json").exists()
    # the owner resumes as before
    r = invoke("batch", a, *DSP, "-o", out, "-q", "--report", tmp_path / "ra.json")
    assert r.exit_code == 0 and json.loads((tmp_path / "ra.json").read_text())["run"]["skipped"] == 1
    # --force takes it over; then the first manifest is the one refused
    assert invoke("batch", b, *DSP, "-o", out, "-q", "--force", "--report", tmp_path / "rb.json").exit_code == 0
    assert digest(out / "1.wav") != first
    r = invoke("batch", a, *DSP, "-o", out, "-q", "--report", tmp_path / "ra.json")
    assert r.exit_code == 2 and f"1.wav belongs to another manifest, {b}" in r.stderr


def test_a_csv_row_with_too_many_fields_is_named(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(f"task,input_audio,edit_type\nedit,{NARRATION},vad\n\nedit,{NARRATION},vad,extra,fields\n")
    r = invoke("batch", m, *DSP, "-o", tmp_path / "o", "--dry-run")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert "m.csv: row 2: not valid CSV (this row has more fields than the header's 3)" in r.stderr


# -- model folders: every file is data, checked before anything is built -------------------------

MODEL = "Step-Audio-EditX"
VOCODER = f"{MODEL}/CosyVoice-300M-25Hz"


def _torch_pickle(path: Path, marker: Path) -> None:
    import torch

    torch.save({"weight": Payload(marker)}, path)


def _config(root: Path, **changes) -> None:
    cfg = root / MODEL / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **changes}))


MODEL_CASES = {
    "config-not-json": (lambda r, m: (r / MODEL / "config.json").write_text("{nope"),
                        f"{MODEL}/config.json: not a readable JSON config"),
    "config-an-array": (lambda r, m: (r / MODEL / "config.json").write_text("[1, 2]"),
                        f"{MODEL}/config.json: not a JSON object"),
    "config-missing": (lambda r, m: (r / MODEL / "config.json").unlink(), f"{MODEL}/config.json: missing"),
    "config-a-million-layers": (lambda r, m: _config(r, num_hidden_layers=10**6),
                                f"{MODEL}/config.json: num_hidden_layers 1000000 does not match the weights (2)"),
    "config-huge-hidden-size": (lambda r, m: _config(r, hidden_size=10**9),
                                f"{MODEL}/config.json: hidden_size 1000000000 does not match the weights (64)"),
    "config-negative-size": (lambda r, m: _config(r, vocab_size=-5),
                             f"{MODEL}/config.json: vocab_size must be a positive integer, got -5"),
    "config-size-as-text": (lambda r, m: _config(r, hidden_size="64"),
                            f"{MODEL}/config.json: hidden_size must be a positive integer, got '64'"),
    "weights-truncated": (lambda r, m: (r / MODEL / "model-00001.safetensors").write_bytes(
        (r / MODEL / "model-00001.safetensors").read_bytes()[:1000]),
        f"{MODEL}/model-00001.safetensors: not a readable safetensors file"),
    "weights-a-pickle-named-safetensors": (lambda r, m: _torch_pickle(r / MODEL / "model-00001.safetensors", m),
                                           f"{MODEL}/model-00001.safetensors: not a readable safetensors file"),
    "weights-only-as-pickle-bin": (lambda r, m: ((r / MODEL / "model-00001.safetensors").unlink(),
                                                 _torch_pickle(r / MODEL / "pytorch_model.bin", m)),
                                   f"{MODEL}: no *.safetensors weight files"),
    "tokenizer-model-garbage": (lambda r, m: (r / MODEL / "tokenizer.model").write_bytes(b"\x00junk" * 100),
                                f"{MODEL}/tokenizer.model: not a SentencePiece model"),
    "tokenizer-config-not-json": (lambda r, m: (r / MODEL / "tokenizer_config.json").write_text("{"),
                                  f"{MODEL}/tokenizer_config.json: not valid JSON"),
    "hift-a-pickle": (lambda r, m: _torch_pickle(r / VOCODER / "hift.pt", m),
                      f"{VOCODER}/hift.pt: refused: it holds Python objects, not only tensors"),
    "flow-a-pickle": (lambda r, m: _torch_pickle(r / VOCODER / "flow.pt", m),
                      f"{VOCODER}/flow.pt: refused: it holds Python objects, not only tensors"),
    "hift-not-a-checkpoint": (lambda r, m: (r / VOCODER / "hift.pt").write_bytes(b"PK\x03\x04junk"),
                              f"{VOCODER}/hift.pt: not a readable weights file"),
    "vocoder-yaml-python-tag": (lambda r, m: (r / VOCODER / "cosyvoice.yaml").write_text(
        f"flow: !!python/object/apply:os.system ['touch {m}']\n"), "cosyvoice.yaml: not valid YAML"),
    "vocoder-yaml-broken": (lambda r, m: (r / VOCODER / "cosyvoice.yaml").write_text("a: [unclosed\n"),
                            "cosyvoice.yaml: not valid YAML (while parsing a flow sequence)"),
    "centroids-a-pickle": (lambda r, m: __import__("numpy").save(
        r / "Step-Audio-Tokenizer" / "linguistic_tokenizer.npy",
        __import__("numpy").array([Payload(m)], dtype=object), allow_pickle=True),
        "linguistic_tokenizer.npy: not a plain array file (Array can't be memory-mapped: Python objects in dtype.)"),
    "centroids-garbage": (lambda r, m: (r / "Step-Audio-Tokenizer" / "linguistic_tokenizer.npy").write_bytes(
        b"\x93NUMPY junk"), "linguistic_tokenizer.npy: not a plain array file"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_a_damaged_or_hostile_model_folder_is_named_and_never_runs_code(ckpt, tmp_path, case):
    damage, message = MODEL_CASES[case]
    marker = tmp_path / "ran"
    damage(ckpt, marker)
    out = tmp_path / "o.wav"
    before = _hashes(ckpt)
    r = run_edit(ckpt, out, "--no-cache")
    assert r.exit_code == 2, r.stderr
    assert "Traceback" not in r.stderr and str(ckpt) in r.stderr and message in r.stderr, r.stderr
    assert not marker.exists() and not out.exists()
    assert _hashes(ckpt) == before


# -- the file system says no: a full disk, a read-only folder ------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs mounted for the test; skipped where mounting is not allowed."""
    import subprocess

    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or r.returncode})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_the_tasks_by_name_and_leaves_no_partial_file(small_fs, tmp_path):
    out = small_fs / "out"
    m = _manifest(tmp_path / "m.csv", [["a", str(NARRATION), "vad", ""], ["b", str(CLIPS / "pauses.wav"), "vad", ""]])
    r = invoke("batch", m, *DSP, "-o", out, "-q", "--report", tmp_path / "r.json")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    tasks = json.loads((tmp_path / "r.json").read_text())["tasks"]
    assert [t["error"] for t in tasks] == ["OSError: [Errno 28] No space left on device"] * 2
    assert list(out.iterdir()) == []  # no output, no .part


def test_a_report_that_cannot_be_written_says_so_and_keeps_the_outputs(small_fs, tmp_path):
    (small_fs / "fill").write_bytes(b"\0" * 60_000)
    while True:  # fill the last blocks too
        try:
            with open(small_fs / "fill", "ab") as f:
                f.write(b"\0" * 4096)
        except OSError:
            break
    m = _manifest(tmp_path / "m.csv", [["a", str(NARRATION), "vad", ""]])
    r = invoke("batch", m, *DSP, "-o", tmp_path / "out", "-q", "--report", small_fs / "r.json")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert (f"error: --report: {small_fs / 'r.json'}: the report could not be written (No space left on device); "
            "the outputs are in place and a rerun skips them") in r.stderr
    assert sorted(p.name for p in small_fs.iterdir()) == ["fill"]
    assert (tmp_path / "out" / "a.wav").is_file()


@pytest.mark.parametrize("exists", [True, False])
def test_a_read_only_out_dir_is_refused_before_any_work(small_fs, tmp_path, exists):
    import subprocess

    if exists:
        (small_fs / "out").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    m = _manifest(tmp_path / "m.csv", [["a", str(NARRATION), "vad", ""]])
    r = invoke("batch", m, *DSP, "-o", small_fs / "out", "-q")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    where = small_fs / "out" if exists else small_fs
    assert f"error: --out-dir: cannot write in {where}" in r.stderr, r.stderr  # the option, not a row
    assert not (tmp_path / "cache").exists()
