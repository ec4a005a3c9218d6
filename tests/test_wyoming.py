"""`fastbark wyoming`: the real server on a free localhost port, driven by the `wyoming` package's own client
as Home Assistant drives it: describe, one-shot and streamed synthesis, two clients, a dropped client,
malformed events."""

import asyncio
import json
import socket
import time

import pytest

import fastbark
from fastbark.cli import main
from fastbark.output import pcm16
from fastbark.server.options import WyomingOptions

wyoming = pytest.importorskip("wyoming")
from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.ping import Ping, Pong  # noqa: E402
from wyoming.tts import (Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop,  # noqa: E402
                         SynthesizeStopped, SynthesizeVoice)

from fastbark.options import GenerationOptions  # noqa: E402
from fastbark.server.wyoming import running, split_sentences  # noqa: E402

FAST = {"max_semantic_tokens": 6}
SEED = 7


class Counting:
    """The engine, counting the chunks it is asked to generate."""

    def __init__(self, tts):
        self.tts, self.chunks, self.delay_s = tts, 0, 0.0

    def __getattr__(self, name):
        return getattr(self.tts, name)

    def generate_chunks(self, ids, *args, **kwargs):
        self.chunks += len(ids)
        time.sleep(self.delay_s)  # a slower engine, where a test needs generation to outlast a client
        return self.tts.generate_chunks(ids, *args, **kwargs)


@pytest.fixture(scope="module")
def engine(hub_dir):
    return fastbark.Bark.from_pretrained(hub_dir)


@pytest.fixture(scope="module")
def server(engine):
    """(port, counting engine) of a server in its own thread and event loop."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    counting = Counting(engine)
    options = WyomingOptions(uri=f"tcp://127.0.0.1:{port}", seed=SEED, max_batch=2, max_wait_ms=30)
    with running(counting, options, GenerationOptions(**FAST)):
        yield port, counting


def alone(engine, text, voice=None) -> bytes:
    """What one synthesis of `text` must give: `generate` with the server's seed and default voice."""
    return pcm16(engine.generate(text, voice=voice or engine.voices()[0], seed=SEED, **FAST).audio)


async def events_until(client, last_type: str, timeout: float = 120) -> list:
    events = []
    deadline = time.monotonic() + timeout
    while not events or events[-1].type != last_type:
        event = await asyncio.wait_for(client.read_event(), max(0.1, deadline - time.monotonic()))
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        events.append(event)
    return events


def audio_of(events) -> bytes:
    chunks = [AudioChunk.from_event(e) for e in events if AudioChunk.is_type(e.type)]
    assert all((c.rate, c.width, c.channels) == (24_000, 2, 1) for c in chunks)
    return b"".join(c.audio for c in chunks)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


def test_describe_lists_the_voices_and_streaming(server, engine):
    port, _ = server

    async def go():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            info = Info.from_event((await events_until(client, "info"))[-1])
            await client.write_event(Ping(text="x").event())
            pong = Pong.from_event((await events_until(client, "pong"))[-1])
            return info, pong
    info, pong = run(go())
    (program,) = info.tts
    assert program.name == "fastbark" and program.supports_synthesize_streaming and program.installed
    voices = {v.name: v for v in program.voices}
    assert set(engine.voices()) <= set(voices)
    assert voices["v2/en_speaker_1"].languages == ["en"] and voices["announcer"].languages == []
    assert pong.text == "x"


def test_one_shot_synthesis_equals_generate(server, engine):
    port, _ = server
    text = "The dog is cute. Hello world!"

    async def go():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Synthesize(text=text).event())
            first = await events_until(client, "audio-stop")
            await client.write_event(Synthesize(text="hello", voice=SynthesizeVoice(name="announcer")).event())
            second = await events_until(client, "audio-stop")
            await client.write_event(Synthesize(text="hello", voice=SynthesizeVoice(language="en")).event())
            return first, second, await events_until(client, "audio-stop")
    first, second, by_language = run(go())
    start = AudioStart.from_event(first[0])
    assert (start.rate, start.width, start.channels) == (24_000, 2, 1) and AudioStop.is_type(first[-1].type)
    assert audio_of(first) == alone(engine, text)
    assert audio_of(second) == alone(engine, "hello", "announcer")
    assert engine.voices()[0] != "v2/en_speaker_1"  # a language alone picks that language's first preset
    assert audio_of(by_language) == alone(engine, "hello", "v2/en_speaker_1")


def test_streamed_text_is_spoken_sentence_by_sentence_as_it_arrives(server, engine):
    """Home Assistant streams an LLM's text in pieces (and sends a `synthesize` copy for older servers,
    which is ignored): the first sentence is spoken before the text is finished."""
    port, _ = server

    async def go():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="The dog is").event())
            await client.write_event(SynthesizeChunk(text=" cute. Hel").event())
            early = await events_until(client, "audio-chunk")  # before the rest of the text is sent
            for piece in ("lo world! And", " more"):
                await client.write_event(SynthesizeChunk(text=piece).event())
            await client.write_event(Synthesize(text="The dog is cute. Hello world! And more").event())
            await client.write_event(SynthesizeStop().event())
            return early + await events_until(client, "synthesize-stopped")
    events = run(go())
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert types.count("audio-start") == 1 and types.count("audio-stop") == 1
    want = b"".join(alone(engine, s) for s in ("The dog is cute.", "Hello world!", "And more"))
    assert audio_of(events) == want
    assert SynthesizeStopped.is_type(events[-1].type)


