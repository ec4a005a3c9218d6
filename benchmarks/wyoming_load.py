"""A Wyoming load run: N clients at once, each streaming a text in pieces (synthesize-start, -chunk,
-stop) as Home Assistant does with an LLM's answer; per client the time to its first audio chunk and to
`synthesize-stopped`, and every error. Bounded: each client streams one text and stops.

    python benchmarks/wyoming_load.py --size small --clients 8 --tokens 16 --json benchmarks/wyoming-load-small.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

from fastbark.options import GenerationOptions
from fastbark.server.options import WyomingOptions
from bench import cpu_description
from fastbark.testing import write_random_checkpoint

SENTENCES = ["The lighthouse keeper woke before dawn.", "He climbed the spiral stairs slowly.",
             "At the top, the great lens waited, cold and patient."]


async def client(port: int, index: int, deadline: float) -> dict:
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop
    text = " ".join(SENTENCES) + f" Client {index} is done."
    pieces = [text[i: i + 17] for i in range(0, len(text), 17)]  # an LLM's tokens, roughly
    start, first, errors, audio_bytes = time.perf_counter(), None, [], 0
    async with AsyncTcpClient("127.0.0.1", port) as c:
        await c.write_event(SynthesizeStart().event())
        for piece in pieces:
            await c.write_event(SynthesizeChunk(text=piece).event())
            await asyncio.sleep(0.02)
        await c.write_event(SynthesizeStop().event())
        while True:
            event = await asyncio.wait_for(c.read_event(), max(1.0, deadline - time.monotonic()))
            if event is None:
                errors.append("connection closed")
                break
            if event.type == "audio-chunk":
                first = first or time.perf_counter() - start
                audio_bytes += len(event.payload or b"")
            elif event.type == "error":
                errors.append(event.data.get("text"))
            elif event.type == "synthesize-stopped":
                break
    return {"first_audio_s": first, "total_s": time.perf_counter() - start, "audio_s": audio_bytes / 2 / 24_000,
            "errors": errors}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--tokens", type=int, default=16, help="semantic tokens per sentence (forced)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--json")
    args = p.parse_args(argv)
    import fastbark
    from fastbark.server.wyoming import running
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        tts = fastbark.Bark.from_pretrained(write_random_checkpoint(args.size, Path(tmp) / "bark"),
                                            threads=args.threads)
        generation = GenerationOptions(semantic_temperature=0, coarse_temperature=0, fine_temperature=0,
                                       allow_early_stop=False, max_semantic_tokens=args.tokens)
        options = WyomingOptions(uri=f"tcp://127.0.0.1:{port}", seed=1)

        async def load():
            deadline = time.monotonic() + args.timeout
            return await asyncio.gather(*(client(port, i, deadline) for i in range(args.clients)),
                                        return_exceptions=True)
        with running(tts, options, generation):
            start = time.perf_counter()
            results = asyncio.run(load())
            wall = time.perf_counter() - start
    ok = [r for r in results if isinstance(r, dict) and not r["errors"]]
    firsts = [r["first_audio_s"] for r in ok if r["first_audio_s"] is not None]
    result = {"size": args.size, "clients": args.clients, "tokens": args.tokens, "threads": args.threads,
              "wall_s": wall, "ok": len(ok), "errors": [str(r) for r in results if not (isinstance(r, dict)
                                                                                     and not r["errors"])],
              "first_audio_median_s": statistics.median(firsts) if firsts else None,
              "first_audio_max_s": max(firsts) if firsts else None,
              "total_median_s": statistics.median(r["total_s"] for r in ok) if ok else None,
              "audio_s": sum(r["audio_s"] for r in ok), "cpu": cpu_description(),
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
