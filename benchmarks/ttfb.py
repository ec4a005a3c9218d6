"""Time to the first audio byte for a long input on an idle `fastbark serve`, against generating that
input's first chunk alone (same engine threads, same forced token count).

    python benchmarks/ttfb.py --size small --tokens 32 --threads 2 --json benchmarks/ttfb-small.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx

from fastbark.testing import write_random_checkpoint
from load import start_server
from longform import TEXT


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)
    options = {"semantic_temperature": 0, "coarse_temperature": 0, "fine_temperature": 0,
               "max_semantic_tokens": args.tokens, "allow_early_stop": False}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint(args.size, Path(tmp) / "bark")
        import fastbark
        tts = fastbark.Bark.from_pretrained(folder, threads=args.threads)
        chunks = tts.split(TEXT)
        tts.generate(chunks[0], **options)  # warm up
        start = time.perf_counter()
        tts.generate(chunks[0], **options)
        alone = time.perf_counter() - start
        del tts
        proc, url = start_server(folder, 8, args.threads, [])
        try:
            body = {"model": "tts-1", "input": TEXT, "response_format": "pcm", **options}
            httpx.post(url + "/v1/audio/speech", json={**body, "input": chunks[0]}, timeout=3600)  # warm up
            start, first = time.perf_counter(), None
            with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=3600) as r:
                for piece in r.iter_bytes():
                    first = first or time.perf_counter() - start
                    break  # only the first byte matters here
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    result = {"size": args.size, "tokens": args.tokens, "threads": args.threads, "chunks": len(chunks),
              "text_chars": len(TEXT), "first_chunk_alone_s": alone, "ttfb_s": first, "ratio": first / alone,
              "date": time.strftime("%Y-%m-%d")}
    print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
