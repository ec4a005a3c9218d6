"""`fastbark serve`: the OpenAI speech API (and a web page) over one engine and its batching scheduler."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import os
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..constants import SAMPLE_RATE
from ..errors import BadInput, CheckpointError
from ..longform import dialogue
from ..options import SERVED_FIRST_CHUNK_SECONDS, GenerationOptions, LongFormOptions, check_number
from ..clone.audio import read_clip
from ..clone.quantizer import QUANTIZERS
from ..voices import PROMPT_KEYS, Voice
from .catalog import OPENAI_VOICES, VoiceCatalog
from .options import ServerOptions
from .formats import MEDIA_TYPES, PIECEWISE, encode, stream_piece, stream_start
from .scheduler import Busy, Scheduler

EXTRA_FIELDS = {f.name for f in fields(GenerationOptions)} | {f.name for f in fields(LongFormOptions)} | \
    {"seed", "speakers", "turn_pause"}  # speakers: the input is a dialogue script (NAME: line per turn)
PAGE = Path(__file__).with_name("page.html")
SPEECH_SCHEMA = {  # documentation (and schemathesis's guide); the handler checks the body itself
    "type": "object", "required": ["model", "input"],
    "properties": {"model": {"type": "string"}, "input": {"type": "string"}, "voice": {"type": "string"},
                   "response_format": {"type": "string", "enum": ["mp3", "opus", "aac", "flac", "wav", "pcm"]},
                   "speed": {"type": "number"}, "stream_format": {"type": "string", "enum": ["audio", "sse"]},
                   "seed": {"type": "integer"}, "max_semantic_tokens": {"type": "integer"},
                   "semantic_temperature": {"type": "number"}, "coarse_temperature": {"type": "number"},
                   "fine_temperature": {"type": "number"}, "top_k": {"type": "integer"}, "top_p": {"type": "number"},
                   "speakers": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                   "turn_pause": {"type": "number"}}}
KNOWN_PATHS = {"/v1/audio/speech", "/v1/models", "/v1/audio/voices", "/health", "/metrics", "/"}  # metric labels


class BodyLimit:
    """ASGI middleware: a request body larger than `limit` bytes is refused with 413 however it is framed
    (a Content-Length, chunked, or a Content-Length that lies), as soon as the limit is passed: nothing
    larger is ever buffered. `limits` may give paths (by prefix) their own limit instead."""

    def __init__(self, app, limit: int, limits: dict[str, int] | None = None):
        self.app, self.limit, self.limits = app, limit, limits or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = next((n for prefix, n in self.limits.items() if path.startswith(prefix)), self.limit)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            what = f"{int(declared)} bytes" if declared.isdigit() else f"of unreadable length {declared[:20]!r}"
            refusal = AsciiJSON(error_body(f"the request body is {what}; at most {limit} bytes",
                                           "invalid_request_error"),
                                status_code=413 if declared.isdigit() else 400, headers={"connection": "close"})
            return await refusal(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, f"the request body is larger than {limit} bytes, the most accepted")
            return message
        return await self.app(scope, counted, send)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = CollectorRegistry()
        self.requests = Counter("fastbark_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=self.registry)
        self.queue = Gauge("fastbark_queue_depth", "speech requests queued or under way", registry=self.registry)
        self.batch = Histogram("fastbark_batch_size", "chunks per generated batch", registry=self.registry,
                               buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))
        self.audio = Counter("fastbark_audio_seconds", "seconds of audio produced", registry=self.registry)
        self.generation = Counter("fastbark_generation_seconds", "seconds spent generating", registry=self.registry)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.generation.inc(seconds)


def create_app(tts, options: ServerOptions | None = None) -> FastAPI:

    options = options or ServerOptions()
    metrics = Metrics()
    scheduler = Scheduler(tts.generate_chunks, options.max_batch, options.max_wait_ms, options.max_queue,
                          on_batch=metrics.on_batch)
    voice_table = dict(OPENAI_VOICES)
    if options.voice_map:
        from ..loading.sources import read_json
        voice_table.update(read_json(options.voice_map, "voice map"))
    uploads = Path(options.data_dir) / "voices" if options.data_dir else None
    if uploads is not None:
        uploads.mkdir(parents=True, exist_ok=True)
    catalog = VoiceCatalog(tts.voices(), voice_table, uploads)
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()  # graceful shutdown: uvicorn has finished the requests under way

    app = FastAPI(title="fastbark", version="0.1.0", description="Bark text-to-speech, OpenAI-compatible.",
                  lifespan=lifespan)
    app.state.scheduler, app.state.metrics = scheduler, metrics
    # inside `guard`, so that its 413s are counted; voice uploads (an .npz or an audio clip) have their own limit
    app.add_middleware(BodyLimit, limit=options.max_body_bytes, limits={"/v1/audio/voices/": options.max_upload_bytes})
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=options.cors_origins.split(","), allow_methods=["*"],
                           allow_headers=["*"])

    def reply(status: int, body: dict, headers: dict | None = None):
        return AsciiJSON(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error"}.get(e.status, "invalid_request_error" if e.status < 500 else "server_error")
        return reply(e.status, error_body(e.message, kind, e.param, e.code), e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return reply(400, error_body(f"{where or 'body'}: {first.get('msg', 'invalid request')}",
                                     "invalid_request_error", where or None))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # 404, 405: OpenAI's shape too
        kind = {401: "authentication_error", 404: "not_found_error"}.get(e.status_code, "invalid_request_error")
        message = {404: f"no such path: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return reply(e.status_code, error_body(message, kind), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):  # one failed request, never a dead server
        return reply(500, error_body(f"internal error: {type(e).__name__}", "server_error"))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if options.api_key and path.startswith("/v1/") and not _authorised(request, options.api_key):
            response = reply(401, error_body("a valid API key is needed: Authorization: Bearer KEY",
                                             "authentication_error", code="invalid_api_key"))
        else:
            response = await call_next(request)
        metrics.requests.labels(path if path in KNOWN_PATHS else "other", str(response.status_code)).inc()
        return response

    def resolve_voice(name) -> str | None:
        try:
            return catalog.resolve(name)
        except BadInput as e:
            raise ApiError(400, str(e), e.param) from None

    def check_upload_name(name: str) -> Path:
        try:
            return catalog.upload_path(name)
        except BadInput as e:
            raise ApiError(409 if e.code else 400, str(e), e.param, code=e.code) from None

    def plan(body: dict):
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", None)
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "input must be a non-empty string", "input")
        if len(text) > options.max_input_chars:
            raise ApiError(400, f"input is {len(text)} characters; at most {options.max_input_chars}", "input")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model must be a non-empty string (any name: this server has one model)", "model")
        fmt = body.get("response_format", "mp3")
        if not isinstance(fmt, str) or fmt not in MEDIA_TYPES:
            raise ApiError(400, f"unknown response_format {fmt!r}; accepted: {', '.join(MEDIA_TYPES)}",
                           "response_format")
        speed = body.get("speed", 1.0)
        if speed != 1.0:
            raise ApiError(400, f"speed must be 1.0: Bark sets its own pace, and fastbark does not time-stretch "
                                f"(got {speed!r})", "speed")
        stream_format = body.get("stream_format", "audio")
        if not isinstance(stream_format, str) or stream_format not in ("audio", "sse"):
            raise ApiError(400, f"unknown stream_format {stream_format!r}; accepted: audio, sse", "stream_format")
        unknown = set(body) - {"model", "input", "voice", "response_format", "speed", "stream_format",
                               "instructions"} - EXTRA_FIELDS
        if unknown:
            raise ApiError(400, f"unknown field(s) {', '.join(sorted(unknown))}", sorted(unknown)[0])
        extras = {k: v for k, v in body.items() if k in EXTRA_FIELDS}
        seed = extras.pop("seed", None)
        if extras.get("first_chunk_seconds") is None:  # the first audio comes sooner unless the request says 0
            extras["first_chunk_seconds"] = SERVED_FIRST_CHUNK_SECONDS
        speakers, pause = extras.pop("speakers", None), extras.pop("turn_pause", 0.5)
        try:
            pause = check_number("turn_pause", pause, low=0, high=10)
            if speakers is None:  # one text, one voice
                voice, turns = resolve_voice(body.get("voice")), None
                jobs, gen_options, long_form = tts.plan(text, voice, seed, options.max_batch, None, None, extras)
            else:  # a dialogue script: one job per turn, each in its speaker's voice
                turns, (jobs, gen_options, long_form) = plan_dialogue(text, body.get("voice"), speakers, seed, extras)
        except BadInput as e:
            param = "input" if e.param == "text" else e.param
            raise ApiError(400, str(e), param if param in body or param == "input" else None) from None
        # a dialogue's turns are joined as one narration (pauses between turns, one stream of chunks)
        joiner = dialogue.TurnJoiner(jobs, turns, pause) if turns is not None else None
        return jobs, joiner, gen_options, long_form, fmt, stream_format

    def plan_dialogue(text: str, voice, speakers, seed, extras: dict):
        if voice is not None:
            raise BadInput("voice gives one voice to a whole text; a dialogue's speakers take their voices from "
                           "speakers", "voice")
        if not isinstance(speakers, dict) or not all(isinstance(v, (str, type(None))) for v in speakers.values()):
            raise BadInput("speakers must map each speaker's name to a voice name (or to null)", "speakers")
        turns = dialogue.parse_script(text)
        try:
            resolved = {name: catalog.resolve(v) for name, v in speakers.items()}
        except BadInput as e:
            raise BadInput(f"speakers: {e}", "speakers") from None
        cast = dialogue.cast(turns, resolved, tts.voices(), extras.get("language", "en"))
        return turns, tts.plan([t.text for t in turns], [cast[t.speaker] for t in turns], seed, options.max_batch,
                               None, None, extras)

    @app.post("/v1/audio/speech", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": SPEECH_SCHEMA}}}}, responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
    async def speech(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            raise ApiError(400, f"the body is not valid JSON: {e}") from None
        except RecursionError:
            raise ApiError(400, "the body is not valid JSON here: it is nested too deeply") from None
        # checking, splitting and tokenizing take time on long input: off the event loop
        jobs, joiner, gen_options, long_form, fmt, stream_format = await run_in_threadpool(plan, body)
        loop, submitted = asyncio.get_running_loop(), []  # (handle, queue) per job (a dialogue's turns)
        try:
            for job in jobs:
                queue = asyncio.Queue()
                submitted.append((scheduler.submit(job, gen_options, long_form,
                                                   lambda item, q=queue: loop.call_soon_threadsafe(q.put_nowait, item)),
                                  queue))
        except Busy as e:
            for handle, _ in submitted:
                scheduler.cancel(handle)
            raise ApiError(429, f"{e}; try again shortly", headers={"Retry-After": "2"}) from None
        metrics.queue.set(scheduler.depth)

        async def chunks():
            try:
                for turn, (_, queue) in enumerate(submitted):
                    while (item := await queue.get()) is not None:
                        if isinstance(item, BaseException):
                            raise item
                        for ready in joiner.add(turn, item) if joiner is not None else [item]:
                            metrics.audio.inc(len(ready.audio) / SAMPLE_RATE)
                            yield ready
            finally:
                for handle, _ in submitted:  # the client left, or it is done: nothing more is generated for it
                    scheduler.cancel(handle)
                metrics.queue.set(scheduler.depth)

        if stream_format == "sse":
            async def events():
                pieces, output_tokens = [], 0
                async for chunk in chunks():
                    output_tokens += len(chunk.generation.semantic_tokens)
                    if fmt in PIECEWISE:
                        data = (stream_start(fmt) if chunk.index == 0 else b"") + \
                            await run_in_threadpool(stream_piece, chunk.audio, fmt)
                        yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
                    else:
                        pieces.append(chunk.audio)
                if pieces:
                    data = await run_in_threadpool(encode, np.concatenate(pieces), fmt)
                    yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
                # usage: the text's wordpieces in, the semantic tokens generated out
                input_tokens = sum(len(ids) for job in jobs for ids in job.ids)
                yield _sse({"type": "speech.audio.done", "usage": {
                    "input_tokens": input_tokens, "output_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens}})
            return StreamingResponse(events(), media_type="text/event-stream")

        stream = chunks()
        try:
            first = await stream.__anext__()  # errors before any byte is sent are JSON errors
        except StopAsyncIteration:
            first = None
        except BadInput as e:
            raise ApiError(400, str(e), e.param if e.param in body else None) from None

        async def body_bytes():  # encoding (MP3, AAC...) runs off the event loop
            if fmt in PIECEWISE:
                yield stream_start(fmt)
                if first is not None:
                    yield await run_in_threadpool(stream_piece, first.audio, fmt)
                async for chunk in stream:
                    yield await run_in_threadpool(stream_piece, chunk.audio, fmt)
            else:
                pieces = [first.audio] if first is not None else []
                async for chunk in stream:
                    pieces.append(chunk.audio)
                yield await run_in_threadpool(encode, np.concatenate(pieces) if pieces else np.zeros(0, np.float32),
                                              fmt)
        return StreamingResponse(body_bytes(), media_type=MEDIA_TYPES[fmt])

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        names = ["fastbark", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": now, "owned_by": "fastbark"}
                                           for n in names]}

    @app.get("/v1/audio/voices")
    async def voices():
        # `voices`: the shape Open WebUI and SillyTavern read ({"id", "name"} each; fastbark's fields beside);
        # the lists by kind stay for earlier clients
        return {"voices": [e.as_dict() for e in catalog.entries()], "presets": catalog.presets,
                "openai": voice_table, "uploaded": catalog.uploaded()}

    @app.put("/v1/audio/voices/{name}")
    async def upload_voice(name: str, request: Request, quantizer: str | None = None):
        """The body: a voice `.npz`, or a recording (wav, flac, ogg, mp3, m4a ...: at most max_upload_bytes; its
        last 15 s are used) made into a voice with the server's cloning models. `quantizer`: one of the
        public quantizers' names (no paths: the server's files are not the client's to choose)."""
        target = check_upload_name(name)
        if quantizer is not None and quantizer not in QUANTIZERS:
            raise ApiError(400, f"quantizer {quantizer!r} is unknown; accepted: {', '.join(QUANTIZERS)}", "quantizer")
        data = await request.body()  # BodyLimit refused it as it came if it was too large
        if not data:
            raise ApiError(400, "the body is empty: send a voice .npz or an audio clip", "file")

        def store() -> dict:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".upload", dir=uploads)
            try:
                if data[:4] == b"PK\x03\x04":  # a zip: an .npz voice
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    voice, made_from = Voice.from_npz(tmp), "npz"  # checked exactly as any voice file
                else:
                    with os.fdopen(fd, "wb") as f:
                        try:
                            clip = read_clip(data, name="the upload")
                        except BadInput as e:
                            raise BadInput(f"{e} (a voice upload is a voice .npz, or an audio clip to make one "
                                           f"from)") from None
                        try:
                            voice = tts.voice_from_audio(clip, quantizer=quantizer)
                        except CheckpointError as e:  # the server's cloning models, not the client's clip
                            raise ApiError(503, f"voices cannot be made from audio here: {e}", None) from None
                        np.savez(f, **{k: getattr(voice, k) for k in PROMPT_KEYS})
                    made_from = "audio"
            except BadInput as e:
                os.unlink(tmp)
                raise ApiError(400, str(e).replace(str(tmp), "the upload"), "file") from None
            except BaseException:
                os.unlink(tmp)
                raise
            os.replace(tmp, target)  # an upload of the same name is replaced
            return {"name": name, "uploaded": True, "from": made_from,
                    "semantic_tokens": int(voice.semantic_prompt.shape[0]), "frames": int(voice.fine_prompt.shape[1])}
        return await run_in_threadpool(store)

    @app.delete("/v1/audio/voices/{name}")
    async def delete_voice(name: str):
        target = check_upload_name(name)
        if not target.is_file():
            raise ApiError(404, f"no uploaded voice {name!r}; uploaded: {', '.join(catalog.uploaded()) or 'none'}",
                           "name")
        target.unlink(missing_ok=True)
        return {"name": name, "deleted": True}

    @app.get("/health")
    async def health():
        # busy: a batch is running, even one whose requests have all gone (it finishes before the next)
        return {"status": "ok", "queue": scheduler.depth, "busy": scheduler.busy, "backend": tts.backend.name}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue.set(scheduler.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text(encoding="utf-8")

    return app


class AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: an error that quotes a client's broken text (a lone
    surrogate) still encodes."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _authorised(request, key: str) -> bool:
    given = request.headers.get("authorization", "")
    return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), key.encode())


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event)}\n\n"

