"""A whole decode step per mode (float32, bfloat16, int8, int4) against this machine's memory read rate.

The coarse GPT of bark-small (random weights), one row, by default a few cached positions so that attention
costs next to nothing: each mode's step as the engine runs it (the one-call C step where it measured faster),
timed in interleaved rounds (best of each mode), at 1 and at all threads. Beside each: the bytes one step
reads (the weights of the blocks and the head in the mode's format, and the cached keys and values in the
cache's dtype), those bytes per millisecond, and that rate as a share of a 256 MB `sum`'s read rate measured
in the same run (the floor a step cannot beat).

    python benchmarks/decode_step.py --threads 2 --json benchmarks/decode-step-zen3.json
    python benchmarks/decode_step.py --threads 2 --positions 600 --json benchmarks/decode-step-600-zen3.json

With --positions 600 (a coarse window's typical cache) attention reads as much as the int8 weights; the
quantised modes are also timed with float32 caches ("float32 cache"), which the backend replaces by int8 ones.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import fastbark
from bench import cpu_description
from fastbark.testing import write_random_checkpoint

MODES = {"float32": {}, "bfloat16": dict(dtype="bfloat16"), "int8": dict(quantize="int8"), "int4": dict(quantize="int4")}
POSITIONS = 16  # by default: attention reads 16 x 6 KB (float32) per layer, against 7 MB or more of weights


def weight_bytes(model) -> int:
    """What one step reads of its linear layers: float32 weights (plain, or oneDNN-packed: `packed`, as the
    float32 head is), int8 weights with their scales and sums, int4 packed weights with their scales."""
    total = 0
    for m in model.modules():
        for name in ("weight", "packed", "weight_q", "weight_scale", "weight_sum", "weight_packed"):
            t = getattr(m, name, None) if hasattr(m, "in_features") else None
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def cache_bytes(model, positions: int) -> int:
    """What one step reads of the KV cache: keys and values of every layer at `positions` + 1 positions."""
    c, cache = model.config, model.new_cache(1, 1)
    scales = c.n_head * 4 if cache.k_scale is not None else 0  # an int8 cache's float32 scale per head
    return 2 * c.n_layer * (c.n_embd * cache.k.element_size() + scales) * (positions + 1)


def step_ms(model, threads: int, positions: int, runs: int = 15) -> float:
    """The median of `runs` steps of one row at `positions` (the token's embedding, the step, the head), over a
    cache whose memory is written (a fresh allocation's pages would all read as one shared zero page)."""
    torch.set_num_threads(threads)
    with torch.inference_mode():
        cache = model.new_cache(1, positions + 1)
        for t in (cache.k, cache.v):
            t.random_(-127, 128) if t.dtype == torch.int8 else t.normal_()
        for t in (cache.k_scale, cache.v_scale):
            if t is not None:
                t.uniform_(0.005, 0.02)  # an int8 cache's scales: values of about +-2
        token = torch.zeros(1, dtype=torch.long)
        model.decode(token, cache, positions)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model.decode(token, cache, positions)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def float32_cache(tts):
    """The engine's coarse GPT with its kernels, its KV caches in float32 (the model's dtype)."""
    m = tts.coarse_model
    m.use_kernels(m.layers[0].attn.kernel, m.decode_step, m.decoder)
    return m


def read_gbs(threads: int) -> float:
    torch.set_num_threads(threads)
    big = torch.ones(64 << 20)  # 256 MB: far beyond any cache
    big.sum()
    best = min(_timed(big.sum) for _ in range(5))
    return big.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each mode keeps its best")
    p.add_argument("--positions", type=int, default=POSITIONS, help="cached positions")
    p.add_argument("--json")
    args = p.parse_args(argv)
    counts = sorted({1, args.threads})
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint("small", Path(tmp) / "bark")
        engines = {name: fastbark.Bark.from_pretrained(folder, threads=args.threads, **o) for name, o in MODES.items()}
        if args.positions > POSITIONS:  # the quantised modes once more, with the float32 caches of before
            engines.update({f"{name}, float32 cache": fastbark.Bark.from_pretrained(folder, threads=args.threads, **o)
                            for name, o in MODES.items() if "quantize" in o})
    models = {name: float32_cache(tts) if "float32 cache" in name else tts.coarse_model
              for name, tts in engines.items()}
    steps = {name: tts.backend.models["coarse"].decode_step for name, tts in engines.items()}
    ms = {(name, t): float("inf") for name in models for t in counts}
    read = {t: 0.0 for t in counts}
    for _ in range(args.rounds):
        for t in counts:
            read[t] = max(read[t], read_gbs(t))
            for name, model in models.items():
                ms[name, t] = min(ms[name, t], step_ms(model, t, args.positions))
    rows = []
    print(f"\nbark-small coarse decode step, one row, {args.positions} cached positions; best of {args.rounds} rounds")
    print("| mode | step | weights read | cache read | " +
          " | ".join(f"{t} thread{'s' * (t > 1)}: ms, GB/s, % of read" for t in counts) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in counts) + " |")
    for name, model in models.items():
        weights, cached = weight_bytes(model), cache_bytes(model, args.positions)
        size = weights + cached
        row = {"mode": name, "step": steps[name], "weight_mb": weights / 1e6, "cache_mb": cached / 1e6}
        cells = []
        for t in counts:
            gbs = size / ms[name, t] / 1e6
            row[f"ms_t{t}"], row[f"gbs_t{t}"], row[f"of_read_t{t}"] = ms[name, t], gbs, gbs / read[t]
            cells.append(f"{ms[name, t]:.2f}, {gbs:.1f}, {100 * gbs / read[t]:.0f}%")
        rows.append(row)
        print(f"| {name} | {steps[name]} | {weights / 1e6:.1f} MB | {cached / 1e6:.1f} MB | " +
              " | ".join(cells) + " |")
    print("| memory read (256 MB sum) | | | | " + " | ".join(f"{read[t]:.1f} GB/s" for t in counts) + " |")
    results = {"cpu": cpu_description(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "positions": args.positions, "rounds": args.rounds, "read_gbs": {str(t): g for t, g in read.items()},
               "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