def test_two_clients_at_once_each_get_their_own_audio(server, engine):
    port, _ = server

    async def one(text):
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Synthesize(text=text).event())
            return audio_of(await events_until(client, "audio-stop"))

    async def go():
        return await asyncio.gather(one("the dog is cute"), one("hello world, again"))
    a, b = run(go())
    assert a == alone(engine, "the dog is cute") and b == alone(engine, "hello world, again")


def test_a_dropped_client_has_its_work_cancelled(server):
    port, counting = server
    text = " ".join(f"Sentence number {i} is here and it goes on for a while." for i in range(40))
    chunks = len(counting.tts.split(text))
    assert chunks >= 6
    before = settled(counting)  # an earlier test's work may still be finishing: counted before this one starts
    counting.delay_s = 0.3  # every batch of at most 2 chunks 0.3 s slower: the whole text takes 3 s or more, so the
    try:  # tiny model cannot finish it before the server sees the client leave (it did once, on a fast machine)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall((json.dumps({"type": "synthesize", "data": {"text": text}}) + "\n").encode())
            time.sleep(0.5)
        generated = settled(counting) - before
    finally:
        counting.delay_s = 0.0
    assert generated < chunks  # the chunks still queued when it left were never generated


def settled(counting, timeout_s: float = 120) -> int:
    """The engine's chunk count once nothing more is generated (bounded)."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        time.sleep(2)
        if counting.chunks == last:
            break
        last = counting.chunks
    return counting.chunks


def test_bad_events_get_error_events_and_the_connection_lives(server):
    port, _ = server

    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = []

        async def send(line: bytes):
            writer.write(line)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 60)
            header = json.loads(line)
            data = json.loads(await reader.readexactly(header["data_length"])) if header.get("data_length") else {}
            replies.append((header["type"], {**header.get("data", {}), **data}))
        await send(b"this is not json\n")
        await send(b'{"no": "type"}\n')
        await send(b'{"type": "synthesize", "data": {"text": 5}}\n')
        await send(b'{"type": "synthesize", "data": {"text": "   "}}\n')
        await send(b'{"type": "synthesize", "data": {"text": "hi", "voice": {"name": "nobody"}}}\n')
        await send(b'{"type": "synthesize-chunk", "data": {"text": "hi"}}\n')
        await send(b'{"type": "synthesize-stop"}\n')
        await send(b'{"type": "describe"}\n')  # still alive
        await send(b'{"type": "describe", "data_length": 99999999999}\n')  # cannot be skipped: error, then closed
        closed = await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
        return replies, closed
    replies, closed = run(go())
    kinds = [t for t, _ in replies]
    assert kinds == ["error"] * 7 + ["info", "error"] and closed
    messages = [d["text"] for _, d in replies if d.get("text")]
    assert "not JSON" in messages[0] and "'type'" in messages[1]
    assert "text must be a non-empty string" in messages[3] and "unknown voice 'nobody'" in messages[4]
    assert "synthesize-start first" in messages[5] and "synthesize-start first" in messages[6]
    assert replies[-1][1]["code"] == "bad-event"


def test_sentences_split_where_they_end():
    assert split_sentences("The dog. Is cute! And") == (["The dog.", "Is cute!"], "And")
    assert split_sentences('He said "no." Then') == (['He said "no."'], "Then")
    assert split_sentences("3.14 is pi") == ([], "3.14 is pi")  # no space after the point: not an end
    assert split_sentences("Done.") == ([], "Done.")  # the end is known only when more text follows


def test_wyoming_options_are_checked(capsys):
    with pytest.raises(fastbark.BadInput, match="uri 'http://x:1' is not one fastbark listens on"):
        WyomingOptions(uri="http://x:1")
    with pytest.raises(fastbark.BadInput, match="seed"):
        WyomingOptions(seed=-1)
    assert main(["wyoming", "--uri", "tcp://127.0.0.1"]) == 2
    assert capsys.readouterr().err.startswith("fastbark: error: --uri 'tcp://127.0.0.1' is not one")
    assert main(["wyoming", "--max-batch", "0"]) == 2
    assert "--max-batch must be" in capsys.readouterr().err


def test_a_long_text_starts_with_a_short_first_chunk_by_default(server, engine):
    """Wyoming (like the HTTP server) speaks a long text's first ~4 s on their own, so the first audio
    comes after a third of a full chunk's compute."""
    from fastbark.options import SERVED_FIRST_CHUNK_SECONDS
    port, _ = server
    text = ("Hello there, my old friend, how are you doing on this fine and sunny morning in the middle of the "
            "month? I am fine, thank you.")
    assert len(engine.split(text, first_chunk_seconds=SERVED_FIRST_CHUNK_SECONDS)) > len(engine.split(text))

    async def go():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Synthesize(text=text).event())
            return audio_of(await events_until(client, "audio-stop"))
    want = engine.generate(text, voice=engine.voices()[0], seed=SEED, first_chunk_seconds=SERVED_FIRST_CHUNK_SECONDS,
                           **FAST)
    assert run(go()) == pcm16(want.audio)
