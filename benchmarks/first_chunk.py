"""Time to first audio for a ~2,000-character text, with and without the short first chunk
(`first_chunk_seconds`), in one run on one engine.

Random weights never stop early, so each first chunk is generated with a fixed number of semantic tokens:
its estimated speech (longform/split.py's estimate) at Bark's 49.9 tokens a second, as real weights would
speak it. The time to first audio is that chunk's whole generation (semantic, coarse, fine, decode).

    python benchmarks/first_chunk.py --size small --threads 2 --json benchmarks/first-chunk-small.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fastbark.constants import SEMANTIC_RATE_HZ
from fastbark.longform.split import estimate_seconds
from fastbark.options import SERVED_FIRST_CHUNK_SECONDS
from bench import best_seconds, cpu_description, report
from fastbark.testing import write_random_checkpoint
from longform import TEXT


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs per setting")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        import fastbark
        tts = fastbark.Bark.from_pretrained(write_random_checkpoint(args.size, Path(tmp) / "bark"), threads=args.threads)
        for first in (None, SERVED_FIRST_CHUNK_SECONDS):
            chunks = tts.split(TEXT, first_chunk_seconds=first)
            tokens = max(1, round(estimate_seconds(chunks[0]) * SEMANTIC_RATE_HZ))
            options = dict(semantic_temperature=0, coarse_temperature=0, fine_temperature=0, allow_early_stop=False,
                           max_semantic_tokens=tokens)
            tts.generate(chunks[0].split(".")[0] + ".", **{**options, "max_semantic_tokens": 8})  # warm up
            runs = []
            best = best_seconds(lambda: runs.append(tts.generate(chunks[0], **options)), args.repeats)
            out = runs[-1]
            rows.append({"first_chunk_seconds": first, "chunks": len(chunks), "first_chunk": chunks[0],
                         "first_chunk_chars": len(chunks[0]), "semantic_tokens": tokens,
                         "first_audio_s": best, "first_chunk_audio_s": len(out.audio) / 24_000})
    result = {"size": args.size, "threads": args.threads, "text_chars": len(TEXT), "rows": rows,
              "speedup": rows[0]["first_audio_s"] / rows[1]["first_audio_s"], "cpu": cpu_description(),
              "date": time.strftime("%Y-%m-%d")}
    report(result, ["first_chunk_seconds", "chunks", "first chunk chars", "semantic tokens",
                    "time to first audio (s)"],
           lambda r: [str(r["first_chunk_seconds"]), str(r["chunks"]), str(r["first_chunk_chars"]),
                      str(r["semantic_tokens"]), f"{r['first_audio_s']:.2f}"], args.json)
    print(f"speedup of the first audio: {result['speedup']:.2f}x")
    return result


if __name__ == "__main__":
    main()
