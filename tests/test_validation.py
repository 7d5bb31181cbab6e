"""A corpus of bad manifests and inputs: each one exits 2, names the row and the
field, prints no traceback and writes nothing."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import CLIPS, invoke, run_editx

NARRATION = str(CLIPS / "narration.wav")
HEADER = "id,task,input_audio,edit_type,edit_info,intensity,iterations,seed,output"


def csv(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


# (name, manifest text, expected fragments of the message: row and field named)
CSV_CASES = [
    ("unknown field", csv("a,edit,N,speed,faster,,,,", header=HEADER + ",colour").replace(",,,,\n", ",,,,,red\n"),
     ["field 'colour'", "unknown field"]),
    ("missing task", csv("a,,N,speed,faster,,,,"), ["row 1", "field 'task'", "missing"]),
    ("unknown task", csv("a,transmogrify,N,speed,faster,,,,"), ["row 1", "field 'task'", "unknown task"]),
    ("intensity too high", csv("a,edit,N,speed,faster,5,,,"), ["row 1", "field 'intensity'", "outside 0.1–3.0"]),
    ("intensity too low", csv("a,edit,N,speed,faster,0.01,,,"), ["row 1", "field 'intensity'", "outside"]),
    ("intensity not a number", csv("a,edit,N,speed,faster,strong,,,"), ["field 'intensity'", "not a number"]),
    ("intensity nan", csv("a,edit,N,speed,faster,nan,,,"), ["field 'intensity'", "not a finite number"]),
    ("iterations fractional", csv("a,edit,N,speed,faster,,1.5,,"), ["field 'iterations'", "whole number"]),
    ("iterations zero", csv("a,edit,N,speed,faster,,0,,"), ["field 'iterations'", "outside 1–10"]),
    ("negative seed", csv("a,edit,N,speed,faster,,,-3,"), ["field 'seed'", "outside"]),
    ("unknown edit type", csv("a,edit,N,teleport,,,,,"), ["row 1", "field 'edit_type'", "unknown edit type"]),
    ("edit type the engine lacks", csv("a,edit,N,emotion,happy,,,,"),
     ["field 'edit_type'", "dsp engine cannot do 'emotion'"]),
    ("clone on dsp", "id,task,prompt_audio,prompt_text,text\nc,clone,N,hi,hello\n",
     ["field 'task'", "dsp engine cannot run clone tasks"]),
    ("unknown speed info", csv("a,edit,N,speed,ludicrous,,,,"), ["field 'edit_info'", "unknown speed 'ludicrous'"]),
    ("missing speed info", csv("a,edit,N,speed,,,,,"), ["field 'edit_info'", "missing for speed"]),
    ("info on vad", csv("a,edit,N,vad,remove,,,,"), ["field 'edit_info'", "vad takes no edit_info"]),
    ("missing input audio", csv("a,edit,,vad,,,,,"), ["field 'input_audio'", "missing"]),
    ("input file not found", csv("a,edit,nowhere.wav,vad,,,,,"), ["field 'input_audio'", "file not found"]),
    ("corrupt audio", csv("a,edit,corrupt.wav,vad,,,,,"), ["field 'input_audio'", "not a readable audio file"]),
    ("empty audio file", csv("a,edit,empty.wav,vad,,,,,"), ["field 'input_audio'", "file is empty"]),
    ("zero-length audio", csv("a,edit,silent0.wav,vad,,,,,"), ["field 'input_audio'", "no samples"]),
    ("duplicate id", csv("a,edit,N,vad,,,,,", "a,edit,N,denoise,,,,,"), ["row 2", "field 'id'", "duplicate id 'a'"]),
    ("duplicate output", csv("a,edit,N,vad,,,,,x.wav", "b,edit,N,denoise,,,,,x.wav"),
     ["row 2", "field 'output'", "same output as row 1"]),
    ("output overwrites input", csv("a,edit,N,vad,,,,,N"), ["row 1", "field 'output'", "overwrite its own input"]),
    ("output format", csv("a,edit,N,vad,,,,,a.m4a"), ["field 'output'", "unsupported format"]),
    ("chain to unknown id", csv("a,edit,@ghost,vad,,,,,"), ["row 1", "field 'input_audio'", "@ghost: no task"]),
    ("chain cycle", csv("a,edit,@b,vad,,,,,", "b,edit,@a,denoise,,,,,"), ["field 'input_audio'", "cycle"]),
    ("self chain", csv("a,edit,@a,vad,,,,,"), ["row 1", "field 'input_audio'", "cycle"]),
    ("bad id", csv("../evil,edit,N,vad,,,,,"), ["row 1", "field 'id'", "not a usable id"]),
    ("clone field on edit", "id,task,input_audio,edit_type,prompt_text\na,edit,N,vad,hello\n",
     ["field 'prompt_text'", "does not apply to an edit task"]),
    ("text on a speed edit", "id,task,input_audio,edit_type,edit_info,text\na,edit,N,speed,faster,hi\n",
     ["field 'text'", "does not apply to a speed edit"]),
    ("header only", HEADER + "\n", ["manifest has no tasks"]),
    ("empty file", "", ["manifest is empty"]),
    ("ragged csv", csv("a,edit,N,vad,,,,,,,,,,,"), ["not valid CSV"]),
]


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF this is not really a wave file at all" * 10)
    (tmp_path / "empty.wav").write_bytes(b"")
    good = (CLIPS / "narration.wav").read_bytes()
    (tmp_path / "silent0.wav").write_bytes(good[:44])
    return tmp_path


def _check(r, out, fragments):
    assert r.exit_code == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("error: ") for ln in lines), r.stderr
    msg = r.stderr
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert not out.exists(), "nothing may be written for an invalid manifest"


@pytest.mark.parametrize("name,text,fragments", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_bad_csv_manifest(bad_files, name, text, fragments):
    m = bad_files / "m.csv"
    m.write_text(text.replace(",N,", f",{NARRATION},").replace(",N\n", f",{NARRATION}\n"))
    out = bad_files / "out"
    _check(invoke("batch", m, "--engine", "dsp", "-o", out), out, fragments)
    assert str(m) in invoke("batch", m, "--engine", "dsp", "-o", out).stderr


JSONL_CASES = [
    ("broken json", '{"task": "edit", "input_audio": "N", "edit_type": "vad"}\n{"task": "edit",\n',
     ["row 2", "not valid JSON"]),
    ("not an object", '["edit"]\n', ["row 1", "each line must be a JSON object"]),
    ("list value", '{"task": "edit", "input_audio": "N", "edit_type": ["vad"]}\n',
     ["row 1", "field 'edit_type'", "expected a text or a number"]),
    ("boolean intensity", '{"task": "edit", "input_audio": "N", "edit_type": "vad", "intensity": true}\n',
     ["row 1", "field 'intensity'"]),
    ("number as seed string", '{"task": "edit", "input_audio": "N", "edit_type": "vad", "seed": "abc"}\n',
     ["row 1", "field 'seed'", "not a number"]),
]


@pytest.mark.parametrize("name,text,fragments", JSONL_CASES, ids=[c[0] for c in JSONL_CASES])
def test_bad_jsonl_manifest(tmp_path, name, text, fragments):
    m = tmp_path / "m.jsonl"
    m.write_text(text.replace('"N"', json.dumps(NARRATION)))
    out = tmp_path / "out"
    _check(invoke("batch", m, "--engine", "dsp", "-o", out), out, fragments)


def test_all_problems_are_reported_at_once(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(csv(f"a,edit,{NARRATION},speed,faster,9,,,", "b,edit,missing.wav,vad,,,,,", "c,edit,@zz,vad,,,,,"))
    r = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert "row 1, field 'intensity'" in r.stderr
    assert "row 2, field 'input_audio'" in r.stderr
    assert "row 3, field 'input_audio'" in r.stderr


def test_missing_manifest_and_wrong_suffix(tmp_path):
    out = tmp_path / "out"
    _check(invoke("batch", tmp_path / "nope.csv", "-o", out), out, ["nope.csv", "manifest not found"])
    (tmp_path / "m.txt").write_text("id\n")
    _check(invoke("batch", tmp_path / "m.txt", "-o", out), out, ["unknown manifest format '.txt'"])


def test_unknown_engine(tmp_path):
    out = tmp_path / "out"
    _check(invoke("batch", "x.csv", "--engine", "nope", "-o", out), out, ["--engine", "unknown engine 'nope'"])


@pytest.mark.parametrize("args,fragments", [
    (["--type", "speed", "--info", "faster", "--intensity", "7"], ["--intensity", "outside 0.1–3.0"]),
    (["--type", "wobble"], ["--type", "unknown edit type 'wobble'"]),
    (["--type", "speed", "--info", "warp"], ["--info", "unknown speed 'warp'"]),
    (["--type", "vad", "--iterations", "x"], ["--iterations", "not a number"]),
])
def test_bad_single_edit_options(tmp_path, args, fragments):
    out = tmp_path / "o.wav"
    r = invoke("edit", NARRATION, *args, "--engine", "dsp", "-o", out)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: command line")
    for frag in fragments:
        assert frag in r.stderr
    assert not out.exists()


def test_single_edit_missing_input_file(tmp_path):
    r = invoke("edit", tmp_path / "none.wav", "--type", "vad", "--engine", "dsp", "-o", tmp_path / "o.wav")
    assert r.exit_code == 2
    assert "INPUT_AUDIO" in r.stderr and "file not found" in r.stderr


def test_invalid_manifest_through_a_real_process(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(csv("a,edit,missing.wav,vad,,,,,"))
    p: subprocess.CompletedProcess = run_editx("batch", m, "--engine", "dsp", "-o", tmp_path / "out")
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: {m}: row 1, field 'input_audio': missing.wav: file not found"
    assert not (tmp_path / "out").exists()
