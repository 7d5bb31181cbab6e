"""`editx serve` as a hostile web page and a hostile client would try it, on its default bind
(127.0.0.1, no key): rebound host names, cross-site form posts, bodies without a length,
header bombs in audio files, stalled and abandoned clients. Each finding is a case here.

Most run in-process against the app (Starlette's TestClient); the few that need a real
socket (stalls, disconnects, a body that is never sent) start `editx serve` for real."""

from __future__ import annotations

import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS

pytest.importorskip("fastapi", reason="needs editx[serve]")
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import Server, httpx  # noqa: E402

from editx_cli.serve import ServeOptions, create_app  # noqa: E402
from editx_cli.service import Busy, Service  # noqa: E402

NARRATION = CLIPS / "narration.wav"
HOME = "http://127.0.0.1:7860"


def _client(tmp_path, **options) -> TestClient:
    options = {"engine": "dsp", "max_audio_seconds": 60.0, **options}
    app = create_app(ServeOptions(voices_dir=tmp_path / "voices", cache_dir=str(tmp_path / "cache"),
                                  **options))
    return TestClient(app, base_url=HOME, raise_server_exceptions=False)


@pytest.fixture
def client(tmp_path):
    with _client(tmp_path) as c:
        yield c


def _wav(x: np.ndarray, sr: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt)
    return buf.getvalue()


def _edit(c: TestClient, data: bytes = b"", headers: dict | None = None, **form):
    return c.post("/v1/audio/edits", files={"file": ("in.wav", data or NARRATION.read_bytes())},
                  data={"edit_type": "speed", "edit_info": "faster", **form}, headers=headers)


def _voice(c: TestClient, name: str = "reader", headers: dict | None = None):
    return c.post("/v1/voices", files={"file": ("v.wav", NARRATION.read_bytes())},
                  data={"name": name, "text": "The quick brown fox."}, headers=headers)


