"""The Step-Audio API's clients against `editx serve`, in-process (the app through httpx's
ASGI transport in Starlette's TestClient; no socket): the fork's documented requests replayed
(step_audio in every mode, base64 audio, /v1/audio/speech/upload, /v1/tags, metadata and the
model echoed), audio URLs refused unless allowed and then only from public addresses, and
`stream: true` sending a long text's audio as its pieces are spoken."""

from __future__ import annotations

import base64
import http.server
import io
import ipaddress
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS

pytest.importorskip("fastapi", reason="needs editx[serve]")
from fastapi.testclient import TestClient  # noqa: E402

from editx_cli.serve import ServeOptions, create_app  # noqa: E402
from editx_cli.serve.fetch import FetchError, fetch, public  # noqa: E402

CLIP = CLIPS / "narration.wav"
CLIP_TEXT = "The quick brown fox jumps over the lazy dog."
B64 = base64.b64encode(CLIP.read_bytes()).decode()
STORY = " ".join(f"Sentence number {i} of a story that goes on." for i in range(30))  # about 50 s: cut in pieces


def client(tmp: Path, engine: dict | None = None, **options) -> TestClient:
    config = dict(engine or {"engine": "dsp"})
    return TestClient(create_app(ServeOptions(
        engine=config.pop("engine"), engine_config=config, cache_dir=str(tmp / "cache"), voices_dir=tmp / "voices",
        allowed_hosts=("testserver",), **options)))


@pytest.fixture(scope="module")
def model(tiny, tmp_path_factory):
    """The tiny checkpoints behind one in-process app for the module."""
    engine = {"engine": "stepaudio", "model_dir": str(tiny / "Step-Audio-EditX"),
              "tokenizer_dir": str(tiny / "Step-Audio-Tokenizer")}
    with client(tmp_path_factory.mktemp("stepaudio-api"), engine) as c:
        yield c


def audio_of(r) -> tuple[np.ndarray, int]:
    assert r.status_code == 200, r.text
    return sf.read(io.BytesIO(r.content), dtype="float32")


def test_the_forks_documented_requests(model):
    """Each mode as the fork's clients send it: a clone from base64 audio and its transcript,
    every edit from base64 audio; metadata echoed as headers, the model in X-StepAudio-Model."""
    clone = model.post("/v1/audio/speech", json={
        "model": "step-audio-editx", "input": "Hello there, friend.", "response_format": "wav",
        "metadata": {"job-id": "42", "user": "zoë", "n": 3},
        "step_audio": {"mode": "clone", "prompt_audio_base64": B64, "prompt_text": CLIP_TEXT}})
    y, sr = audio_of(clone)
    assert len(y) > 0 and sr == 24000 and clone.headers["content-type"] == "audio/wav"
    assert clone.headers["x-stepaudio-model"] == "step-audio-editx"
    assert clone.headers["x-metadata-job-id"] == "42" and clone.headers["x-metadata-n"] == "3"
    assert clone.headers["x-metadata-user"] == "zo%C3%AB"  # headers are Latin-1: UTF-8, percent-encoded
    edits = [{"mode": "emotion", "edit_info": "happy", "audio_text": CLIP_TEXT, "n_edit_iter": 2},
             {"mode": "style", "edit_info": "whisper", "audio_text": CLIP_TEXT, "intensity": 1.0},
             {"mode": "speed", "edit_info": "faster", "audio_text": CLIP_TEXT},
             {"mode": "denoise"}, {"mode": "vad"}]
    for step in edits:
        r = model.post("/v1/audio/speech", json={"input": "unused by this mode", "response_format": "flac",
                                                 "step_audio": {**step, "input_audio_base64": B64}})
        y, _ = audio_of(r)
        assert len(y) > 0, step
    tagged = model.post("/v1/audio/speech", json={"input": "The quick brown fox [laugh] jumps over the lazy dog.",
                                                  "step_audio": {"mode": "paralinguistic", "audio_text": CLIP_TEXT,
                                                                 "input_audio_base64": B64}})
    assert audio_of(tagged)[0].size and tagged.headers["content-type"] == "audio/wav"  # the fork's default format
    upload = model.post("/v1/audio/speech/upload", files={"prompt_audio_file": ("ref.wav", CLIP.read_bytes())},
                        data={"payload": json.dumps({"input": "Hello.", "metadata": {"k": "v"},
                                                     "step_audio": {"prompt_text": CLIP_TEXT}})})
    assert audio_of(upload)[0].size and upload.headers["x-metadata-k"] == "v"
    added = model.post("/v1/voices", files={"file": ("ref.wav", CLIP.read_bytes())},
                       data={"name": "fox", "text": CLIP_TEXT})
    assert added.status_code == 201, added.text
    listed = model.get("/v1/voices").json()["data"]
    assert [(v["id"], v["prompt_text"]) for v in listed] == [("fox", CLIP_TEXT)]
    preset = model.post("/v1/audio/speech", json={"input": "Hello.", "voice": "fox", "step_audio": {"mode": "clone"}})
    assert audio_of(preset)[0].size  # a registered voice, its transcript with it
    assert model.delete("/v1/voices/fox").status_code == 200
    tags = model.get("/v1/tags").json()["data"]
    assert [t["mode"] for t in tags] == ["clone", "emotion", "style", "speed", "paralinguistic", "denoise", "vad"]
    assert "happy" in tags[1]["edit_info"] and "laugh" in tags[4]["tags"] and tags[1]["needs_audio_text"]


