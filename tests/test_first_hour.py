"""What a newcomer meets in the first hour: inputs as a user has them (several files, a folder,
a manifest on stdin), a server that says where it is and is honest about its health, and
figures that are the run's own."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from conftest import CLIPS, invoke, run_editx, write_manifest

NARRATION, PAUSES = CLIPS / "narration.wav", CLIPS / "pauses.wav"
CUDA = __import__("torch").cuda.device_count() > 0


def test_edit_takes_several_inputs_or_a_folder_and_loads_once(tmp_path):
    r = run_editx("edit", NARRATION, PAUSES, "--type", "vad", "--engine", "dsp", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "out" / "narration.wav"), str(tmp_path / "out" / "pauses.wav")]
    assert "2 tasks on dsp" in r.stderr and r.stderr.count("engine load") == 1

    folder = tmp_path / "clips"
    shutil.copytree(CLIPS, folder)
    r = run_editx("edit", folder, "--type", "denoise", "--engine", "dsp", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("*_denoise.wav")) == [
        "narration_denoise.wav", "noisy_denoise.wav", "pauses_denoise.wav"]

    r = run_editx("edit", NARRATION, "--type", "vad", "--engine", "dsp", "-o", f"{tmp_path / 'one'}/", "-q")
    assert r.returncode == 0 and (tmp_path / "one" / "narration.wav").is_file(), r.stderr


def test_several_inputs_are_refused_one_transcript_and_a_file_for_their_outputs(tmp_path):
    r = invoke("edit", NARRATION, PAUSES, "--type", "vad", "--engine", "dsp", "--audio-text", "words")
    assert r.exit_code == 2 and "--audio-text is one clip's transcript" in r.stderr
    (tmp_path / "taken.wav").write_bytes(b"")
    r = invoke("edit", NARRATION, PAUSES, "--type", "vad", "--engine", "dsp", "-o", tmp_path / "taken.wav")
    assert r.exit_code == 2 and "is a file; several outputs (INPUT_AUDIO) need a folder" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("edit", empty, "--type", "vad", "--engine", "dsp")
    assert r.exit_code == 2 and "no audio files in this folder" in r.stderr


def test_clone_speaks_several_texts_in_one_run(tiny, tmp_path):
    from conftest import model_args

    r = run_editx("clone", NARRATION, "--prompt-text", "I didn't keep every voice clip consistent.",
                  "--text", "The first line.", "--text", "The second line.", *model_args(tiny),
                  "-o", tmp_path / "lines", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "lines").iterdir() if p.suffix == ".wav") == [
        "narration_cloned_1.wav", "narration_cloned_2.wav"]


def test_batch_reads_a_manifest_on_stdin(tmp_path):
    lines = [json.dumps({"task": "edit", "edit_type": "vad", "input_audio": str(p)}) for p in (NARRATION, PAUSES)]
    r = run_editx("batch", "-", "--engine", "dsp", "-o", tmp_path / "out", "-q", input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["run"]["done"] == 2
    text = "id,task,input_audio,edit_type\na,edit,manifests/clips/narration.wav,vad\n"
    r = run_editx("batch", "-", "--engine", "dsp", "-o", tmp_path / "csv", "-q", input=text, cwd=CLIPS.parents[1])
    assert r.returncode == 0 and (tmp_path / "csv" / "a.wav").is_file(), r.stderr


def test_every_line_of_a_jsonl_manifest_that_is_not_json_is_named_at_once(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "task": "edit"\n{"id": "b"}\n{bad}\n[1]\n')
    r = invoke("batch", path, "--engine", "dsp", "-o", tmp_path / "out")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert [ln.split(": ")[2] for ln in lines] == ["row 1", "row 3", "row 4"], r.stderr
    assert not (tmp_path / "out").exists()


def test_the_cache_folder_may_follow_the_subcommand(tmp_path):
    for args in (["cache", "clear", "--cache-dir", tmp_path / "a", "--yes"],
                 ["cache", "--cache-dir", tmp_path / "a", "clear", "--yes"]):
        r = invoke(*args)
        assert r.exit_code == 0 and r.stdout.strip() == f"cleared 0 entries from {tmp_path / 'a'}", r.stderr
    r = invoke("cache", "path", "--cache-dir", tmp_path / "b")
    assert r.stdout.strip() == str(tmp_path / "b")


@pytest.mark.skipif(CUDA, reason="this host has a GPU")
@pytest.mark.parametrize("command", [["serve", "--engine", "dsp"], ["edit", str(NARRATION), "--type", "vad",
                                                                   "--engine", "dsp"]])
def test_a_gpu_that_is_not_there_is_refused_at_start(command, tmp_path):
    r = run_editx(*command, "--gpu", "0", timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --gpu 0: no such GPU on this host (this torch is a CPU build); leave --gpu out to run on the CPU"]
    assert not list(tmp_path.iterdir())


def test_the_server_says_where_it_listens_and_logs_each_request(tmp_path):
    from test_serve import Server

    server = Server(tmp_path, "--engine", "dsp")
    try:
        assert server.edit().status_code == 200
    finally:
        server.stop()
    log = (tmp_path / f"server-{server.port}.log").read_text()
    assert f"http://127.0.0.1:{server.port}" in log
    assert '"GET /healthz HTTP/1.1" 200' in log and '"POST /v1/audio/edits HTTP/1.1" 200' in log


def test_health_is_an_error_while_the_engine_cannot_load(tiny, tmp_path):
    from test_serve import App

    root = tmp_path / "ckpt"
    shutil.copytree(tiny, root, symlinks=True)
    weights = next((root / "Step-Audio-EditX").glob("*.safetensors"))
    weights.unlink()
    weights.write_bytes(b"not a safetensors file")
    app = App(tmp_path, engine="stepaudio", engine_config={"model_dir": str(root / "Step-Audio-EditX"),
                                                           "tokenizer_dir": str(root / "Step-Audio-Tokenizer")})
    try:
        assert app.get("/healthz").status_code == 200  # nothing loaded yet: nothing known to be wrong
        r = app.edit(audio_text="I didn't keep every voice clip consistent.")
        assert r.status_code >= 500, r.text
        health = app.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "error"
        assert health.json()["error"].startswith("the engine could not be loaded: ")
    finally:
        app.stop()


def _vad_manifest(tmp_path, clips=(NARRATION,)):
    return write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type"],
                          [[f"t{i}", "edit", str(c), "vad"] for i, c in enumerate(clips)])


def test_a_rerun_that_skips_every_task_counts_no_cache_lookups(tmp_path):
    m = _vad_manifest(tmp_path)
    first = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out")
    assert first.exit_code == 0 and "1 task on dsp" in first.stderr
    assert "cache: 0 hits, 1 misses" in first.stderr, first.stderr
    again = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out")
    assert again.exit_code == 0 and "1 skipped" in again.stderr
    assert "cache: not used" in again.stderr, again.stderr
    run = json.loads((tmp_path / "out" / "report.json").read_text())
    assert run["run"]["cache"]["hits"] == run["run"]["cache"]["misses"] == 0
    assert run["tasks"][0]["cache_hits"] == run["tasks"][0]["cache_misses"] == 0


def test_the_report_csv_has_the_same_columns_whatever_ran(tmp_path):
    headers = []
    for name, edit in (("a", ["speed", "faster"]), ("b", ["vad", ""])):
        m = write_manifest(tmp_path / f"{name}.csv", ["id", "task", "input_audio", "edit_type", "edit_info"],
                           [[name, "edit", str(NARRATION), *edit]])
        assert invoke("batch", m, "--engine", "dsp", "-o", tmp_path / name).exit_code == 0
        with open(tmp_path / name / "report.csv", newline="") as f:
            headers.append(next(csv.reader(f)))
    assert headers[0] == headers[1]
    assert headers[0][:4] == ["id", "task", "edit_type", "status"] and headers[0][-1] == "info"


def test_qa_takes_the_engine_from_the_report_and_says_what_it_could_not_score(tiny, tmp_path):
    m = _vad_manifest(tmp_path, (NARRATION, PAUSES))
    assert invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out").exit_code == 0
    r = invoke("qa", tmp_path / "out", "--whisper-model", tiny / "whisper-tiny.pt")  # no --engine, no model folders
    assert r.exit_code == 0, r.stderr
    assert "2 outputs: 0 passed, 0 below the thresholds, 2 not scored" in r.stderr
    rows = json.loads((tmp_path / "out" / "qa.json").read_text())["outputs"]
    assert [row["qa"]["scored"] for row in rows] == [False, False]


def _on_a_terminal(args: list[str], columns: int, lines: int, cwd) -> str:
    """What editx writes to a terminal of this size (0 x 0: one nobody sized)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    from conftest import EDITX

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    proc = subprocess.Popen([EDITX, *map(str, args)], stdin=slave, stdout=slave, stderr=slave, cwd=cwd)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=120)
    os.close(master)
    return out.decode(errors="replace")


