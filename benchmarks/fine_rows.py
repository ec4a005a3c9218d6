"""The fine stage on the CPU: texts stacked in one forward pass vs one text per pass (the same numbers).

    python benchmarks/fine_rows.py --size small --texts 8 --frames 96 --json benchmarks/fine-rows-small.json

Random weights at the given size, random coarse codes, greedy; both runs in the same process.
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
import fastbark.pipeline.fine as fine
from fastbark.options import FineOptions
from fastbark.testing import write_random_checkpoint


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    p.add_argument("--texts", type=int, default=8)
    p.add_argument("--frames", type=int, default=96, help="coarse frames per text (32 semantic tokens ~ 96)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"size": args.size, "texts": args.texts, "frames": args.frames, "threads": args.threads,
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tts = fastbark.Bark.from_pretrained(write_random_checkpoint(args.size, Path(tmp) / "bark"), threads=args.threads)
        rng = np.random.default_rng(0)
        coarse = [rng.integers(0, 1024, (2, args.frames)) for _ in range(args.texts)]
        results = {}
        default = fine.FINE_ROWS_PER_PASS
        try:
            for per_pass in (args.texts, 1):
                fine.FINE_ROWS_PER_PASS = per_pass
                start = time.perf_counter()
                results[per_pass] = fine.generate_fine(tts.fine_model, coarse, None, FineOptions(temperature=0))
                out["runs"][f"{per_pass} per pass"] = time.perf_counter() - start
        finally:
            fine.FINE_ROWS_PER_PASS = default
        out["equal"] = all(np.array_equal(a, b) for a, b in zip(results[args.texts], results[1]))
    print(f"bark-{args.size}, fine stage of {args.texts} texts of {args.frames} frames, {args.threads} threads")
    for name, seconds in out["runs"].items():
        print(f"{name:>14}: {seconds:7.1f} s")
    print("the same codes:", out["equal"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
