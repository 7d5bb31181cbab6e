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