@pytest.mark.parametrize("body,status,param,message", [
    ({"step_audio": {"mode": "clone", "prompt_audio_base64": B64}}, 400, "step_audio.prompt_text",
     "missing: the transcript"),
    ({"step_audio": {"mode": "clone"}}, 400, "step_audio.prompt_audio", "missing: the voice to clone"),
    ({"voice": "nobody", "step_audio": {}}, 404, "voice", "voice 'nobody' not found"),
    ({"step_audio": {"mode": "emotion", "edit_info": "happy", "input_audio_base64": B64}}, 400,
     "step_audio.audio_text", "start the server with --whisper-model"),
    ({"step_audio": {"mode": "emotion", "edit_info": "glad", "input_audio_base64": B64, "audio_text": "x"}}, 400,
     "step_audio.edit_info", "unknown emotion 'glad'"),
    ({"step_audio": {"mode": "denoise"}}, 400, "step_audio.input_audio", "missing: the audio to edit"),
    ({"step_audio": {"mode": "denoise", "input_audio_base64": "no base64!"}}, 400,
     "step_audio.input_audio_base64", "not base64"),
    ({"step_audio": {"mode": "denoise", "input_audio_base64": base64.b64encode(b"RIFF junk").decode()}}, 400,
     "step_audio.input_audio_base64", "not usable audio"),
    ({"step_audio": {"mode": "denoise", "input_audio_base64": B64, "model_variant": "awq"}}, 400,
     "step_audio.model_variant", "serves the base variant"),
    ({"step_audio": {"mode": "sing"}}, 400, "step_audio.mode", "Input should be"),
    ({"metadata": {"bad key": "x"}, "step_audio": {"mode": "denoise", "input_audio_base64": B64}}, 400,
     "metadata", "cannot be a header name"),
    ({"metadata": {f"k{i}": i for i in range(33)}, "step_audio": {}}, 400, "metadata", "at most 32"),
    ({"step_audio": {"mode": "denoise", "input_audio_url": "https://example.com/a.wav"}}, 400,
     "step_audio.input_audio_url", "start it with --allow-url-fetch"),
])
def test_bad_step_audio_requests(model, body, status, param, message):
    r = model.post("/v1/audio/speech", json={"input": "Hello.", **body})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"], error
    assert "/tmp" not in error["message"]


def test_a_bad_upload_payload_names_its_field(model):
    r = model.post("/v1/audio/speech/upload", data={"payload": json.dumps({"step_audio": {}})})
    assert r.status_code == 400 and r.json()["error"]["param"] == "payload.input"
    r = model.post("/v1/audio/speech/upload", data={"payload": "{not json"})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("payload")


def test_inline_audio_is_bounded_before_it_is_decoded(tmp_path):
    with client(tmp_path, max_upload_bytes=10_000) as c:
        big = base64.b64encode(b"\0" * 20_000).decode()
        r = c.post("/v1/audio/speech", json={"input": "x", "step_audio": {"mode": "denoise",
                                                                          "input_audio_base64": big}})
        assert r.status_code == 413 and r.json()["error"]["param"] == "step_audio.input_audio_base64"


@pytest.mark.parametrize("url", ["http://127.0.0.1/a.wav", "http://localhost:8000/a.wav", "http://10.1.2.3/a.wav",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]/a.wav",
                                 "http://[::ffff:127.0.0.1]/a.wav", "http://192.168.0.1/a.wav",
                                 "ftp://example.com/a.wav", "file:///etc/passwd", "http://user:pw@example.com/a"])
