"""`editx serve`'s app in this process, driven through Starlette's TestClient (httpx, no socket)
and the official openai client: every endpoint, bad requests with their exact status and
message, concurrent requests decoded together, idle release and reload, the full queue. The
browser gets the same app on a real port (uvicorn in a thread); one server is started as the
command line starts it, for the API key, the bind check and the image's health check."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
from conftest import ARTIFACTS, CLIPS, EDITX, ROOT, chromium_page, invoke, long_speech, model_args, needs_chromium

httpx = pytest.importorskip("httpx", reason="needs editx[serve] and httpx")
pytest.importorskip("fastapi", reason="needs editx[serve]")

NARRATION = CLIPS / "narration.wav"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Requests:
    """What the tests ask of a server, in-process or not (`get` and `post` are its client's)."""

    def health(self) -> dict:
        return self.get("/healthz").json()

    def edit(self, path: Path = NARRATION, headers: dict | None = None, **form):
        return self.post("/v1/audio/edits", files={"file": (path.name, path.read_bytes())},
                         data={"edit_type": "speed", "edit_info": "faster", **form}, headers=headers)


class App(_Requests):
    """The app of `editx serve` with these ServeOptions, in this process."""

    def __init__(self, tmp: Path, **options):
        from fastapi.testclient import TestClient

        from editx_cli.serve import ServeOptions, create_app

        options = {"engine": "dsp", "voices_dir": tmp / "voices", "cache_dir": str(tmp / "cache"),
                   "allowed_hosts": ("testserver",), **options}
        self.client = TestClient(create_app(ServeOptions(**options)))
        self.client.__enter__()  # the app's lifespan: its engine thread closes with stop()
        self.get, self.post, self.delete = self.client.get, self.client.post, self.client.delete
        self._server = self._thread = None
        self.url = "http://testserver"

    def listen(self) -> str:
        """Serve the same app on a free port too, for a client that needs a socket (a browser)."""
        import threading

        import uvicorn

        port = _free_port()
        self._server = uvicorn.Server(uvicorn.Config(self.client.app, host="127.0.0.1", port=port, lifespan="off",
                                                     log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
        self.client.__exit__(None, None, None)


def tiny_model(tiny: Path) -> dict:
    return {"engine": "stepaudio", "engine_config": {"model_dir": str(tiny / "Step-Audio-EditX"),
                                                     "tokenizer_dir": str(tiny / "Step-Audio-Tokenizer")}}


class Server(_Requests):
    """`editx serve` as the command line starts it, on a free port."""

    def __init__(self, tmp: Path, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / f"server-{self.port}.log", "w")
        self.http = httpx.Client(base_url=self.url, timeout=120)
        self.get, self.post = self.http.get, self.http.post
        self.proc = subprocess.Popen([EDITX, "serve", "--port", str(self.port), "--voices-dir", str(tmp / "voices"),
                                      "--cache-dir", str(tmp / "cache"), *args], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
            assert self.proc.poll() is None, (tmp / f"server-{self.port}.log").read_text()
        raise AssertionError("the server did not start")

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def dsp(tmp_path_factory):
    app = App(tmp_path_factory.mktemp("serve"), idle_unload=1.5, max_upload_bytes=2**20, max_audio_seconds=20)
    yield app
    app.stop()


def test_an_edit_comes_back_in_each_format(dsp):
    for fmt, subtype in (("wav", "PCM_16"), ("flac", "PCM_16"), ("mp3", "MPEG_LAYER_III"), ("opus", "OPUS")):
        r = dsp.edit(response_format=fmt)
        assert r.status_code == 200, r.text
        info = sf.info(io.BytesIO(r.content))
        assert info.subtype == subtype and info.duration > 2
    pcm = dsp.edit(response_format="pcm", loudness="-16")
    assert pcm.status_code == 200 and pcm.headers["content-type"] == "audio/pcm"
    assert pcm.headers["x-editx-sample-rate"] == "24000" and len(pcm.content) % 2 == 0
    assert float(pcm.headers["x-editx-loudness"]) == pytest.approx(-16, abs=0.5)


def test_a_chain_of_edits_by_posting_the_result_back(dsp, tmp_path):
    first = dsp.edit(edit_type="vad", edit_info="")
    assert first.status_code == 200
    (tmp_path / "a.wav").write_bytes(first.content)
    second = dsp.edit(tmp_path / "a.wav", edit_type="speed", edit_info="slower", iterations="2")
    assert second.status_code == 200
    assert sf.info(io.BytesIO(second.content)).duration > sf.info(io.BytesIO(first.content)).duration


@pytest.mark.parametrize("form,status,message,param", [
    ({"edit_type": "emotion", "edit_info": "happy"}, 400,
     "edit_type: the dsp engine cannot do 'emotion' edits (it does: denoise, speed, vad)", "edit_type"),
    ({"edit_type": "tempo"}, 400, "edit_type: unknown edit type 'tempo' (one of: emotion, style, speed, "
     "paralinguistic, denoise, vad)", "edit_type"),
    ({"intensity": "9"}, 400, "intensity: 9 is outside 0.1–3.0", "intensity"),
    ({"intensity": "strong"}, 400, "intensity: Input should be a valid number, unable to parse string as a number",
     "intensity"),
    ({"iterations": "0"}, 400, "iterations: 0 is outside 1–10", "iterations"),
    ({"response_format": "aac"}, 400, "unknown format 'aac' (one of: wav, flac, mp3, ogg, opus, pcm)",
     "response_format"),
    ({"loudness": "3"}, 400, "loudness: 3.0 is outside -60–-5 LUFS", "loudness"),
    ({"edit_info": "fastest"}, 400, "edit_info: unknown speed 'fastest' (one of: faster, slower, more faster, "
     "more slower)", "edit_info"),
])
def test_bad_edit_requests(dsp, form, status, message, param):
    r = dsp.edit(**form)
    assert r.status_code == status
    assert r.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def test_bad_uploads(dsp, tmp_path):
    (tmp_path / "notes.wav").write_text("not audio")
    r = dsp.edit(tmp_path / "notes.wav")
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    assert r.json()["error"]["message"].startswith("not usable audio: not a readable audio file (Error opening "
                                                   "'upload': Format not recognised.")
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16000 * 25, np.float32) + 0.01, 16000, subtype="PCM_U8")  # 25 s, 0.4 MB
    assert dsp.edit(long).json()["error"] == {"message": "the audio is 25.0 s; at most 20 s", "param": "file",
                                              "type": "invalid_request_error", "code": None}
    big = tmp_path / "big.wav"
    sf.write(big, np.zeros(16000 * 40, np.float32) + 0.01, 16000)  # 1.3 MB
    r = dsp.edit(big)
    assert r.status_code == 413 and r.json()["error"]["message"] == "the upload is over 1048576 bytes"
    r = dsp.post("/v1/audio/edits", data={"edit_type": "vad"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "file: Field required"
    r = dsp.post("/v1/audio/speech", json={"input": "hello", "voice": "nobody"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "voice 'nobody' not found (registered: none; POST /v1/voices adds one)"
    r = dsp.post("/v1/audio/speech", json={"input": "hello"})
    assert r.status_code == 400 and r.json()["error"] == {
        "message": "missing: a registered voice (GET /v1/voices lists them)", "type": "invalid_request_error",
        "param": "voice", "code": None}
    r = dsp.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("the body is not valid JSON (")
    assert r.json()["error"]["param"] is None


def test_concurrent_requests_are_all_answered_and_idle_releases_the_engine(dsp):
    dsp.edit()  # loaded
    before = dsp.health()["stats"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: dsp.edit(), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    after = dsp.health()["stats"]
    assert after["requests"] - before["requests"] == 8
    # an engine that does not batch is handed one request at a time (the rest wait, withdrawable)
    assert after["largest_batch"] == 1 and {a.headers["x-editx-batch"] for a in answers} == {"1"}
    assert dsp.health()["loaded"] is True
    deadline = time.monotonic() + 30
    while dsp.health()["loaded"]:  # released after --idle-unload 1.5 s
        assert time.monotonic() < deadline
        time.sleep(0.1)
    health = dsp.health()
    assert health["loaded"] is False and health["stats"]["unloads"] >= 1
    again = dsp.edit()
    assert again.status_code == 200 and float(again.headers["x-editx-load-seconds"]) > 0
    assert dsp.health()["stats"]["loads"] == health["stats"]["loads"] + 1


def test_a_full_queue_answers_503_with_retry_after(tmp_path):
    server = App(tmp_path, max_queue=1, max_batch=1)
    try:
        with ThreadPoolExecutor(6) as pool:  # the first loads the engine (seconds): the rest find the queue full
            answers = list(pool.map(lambda _: server.edit(), range(6)))
        codes = sorted(a.status_code for a in answers)
        assert 200 in codes and 503 in codes, codes
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "2" and busy.json()["error"]["type"] == "server_busy"
        assert server.health()["stats"]["refused"] == codes.count(503)
    finally:
        server.stop()


def test_the_api_key_and_the_images_health_check_on_a_server_started_as_the_image_starts_it(tmp_path):
    server = Server(tmp_path, "--engine", "dsp", "--api-key", "s3cret")
    try:
        ok = subprocess.run(["sh", "-c", _healthcheck()], env={"PATH": "/usr/bin:/bin", "EDITX_PORT": str(server.port)},
                            capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        down = subprocess.run(["sh", "-c", _healthcheck()],
                              env={"PATH": "/usr/bin:/bin", "EDITX_PORT": str(_free_port())},
                              capture_output=True, timeout=30)
        assert down.returncode != 0
        assert server.get("/healthz").status_code == 200  # the container's health check needs none
        r = server.get("/v1/models")
        assert r.status_code == 401
        assert r.json()["error"]["message"] == "missing or wrong API key (send Authorization: Bearer <key>)"
        assert server.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = server.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "step-audio-editx"
        assert server.edit(headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        server.stop()


def test_a_public_bind_needs_a_key():
    r = invoke("serve", "--host", "0.0.0.0", "--engine", "dsp")
    assert r.exit_code == 2
    assert ("error: --host 0.0.0.0: serving beyond this machine needs --api-key (or EDITX_API_KEY); --insecure to "
            "serve without one") in r.stderr


@pytest.fixture(scope="module")
def model_server(tiny, tmp_path_factory):
    app = App(tmp_path_factory.mktemp("serve-model"), **tiny_model(tiny), max_batch=4,
              whisper_model=str(tiny / "whisper-tiny.pt"))
    yield app
    app.stop()


def test_a_request_joins_the_decoding_already_under_way(model_server):
    """No wave to wait for: a request sent while another is decoding is taken by the engine at
    once, and both say they were decoded together."""
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(model_server.edit, NARRATION)
        deadline = time.monotonic() + 60
        while model_server.health()["running"] == 0:  # the first is in the engine's hands
            assert time.monotonic() < deadline and not first.done()
            time.sleep(0.01)
        second = pool.submit(model_server.edit, NARRATION)
        a, b = first.result(), second.result()
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.headers["x-editx-batch"] == b.headers["x-editx-batch"] == "2"


@pytest.mark.slow
def test_long_uploads_and_texts_are_cut_and_joined_as_batch_does(model_server, tiny, tmp_path):
    """The model edits about 30 s at a time: a 90 s upload is cut in its pauses, each piece
    edited and the whole sent back, the very file `editx batch` makes of it; a 3,000-character
    text is spoken in pieces and comes back whole."""
    long = tmp_path / "long.wav"
    long_speech(long, seconds=90)
    r = model_server.edit(long, edit_type="denoise", edit_info="")
    assert r.status_code == 200, r.text
    m = tmp_path / "m.csv"
    m.write_text(f"id,task,input_audio,edit_type\nlong,edit,{long},denoise\n")
    b = invoke("batch", m, *model_args(tiny), "-o", tmp_path / "out", "--batch-size", "4", "-q")
    assert b.exit_code == 0, b.stderr
    task = json.loads((tmp_path / "out" / "report.json").read_text())["tasks"][0]
    assert int(r.headers["x-editx-chunks"]) == len(task["info"]["chunks"]) >= 4
    assert r.content == (tmp_path / "out" / "long.wav").read_bytes()
    short = model_server.edit(NARRATION, edit_type="denoise", edit_info="")
    assert short.status_code == 200 and "x-editx-chunks" not in short.headers
    with open(NARRATION, "rb") as f:
        v = model_server.post("/v1/voices", files={"file": ("ref.wav", f.read())},
                              data={"name": "teller", "text": "The quick brown fox jumps over the lazy dog."})
    assert v.status_code == 201, v.text
    story = " ".join(f"Sentence number {i} of a story that goes on and on." for i in range(60))
    assert len(story) >= 3000
    speech = model_server.post("/v1/audio/speech", json={"input": story, "voice": "teller", "response_format": "wav"})
    assert speech.status_code == 200, speech.text
    assert int(speech.headers["x-editx-chunks"]) >= 5
    assert model_server.delete("/v1/voices/teller").status_code == 200  # the module's server is shared


def test_responses_are_heard_scored_and_retried_as_batch_outputs_are(tiny, tmp_path):
    """--retry-below on a server: each response is heard by Whisper and scored; one that misses
    the thresholds is made again with the next seed and the better attempt is sent, its scores in
    the headers. --qa without a Whisper model to hear with is refused before anything starts."""
    refused = invoke("serve", *model_args(tiny), "--qa")
    assert refused.exit_code == 2 and "--whisper-model" in refused.stderr
    server = App(tmp_path, **tiny_model(tiny), whisper_model=str(tiny / "whisper-tiny.pt"),
                 quality={"qa": True, "thresholds": "sim=1", "max_retries": 1})
    try:
        r = server.edit(edit_type="emotion", edit_info="happy", audio_text="A line.")
        assert r.status_code == 200, r.text
        assert r.headers["x-editx-qa-passed"] == "false"  # no output is ever identical to its input's voice
        assert 0 < float(r.headers["x-editx-qa-similarity"]) < 1
        assert "similarity" in unquote(r.headers["x-editx-qa-problems"])
        assert r.headers["x-editx-qa-attempts"] == "2" and float(r.headers["x-editx-qa-wer"]) >= 0
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")  # the openai client sends one
def test_voices_and_speech_with_the_openai_client(model_server):
    openai = pytest.importorskip("openai", reason="needs the openai package")
    server = model_server
    with open(NARRATION, "rb") as f:
        r = server.post("/v1/voices", files={"file": ("ref.wav", f.read())},
                       data={"name": "narrator", "text": "The quick brown fox jumps over the lazy dog."})
    assert r.status_code == 201, r.text
    assert r.json()["features_cached"] is True
    again = server.post("/v1/voices", files={"file": ("x.wav", NARRATION.read_bytes())},
                       data={"name": "narrator", "text": "x"})
    assert again.status_code == 409
    assert [v["name"] for v in server.get("/v1/voices").json()["data"]] == ["narrator"]

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", http_client=server.client)
    assert [m.id for m in client.models.list()] == ["step-audio-editx"]
    speech = client.audio.speech.create(model="step-audio-editx", voice="narrator", input="Hello there.",
                                        response_format="wav")
    info = sf.info(io.BytesIO(speech.content))
    assert info.frames > 0 and info.channels == 1
    with pytest.raises(openai.NotFoundError, match="voice 'nobody' not found"):
        client.audio.speech.create(model="step-audio-editx", voice="nobody", input="Hello.")
    unknown = re.escape("input: unknown tag [laughz]; did you mean [laugh]?")
    with pytest.raises(openai.BadRequestError, match=unknown):
        client.audio.speech.create(model="step-audio-editx", voice="narrator", input="Hi [laughz].")
    assert server.health()["stats"]["loads"] == 1  # one engine for voices and speech


@needs_chromium
def test_the_web_page_in_a_real_browser(model_server):
    """Register a voice, clone, then edit the result, all from the page, as a user would."""
    expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").expect
    with chromium_page(1100, 1000) as (tab, errors):
        tab.goto(model_server.listen() + "/")
        tab.click("#new-voice summary")
        tab.fill("#voice-name", "reader")
        tab.set_input_files("#voice-file", str(NARRATION))
        tab.fill("#voice-text", "The quick brown fox jumps over the lazy dog.")
        tab.click("#voice-add")
        expect(tab.locator("#status")).to_contain_text("voice reader registered", timeout=120_000)
        assert tab.input_value("#voice") == "reader"
        tab.fill("#clone-text", "Hello there, how are you?")
        tab.select_option("#clone-format", "wav")
        tab.click("#clone-go")
        tab.wait_for_selector("#history li", timeout=120_000)

        def duration(n: int) -> float:
            return tab.evaluate("""n => new Promise((ok, fail) => {
                const a = document.querySelectorAll("#history audio.result")[n];
                if (a.readyState >= 1) return ok(a.duration);
                a.addEventListener("loadedmetadata", () => ok(a.duration));
                a.addEventListener("error", () => fail("cannot play"));
            })""", n)

        assert duration(0) > 0
        tab.click("#history li .edit-this")
        assert tab.is_visible("#edit") and "current input: clone" in tab.inner_text("#current")
        tab.select_option("#edit-type", "emotion")
        tab.select_option("#edit-info", "happy")
        tab.fill("#audio-text", "Hello there, how are you?")
        tab.click("#edit-go")
        expect(tab.locator("#history li")).to_have_count(2, timeout=120_000)
        assert duration(0) > 0  # the newest first
        assert "emotion happy of clone" in tab.inner_text("#history li >> nth=0")
        tab.select_option("#edit-type", "speed")  # an error is shown as the server words it
        tab.select_option("#edit-info", "faster")
        tab.fill("#iterations", "11")
        tab.click("#edit-go")
        expect(tab.locator("#status")).to_have_class("err", timeout=60_000)
        assert tab.inner_text("#status") == "iterations: 11 is outside 1–10"
        expect(tab.locator("#health")).to_contain_text("loaded on", timeout=10_000)
        health = tab.inner_text("#health")
        assert "undefined" not in health and re.search(r"\d+ requests?, at most \d+ at once", health), health
        tab.screenshot(path=str(ARTIFACTS / "serve-ui.png"), full_page=True)
    # the one refused request is logged by the browser itself; nothing else went wrong
    assert [e for e in errors if "status of 400 (Bad Request)" not in e] == [], errors


def _healthcheck() -> str:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK"))
    return line.split(" CMD ", 1)[1]


def test_the_compose_file_restarts_and_needs_a_key():
    import yaml

    service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["editx"]
    assert service["restart"] == "unless-stopped" and service["ports"] == ["7860:7860"]
    assert service["environment"]["EDITX_API_KEY"].startswith("${EDITX_API_KEY:?")
    assert "editx-cache:/cache" in service["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["serve"]' in dockerfile and "EDITX_HOST=0.0.0.0" in dockerfile


def test_an_edit_without_its_transcript_is_transcribed(model_server):
    r = model_server.edit(edit_type="emotion", edit_info="sad", response_format="flac")
    assert r.status_code == 200, r.text
    assert unquote(r.headers["x-editx-transcript"]).strip()  # what the server heard, as the edit used it
    assert sf.info(io.BytesIO(r.content)).subtype == "PCM_16"


def test_without_whisper_an_edit_needs_its_transcript(tiny, tmp_path):
    server = App(tmp_path, **tiny_model(tiny))
    try:
        r = server.edit(edit_type="emotion", edit_info="sad")
        assert r.status_code == 400
        assert r.json()["error"]["message"] == ("audio_text: missing (an emotion edit needs the transcript of "
                                                "the upload; or start the server with --whisper-model)")
        assert server.health()["loaded"] is False  # refused before the model was needed
    finally:
        server.stop()


def test_bitrate_and_rate_of_a_response(dsp):
    r = dsp.edit(response_format="mp3", bitrate="32", sample_rate="24000")
    assert r.status_code == 200, r.text
    info = sf.info(io.BytesIO(r.content))
    assert info.samplerate == 24000
    assert len(r.content) * 8 / info.duration / 1000 == pytest.approx(32, rel=0.05)
    bad = dsp.edit(response_format="opus", sample_rate="44100")
    assert bad.json()["error"]["message"] == ("sample_rate: 44100 Hz cannot be written as .opus (its rates: 8000, "
                                              "12000, 16000, 24000, 48000)")


def _tiny_service(tiny, device_config: dict):
    from editx_cli import engine as engines
    from editx_cli.cache import NullCache
    from editx_cli.service import Service

    cls = engines.get("stepaudio")
    config = {"model_dir": str(tiny / "Step-Audio-EditX"), "tokenizer_dir": str(tiny / "Step-Audio-Tokenizer"),
              "batch_size": 2, **device_config}
    made = []

    def make():
        made.append(cls(config, NullCache()))
        return made[-1]

    return Service(make, max_batch=2, idle_unload=0.5), made


def _request():
    from editx_cli import audio
    from editx_cli.engine import Request

    x, sr = audio.load(NARRATION)
    return Request(kind="edit", audio=x, sr=sr, audio_text="The quick brown fox.", edit_type="emotion",
                   edit_info="happy", audio_digest=audio.samples_digest(x, sr))


def test_idle_release_drops_every_reference_to_the_model(tiny):
    """Nothing keeps a released model alive: the engine object itself is collected."""
    import weakref

    service, made = _tiny_service(tiny, {})
    try:
        service.submit(_request()).result(timeout=300)
        engine = weakref.ref(made.pop())
        assert engine() is not None
        deadline = time.monotonic() + 10
        while service.loaded and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not service.loaded and service.stats["unloads"] == 1
        while engine() is not None and time.monotonic() < deadline:  # collected right after the release
            time.sleep(0.1)
        assert engine() is None
    finally:
        service.close()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_idle_release_gives_the_device_memory_back(tiny):
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    service, made = _tiny_service(tiny, {"gpu": 0})
    try:
        service.submit(_request()).result(timeout=300)
        made.clear()
        assert torch.cuda.memory_allocated() > before
        deadline = time.monotonic() + 10
        while service.loaded and time.monotonic() < deadline:
            time.sleep(0.1)
        torch.cuda.synchronize()
        # Allowed: nothing. The engine's tensors, graphs and caches go with it, and the unload
        # clears cuBLAS's workspaces (which the caching allocator counts as allocated).
        left = torch.cuda.memory_allocated() - before
        assert left == 0, f"{left} bytes still allocated after the release"
    finally:
        service.close()
