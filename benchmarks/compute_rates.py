"""The compute-bound stages against this machine's matrix-multiply rate, per mode (float32, bfloat16, int8, int4).

The machine's rate: the best of torch's GEMMs at a fine pass's shapes and a square 2048 one, in each
mode's arithmetic (float32 `torch.mm`; bfloat16 `torch.mm`; int8 `torch._int_mm`, and the
exact float32 route the int8 mode takes without VNNI; int4: float32 or bfloat16, as its long route expands the
weights to either), and on CPUs with AMX fastbark's own products on the tiles (amx.py; its weights packed
beforehand, as a layer holds them) where those are faster. The stage: one fine-model pass over a full
1024-frame window at bark-small sizes (random weights), as the pipeline runs it, through fastbark's
backend for the mode; and a coarse prefill of PREFILL_POSITIONS positions (a coarse window's longest: its
history and a voice's), into a fresh cache, as the coarse stage runs one. Their FLOPs are counted from the
models' shapes: 2 per multiply-add in every linear layer and in attention's two products (the prefill's
causal attention counted whole, its head for the last position only).

    python benchmarks/compute_rates.py --threads 2 --json benchmarks/compute-rates.json
    python benchmarks/compute_rates.py --threads 2 --modes bfloat16,int8 --attention-ways   # + the pass per attention

With --attention-ways the pass is also timed with each whole-sequence attention the CPU backend can choose among
(the C kernels on AMX tiles and AVX512-BF16 where they run, SDPA in bfloat16 where the activations are float32, SDPA),
in alternating rounds in one process: the choice's worth in a whole pass, the element-wise work included.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

import fastbark
from bench import best_seconds, cpu_description, model_parser, report
from fastbark.backends.cpu.amx import BF16_ROUTE, INT8_ROUTE, amx_kernels
from fastbark.backends.cpu.attention import CpuAttention, amx_attention, bf16_attention, sdpa_bf16_whole, sdpa_whole
from fastbark.backends.cpu.int8 import int_mm_via_float
from fastbark.testing import write_random_checkpoint

SHAPES = [(1024, 768, 3072), (1024, 3072, 768), (1024, 768, 2304), (2048, 2048, 2048)]  # (M, K, N): a fine
# pass's products, and a square one; the machine's rate is the best of them


def gemm_gflops(mode: str, repeats: int) -> float:
    """The best rate of torch's matrix products in `mode`'s arithmetic over SHAPES (torch.mm and F.linear). int4's
    fine passes run as float32 or bfloat16 GEMMs, whichever measured faster (int4.py): the better of the two."""
    if mode == "int4":
        return max(gemm_gflops("float32", repeats), gemm_gflops("bfloat16", repeats))
    g = torch.Generator().manual_seed(0)
    best = 0.0
    for m, k, n in SHAPES:
        a, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)  # w: (N, K), as a linear layer's
        if mode == "int8":
            a8, w8 = a.clamp(-127, 127).to(torch.int8), w.clamp(-127, 127).to(torch.int8)
            runs = [lambda: torch._int_mm(a8, w8.t()), lambda: int_mm_via_float(a8, w8)]
            runs += [lambda: INT8_ROUTE(a8, w8)] if amx_kernels() is not None else []
        else:
            dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
            a, w = a.to(dtype), w.to(dtype)
            wt = w.t().contiguous()
            runs = [lambda: torch.mm(a, wt), lambda: F.linear(a, w)]
            runs += [lambda: BF16_ROUTE(a, w)] if amx_kernels() is not None and mode == "bfloat16" else []
        for run in runs:
            run()
            best = max(best, 2 * m * k * n / best_seconds(run, repeats) / 1e9)
    return best


def fine_pass_flops(model) -> float:
    """FLOPs of one pass over T = block_size frames, every position predicted."""
    t = model.config.block_size
    linears = sum(m.in_features * m.out_features for m in model.modules() if hasattr(m, "in_features"))
    heads = len(model.lm_heads)
    per_head = model.lm_heads[0].in_features * model.lm_heads[0].out_features
    linears -= (heads - 1) * per_head  # one head runs per pass
    attention = model.config.n_layer * 2 * 2 * t * t * model.config.n_embd
    return 2 * t * linears + attention


PREFILL_POSITIONS = 887  # a coarse window's longest prefill: 630 coarse and 256 semantic history tokens and one more


def prefill_flops(model, t: int) -> float:
    """FLOPs of a causal GPT's prefill over t positions: every block's products and attention for each position, the
    last block's attention and MLP too (counted whole), the head for the last position."""
    c = model.config
    blocks = sum(m.in_features * m.out_features for m in model.layers.modules() if hasattr(m, "in_features"))
    head = model.lm_head.in_features * model.lm_head.out_features
    return 2 * t * blocks + c.n_layer * 2 * 2 * t * t * c.n_embd + 2 * head


