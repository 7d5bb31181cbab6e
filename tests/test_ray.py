"""Ray: the same tasks on a local Ray instance (CPU actors), the same outputs and report."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import CLIPS, EDITX, ROOT, model_args, write_manifest

pytest.importorskip("ray")


def _ray_env(tmp_path) -> dict:
    # a local instance of our own: no auth token written under the home folder, no cluster joined
    return {"RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.mark.slow
def test_dsp_on_ray(tmp_path):
    import os

    env = {**os.environ, **_ray_env(tmp_path)}
    demo = ROOT / "manifests" / "demo.csv"
    p = subprocess.run([EDITX, "batch", demo, "--engine", "dsp", "--ray", "--workers", "2", "-o", tmp_path / "r",
                        "-q"], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["run"]["done"] == 9
    assert [w["name"] for w in report["run"]["engine_info"]["workers"]] == ["ray actor 0", "ray actor 1"]
    # resume rules hold on Ray too: a rerun skips everything
    p = subprocess.run([EDITX, "batch", demo, "--engine", "dsp", "--ray", "-o", tmp_path / "r", "-q"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["run"]["skipped"] == 9


@pytest.mark.slow
def test_stepaudio_on_ray_matches_a_plain_run(tiny, tmp_path):
    import os

    env = {**os.environ, **_ray_env(tmp_path)}
    text = "Batch editing keeps every voice clip consistent, from the first take to the last."
    rows = [["a", "edit", str(CLIPS / "narration.wav"), text, "emotion", "happy"],
            ["b", "edit", "@a", text, "speed", "slower"]]
    m = write_manifest(tmp_path / "m.csv", ["id", "task", "input_audio", "audio_text", "edit_type", "edit_info"],
                       rows)
    for name, extra in (("plain", []), ("ray", ["--ray"])):
        p = subprocess.run([EDITX, "batch", m, *model_args(tiny), *extra, "-o", tmp_path / name, "-q"],
                           capture_output=True, text=True, timeout=600, env=env)
        assert p.returncode == 0, p.stderr
    for row in rows:
        assert (tmp_path / "plain" / f"{row[0]}.wav").read_bytes() == (tmp_path / "ray" / f"{row[0]}.wav").read_bytes()
