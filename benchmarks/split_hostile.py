"""Splitting a large hostile text: 6.6 MB of base64 (no spaces) and 6.6 MB of prose, timed.

The tokenizer is the test vocabulary's (fastbark.testing.VOCAB): Bark's BERT vocabulary cannot be
downloaded where fastbark is developed. It tokenizes into more, shorter pieces, so it is no kinder.

    python benchmarks/split_hostile.py --json benchmarks/split-hostile.json
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from pathlib import Path

from fastbark.testing import VOCAB
from fastbark.longform.split import chunk_text
from fastbark.text.tokenizer import TextTokenizer

PROSE = "Dr. Smith paid $3.50 for it. \"Really?\" she asked... Yes! The dog [laughs] agreed, and then said no. "


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bytes", type=int, default=6_600_000)
    p.add_argument("--json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
        tokenizer = TextTokenizer.from_file(Path(tmp) / "vocab.txt")
    n = args.bytes
    texts = {"base64, no spaces": base64.b64encode(bytes(range(256)) * (n // 192 + 1)).decode()[:n],
             "prose": (PROSE * (n // len(PROSE) + 1))[:n]}
    rows = {}
    print("| text | MB | chunks | seconds |\n| --- | --- | --- | --- |")
    for name, text in texts.items():
        start = time.perf_counter()
        chunks = chunk_text(text, lambda piece: len(tokenizer.encode(piece)))
        rows[name] = {"mb": len(text) / 1e6, "chunks": len(chunks), "seconds": time.perf_counter() - start}
        print(f"| {name} | {rows[name]['mb']:.1f} | {len(chunks)} | {rows[name]['seconds']:.1f} |", flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
