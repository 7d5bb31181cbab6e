"""A served request ends in the loop's sink for the server: its output rendered once and handed
to the request, no file written. Watched with an audit hook (every file the process opens for
writing, and every rename), and compared byte for byte with `editx batch` and with one render
of the engine's own output (OpenAI's `speed` and `pcm` as stages of that render)."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import pytest
from conftest import CLIPS, invoke

pytest.importorskip("fastapi", reason="needs editx[serve]")
from test_serve import App  # noqa: E402

from editx_cli import audio, deliver  # noqa: E402
from editx_cli.cache import NullCache  # noqa: E402
from editx_cli.engine import Request, build  # noqa: E402

NARRATION = CLIPS / "narration.wav"
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Writes:
    """Paths the process opens for writing, or renames, while `on` (an audit hook cannot be removed:
    it stays, idle, for the rest of the session)."""

    def __init__(self) -> None:
        self.on, self.seen = False, []
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if not self.on:
            return
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                    (isinstance(flags, int) and flags & WRITING):
                self.seen.append(("open", str(path)))
        elif event in ("os.rename", "os.replace", "os.remove", "os.unlink"):
            self.seen.append((event, str(args[0])))


@pytest.fixture(scope="module")
def dsp(tmp_path_factory):
    app = App(tmp_path_factory.mktemp("sink"), max_audio_seconds=60)
    yield app
    app.stop()


def _engine_output(edit_info: str = "faster"):
    """The dsp engine's own output for a speed edit of the narration (deterministic: Rubber Band)."""
    engine = build("dsp", {}, NullCache())
    engine.load()
    x, sr = audio.load(NARRATION, max_rate=audio.MAX_INPUT_RATE)
    result = engine.run(Request(kind="edit", audio=x, sr=sr, audio_text="", text="", edit_type="speed",
                                edit_info=edit_info, intensity=1.0, seed=0, audio_digest=audio.samples_digest(x, sr),
                                path=str(NARRATION), task_id="t"))
    return result.audio, result.sr


def test_a_served_edit_writes_no_file_but_its_upload(dsp):
    first = dsp.edit(response_format="mp3", loudness="-16")  # the engine loaded, its cache warm
    assert first.status_code == 200, first.text
    writes = _Writes()
    writes.on = True
    try:
        r = dsp.edit(response_format="mp3", loudness="-16")
    finally:
        writes.on = False
    assert r.status_code == 200, r.text
    assert r.content == first.content
    opened = [path for event, path in writes.seen if event == "open"]
    assert len(opened) == 1 and Path(opened[0]).name == "upload.wav", writes.seen  # the upload, saved
    renamed = [path for event, path in writes.seen if event in ("os.rename", "os.replace")]
    assert renamed == [], renamed  # no output put into place, no resume record


def test_served_output_is_batchs_and_pcm_and_speed_are_one_render(dsp, tmp_path):
    """The same edit served and run by `editx batch`: the same bytes. OpenAI's `pcm` is the
    engine's output rendered once at 24 kHz with no header; the Step-Audio API's `speed` is one
    render with the stretch as its first stage (not the output rendered, decoded, stretched and
    rendered again)."""
    served = dsp.edit(response_format="flac", loudness="-20")
    assert served.status_code == 200, served.text
    m = tmp_path / "m.csv"
    m.write_text(f"id,task,input_audio,edit_type,edit_info,loudness\nfast,edit,{NARRATION},speed,faster,-20\n")
    b = invoke("batch", m, "--engine", "dsp", "-o", tmp_path / "out", "--format", "flac", "-q")
    assert b.exit_code == 0, b.stderr
    assert served.content == (tmp_path / "out" / "fast.flac").read_bytes()

    y, sr = _engine_output()
    pcm = dsp.edit(response_format="pcm")
    assert pcm.status_code == 200, pcm.text
    assert pcm.content == deliver.render(y, sr, ".pcm", deliver.Delivery(sample_rate=24000))[0]

    body = {"input": "unused by this mode", "response_format": "wav", "speed": 1.25,
            "step_audio": {"mode": "speed", "edit_info": "faster",
                           "input_audio_base64": base64.b64encode(NARRATION.read_bytes()).decode()}}
    stretched = dsp.post("/v1/audio/speech", json=body)
    assert stretched.status_code == 200, stretched.text
    once = deliver.render(y, sr, ".wav", deliver.Delivery(speed=1.25))[0]
    assert stretched.content == once
    twice = deliver.render(audio.time_stretch(*audio.decode(deliver.render(y, sr, ".wav", deliver.Delivery())[0]),
                                              1.25), sr, ".wav", deliver.Delivery())[0]
    assert once != twice  # the two differ: the comparison above tells them apart
