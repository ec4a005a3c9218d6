"""How fast a bark-small decode step's linear layers stream their weights, by kernel.

The 49 matrix-vector products of one semantic decode step (12 layers x att_proj, out_proj,
mlp.in_proj, mlp.out_proj, plus lm_head), one row each: plain `F.linear`, oneDNN-packed float32,
packed bfloat16, fastbark's C kernel (backends/cpu/native/gemv.c), fastbark's int8 mode
(backends/cpu/int8.py), and torch's int8 dynamic quantisation when this torch still has it.

The reference rows are this machine's memory: a 256 MB `copy_` and a 256 MB `sum`, in GB/s of bytes
read (a copy also writes as many). A decode-step product cannot read its weights faster than memory
delivers them, so "% of read" says how close a kernel comes to the floor. Each kernel's GB/s counts the
bytes it reads: 4 per weight in float32, 2 in bfloat16, 1 in int8.

    python benchmarks/linear_bandwidth.py --threads 2 --json benchmarks/linear-bandwidth.json

`--rows B` gives every product B rows (one position each), as a batch of B decodes does: the weights are
still read once per step, so GB/s still counts each weight once.
    python benchmarks/linear_bandwidth.py --threads 2 --rows 8
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(10_048, 768)]  # (out, in)


def as_linear(weight: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data.copy_(weight)
    return linear


def per_step_ms(fn, trials: int = 5, repeats: int = 4) -> float:
    """Best of `trials` means over `repeats` steps: the least disturbed figure on a shared machine."""
    fn()
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1000


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rows", type=int, default=1, help="rows per product: a decode batch's size")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.rows < 1:
        p.error("--rows must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = [torch.randn(o, i) for o, i in SHAPES]
    x = {i: torch.randn(args.rows, i) for i in (768, 3072)}  # (B, K): B one-position rows
    n_bytes = sum(w.numel() for w in weights) * 4
    results = {}
    big, dst = torch.randn(64 << 20), torch.empty(64 << 20)  # 256 MB each: far beyond any cache
    with torch.inference_mode():
        copy_ms = per_step_ms(lambda: dst.copy_(big))
        read_ms = per_step_ms(lambda: big.sum())
        reference = {"memory copy": big.numel() * 4 / copy_ms / 1e6, "memory read (sum)": big.numel() * 4 / read_ms / 1e6}
        del big, dst
        results["F.linear float32"] = per_step_ms(lambda: [F.linear(x[w.shape[1]], w) for w in weights])
        from fastbark.backends.cpu.library import load_kernels
        from fastbark.backends.cpu.linears import GemvLinear, PackedLinear, packing_available
        for dtype, name in ((torch.float32, "oneDNN packed float32"), (torch.bfloat16, "oneDNN packed bfloat16")):
            if not packing_available(dtype):
                print(f"{name}: oneDNN cannot pack {dtype} weights on this CPU")
                continue
            layers = [PackedLinear(as_linear(w).to(dtype)) for w in weights]
            xs = {k: v.to(dtype) for k, v in x.items()}
            results[name] = per_step_ms(lambda: [m(xs[m.in_features]) for m in layers])
        if load_kernels() is not None:
            c_layers = [GemvLinear(as_linear(w)) for w in weights]
            x3 = {k: v[:, None] for k, v in x.items()}  # (B, K) -> (B, 1, K): one decode position per row
            results["fastbark C kernel float32"] = per_step_ms(lambda: [m(x3[m.in_features]) for m in c_layers])
        from fastbark.backends.cpu.int8 import Int8Linear
        int8 = [Int8Linear(as_linear(w), native=False) for w in weights]
        results["fastbark int8, torch._int_mm"] = per_step_ms(lambda: [m(x[m.in_features]) for m in int8])
        if load_kernels() is not None:
            int8 = [Int8Linear(as_linear(w)) for w in weights]
            results["fastbark int8, C kernel"] = per_step_ms(lambda: [m(x[m.in_features]) for m in int8])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torch.ao.quantization import quantize_dynamic
                model = torch.nn.ModuleList(as_linear(w) for w in weights)
                quantized = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            results["int8 dynamic (torch.ao)"] = per_step_ms(lambda: [m(x[m.in_features]) for m in quantized])
        except Exception as e:  # removed from newer torch
            print(f"int8 dynamic quantisation unavailable: {e}")
    floor = reference["memory read (sum)"]
    print(f"\n49 decode-step products of bark-small ({n_bytes / 1e6:.0f} MB in float32), {args.rows} row(s) each, "
          f"{args.threads} threads")
    print(f"| kernel | ms/step | GB/s (fp32 bytes) | GB/s (its own bytes) | % of read |\n| --- | --- | --- | --- | --- |")
    for name, gbs in reference.items():
        print(f"| {name} (reference) | | | {gbs:.1f} | {100 * gbs / floor:.0f}% |")
    rates = {}
    for name, ms in results.items():
        own = n_bytes / 4 * bytes_per_weight(name)  # the bytes it reads: 4, 2 or 1 per weight
        rates[name] = own / ms / 1e6
        print(f"| {name} | {ms:.2f} | {n_bytes / ms / 1e6:.1f} | {rates[name]:.1f} | {100 * rates[name] / floor:.0f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": args.rows, "ms_per_step": results,
                                               "reference_gbs": reference, "own_bytes_gbs": rates}, indent=2))
    return results


def bytes_per_weight(kernel: str) -> int:
    return 2 if "bfloat16" in kernel else 1 if "int8" in kernel else 4


if __name__ == "__main__":
    main()