def _answer(s: socket.socket) -> str:
    """A whole HTTP answer (head and body) read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            data.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
        block = s.recv(65536)
        if not block:
            break
        data += block
    return data.decode("latin-1")


def _error(r) -> dict:
    return r.json()["error"]


# -- DNS rebinding
def test_only_the_hosts_it_serves_are_answered(client, tmp_path):
    for host in ("evil.example", "evil.example:7860", "127.0.0.1.nip.io"):
        r = client.get("/v1/voices", headers={"host": host})
        assert r.status_code == 421, host
        assert _error(r)["message"].startswith("this server does not answer for host")
        assert _error(r)["param"] == "host"
        assert client.delete("/v1/voices/reader", headers={"host": host}).status_code == 421
        assert _edit(client, headers={"host": host}).status_code == 421
    for host in ("127.0.0.1:7860", "localhost:7860", "LOCALHOST", "[::1]:7860"):
        assert client.get("/v1/voices", headers={"host": host}).status_code == 200, host
    with _client(tmp_path, allowed_hosts=("editx.internal",)) as proxied:
        assert proxied.get("/healthz", headers={"host": "editx.internal"}).status_code == 200
        assert proxied.get("/healthz", headers={"host": "other.internal"}).status_code == 421
    with _client(tmp_path, host="0.0.0.0", api_key="k") as public:  # any name; the key guards it
        assert public.get("/healthz", headers={"host": "box.lan:7860"}).status_code == 200


# -- cross-site requests
def test_state_changing_requests_from_another_origin_are_refused(client):
    evil = {"origin": "https://evil.example"}
    for r in (_voice(client, headers=evil), _edit(client, headers=evil),
              client.delete("/v1/voices/reader", headers=evil),
              client.post("/v1/audio/speech", json={"input": "hi", "voice": "reader"}, headers=evil),
              _voice(client, headers={"sec-fetch-site": "cross-site"}),
              _voice(client, headers={"origin": "null"}),  # a sandboxed frame or a file:// page
              _voice(client, headers={"origin": "http://localhost:3000"})):  # same site, another origin
        assert r.status_code == 403
        assert _error(r) == {"message": "cross-origin request refused (--cors-origin allows a web page's origin)",
                             "type": "permission_error", "param": "origin", "code": None}
    assert client.get("/v1/voices").json()["data"] == []  # nothing was registered
    assert _voice(client, headers={"origin": HOME, "sec-fetch-site": "same-origin"}).status_code == 201  # the page
    assert _voice(client, "cli").status_code == 201  # a client that is not a browser sends neither


def test_a_cors_origin_may_call_the_api(tmp_path):
    app_origin = "https://studio.example"
    with _client(tmp_path, cors_origins=(app_origin,)) as c:
        pre = c.options("/v1/voices", headers={"origin": app_origin, "access-control-request-method": "POST"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == app_origin
        r = _voice(c, headers={"origin": app_origin, "sec-fetch-site": "cross-site"})
        assert r.status_code == 201 and r.headers["access-control-allow-origin"] == app_origin
        assert _voice(c, "other", headers={"origin": "https://evil.example"}).status_code == 403


# -- the key before the body; bodies limited while they stream
def test_the_key_is_checked_before_the_body_is_read(tmp_path):
    server = Server(tmp_path, "--engine", "dsp", "--api-key", "s3cret")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            # a body announced as 300 MB and never sent: the answer must not wait for it
            s.sendall(b"POST /v1/audio/edits HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n")
            t0 = time.monotonic()
            answer = _answer(s)
        assert answer.startswith("HTTP/1.1 401") and time.monotonic() - t0 < 5
        assert "missing or wrong API key" in answer
    finally:
        server.stop()


def test_bodies_are_limited_as_they_stream(tmp_path):
    limit = 2**20
    with _client(tmp_path, max_upload_bytes=limit) as c:
        def chunks(total: int):
            for _ in range(total // 65536):
                yield b"x" * 65536

        r = c.post("/v1/audio/speech", content=chunks(100 * limit), headers={"content-type": "application/json"})
        # room for the audio in base64 (the Step-Audio API's JSON) and the other fields
        most = limit * 4 // 3 + 2**20
        assert r.status_code == 413 and _error(r)["message"] == f"the request body is over {most} bytes"
        boundary = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
        r = c.post("/v1/audio/edits", content=iter([boundary, *chunks(20 * limit)]),
                   headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        r = c.post("/v1/voices", content=b"x", headers={"content-length": str(10 * limit)})
        assert r.status_code == 413 and _error(r)["message"].startswith(f"the request body is {10 * limit} bytes")


def test_a_stalled_body_or_header_is_cut_off(tmp_path):
    server = Server(tmp_path, "--engine", "dsp", "--body-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"input\": ")
            t0 = time.monotonic()
            answer = _answer(s)
        assert answer.startswith("HTTP/1.1 408") and "stalled for 1 s" in answer
        assert time.monotonic() - t0 < 5
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # headers never finished
            t0 = time.monotonic()
            assert s.recv(65536) == b""  # closed by the server
        assert time.monotonic() - t0 < 5
    finally:
        server.stop()


# -- audio that decodes to far more than it weighs
def test_an_upload_is_bounded_by_its_header_before_decoding(client):
    tiny_flac = _wav(np.zeros((2000, 8), np.float32), 655350, "FLAC")  # 8 channels at 655,350 Hz
    r = _edit(client, tiny_flac)
    assert r.status_code == 400
    assert _error(r)["message"] == "a sample rate of 655350 Hz; from 8000 to 192000 Hz are taken"
    r = client.post("/v1/voices", files={"file": ("v.flac", tiny_flac)}, data={"name": "huge", "text": "x"})
    assert r.status_code == 400 and "655350 Hz" in _error(r)["message"]
    wide = _wav(np.zeros((96000 * 50, 6), np.float32) + 1e-3, 96000, "FLAC")  # 50 s of 6 channels, ~1 MB
    assert len(wide) < 2 * 2**20
    r = _edit(client, wide)
    assert _error(r)["message"] == ("the audio decodes to 28800000 samples (6 channels at 96000 Hz); "
                                    "at most 11520000")
    r = _edit(client, _wav(np.full(10, 0.1, np.float32), 1))  # 1 Hz
    assert _error(r)["message"] == "a sample rate of 1 Hz; from 8000 to 192000 Hz are taken"


def test_a_voice_is_kept_at_no_more_than_48_khz(client, tmp_path):
    x, sr = sf.read(NARRATION, dtype="float32")
    hi = np.interp(np.arange(len(x) * 4) / 4, np.arange(len(x)), x).astype(np.float32)  # 4x the rate
    r = client.post("/v1/voices", files={"file": ("v.wav", _wav(hi, sr * 4))}, data={"name": "hi", "text": "x"})
    assert r.status_code == 201, r.text
    stored = sf.info(tmp_path / "voices" / "hi.wav")
    assert stored.samplerate == 48000 and stored.channels == 1
    assert stored.duration == pytest.approx(len(x) / sr, abs=1e-3)


def test_corrupt_silent_and_damaged_uploads_are_client_errors(client, caplog):
    silent = _wav(np.zeros(16000 * 2, np.float32), 16000)
    noisy = bytearray(_wav((np.random.default_rng(0).standard_normal(48000) * 0.1).astype(np.float32), 16000,
                           "FLAC"))
    for i in range(200, len(noisy) - 100, 7):
        noisy[i] = (noisy[i] * 31 + 7) % 256
    for data, message in ((silent, "not usable audio: the audio is silent (every sample is zero)"),
                          (bytes(noisy), "not usable audio: cannot decode audio")):
        for edit, info in (("denoise", ""), ("vad", ""), ("speed", "slower")):
            r = _edit(client, data, edit_type=edit, edit_info=info)
            assert r.status_code == 400 and _error(r)["message"].startswith(message), (edit, r.text)
            assert _error(r)["param"] == "file"
    assert "Traceback" not in caplog.text and "request failed" not in caplog.text


# -- abandoned work, and one queue limit
def test_a_client_that_goes_away_has_its_queued_work_dropped(tmp_path):
    server = Server(tmp_path, "--engine", "dsp", "--max-batch", "1")
    long = tmp_path / "long.wav"
    x, sr = sf.read(NARRATION, dtype="float32")
    sf.write(long, np.tile(x, 9), sr)  # 50 s: the engine is busy with it for a while

    def abandoned_request() -> None:
        request = httpx.Request("POST", server.url + "/v1/audio/edits", files={"file": ("in.wav", _wav(x, sr))},
                                data={"edit_type": "denoise"})
        head = "POST /v1/audio/edits HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(head.encode() + b"\r\n" + request.read())  # sent whole, then the client goes away

    try:
        with ThreadPoolExecutor(1) as pool:
            holder = pool.submit(server.edit, long, edit_type="denoise", edit_info="")
            while not server.health()["running"]:  # the engine loads for the holder, then edits it
                time.sleep(0.01)
            for _ in range(4):
                abandoned_request()
            assert holder.result().status_code == 200
        deadline = time.monotonic() + 30
        while server.health()["queue"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stats = server.health()["stats"]
        assert stats["dropped"] == 4 and stats["requests"] == 1, stats  # only the holder was decoded
        assert server.edit().status_code == 200  # and a fresh request is served
    finally:
        server.stop()


def test_one_queue_limit_for_every_kind_of_work(tmp_path):
    from editx_cli import engine as engines
    from editx_cli.cache import NullCache

    options = ServeOptions(engine="dsp", voices_dir=tmp_path / "v", max_queue=1, max_batch=8)
    with TestClient(create_app(options), base_url=HOME) as c:
        assert c.app.state.serving.service.max_queue == 1  # as configured, not raised to the batch size
    import threading

    gate = threading.Event()
    service = Service(lambda: engines.get("dsp")({}, NullCache()), max_queue=1, idle_unload=60)
    try:
        running = service.call(lambda e: gate.wait(30))  # taken by the engine thread
        deadline = time.monotonic() + 30
        while service.queued:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        waiting = service.call(lambda e: "features")  # the one place in the queue
        with pytest.raises(Busy):
            service.call(lambda e: "more features")  # a voice registration is refused like a decode
        assert service.withdraw(waiting) and waiting.cancelled() and service.stats["dropped"] == 1
        gate.set()
        assert running.result(timeout=30) is True
    finally:
        gate.set()
        service.close()


# -- what a response says
def test_messages_never_show_server_paths(tiny, tmp_path):
    config = {"model_dir": str(tiny / "Step-Audio-EditX"), "tokenizer_dir": str(tiny / "Step-Audio-Tokenizer")}
    with _client(tmp_path, engine="stepaudio", engine_config=config) as c:
        assert _voice(c).status_code == 201
        (tmp_path / "voices" / "reader.wav").write_bytes(b"RIFF garbage")
        r = c.post("/v1/audio/speech", json={"input": "Hello.", "voice": "reader"})
        assert r.status_code == 400, r.text
        assert str(tmp_path) not in r.text and "voices" not in r.text
        assert _error(r)["param"] == "voice"


def test_long_voice_names_are_refused_not_crashed(client):
    name = "a" * 256
    r = client.post("/v1/audio/speech", json={"input": "Hello.", "voice": name})
    assert r.status_code == 404 and _error(r)["message"].startswith(f"voice '{'a' * 80}' not found")
    assert client.delete(f"/v1/voices/{name}").status_code == 404
    r = _voice(client, name)
    assert r.status_code == 400 and _error(r)["param"] == "name" and "at most 64" in _error(r)["message"]


def test_nan_is_refused_not_unset(client):
    r = client.post("/v1/audio/speech", content=b'{"input": "hi", "voice": "reader", "loudness": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and _error(r)["param"] == "loudness" and "finite" in _error(r)["message"]
    for field in ("intensity", "loudness", "peak"):
        r = _edit(client, **{field: "nan"})
        assert r.status_code == 400 and _error(r)["param"] == field, (field, r.text)


def test_every_response_has_security_headers_and_every_error_the_openai_shape(client):
    for r in (client.get("/"), client.get("/healthz"), client.get("/nowhere"), client.put("/v1/voices"),
              _edit(client, edit_type="nonsense"), client.get("/docs")):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        if r.status_code >= 400:
            assert set(_error(r)) == {"message", "type", "param", "code"}
    assert _error(client.get("/nowhere")) == {"message": "Not Found", "type": "not_found_error", "param": None,
                                              "code": None}
    assert client.put("/v1/voices").status_code == 405
    page = client.get("/").headers["content-security-policy"]
    assert "'unsafe-inline'" not in page and "script-src 'sha256-" in page


def test_the_docs_load_nothing_from_elsewhere(tmp_path):
    with _client(tmp_path) as c:
        docs = c.get("/docs")
        assert docs.status_code == 200 and "http://" not in docs.text and "https://" not in docs.text
        scripts = [s.split('"')[0] for s in docs.text.split('<script src="')[1:]]
        assert scripts and all(c.get(s).status_code == 200 for s in scripts)
        assert json.loads(c.get("/openapi.json").text)["info"]["title"] == "editx"
    with _client(tmp_path, docs=False) as c:
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404


def test_the_response_formats_are_batchs_and_each_has_a_media_type():
    from editx_cli.deliver import FORMATS
    from editx_cli.serve.options import MEDIA, RESPONSE_FORMATS

    assert RESPONSE_FORMATS == (*FORMATS, "pcm") and set(MEDIA) == set(RESPONSE_FORMATS)


# -- the last findings, tried as a hostile client would
def test_the_key_needs_its_scheme_in_any_case(tmp_path):
    with _client(tmp_path, api_key="s3cret") as c:
        for header, status in (("s3cret", 401), ("Token s3cret", 401), ("Bearer s3cret", 200),
                               ("bearer s3cret", 200), ("BEARER  s3cret ", 200), ("Bearer nope", 401)):
            assert c.get("/v1/models", headers={"Authorization": header}).status_code == status, header


def test_health_shows_no_server_path_without_the_key(tmp_path):
    with _client(tmp_path, api_key="s3cret") as c:
        open_health = c.get("/healthz").json()
        assert "path" not in open_health["cache"] and str(tmp_path) not in json.dumps(open_health)
        assert c.get("/healthz", headers={"Authorization": "Bearer s3cret"}).json()["cache"]["path"] == str(
            tmp_path / "cache")


def test_a_body_trickled_a_byte_at_a_time_meets_its_deadline(tmp_path):
    server = Server(tmp_path, "--engine", "dsp", "--body-timeout", "30", "--body-deadline", "2")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as s:
            s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n")
            t0 = time.monotonic()
            s.settimeout(0.4)
            answer = b""
            while not answer and time.monotonic() - t0 < 10:
                s.sendall(b" ")  # never stalls for the 30 s of --body-timeout
                try:
                    answer = s.recv(65536)
                except TimeoutError:
                    pass
            took = time.monotonic() - t0
            s.settimeout(10)
            while b"took over" not in answer and b"}" not in answer.split(b"\r\n\r\n", 1)[-1]:
                more = s.recv(65536)
                if not more:
                    break
                answer += more
        assert answer.startswith(b"HTTP/1.1 408") and b"took over 2 s in all" in answer, answer
        assert took < 5
    finally:
        server.stop()


def test_a_flac_that_does_not_say_its_length_is_refused_in_words(client):
    data = bytearray(_wav((np.sin(np.arange(72000) / 7) * 0.3).astype(np.float32), 24000, "FLAC"))
    assert data[:4] == b"fLaC"
    data[21] &= 0xF0  # STREAMINFO's 36-bit total sample count: 0, "unknown" (legal)
    data[22:26] = b"\0\0\0\0"
    r = _edit(client, bytes(data))
    assert r.status_code == 400
    assert _error(r)["message"] == ("not usable audio: its header leaves its length open, and it cannot be read "
                                    "without it: write it again with its length (e.g. with flac or ffmpeg)")


def test_a_json_syntax_error_names_no_character_offset_as_a_parameter(client):
    r = client.post("/v1/audio/speech", content=b'{"input": "hi",, }', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    error = _error(r)
    assert error["param"] is None and error["message"].startswith("the body is not valid JSON (")
    assert "at character 15" in error["message"]


@pytest.mark.parametrize("name", ["CON", "nul.txt", "Com1", "lpt9.wav", "voice."])
def test_device_names_are_not_voice_names(client, name):
    r = _voice(client, name)
    assert r.status_code == 400 and "not a device name" in _error(r)["message"]


def test_requests_that_wait_for_the_engine_to_load_are_not_counted_as_waiting():
    import threading

    from editx_cli import engine as engines
    from editx_cli.cache import NullCache

    loading = threading.Event()
    dsp = engines.get("dsp")

    class SlowToLoad(dsp):  # the dsp engine, as long to load as a model
        def load(self) -> None:
            loading.wait(30)
            super().load()

    service = Service(lambda: SlowToLoad({}, NullCache()), max_batch=4, max_queue=1, idle_unload=60)
    try:
        taken = [service.call(lambda e: "features") for _ in range(5)]  # 4 for the load, 1 waiting
        with pytest.raises(Busy):
            service.call(lambda e: "one too many")
        loading.set()
        assert [f.result(timeout=60) for f in taken] == ["features"] * 5
    finally:
        loading.set()
        service.close()


def test_a_tiny_flac_of_long_high_rate_audio_costs_memory_as_its_decoded_speech_does(tmp_path):
    """192 kHz stereo, 149 s of DC, 0.1 MB of FLAC: read a second at a time, straight to mono at
    48 kHz at most, never whole at its own rate."""
    path = tmp_path / "dc.flac"
    sf.write(path, np.full((192000 * 149, 2), 0.25, dtype=np.float32), 192000, subtype="PCM_24")
    assert path.stat().st_size < 200_000
    server = Server(tmp_path, "--engine", "dsp")

    def peak_mb() -> float:
        with open(f"/proc/{server.proc.pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024

    try:
        assert server.edit().status_code == 200  # the engine loaded, the first request's memory taken
        before = peak_mb()
        r = server.edit(path)
        assert r.status_code == 200, r.text
        assert peak_mb() - before <= 300
    finally:
        server.stop()
