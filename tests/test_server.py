"""`fastbark serve`: the real server on a free localhost port, driven with the official openai client."""

import base64
import contextlib
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import soundfile as sf

import fastbark

fastapi = pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from fastbark.output import pcm16  # noqa: E402
from fastbark.server.app import create_app  # noqa: E402
from fastbark.server.options import ServerOptions  # noqa: E402

FAST = {"max_semantic_tokens": 6}
LONG = "The dog is cute. Hello world [laughs]. I a the dog. Café naïve, über señor. The world is cute."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(tts, tmp_path, **options):
    (tmp_path / "voices.json").write_text(json.dumps({"alloy": "announcer", "nova": "v2/en_speaker_1"}))
    options = ServerOptions(port=free_port(), voice_map=str(tmp_path / "voices.json"), data_dir=str(tmp_path / "data"),
                            **options)
    app = create_app(tts, options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=options.port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{options.port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def engine(hub_dir):
    return fastbark.Bark.from_pretrained(hub_dir)  # the server's own engine


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    with serving(engine, tmp_path_factory.mktemp("server")) as (url, app):
        yield url, app


def client(url, key="none"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac", "pcm"])
def test_every_format_with_the_openai_client(server, fmt):
    url, _ = server
    audio = client(url).audio.speech.create(model="tts-1", voice="alloy", input="the dog is cute",
                                            response_format=fmt, extra_body={"seed": 1, **FAST}).content
    if fmt == "pcm":
        samples, rate = np.frombuffer(audio, "<i2"), 24_000
    elif fmt == "aac":
        import av
        container = av.open(io.BytesIO(audio))
        rate = container.streams.audio[0].rate
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    else:
        samples, rate = sf.read(io.BytesIO(audio))
    assert rate == 24_000 and len(samples) >= 320  # decodable, 24 kHz, at least one EnCodec frame


def test_seeded_responses_equal_their_alone_generation_even_when_batched(engine, tmp_path):
    # a long wait for company and a batch of exactly four: the four requests share one batch for certain
    requests = [("the dog is cute", 1, "alloy"), ("Hello world", 2, "alloy"), ("café naïve", 3, "alloy"),
                ("I a the", 4, "nova")]
    with serving(engine, tmp_path, max_batch=4, max_wait_ms=10_000) as (url, _):
        results = [None] * len(requests)

        def call(i):
            text, seed, voice = requests[i]
            results[i] = client(url).audio.speech.create(model="tts-1", voice=voice, input=text, response_format="pcm",
                                                         extra_body={"seed": seed, **FAST}).content
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        voices = {"alloy": "announcer", "nova": "v2/en_speaker_1"}
        for (text, seed, voice), got in zip(requests, results):
            alone = engine.generate(text, voice=voices[voice], seed=seed, **FAST)
            assert got == pcm16(alone.audio), text
        metrics = {line.split()[0]: float(line.split()[1]) for line in httpx.get(url + "/metrics").text.splitlines()
                   if line.startswith("fastbark_batch_size_")}
        assert (metrics["fastbark_batch_size_count"], metrics["fastbark_batch_size_sum"]) == (1, 4)  # one batch of 4


def test_scheduler_batches_requests_with_different_voices(engine):
    """The scheduler puts chunks of any voice (same options) in one batch; each request gets its alone audio."""
    from fastbark.server.scheduler import Scheduler
    sizes = []
    scheduler = Scheduler(engine.generate_chunks, max_batch=3, max_wait_ms=10_000,
                          on_batch=lambda n, seconds: sizes.append(n))
    requests = [("the dog is cute", "announcer", 1), ("Hello world", "v2/en_speaker_1", 2),
                ("café naïve", "announcer", 3)]
    audio, finished = [[] for _ in requests], [threading.Event() for _ in requests]

    def deliver(item, i):
        if item is None or isinstance(item, BaseException):
            audio[i].append(item)
            finished[i].set()
        else:
            audio[i].append(item.audio)
    try:
        for i, (text, voice, seed) in enumerate(requests):
            jobs, options, long_form = engine.plan(text, voice, seed, 16, None, None, dict(FAST))
            scheduler.submit(jobs[0], options, long_form, lambda item, i=i: deliver(item, i))
        assert all(done.wait(120) for done in finished)
    finally:
        scheduler.close()
    assert sizes == [3], "two voices, one batch"
    for (text, voice, seed), got in zip(requests, audio):
        assert got[-1] is None, got[-1]
        np.testing.assert_array_equal(np.concatenate(got[:-1]), engine.generate(text, voice, seed=seed, **FAST).audio)


def test_streaming_audio_and_long_input(server, engine):
    url, _ = server
    with client(url).audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=LONG, response_format="wav",
            extra_body={"seed": 5, "max_chunk_tokens": 6, **FAST}) as response:
        pieces = list(response.iter_bytes())
    data = b"".join(pieces)
    assert data[:4] == b"RIFF"
    expected = engine.generate(LONG, voice="announcer", seed=5, max_chunk_tokens=6, **FAST)
    assert len(expected.segments) > 2
    assert data[44:] == pcm16(expected.audio)  # the long text narrated whole, as generate() does


def test_sse(server):
    url, _ = server
    events = []
    with httpx.stream("POST", url + "/v1/audio/speech", timeout=120,
                      json={"model": "tts-1", "input": LONG, "voice": "alloy", "response_format": "pcm",
                            "stream_format": "sse", "max_chunk_tokens": 6, "seed": 2, **FAST}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) > 2 and events[-1]["type"] == "speech.audio.done"
    assert sum(len(base64.b64decode(e["audio"])) for e in deltas) % 2 == 0


@pytest.mark.parametrize("body, status, param", [
    ("{not json", 400, None), ([1, 2], 400, None), ({"model": "tts-1", "input": 123}, 400, "input"),
    ({"model": "tts-1", "input": ""}, 400, "input"), ({"model": "tts-1", "input": "x" * 5000}, 400, "input"),
    ({"model": "tts-1", "input": "hi", "voice": "nobody"}, 400, "voice"),
    ({"model": "tts-1", "input": "hi", "response_format": "ogg"}, 400, "response_format"),
    ({"model": "tts-1", "input": "hi", "speed": 2}, 400, "speed"), ({"input": "hi"}, 400, "model"),
    ({"model": "tts-1", "input": "hi", "colour": 1}, 400, "colour"),
    ({"model": "tts-1", "input": "hi", "semantic_temperature": -1}, 400, None),
    ({"model": "tts-1", "input": "hi", "seed": "x"}, 400, None),
    ({"model": "tts-1", "input": "\u200b\u200b"}, 400, None),
])
def test_errors_have_openai_shape(server, body, status, param):
    url, _ = server
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(url + "/v1/audio/speech", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param


def test_openai_client_sees_errors(server):
    url, _ = server
    with pytest.raises(openai.BadRequestError, match="speed must be 1.0"):
        client(url).audio.speech.create(model="tts-1", voice="alloy", input="hi", speed=1.5)


def test_models_health_metrics_voices_and_upload(server, engine, tmp_path):
    url, _ = server
    assert {m.id for m in client(url).models.list()} >= {"fastbark", "tts-1"}
    assert httpx.get(url + "/health").json()["status"] == "ok"
    metrics = httpx.get(url + "/metrics").text
    for name in ("fastbark_requests_total", "fastbark_queue_depth", "fastbark_batch_size", "fastbark_audio_seconds",
                 "fastbark_generation_seconds"):
        assert name in metrics
    voice = engine.generate("hello", seed=3, **FAST)
    voice.save_voice(tmp_path / "me.npz")
    assert httpx.put(url + "/v1/audio/voices/me", content=(tmp_path / "me.npz").read_bytes()).status_code == 200
    assert "me" in httpx.get(url + "/v1/audio/voices").json()["uploaded"]
    got = client(url).audio.speech.create(model="tts-1", voice="me", input="the dog", response_format="pcm",
                                          extra_body={"seed": 4, **FAST}).content
    assert got == pcm16(engine.generate("the dog", voice=str(tmp_path / "me.npz"), seed=4, **FAST).audio)
    bad = httpx.put(url + "/v1/audio/voices/bad", content=b"root:x:0:0")
    assert bad.status_code == 400 and "not a readable .npz" in bad.json()["error"]["message"]
    assert "upload" in bad.json()["error"]["message"] and "/" not in bad.json()["error"]["message"].split("'")[1]
    assert httpx.put(url + "/v1/audio/voices/..%2Fx", content=b"x").status_code in (400, 404)
    assert httpx.put(url + "/v1/audio/voices/big", content=b"x" * (2 << 20)).status_code == 413


def test_web_page(server):
    url, _ = server
    page = httpx.get(url + "/").text
    assert "<textarea" in page and "/v1/audio/speech" in page and "http" not in page.split("<script>")[1].split(
        "fetch")[0]  # no outside resources


def test_api_key_and_queue_limit(engine, tmp_path):
    with serving(engine, tmp_path, api_key="s3cret", max_queue=1, max_wait_ms=0) as (url, app):
        r = httpx.post(url + "/v1/audio/speech", json={"model": "tts-1", "input": "hi"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").audio.speech.create(model="tts-1", voice="alloy", input="hi")
        assert client(url, "s3cret").audio.speech.create(model="tts-1", voice="alloy", input="hi",
                                                         extra_body=FAST).content
        assert httpx.get(url + "/health").status_code == 200  # health needs no key
        # one long request holds the only place in the queue; the next is refused with Retry-After
        headers = {"Authorization": "Bearer s3cret"}
        with httpx.stream("POST", url + "/v1/audio/speech", headers=headers, timeout=120,
                          json={"model": "tts-1", "input": LONG * 3, "response_format": "pcm", "max_chunk_tokens": 6,
                                "max_semantic_tokens": 40}) as held:
            pieces = held.iter_bytes()
            next(pieces)  # its first chunk is out; the rest is under way
            r = httpx.post(url + "/v1/audio/speech", headers=headers, json={"model": "tts-1", "input": "hi"})
            assert r.status_code == 429 and r.headers["retry-after"] and r.json()["error"]["type"] == "rate_limit_error"
        deadline = time.monotonic() + 60  # the client left: its remaining chunks are dropped
        while app.state.scheduler.depth and time.monotonic() < deadline:
            time.sleep(0.1)
        assert app.state.scheduler.depth == 0
        generated = app.state.metrics.batch._sum.get()
        n_chunks = len(engine.split(LONG * 3, max_chunk_tokens=6))
        assert generated < 1 + n_chunks  # far fewer chunks than the request had were generated
        r = httpx.post(url + "/v1/audio/speech", content=b"x" * (2 << 20), headers=headers)
        assert r.status_code == 413


def test_web_page_in_a_real_browser(server, tmp_path):
    """Debian's chromium, headless: type, generate, the audio plays as it streams in, and downloads."""
    import shutil
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("no chromium on this machine (.ci/run installs it)")
    url, _ = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('voice').options.length > 1")  # voices listed
        page.fill("#text", "The dog is cute. Hello world [laughs].")
        page.fill("#seed", "3")
        page.select_option("#voice", "announcer")
        page.click("#go")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=120_000)
        assert page.evaluate("playAt") > 0  # chunks were scheduled on the Web Audio clock as they came
        with page.expect_download() as download:
            page.click("#download")
        path = tmp_path / "download.wav"
        download.value.save_as(path)
        page.screenshot(path=tmp_path / "page.png")
        browser.close()
    audio, rate = sf.read(path)
    assert rate == 24_000 and len(audio) > 0