@pytest.mark.parametrize("size", [(0, 0), (100, 0), (40, 30)])
def test_a_terminal_hears_what_comes_before_the_bar_and_sees_the_bar(size, tmp_path):
    m = _vad_manifest(tmp_path, (NARRATION, PAUSES))
    text = _on_a_terminal(["batch", m, "--engine", "dsp", "-o", tmp_path / "out"], *size, cwd=tmp_path)
    lines = text.replace("\r", "\n").splitlines()
    assert lines[0] == "editx: checking the tasks and their audio…"
    assert "editx: loading the dsp engine for 2 tasks…" in lines
    bars = [ln for ln in lines if "2/2" in ln]
    assert bars and bars[-1].startswith("100%"), text
    if size[0] >= 100 or size[0] == 0:
        assert bars[-1].rstrip().endswith("done t1]"), text  # the last task finished, by name


def test_an_out_dir_that_cannot_be_made_is_blamed_on_the_out_dir(tmp_path):
    m = _vad_manifest(tmp_path, (NARRATION, PAUSES))
    (tmp_path / "a-file").write_text("mine")
    r = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "a-file" / "out")
    assert r.exit_code == 2
    folder = tmp_path / "a-file"
    assert r.stderr.strip().splitlines() == [
        f"error: --out-dir: {folder} is a file, so the folder {folder / 'out'} cannot be made"]
    assert (tmp_path / "a-file").read_text() == "mine"


def test_a_duplicate_id_is_named_even_when_its_first_row_has_another_error(tmp_path):
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type", "intensity"],
                       [["a", "edit", str(NARRATION), "vad", "9"], ["a", "edit", str(PAUSES), "vad", "1"]])
    r = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert f"error: {m}: row 1, field 'intensity'" in r.stderr
    assert f"error: {m}: row 2, field 'id': duplicate id 'a' (also row 1)" in r.stderr


def test_a_header_with_spaces_after_its_commas_gets_a_hint(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(f"id, task, input_audio, edit_type\na,edit,{NARRATION},vad\n")
    r = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert (f"error: {m}, field ' task': unknown field: the header has spaces around 'task' (write the names "
            "between the commas without them)") in r.stderr
