"""Resume: a batch killed with SIGKILL mid-run, then rerun, completes every task
exactly once and leaves no truncated file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS, EDITX, read_audio, write_manifest


@pytest.mark.slow
def test_kill_9_mid_batch_then_rerun(tmp_path):
    # Long enough inputs that the batch takes a few seconds, so the kill lands mid-run.
    x, sr = read_audio(CLIPS / "narration.wav")
    sf.write(tmp_path / "long.wav", np.tile(x, 8), sr)
    n = 16
    infos = ["faster", "slower", "more faster", "more slower"]
    rows = [[f"t{i:02d}", "edit", "long.wav", "speed", infos[i % 4], 1.0 + (i // 4) * 0.25] for i in range(n)]
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type", "edit_info", "intensity"], rows)
    out = tmp_path / "out"
    proc = subprocess.Popen([EDITX, "batch", m, "--engine", "dsp", "-o", out, "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("t*.wav"))) < 3:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("t*.wav")}
    assert 3 <= len(first) < n, "the kill should land mid-batch"
    assert not (out / "report.json").exists()

    p = subprocess.run([EDITX, "batch", m, "--engine", "dsp", "-o", out, "-q"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    report = json.loads((out / "report.json").read_text())
    status = {t["id"]: t["status"] for t in report["tasks"]}
    assert sorted(status) == [f"t{i:02d}" for i in range(n)]
    # every output committed before the kill is skipped and left untouched; the rest ran now
    for name, stamp in first.items():
        assert status[name[:-4]] == "skipped"
        path = out / name
        assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp
    assert sum(s == "done" for s in status.values()) == n - len(first)
    # each output is a complete, valid file of the expected length
    src_seconds = len(x) * 8 / sr
    from editx_cli.engine.dsp import tempo_factor

    for row in rows:
        info = sf.info(str(out / f"{row[0]}.wav"))
        expected = src_seconds / tempo_factor(row[4], row[5])
        assert abs(info.frames / info.samplerate - expected) / expected < 0.05
    assert not list(out.glob(".*.part")), "no temporary file is left behind"
    # a third run does nothing
    p = subprocess.run([EDITX, "batch", m, "--engine", "dsp", "-o", out, "-q"], capture_output=True, text=True)
    assert p.returncode == 0
    assert all(t["status"] == "skipped" for t in json.loads((out / "report.json").read_text())["tasks"])


def test_truncated_output_is_redone(tmp_path):
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "edit_type", "edit_info"],
                       [["a", "edit", str(CLIPS / "narration.wav"), "speed", "faster"]])
    out = tmp_path / "out"
    assert subprocess.run([EDITX, "batch", m, "--engine", "dsp", "-o", out, "-q"]).returncode == 0
    data = (out / "a.wav").read_bytes()
    (out / "a.wav").write_bytes(data[: len(data) // 2])  # damaged after the fact
    p = subprocess.run([EDITX, "batch", m, "--engine", "dsp", "-o", out, "-q"], capture_output=True, text=True)
    # the damaged file is no longer the one editx wrote: refuse to touch it without --overwrite
    assert p.returncode == 2 and "--overwrite" in p.stderr
    p = subprocess.run([EDITX, "batch", m, "--engine", "dsp", "-o", out, "-q", "--overwrite"])
    assert p.returncode == 0
    assert (out / "a.wav").read_bytes() == data
