"""Every `editx` command shown in the README and in docs/ runs as written.

Each page's shell blocks are run in order in a folder of their own that holds what a clone of
the repository holds (the shipped manifests and clips), with the tiny checkpoints set up as the
README sets up the real ones (EDITX_MODEL_DIR, EDITX_TOKENIZER_DIR) and a tiny Whisper for the
quality checks. Left out, and only these: commands that need a GPU, a server that keeps
running, or files the page names only as placeholders.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# what a command needs that a test machine does not have
NEEDS = {
    "a GPU": re.compile(r"--gpus? |--ray\b"),
    "a server that keeps running": re.compile(r"\beditx serve\b"),
    "placeholders": re.compile(r"\.\.\.|…|/models/|\$KEY|/src/"),
    "the official source checkout": re.compile(r"--vocoder official|--editx-src"),
    "the network": re.compile(r"--allow-download"),
}


def commands(page: Path) -> list[str]:
    """The shell lines of a page's ```sh blocks that run editx, continuation lines joined."""
    out: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", page.read_text(), re.S | re.M):
        line = ""
        for raw in block.splitlines():
            line = f"{line} {raw.strip()}" if line else raw.strip()
            if line.endswith("\\"):
                line = line[:-1].rstrip()
                continue
            if re.search(r"(^|\|\s*)editx\b", line):
                out.append(line)
            line = ""
    return out


def needs(command: str) -> str | None:
    return next((what for what, pattern in NEEDS.items() if pattern.search(command)), None)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_pages_commands_are_found(page):
    for command in commands(page):
        assert command.split()[0] != "editx" or len(command.split()) > 1, command


def test_the_readme_runs_most_of_its_commands():
    shown = commands(ROOT / "README.md")
    left_out = [c for c in shown if needs(c)]
    assert len(shown) >= 12 and left_out == ["editx serve"], left_out


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(not needs(c) for c in commands(p))],
                         ids=lambda p: p.name)
def test_every_command_runs_as_written(page, tiny, tmp_path):
    folder = tmp_path / "clone"
    shutil.copytree(ROOT / "manifests", folder / "manifests")
    shutil.copytree(ROOT / "scripts", folder / "scripts")
    (folder / "tiny").symlink_to(tiny)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "EDITX_MODEL_DIR": "tiny/Step-Audio-EditX", "EDITX_TOKENIZER_DIR": "tiny/Step-Audio-Tokenizer",
           "EDITX_WHISPER_MODEL": str(tiny / "whisper-tiny.pt"), "EDITX_CACHE_DIR": str(tmp_path / "cache")}
    ran = 0
    for command in commands(page):
        if needs(command):
            continue
        if command.startswith("python "):  # the README's python is the one editx is installed in
            command = f"{sys.executable} {command[len('python '):]}"
        r = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=folder, env=env, capture_output=True,
                           text=True, timeout=600, stdin=subprocess.DEVNULL)
        # `qa` and `--qa` runs exit 1 when an output scores below the thresholds, as the tiny
        # model's noise does: the command itself ran
        scored = " qa " in f" {command} " or "--qa" in command
        assert r.returncode == 0 or (scored and r.returncode == 1), f"{command}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, f"{command}\n{r.stderr[-3000:]}"
        ran += 1
    assert ran
