"""The quantised modes' KV caches in int8 against bfloat16 (or float32): the decode stages of one clip, the caches'
dtypes alternating run by run in one process, so that a noisy machine (a shared VM's memory bandwidth) weighs on both
alike. Prints each stage's best and median seconds per dtype, and writes JSON.

    python benchmarks/kv_cache.py --quantize int8 --semantic-tokens 256 --rounds 4 --json benchmarks/kv-cache.json
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

import fastbark
from bench import cpu_description, model_parser, report, timed
from fastbark.options import CoarseOptions, SemanticOptions
from fastbark.pipeline.coarse import generate_coarse
from fastbark.pipeline.semantic import generate_semantic
from fastbark.testing import write_random_checkpoint

DTYPES = {"int8": torch.int8, "bfloat16": torch.bfloat16, "float32": torch.float32}


def main(argv=None) -> dict:
    p = model_parser(__doc__)
    p.add_argument("--quantize", default="int8", choices=["int8", "int4"])
    p.add_argument("--semantic-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--caches", default="int8,bfloat16", help="comma list of int8, bfloat16, float32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    caches = args.caches.split(",")
    times = {c: {"semantic": [], "coarse": []} for c in caches}
    with tempfile.TemporaryDirectory() as tmp:
        tts = fastbark.Bark.from_pretrained(write_random_checkpoint(args.size, Path(tmp) / "bark"),
                                            quantize=args.quantize, threads=args.threads)
        models = (tts.semantic_model, tts.coarse_model)
        ids = [tts.tokenize("Hello, my dog is cute")]
        for _ in range(args.rounds):
            for cache in caches:
                for m in models:  # the same kernels through the model's seam, the caches in this dtype
                    m.use_kernels(m.layers[0].attn.kernel, m.decode_step, m.decoder, DTYPES[cache])
                sem, t_sem = timed(lambda: generate_semantic(tts.semantic_model, ids, None, SemanticOptions(
                    temperature=0, max_tokens=args.semantic_tokens, allow_early_stop=False)))
                _, t_coarse = timed(lambda: generate_coarse(tts.coarse_model, sem, None, CoarseOptions(temperature=0)))
                times[cache]["semantic"].append(t_sem)
                times[cache]["coarse"].append(t_coarse)
    rows = [{"cache": c, **{f"{stage}_{f.__name__}": f(ts) for stage, ts in times[c].items()
                            for f in (min, statistics.median)}, "runs": times[c]} for c in caches]
    result = {"size": args.size, "quantize": args.quantize, "semantic_tokens": args.semantic_tokens,
              "threads": args.threads, "rounds": args.rounds, "rows": rows, "cpu": cpu_description(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    return report(result, ["KV cache", "semantic best / median (s)", "coarse best / median (s)"],
                  lambda r: [r["cache"], f"{r['semantic_min']:.2f} / {r['semantic_median']:.2f}",
                             f"{r['coarse_min']:.2f} / {r['coarse_median']:.2f}"], args.json)


if __name__ == "__main__":
    main()
