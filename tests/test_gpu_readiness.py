"""The GPU check runs on the GPU image: its paths import nothing that neither the image
(benchmarks/gpu_image.txt) nor the wheelhouse (benchmarks/gpu_wheels.txt) holds.

The import guard (benchmarks/image_guard) refuses every other distribution in the processes
it is given to, and writes down each refusal that editx's own code meets; the check then runs
here, on the CPU, through every part (`--quick`: the same code with the least work)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

GUARD = ROOT / "benchmarks" / "image_guard"
IMAGE = ROOT / "benchmarks" / "gpu_image.txt"
WHEELS = ROOT / "benchmarks" / "gpu_wheels.txt"


def _guarded(tmp_path, *allow) -> tuple[dict, os.PathLike]:
    log = tmp_path / "refused.tsv"
    env = {**os.environ, "PYTHONPATH": str(GUARD), "EDITX_IMAGE_ALLOW": os.pathsep.join(map(str, allow)),
           "EDITX_IMAGE_LOG": str(log)}
    return env, log


def test_the_guard_refuses_a_package_the_image_lacks_and_names_who_asked(tmp_path):
    env, log = _guarded(tmp_path, IMAGE)
    p = subprocess.run([sys.executable, "-c", "import editx_cli.cache"], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 1 and "diskcache is not on the GPU image" in p.stderr
    assert log.read_text().split("\t")[:2] == ["diskcache", "editx_cli.cache"]
    env, log = _guarded(tmp_path, IMAGE, WHEELS)  # the wheelhouse brings it
    p = subprocess.run([sys.executable, "-c", "import editx_cli.cache"], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr


def test_the_decode_benchmark_needs_only_the_image(tmp_path):
    """The decode rows must come back even if the wheelhouse failed to install."""
    env, log = _guarded(tmp_path, IMAGE)
    p = subprocess.run([sys.executable, "-c", "import benchmarks.decode"], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    assert not log.exists()


@pytest.mark.slow
def test_every_part_of_the_gpu_check_runs_with_the_image_and_the_wheelhouse_alone(tmp_path):
    env, log = _guarded(tmp_path, IMAGE, WHEELS)
    env["OUT"] = str(tmp_path)
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--shape", "tiny", "--quick",
                        "--budget", "600"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    checks = {r["check"]: r for r in rows}
    assert {"device", "decode b1", "vocoder bfloat16", "vocoder float32", "tiny checkpoints", "CLI 2 clone tasks",
            "CLI --deterministic b8 = b1", "serve idle release", "prefill W=512"} <= set(checks), p.stdout
    bad = [r for r in rows if r["result"] in ("not run", "FAILED", "ERROR") or r["result"].startswith(("NOT", "DIFF"))]
    assert not bad, bad
    assert checks["decode b1"]["data"]["slots"] == 1  # batch 1 is one slot: no guided task takes two
    assert not log.exists(), log.read_text()
    assert p.stdout.splitlines()[0] == "| check | result | detail |"  # a row printed as each part finished
