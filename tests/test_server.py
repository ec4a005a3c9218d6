"""`fastbark serve`: the real server on a free localhost port, driven with the official openai client."""

import base64
import contextlib
import dataclasses
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastbark
from fastbark.options import SERVED_FIRST_CHUNK_SECONDS

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
    # the long text narrated whole, as generate() does with the server's short first chunk
    expected = engine.generate(LONG, voice="announcer", seed=5, max_chunk_tokens=6,
                               first_chunk_seconds=SERVED_FIRST_CHUNK_SECONDS, **FAST)
    assert len(expected.segments) > 2
    assert data[44:] == pcm16(expected.audio)


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
    ({"model": "tts-1", "input": "hi", "semantic_temperature": -1}, 400, "semantic_temperature"),
    ({"model": "tts-1", "input": "hi", "seed": "x"}, 400, "seed"),
    ({"model": "tts-1", "input": "\u200b\u200b"}, 400, "input"),
    ({"model": "tts-1", "input": "hi", "pause": 99}, 400, "pause"),
    ({"model": "tts-1", "input": "hi", "language": "xx"}, 400, "language"),
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
    assert bad.status_code == 400 and "not audio" in bad.json()["error"]["message"]
    assert "a voice .npz, or an audio clip" in bad.json()["error"]["message"]
    bad = httpx.put(url + "/v1/audio/voices/bad", content=b"PK\x03\x04root:x:0:0")
    assert bad.status_code == 400 and "not a readable .npz" in bad.json()["error"]["message"]
    assert "upload" in bad.json()["error"]["message"] and "/" not in bad.json()["error"]["message"].split("'")[1]
    assert httpx.put(url + "/v1/audio/voices/..%2Fx", content=b"x").status_code in (400, 404)
    assert httpx.put(url + "/v1/audio/voices/big", content=b"x" * ((8 << 20) + 1)).status_code == 413


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


# ------------------------------------------------------------------ what a hostile client tried (issue 23)
# Each of these fails on the code before issue 23.