def test_urls_to_this_machine_or_network_are_never_fetched(tmp_path, url):
    with client(tmp_path, allow_url_fetch=True) as c:
        r = c.post("/v1/audio/speech", json={"input": "x", "step_audio": {"mode": "denoise", "input_audio_url": url}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "step_audio.input_audio_url"
    assert any(w in r.json()["error"]["message"] for w in ("public address", "http://", "credentials"))


class _Files(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the standard library's name)
        if self.path == "/clip.wav":
            body = CLIP.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/private":
            self.send_response(302)
            self.send_header("Location", "http://10.255.255.1/clip.wav")
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x" * 100)
                self.wfile.flush()
                time.sleep(0.1)

    def log_message(self, *args):
        pass


def test_a_fetch_is_bounded_in_size_and_time_and_redirects_are_checked_again():
    """The fetch itself against a local server (the address check opened to loopback alone,
    as a public server cannot be reached from a test): the body, its size limit, the time
    limit, and a redirect to a private address refused."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def loopback(a):
        return a.is_loopback

    try:
        assert fetch(base + "/clip.wav", 10**7, 10, loopback) == CLIP.read_bytes()
        with pytest.raises(FetchError, match="over 1000 bytes"):
            fetch(base + "/clip.wav", 1000, 10, loopback)
        with pytest.raises(FetchError, match="not a public address"):
            fetch(base + "/private", 10**7, 10, loopback)
        t0 = time.monotonic()
        with pytest.raises(FetchError, match="more than 1 s"):
            fetch(base + "/slow", 10**7, 1, loopback)
        assert time.monotonic() - t0 < 3
        with pytest.raises(FetchError, match="not a public address"):
            fetch(base + "/clip.wav", 10**7, 10)  # the default check
    finally:
        server.shutdown()
    assert public(ipaddress.ip_address("8.8.8.8")) and not public(ipaddress.ip_address("100.64.0.1"))


def test_a_long_text_streams_its_pieces_as_they_are_spoken(model):
    """`stream: true`: the first bytes come before the whole text is spoken, and the stream
    carries the very samples of the same request answered whole."""
    voice = {"prompt_audio_base64": B64, "prompt_text": CLIP_TEXT}
    t0 = time.perf_counter()
    chunks, first = [], None
    with model.stream("POST", "/v1/audio/speech", json={"input": STORY, "stream": True, "response_format": "wav",
                                                        "step_audio": voice}) as r:
        assert r.status_code == 200 and r.headers["x-editx-stream"] == "true"
        for chunk in r.iter_bytes():
            first = first or time.perf_counter() - t0
            chunks.append(chunk)
    streamed_in = time.perf_counter() - t0
    data = b"".join(chunks)
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"  # a WAV of open length
    whole = model.post("/v1/audio/speech", json={"input": STORY, "response_format": "wav", "step_audio": voice})
    assert whole.status_code == 200 and int(whole.headers["x-editx-chunks"]) >= 3
    assert data[44:] == whole.content[44:]  # the same 16-bit samples
    assert len(chunks) >= 3 and first < 0.8 * streamed_in, (first, streamed_in)
    pcm = model.post("/v1/audio/speech", json={"input": "Hello there.", "stream": True, "response_format": "pcm",
                                               "step_audio": voice})
    assert pcm.status_code == 200 and pcm.content[:4] != b"RIFF" and len(pcm.content) % 2 == 0


@pytest.mark.parametrize("extra,param", [({"response_format": "mp3"}, "response_format"),
                                          ({"loudness": -16}, "loudness"), ({"speed": 1.5}, "speed")])
def test_what_needs_the_whole_output_is_not_streamed(model, extra, param):
    r = model.post("/v1/audio/speech", json={"input": "Hi.", "stream": True, **extra,
                                             "step_audio": {"prompt_audio_base64": B64, "prompt_text": CLIP_TEXT}})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_each_output_setting_is_declared_once(tmp_path):
    """The command line's options, the manifest's fields and the server's request fields (JSON
    and form, as its OpenAPI schema documents them) all come from settings.DELIVERY and
    settings.EDIT."""
    from click.testing import CliRunner

    from editx_cli import settings
    from editx_cli.main import cli
    from editx_cli.manifest import FIELDS

    helps = " ".join(CliRunner().invoke(cli, ["batch", "--help"], terminal_width=500).output.split())
    with client(tmp_path) as c:
        schema = c.get("/openapi.json").json()["components"]["schemas"]
    for s in settings.DELIVERY:
        assert s.option in helps and " ".join(s.help.split()) in helps and s.name in FIELDS
        if s.name != "format":  # a request's format is its response_format
            for model in ("Speech", "EditForm"):
                assert schema[model]["properties"][s.name]["description"] == s.help, (model, s.name)
    helps = " ".join(CliRunner().invoke(cli, ["edit", "--help"], terminal_width=500).output.split())
    for s in settings.EDIT:  # an edit's settings: `editx edit`'s options, the edits form, with their ranges
        assert s.option in helps and " ".join(s.described.split()) in helps and s.name in FIELDS
        assert schema["EditForm"]["properties"][s.name]["description"] == s.described
    assert schema["EditForm"]["required"] == ["edit_type"]
    for s, name in ((settings.INTENSITY, "intensity"), (settings.ITERATIONS, "n_edit_iter")):  # and the fork's
        assert schema["EditForm"]["properties"][s.name]["default"] == s.default
        assert schema["StepAudio"]["properties"][name]["default"] == s.default
    assert "(0.1 to 3.0)" in helps


def test_a_bad_input_is_refused_before_a_stream_starts(model):
    r = model.post("/v1/audio/speech", json={"input": "Hi.", "stream": True, "step_audio": {
        "prompt_audio_base64": base64.b64encode(b"RIFF....WAVEjunk").decode(), "prompt_text": CLIP_TEXT}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "step_audio.prompt_audio_base64", r.text