def engines(args) -> Iterator[tuple[str, fastbark.Bark]]:
    """(mode, an engine in that mode) for each of args.modes, over one random checkpoint of args.size."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_checkpoint(args.size, Path(tmp) / "bark")
        for mode in args.modes.split(","):
            engine = dict(dtype="bfloat16") if mode == "bfloat16" else dict(quantize=mode) if mode.startswith("int") else {}
            yield mode, fastbark.Bark.from_pretrained(folder, threads=args.threads, **engine)


def pass_inputs(tts: fastbark.Bark) -> tuple[torch.Tensor, torch.Tensor]:
    """A fine pass's codes (1, block_size, codebooks) and a coarse prefill's embeddings (1, PREFILL_POSITIONS, C)."""
    fine, coarse = tts.fine_model, tts.coarse_model
    codes = torch.randint(0, 1024, (1, fine.config.block_size, fine.config.n_codes_total),
                          generator=torch.Generator().manual_seed(0))
    embeds = torch.randn(1, PREFILL_POSITIONS, coarse.config.n_embd, generator=torch.Generator().manual_seed(1))
    return codes, embeds.to(coarse.position_embeds_layer.weight.dtype)


def attention_ways(model, float32_activations: bool) -> dict[str, CpuAttention]:
    """The whole-sequence attentions the CPU backend chooses among for this model (backends/cpu/__init__.py)."""
    c = model.config
    kernels = {"amx": amx_attention(), "bf16-c": bf16_attention()}
    ways = {name: k for name, k in kernels.items() if k is not None and k.runs(c.n_head, c.n_embd)}
    ways.update({"sdpa-bf16": sdpa_bf16_whole} if float32_activations else {})
    half = next(model.parameters()).dtype != torch.float32
    return {**{name: CpuAttention(way, half, name) for name, way in ways.items()}, "sdpa": CpuAttention(None, half)}


def pass_per_way(model, codes, float32_activations: bool, rounds: int) -> dict[str, float]:
    """Seconds of a pass with each attention way (the best of `rounds` alternating rounds); the model keeps the
    backend's own attention afterwards."""
    chosen = model.layers[0].attn.kernel
    ways = attention_ways(model, float32_activations)
    best = dict.fromkeys(ways, float("inf"))
    with torch.inference_mode():
        for _ in range(rounds):
            for name, way in ways.items():
                model.use_kernels(way)
                model(codes, 2)
                best[name] = min(best[name], best_seconds(lambda: model(codes, 2), 2))
    model.use_kernels(chosen)
    return best


def main(argv=None) -> dict:
    p = model_parser(__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="float32,bfloat16,int8", help="comma list of float32, bfloat16, int8, int4")
    p.add_argument("--attention-ways", action="store_true",
                   help="also time the pass with each whole-sequence attention the backend chooses among")
    args = p.parse_args(argv)
    rows = []
    for mode, tts in engines(args):
        model, coarse = tts.fine_model, tts.coarse_model
        codes, embeds = pass_inputs(tts)
        with torch.inference_mode():
            model(codes, 2)  # warm up
            seconds = best_seconds(lambda: model(codes, 2), args.repeats)
            coarse.prefill(embeds, coarse.new_cache(1))  # warm up
            prefill_s = best_seconds(lambda: coarse.prefill(embeds, coarse.new_cache(1)), args.repeats)
        gemm = gemm_gflops(mode, args.repeats)
        flops, prefill = fine_pass_flops(model), prefill_flops(coarse, PREFILL_POSITIONS)
        rows.append({"mode": mode, "gemm_gflops": gemm, "fine_pass_s": seconds, "fine_gflops": flops / seconds / 1e9,
                     "fraction_of_gemm": flops / seconds / 1e9 / gemm, "fine_pass_gflop": flops / 1e9,
                     "prefill_s": prefill_s, "prefill_gflop": prefill / 1e9,
                     "prefill_fraction_of_gemm": prefill / prefill_s / 1e9 / gemm,
                     "linears": {k: v for k, v in tts.backend.models["fine"].linears.items()},
                     "prefill_linears": {k: v for k, v in tts.backend.models["coarse"].linears.items()},
                     "attention": tts.backend.models["fine"].whole_attention})
        if args.attention_ways and mode != "float32":  # the exact mode has one way: SDPA in float32
            rows[-1]["pass_s_per_attention"] = pass_per_way(model, codes, mode.startswith("int"), args.repeats)
        del tts, model
    result = {"size": args.size, "threads": args.threads, "rows": rows, "cpu": cpu_description(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    return report(result, ["mode", "machine GEMM (GFLOP/s)", "fine pass (s)", "fine pass (GFLOP/s)", "of GEMM",
                           f"coarse prefill of {PREFILL_POSITIONS} (s)", "of GEMM", "fine linears / attention",
                           "pass (s) per attention"],
                  lambda r: [r["mode"], f"{r['gemm_gflops']:.0f}", f"{r['fine_pass_s']:.3f}", f"{r['fine_gflops']:.0f}",
                             f"{100 * r['fraction_of_gemm']:.0f}%", f"{r['prefill_s']:.3f}",
                             f"{100 * r['prefill_fraction_of_gemm']:.0f}%",
                             f"{', '.join(f'{n} {k}' for k, n in r['linears'].items())} / {r['attention']}",
                             ", ".join(f"{k} {v:.3f}" for k, v in r.get("pass_s_per_attention", {}).items())], args.json)


if __name__ == "__main__":
    main()
