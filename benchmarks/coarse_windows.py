"""The coarse stage with the KV cache carried across windows vs every window prefilled (the reference's way).

    python benchmarks/coarse_windows.py --size small --tokens 256 --batch 1 16 --json benchmarks/coarse-windows-small.json

Random weights, random semantic tokens, no voice (where windows can carry the cache: until the
semantic context slides at 209 tokens of history), greedy. Both ways run in the same process,
one after the other for each batch size; the table gives seconds, the ratio, and whether the
two gave the same tokens.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fastbark
from fastbark.options import CoarseOptions
from fastbark.pipeline.coarse import generate_coarse
from fastbark.testing import write_random_checkpoint


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    p.add_argument("--tokens", type=int, default=256, help="semantic tokens per row")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"size": args.size, "tokens": args.tokens, "threads": args.threads, "date": time.strftime("%Y-%m-%d"),
           "rows": []}
    print("| rows | every window prefilled s | cache carried s | speed-up | same tokens |\n| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        tts = fastbark.Bark.from_pretrained(write_random_checkpoint(args.size, Path(tmp) / "bark"), threads=args.threads)
        rng = np.random.default_rng(0)
        for batch in args.batch:
            semantic = [rng.integers(0, 10_000, args.tokens) for _ in range(batch)]
            seconds, codes = {}, {}
            for carry in (False, True):
                start = time.perf_counter()
                codes[carry] = generate_coarse(tts.coarse_model, semantic, None, CoarseOptions(temperature=0),
                                               carry_cache=carry)
                seconds[carry] = time.perf_counter() - start
            same = all(np.array_equal(a, b) for a, b in zip(codes[False], codes[True]))
            row = dict(rows=batch, prefilled_s=seconds[False], carried_s=seconds[True],
                       speedup=seconds[False] / seconds[True], same_tokens=same)
            out["rows"].append(row)
            print(f"| {batch} | {seconds[False]:.1f} | {seconds[True]:.1f} | {row['speedup']:.2f}x | {same} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
