"""`fastbark wyoming`: the Wyoming protocol (Home Assistant's voice pipeline) over one engine and the same
batching scheduler as the HTTP server.

Per connection (`SpeechHandler`):
- `describe` -> `info`: fastbark as a TTS program, its voices (the catalogue's: OpenAI names, presets with
  their languages, uploads) and that it streams text in;
- `synthesize` -> `audio-start`, an `audio-chunk` per second of audio as each chunk of the text is done
  (long texts are cut as `Bark.generate` cuts them), `audio-stop`;
- `synthesize-start`, `synthesize-chunk`s, `synthesize-stop` (text arriving as an LLM writes it) -> each
  sentence is queued the moment it is complete in the text so far, and spoken in order: `audio-start`,
  `audio-chunk`s, `audio-stop`, then `synthesize-stopped`. The `synthesize` a streaming client also sends
  (for older servers) is ignored while a stream is open;
- `ping` -> `pong`.
Clients share the scheduler, so their sentences join batches. A client that goes away has its queued
work cancelled. A malformed event or a bad request gets an `error` event, and the connection stays open
(a line too long to read closes it, after the error).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import (Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped,
                         SynthesizeVoice)

from .. import __version__
from ..constants import SAMPLE_RATE
from ..errors import BadInput
from ..options import SERVED_FIRST_CHUNK_SECONDS, GenerationOptions, LongFormOptions
from ..output import pcm16
from .catalog import OPENAI_VOICES, VoiceCatalog
from .options import WyomingOptions
from .scheduler import Busy, Scheduler

SAMPLE_WIDTH = 2  # bytes: 16-bit PCM, mono
CHUNK_SAMPLES = SAMPLE_RATE  # one audio-chunk event per second of audio
MAX_LINE = 64 << 10  # an event's JSON header line, at most (asyncio's default stream limit)
MAX_DATA = 1 << 20  # an event's data or payload, at most
# a sentence is complete when its end mark (and any closing quotes or brackets) is followed by white space
SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*\s+")


def split_sentences(text: str) -> tuple[list[str], str]:
    """The complete sentences at the start of `text` (stripped), and the rest (not yet complete)."""
    sentences, start = [], 0
    for match in SENTENCE_END.finditer(text):
        sentence = text[start: match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    return sentences, text[start:]


class Service:
    """What every connection shares: the engine, its scheduler and the voice catalogue."""

    def __init__(self, tts, options: WyomingOptions, generation: GenerationOptions | None = None,
                 long_form: LongFormOptions | None = None):
        self.tts, self.options = tts, options
        self.generation, self.long_form = generation or GenerationOptions(), long_form or LongFormOptions()
        if self.long_form.first_chunk_seconds is None:  # the first audio comes sooner unless told 0
            self.long_form = replace(self.long_form, first_chunk_seconds=SERVED_FIRST_CHUNK_SECONDS)
        uploads = Path(options.data_dir) / "voices" if options.data_dir else None
        self.catalog = VoiceCatalog(tts.voices(), OPENAI_VOICES, uploads)
        self.default_voice = self.catalog.resolve(options.voice) if options.voice else \
            (self.catalog.presets[0] if self.catalog.presets else None)
        self.scheduler = Scheduler(tts.generate_chunks, options.max_batch, options.max_wait_ms, options.max_queue)

    def info(self) -> Info:
        voices = [TtsVoice(name=e.id, description=f"{e.kind} voice" + (f" ({e.preset})" if e.preset else ""),
                           attribution=Attribution(name="Suno", url="https://github.com/suno-ai/bark"),
                           installed=True, version=None, languages=[e.language] if e.language else [])
                  for e in self.catalog.entries()]
        program = TtsProgram(name="fastbark", description="Bark text-to-speech (fastbark)",
                             attribution=Attribution(name="fastbark", url="https://github.com/suno-ai/bark"),
                             installed=True, version=__version__, voices=voices, supports_synthesize_streaming=True)
        return Info(tts=[program])

    def plan(self, text, voice: SynthesizeVoice | None):
        """A narrate.TextJob for `text` in the requested voice (or the default), with its options."""
        if not isinstance(text, str) or not text.strip():
            raise BadInput("text must be a non-empty string", "text")
        if len(text) > self.options.max_input_chars:
            raise BadInput(f"text is {len(text)} characters; at most {self.options.max_input_chars}", "text")
        jobs, options, long_form = self.tts.plan(text, self.resolve(voice), self.options.seed, self.options.max_batch,
                                                 self.generation, self.long_form, {})
        return jobs[0], options, long_form

    def resolve(self, voice: SynthesizeVoice | None):
        """A Wyoming voice as the engine's: its name from the catalogue; a language alone, that language's
        first preset; else (or with no preset of that language) the default voice."""
        if voice is not None and voice.name:
            return self.catalog.resolve(voice.name)
        if voice is not None and voice.language:
            return next((e.id for e in self.catalog.entries() if e.kind == "preset" and e.language == voice.language),
                        self.default_voice)
        return self.default_voice

    def close(self) -> None:
        self.scheduler.close()


class BadEvent(Exception):
    """An event that cannot be read; `fatal` when the stream cannot be read past it."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event (None at the end of the stream), every length bounded; BadEvent if it is malformed."""
    try:
        line = await reader.readline()
    except ValueError:  # longer than the stream's limit: the rest of the line cannot be skipped safely
        raise BadEvent(f"an event header longer than {MAX_LINE} bytes", fatal=True) from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except ValueError:
        raise BadEvent("an event header that is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise BadEvent("an event header without a string 'type'")
    lengths = [header.get(key) or 0 for key in ("data_length", "payload_length")]
    if not all(isinstance(n, int) and 0 <= n <= MAX_DATA for n in lengths):
        raise BadEvent(f"data_length and payload_length must be integers in 0..{MAX_DATA}", fatal=True)
    data = header.get("data") or {}
    try:
        extra = json.loads(await reader.readexactly(lengths[0])) if lengths[0] else {}
        payload = await reader.readexactly(lengths[1]) if lengths[1] else None
    except asyncio.IncompleteReadError:
        return None
    except ValueError:
        raise BadEvent("event data that is not JSON") from None
    if not isinstance(data, dict) or not isinstance(extra, dict):
        raise BadEvent("event data must be a JSON object")
    return Event(type=header["type"], data={**data, **extra}, payload=payload)


@dataclass(eq=False)
class Speech:
    """One text queued on the scheduler: its chunks arrive on `chunks` (None when it is done)."""

    handle: object
    chunks: asyncio.Queue


class SpeechHandler(AsyncEventHandler):
    """One connection. The read loop answers at once and queues texts on the scheduler as they arrive;
    one worker task writes the audio, request after request, in order."""

    def __init__(self, reader, writer, service: Service):
        super().__init__(reader, writer)
        self.service = service
        self._speeches: set[Speech] = set()  # queued on the scheduler, not yet played
        self._work: asyncio.Queue = asyncio.Queue()  # coroutines that write audio, in order
        self._worker: asyncio.Task | None = None
        self._stream: asyncio.Queue | None = None  # an open text stream's speeches, in order (None: no stream)
        self._stream_voice, self._stream_text = None, ""

    async def run(self) -> None:
        try:
            while True:
                try:
                    event = await read_event(self.reader)
                except BadEvent as e:
                    await self.error(f"malformed event: {e}", "bad-event")
                    if e.fatal:
                        break
                    continue
                if event is None or not await self.handle_event(event):
                    break
            if self._worker is not None:  # the client sent all it will: finish what it asked for
                self._work.put_nowait(None)
                await self._worker
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            await self.disconnect()
            self.writer.close()

    async def write_event(self, event: Event) -> None:
        await async_write_event(event, self.writer)

    async def error(self, text: str, code: str) -> None:
        await self.write_event(Error(text=text, code=code).event())

    async def disconnect(self) -> None:
        """Nothing more is generated for this connection: its queued chunks are cancelled."""
        for speech in list(self._speeches):
            self.service.scheduler.cancel(speech.handle)
        self._speeches.clear()
        while not self._work.empty():  # work never started
            work = self._work.get_nowait()
            if work is not None:
                work.close()
        if self._worker is not None and self._worker is not asyncio.current_task():
            self._worker.cancel()

    async def handle_event(self, event: Event) -> bool:
        try:
            if Describe.is_type(event.type):
                await self.write_event(self.service.info().event())
            elif Ping.is_type(event.type):
                await self.write_event(Pong(text=Ping.from_event(event).text).event())
            elif Synthesize.is_type(event.type):
                if self._stream is None:  # while streaming it is the client's copy for older servers: ignored
                    request = Synthesize.from_event(event)
                    self._later(self._speak_whole(request.text, request.voice))
            elif SynthesizeStart.is_type(event.type):
                self.start_stream(SynthesizeStart.from_event(event).voice)
            elif SynthesizeChunk.is_type(event.type):
                await self.add_text(SynthesizeChunk.from_event(event).text)
            elif SynthesizeStop.is_type(event.type):
                await self.stop_stream()
            # other events (a satellite's audio, timers...) are not for a TTS server: ignored, as Wyoming expects
        except (BadInput, Busy) as e:
            await self._refuse(e)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            await self.error(f"malformed {event.type} event ({type(e).__name__}: {e})", "bad-event")
        return True

    async def _refuse(self, e: Exception) -> None:
        if isinstance(e, Busy):
            await self.error(f"{e}; try again shortly", "busy")
        else:
            await self.error(str(e), "bad-request")

    # ------------------------------------------------------------ the worker

    def _later(self, work) -> None:
        """Run `work` (a coroutine writing audio) after the connection's earlier work."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run_work())
        self._work.put_nowait(work)

    async def _run_work(self) -> None:
        while (work := await self._work.get()) is not None:
            try:
                await work
            except (BadInput, Busy) as e:
                await self._refuse(e)
            except (ConnectionError, OSError):  # the client went away: cancel the rest
                await self.disconnect()
                return

    async def submit(self, text, voice: SynthesizeVoice | None) -> Speech:
        """Plan `text` (off the event loop) and queue it on the scheduler."""
        loop = asyncio.get_running_loop()
        job, options, long_form = await loop.run_in_executor(None, self.service.plan, text, voice)
        chunks: asyncio.Queue = asyncio.Queue()
        handle = self.service.scheduler.submit(job, options, long_form,
                                               lambda item: loop.call_soon_threadsafe(chunks.put_nowait, item))
        speech = Speech(handle, chunks)
        self._speeches.add(speech)
        return speech

    async def play(self, speech: Speech) -> None:
        """Write a queued text's audio as its chunks arrive, a second per event."""
        try:
            while (item := await speech.chunks.get()) is not None:
                if isinstance(item, BaseException):
                    await self.error(f"generation failed: {item}", "generation-failed")
                    return
                pcm = pcm16(item.audio)
                step = CHUNK_SAMPLES * SAMPLE_WIDTH
                for start in range(0, len(pcm), step):
                    await self.write_event(AudioChunk(rate=SAMPLE_RATE, width=SAMPLE_WIDTH, channels=1,
                                                      audio=pcm[start: start + step]).event())
        finally:
            self._speeches.discard(speech)

    async def _speak_whole(self, text, voice: SynthesizeVoice | None) -> None:
        speech = await self.submit(text, voice)  # a bad request: an error event and no audio
        await self.write_event(AudioStart(rate=SAMPLE_RATE, width=SAMPLE_WIDTH, channels=1).event())
        await self.play(speech)
        await self.write_event(AudioStop().event())

    # ------------------------------------------------------------ text arriving in pieces

    def start_stream(self, voice: SynthesizeVoice | None) -> None:
        if self._stream is not None:
            raise BadInput("synthesize-start while a stream is open: send synthesize-stop first")
        self.service.resolve(voice)  # an unknown voice is refused now, not per sentence
        self._stream, self._stream_voice, self._stream_text = asyncio.Queue(), voice, ""
        self._later(self._play_stream(self._stream))

    async def add_text(self, text) -> None:
        if self._stream is None:
            raise BadInput("synthesize-chunk outside a stream: send synthesize-start first")
        if not isinstance(text, str):
            raise BadInput("synthesize-chunk text must be a string")
        sentences, self._stream_text = split_sentences(self._stream_text + text)
        if len(self._stream_text) > self.service.options.max_input_chars:  # no end in sight: speak what there is
            sentences.append(self._stream_text.strip())
            self._stream_text = ""
        for sentence in sentences:
            await self._queue_sentence(sentence)

    async def _queue_sentence(self, sentence: str) -> None:
        try:
            self._stream.put_nowait(await self.submit(sentence, self._stream_voice))
        except BadInput as e:
            if "nothing to speak" not in str(e):  # "...", a lone emoji: skipped, the stream goes on
                raise

    async def stop_stream(self) -> None:
        if self._stream is None:
            raise BadInput("synthesize-stop outside a stream: send synthesize-start first")
        try:
            if self._stream_text.strip():
                await self._queue_sentence(self._stream_text.strip())
        finally:
            self._stream.put_nowait(None)  # the stream ends after what was queued, whatever happened here
            self._stream = None

    async def _play_stream(self, stream: asyncio.Queue) -> None:
        await self.write_event(AudioStart(rate=SAMPLE_RATE, width=SAMPLE_WIDTH, channels=1).event())
        while (speech := await stream.get()) is not None:
            await self.play(speech)
        await self.write_event(AudioStop().event())
        await self.write_event(SynthesizeStopped().event())


async def serve(tts, options: WyomingOptions, generation: GenerationOptions | None = None,
                long_form: LongFormOptions | None = None, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> Service:
    """Serve until cancelled (or until `stop` is set); `ready` is set once the socket listens."""
    service = Service(tts, options, generation, long_form)
    server = AsyncServer.from_uri(options.uri)
    try:
        await server.start(lambda reader, writer: SpeechHandler(reader, writer, service))
        if ready is not None:
            ready.set()
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        with contextlib.suppress(Exception):
            await server.stop()
        service.close()
    return service


@contextlib.contextmanager
def running(tts, options: WyomingOptions, generation: GenerationOptions | None = None,
            long_form: LongFormOptions | None = None, timeout: float = 120):
    """A server in a thread of its own (its own event loop) while the context lasts; for embedding it in a
    program that is not asyncio, and for the tests and benchmarks."""
    started, state = threading.Event(), {}

    async def main():
        state["loop"], state["stop"], ready = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(tts, options, generation, long_form, ready=ready, stop=state["stop"]))
        ready_or_done = asyncio.ensure_future(ready.wait())
        await asyncio.wait([task, ready_or_done], return_when=asyncio.FIRST_COMPLETED)
        started.set()
        await task  # raises what serve raised (a port in use...), after `started`
    errors = []

    def run():
        try:
            asyncio.run(main())
        except Exception as e:  # noqa: BLE001 - reported to the caller below
            errors.append(e)
            started.set()
    thread = threading.Thread(target=run, name="fastbark-wyoming", daemon=True)
    thread.start()
    if not started.wait(timeout) or errors:
        raise errors[0] if errors else TimeoutError(f"the Wyoming server did not start within {timeout} s")
    try:
        yield
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(timeout)
