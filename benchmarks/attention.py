"""Attention implementations at bark-small's shapes: eager (matmul, mask, softmax, matmul) vs SDPA.

transformers' Bark offers only eager attention on the CPU (its other choice, Flash Attention 2,
needs CUDA); fastbark uses `F.scaled_dot_product_attention`. This times one layer's attention for
each kind of call the pipeline makes, both ways, on the same inputs, and checks they agree.

    python benchmarks/attention.py --threads 2 --json benchmarks/attention.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HEADS, HEAD_DIM = 12, 64  # bark-small: 768 hidden = 12 heads x 64
CASES = {  # name: (new positions T, cached positions before them, causal)
    "fine pass (1024 frames, non-causal)": (1024, 0, False),
    "coarse window prefill (600, causal)": (600, 0, True),
    "decode step, 300 cached": (1, 300, True),
    "decode step, 900 cached": (1, 900, True),
}


def eager(q, k, v, causal: bool):
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    if causal:
        T, S = scores.shape[-2:]
        mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)  # bottom-right aligned
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v  # (B, H, T, hd)


def sdpa(q, k, v, causal: bool):
    T, S = q.shape[-2], k.shape[-2]
    if causal and T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if causal and T > 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(T, S, dtype=torch.bool).tril(S - T))
    return F.scaled_dot_product_attention(q, k, v)  # one query sees every cached position, or non-causal


def per_call_ms(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    with torch.inference_mode():
        for name, (T, cached, causal) in CASES.items():
            q = torch.randn(1, HEADS, T, HEAD_DIM)
            k, v = torch.randn(2, 1, HEADS, cached + T, HEAD_DIM)
            diff = (eager(q, k, v, causal) - sdpa(q, k, v, causal)).abs().max().item()
            results[name] = {"eager_ms": per_call_ms(lambda: eager(q, k, v, causal), args.repeats),
                             "sdpa_ms": per_call_ms(lambda: sdpa(q, k, v, causal), args.repeats),
                             "max_abs_diff": diff}
    print(f"\none layer's attention at bark-small shapes, float32, {args.threads} threads")
    print(f"{'call':<40}{'eager ms':>10}{'SDPA ms':>10}{'SDPA speed-up':>15}{'max |diff|':>12}")
    for name, r in results.items():
        print(f"{name:<40}{r['eager_ms']:>10.3f}{r['sdpa_ms']:>10.3f}{r['eager_ms'] / r['sdpa_ms']:>14.2f}x"
              f"{r['max_abs_diff']:>12.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "calls": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