def raw_request(url, head: bytes, body_parts=(), read_timeout=20) -> bytes:
    """Send a hand-framed request, part by part, and read what the server answers (maybe before the end)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(head)
        try:
            for part in body_parts:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and closed: what it said is still there to read
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.split(b"\r\n\r\n", 1)[1]:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, socket.timeout):
            pass
        return answer


def chunked(data: bytes, size: int = 64 << 10):
    for start in range(0, len(data), size):
        piece = data[start: start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


@pytest.mark.parametrize("method, path", [("POST", "/v1/audio/speech"), ("PUT", "/v1/audio/voices/big")])
def test_body_limits_hold_for_chunked_bodies_before_they_are_buffered(server, method, path):
    url, _ = server
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
           f"Transfer-Encoding: chunked\r\n\r\n".encode()
    # past the limit (1 MB; 8 MB for uploads) in chunks, and never the closing chunk: a server that buffers the
    # whole body never answers
    answer = raw_request(url, head, chunked(b" " * ((3 << 19) if method == "POST" else (17 << 19))))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"invalid_request_error"' in answer
    assert httpx.get(url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("method, path", [("POST", "/v1/audio/speech"), ("PUT", "/v1/audio/voices/liar")])
def test_lying_and_unreadable_content_lengths(server, method, path):
    url, _ = server
    start = f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
    big = raw_request(url, start + b"Content-Length: 99999999\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 413")  # refused on the header, without waiting for the body
    # a Content-Length smaller than the body: the body is what it declares (cut short), the rest is not read as one
    short = raw_request(url, start + b"Content-Length: 10\r\n\r\n",
                        [b'{"model": "tts-1", "input": "hi"}' + b" " * 100_000])
    assert short.startswith(b"HTTP/1.1 400")
    # longer than the body: the server waits for the rest, and the client's leaving ends it
    raw_request(url, start + b"Content-Length: 500\r\n\r\n", [b"{}"], read_timeout=1)
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert "liar" not in httpx.get(url + "/v1/audio/voices").json()["uploaded"]


def test_uploads_cannot_take_over_presets_or_openai_names_and_can_be_deleted(server, engine, tmp_path):
    url, _ = server
    engine.generate("hello", seed=3, **FAST).save_voice(tmp_path / "me.npz")
    upload = (tmp_path / "me.npz").read_bytes()
    for name in ("alloy", "announcer", "coral"):  # the voice map, a preset, the built-in OpenAI table
        r = httpx.put(url + f"/v1/audio/voices/{name}", content=upload)
        assert r.status_code == 409 and r.json()["error"]["param"] == "name", r.text
        assert "cannot take it over" in r.json()["error"]["message"]
    got = client(url).audio.speech.create(model="tts-1", voice="alloy", input="the dog", response_format="pcm",
                                          extra_body={"seed": 4, **FAST}).content
    assert got == pcm16(engine.generate("the dog", voice="announcer", seed=4, **FAST).audio)  # still the preset
    assert httpx.put(url + "/v1/audio/voices/mine", content=upload).status_code == 200
    assert "mine" in httpx.get(url + "/v1/audio/voices").json()["uploaded"]
    r = httpx.delete(url + "/v1/audio/voices/mine")
    assert r.status_code == 200 and r.json() == {"name": "mine", "deleted": True}
    assert "mine" not in httpx.get(url + "/v1/audio/voices").json()["uploaded"]
    assert httpx.delete(url + "/v1/audio/voices/mine").status_code == 404
    assert httpx.delete(url + "/v1/audio/voices/alloy").status_code == 409
    r = httpx.post(url + "/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "mine"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "voice"


def test_a_table_voice_whose_preset_is_missing_says_which(server):
    url, _ = server  # the built-in table maps coral to v2/en_speaker_9, which the test checkpoint lacks
    r = httpx.post(url + "/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "coral"})
    assert r.status_code == 400 and "'v2/en_speaker_9'" in r.json()["error"]["message"]


@pytest.mark.parametrize("content", [
    '{"model": "tts-1", "input": "a\\ud800b"}', '{"model": "tts-1", "input": "hi", "voice": "\\udfff"}',
    '{"model": "tts-1", "input": "hi", "\\ud800": 1}', '{"model": "tts-1", "input": "hi", "seed": "\\ud800"}',
    "[" * 100_000, '{"a":' * 50_000, '{"model": "tts-1", "input": ' + "[" * 50_000 + "]" * 50_000 + "}",
])
def test_broken_unicode_and_deep_nesting_get_a_400_not_a_500(server, content):
    url, _ = server
    r = httpx.post(url + "/v1/audio/speech", content=content.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_unknown_paths_and_methods_answer_in_openai_shape(server):
    url, _ = server
    r = httpx.get(url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(url + "/v1/audio/speech")
    assert r.status_code == 405 and "GET is not allowed" in r.json()["error"]["message"]


def test_sse_usage_adds_up(server):
    url, _ = server
    with httpx.stream("POST", url + "/v1/audio/speech", timeout=120,
                      json={"model": "tts-1", "input": "the dog is cute", "voice": "alloy", "response_format": "pcm",
                            "stream_format": "sse", "seed": 2, **FAST}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= FAST["max_semantic_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_long_input_is_planned_off_the_event_loop(engine, tmp_path, monkeypatch):
    real = engine.plan

    def slow_plan(*args, **kwargs):  # as splitting a long, hostile input would be
        time.sleep(3)
        return real(*args, **kwargs)
    monkeypatch.setattr(engine, "plan", slow_plan)
    with serving(engine, tmp_path) as (url, _):
        thread = threading.Thread(target=lambda: httpx.post(url + "/v1/audio/speech", timeout=60, json={
            "model": "tts-1", "input": "the dog", "response_format": "pcm", **FAST}))
        thread.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert time.monotonic() - start < 1.5  # not behind the planning request
        thread.join()


def test_health_counts_the_engine_busy_on_an_abandoned_batch(engine):
    from fastbark.server.scheduler import Scheduler
    started, release = threading.Event(), threading.Event()

    def generate_chunks(ids, voices, options, seeds, progress, **checks):
        started.set()
        release.wait(30)
        return engine.generate_chunks(ids, voices, options, seeds, progress, **checks)
    scheduler = Scheduler(generate_chunks, max_wait_ms=0)
    try:
        jobs, options, long_form = engine.plan("the dog", None, 1, 16, None, None, dict(FAST))
        request = scheduler.submit(jobs[0], options, long_form, lambda item: None)
        assert started.wait(30)
        scheduler.cancel(request)  # the client left while its batch runs
        assert scheduler.depth == 0 and scheduler.busy
        release.set()
        deadline = time.monotonic() + 30
        while scheduler.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not scheduler.busy
    finally:
        release.set()
        scheduler.close()


SPEECH_FIELDS = {"model", "input", "voice", "response_format", "speed", "stream_format", "instructions", "seed",
                 "speakers", "turn_pause",
                 *(f.name for f in dataclasses.fields(fastbark.GenerationOptions)),
                 *(f.name for f in dataclasses.fields(fastbark.LongFormOptions))}
UNICODE = st.one_of(st.characters(exclude_categories=()), st.characters(categories=["Cs"]))  # surrogates, often


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(
    alphabet=UNICODE, max_size=8)), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(alphabet=UNICODE, max_size=5), inner, max_size=3)),
    max_leaves=12), text=st.text(alphabet=UNICODE, max_size=12), depth=st.integers(1, 100_000),
    opener=st.sampled_from(["[", '{"a":', '{"input":[']), field=st.sampled_from(sorted(SPEECH_FIELDS)))
def test_fuzz_arbitrary_unicode_and_json_never_gives_a_500(server, body, text, depth, opener, field):
    """Any JSON value, any Unicode (lone surrogates included) in every field, and any nesting depth: a
    result or a 4xx in OpenAI's shape, never a 500. Fails before issue 23."""
    url, _ = server
    payloads = [json.dumps(p) for p in (body, {"model": "tts-1", "input": text, **FAST},
                                         {"model": "tts-1", "input": "hi", "voice": text},
                                         {"model": "tts-1", "input": "hi", text: body},
                                         {"model": "tts-1", "input": "hi", **FAST, field: body})]  # ASCII: \udXXX
    payloads.append(opener * depth)
    for content in payloads:
        r = httpx.post(url + "/v1/audio/speech", content=content.encode(), timeout=120,
                       headers={"content-type": "application/json"})
        assert r.status_code in (200, 400), (content[:200], r.status_code, r.text[:200])
        if r.status_code == 400:
            assert r.json()["error"]["message"]


