"""Where the coarse stage's time goes, alone and in a batch: torch.profiler's top ops at batch 1 and N.

    python benchmarks/coarse_profile.py --size small --tokens 40 --batch 16

Random weights, random semantic tokens, greedy. The C decode products are ctypes calls, which the
profiler does not see: they are in the wall time, not in the op table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fastbark
from fastbark.options import CoarseOptions
from fastbark.pipeline.coarse import generate_coarse
from fastbark.testing import write_random_checkpoint


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    p.add_argument("--tokens", type=int, default=40, help="semantic tokens per row")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tts = fastbark.Bark.from_pretrained(write_random_checkpoint(args.size, Path(tmp) / "bark"), threads=args.threads)
        rng = np.random.default_rng(0)
        for batch in (1, args.batch):
            semantic = [rng.integers(0, 10_000, args.tokens) for _ in range(batch)]
            with torch.profiler.profile() as prof:
                start = time.perf_counter()
                generate_coarse(tts.coarse_model, semantic, None, CoarseOptions(temperature=0))
                wall = time.perf_counter() - start
            print(f"bark-{args.size} coarse stage, {batch} rows of {args.tokens} semantic tokens: {wall:.1f} s wall")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=6))


if __name__ == "__main__":
    main()