def test_voices_in_the_shape_open_webui_reads(server, engine, tmp_path):
    """Open WebUI reads `voices: [{id, name}]` (and falls back to OpenAI's six names silently when the shape
    differs): every voice a request may name is there, with its kind and language beside."""
    url, _ = server
    engine.generate("hello", seed=3, **FAST).save_voice(tmp_path / "mine.npz")
    assert httpx.put(url + "/v1/audio/voices/webui", content=(tmp_path / "mine.npz").read_bytes()).status_code == 200
    listing = httpx.get(url + "/v1/audio/voices").json()
    voices = {v["id"]: v for v in listing["voices"]}
    assert all(v["name"] == v["id"] and isinstance(v["id"], str) for v in listing["voices"])
    assert voices["alloy"]["kind"] == "openai" and voices["alloy"]["preset"] == listing["openai"]["alloy"]
    assert voices["v2/en_speaker_1"] == {"id": "v2/en_speaker_1", "name": "v2/en_speaker_1", "kind": "preset",
                                         "preset": None, "language": "en"}
    assert voices["webui"]["kind"] == "uploaded"
    assert set(listing["presets"]) == set(engine.voices()) and "webui" in listing["uploaded"]
    for name in voices:  # every listed voice is accepted by the speech endpoint
        assert client(url).audio.speech.create(model="tts-1", voice=name, input="hi", response_format="pcm",
                                               extra_body={"seed": 1, **FAST}).content
    httpx.delete(url + "/v1/audio/voices/webui")


@pytest.mark.parametrize("model", ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"])
def test_openai_model_names_and_instructions_as_clients_send_them(server, engine, model):
    """`instructions` (gpt-4o-mini-tts's steering text) is accepted and ignored: the audio is the same."""
    url, _ = server
    preset = httpx.get(url + "/v1/audio/voices").json()["openai"]["alloy"]
    got = client(url).audio.speech.create(model=model, voice="alloy", input="the dog", response_format="pcm",
                                          instructions="Speak in a cheerful and positive tone.",
                                          extra_body={"seed": 5, **FAST}).content
    assert got == pcm16(engine.generate("the dog", voice=preset, seed=5, **FAST).audio)
