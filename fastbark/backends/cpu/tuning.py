"""The C kernels' build-time parameters, chosen by timing them on the machine at hand (not by its vendor).

Six parameters change how the decode-step products stream their weights, never what they compute: every
output runs the same operations whichever value is built, so every build gives the same bits.
- `int8 prefetch` (FASTBARK_S8_PREFETCH, native/int8.h): how far ahead the int8 dot product asks for w;
- `float32 prefetch` (FASTBARK_F32_PREFETCH, native/gemv.h): the same for one row's float32 product;
- `float32 blocks` (FASTBARK_BN x FASTBARK_BM, native/gemv.h): rows of w by rows of x per register block, for
  several rows (a batch of decodes);
- `float32 chunk` (FASTBARK_F32_CHUNK, native/gemv.h): how many bytes of w a chunk of blocks takes, for several rows;
- `int4 prefetch` (FASTBARK_Q4_PREFETCH, native/int4.h): how far ahead the int4 dot product asks for w;
- `bfloat16 prefetch` (FASTBARK_BF16_PREFETCH, native/bf16.h): the same for the bfloat16 mode's dot product.
At first use gemv.c, which holds the four products, is built once per candidate value. A candidate whose outputs
differ from the first candidate's in a single bit is refused; the others are timed on bark-small layers' products,
over weights of twice the last-level cache's size, at most choice.EVICT_BYTES_MAX (read from memory, as in a
decode step), at the rows the parameter matters for, in two interleaved rounds, each keeping its best. One
parameter at a time, the others at their first value (they touch different loops). The library is then built with
the fastest values; the choice is cached per machine like the other measurements (choice.py) and listed in the
backend report.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from .choice import Choice, ChoiceCache, eviction_bytes, median_ms

TUNING_LABEL = "kernel tuning, "
LAYER = ((2304, 768), (768, 768), (3072, 768), (768, 3072))  # (out, in): one bark-small block's four products
ROUNDS = 2  # the candidates take turns, twice over; each keeps its best round
CHECK_ROWS = (1, 4, 8, 16)  # every candidate's outputs are compared with the first's at these rows


@dataclass(frozen=True)
class Knob:
    """One build-time parameter: its candidate values (the first is the reference for bits, and what the other
    knobs' builds use), the product it changes, and the rows per product it matters for."""

    name: str
    macros: tuple[str, ...]  # what a value sets: "2048" sets one macro, "1x4" two
    values: tuple[str, ...]
    product: str  # "f32", "s8" or "q4"
    rows: tuple[int, ...]

    def defines(self, value: str) -> dict[str, str]:
        return dict(zip(self.macros, value.split("x"), strict=True))


KNOBS = (
    # bytes ahead; 0: none. Timed for one row, where a product streams its weights: with 8 rows it is bound by
    # the dot products' arithmetic on AVX2, and timings there moved by +-30% between runs on a shared machine
    Knob("int8 prefetch", ("FASTBARK_S8_PREFETCH",), ("2048", "0", "1024", "4096"), "s8", (1,)),
    # only one row's product streams one row of w at a time
    Knob("float32 prefetch", ("FASTBARK_F32_PREFETCH",), ("0", "1024", "4096"), "f32", (1,)),
    # one row's product is not blocked
    Knob("float32 blocks", ("FASTBARK_BN", "FASTBARK_BM"), ("1x4", "2x2", "4x4"), "f32", (4, 8)),
    # bytes of w per chunk, for several rows (gemv.h's units_chunk): where the blocks of x stop fitting the nearest cache
    Knob("float32 chunk", ("FASTBARK_F32_CHUNK",), ("131072", "65536", "262144"), "f32", (8, 16)),
    # the int4 mode's dot product, for one row as the int8 one
    Knob("int4 prefetch", ("FASTBARK_Q4_PREFETCH",), ("0", "1024", "2048"), "q4", (1,)),
    # the bfloat16 mode's dot product, for one row as the others
    Knob("bfloat16 prefetch", ("FASTBARK_BF16_PREFETCH",), ("2048", "0", "1024", "4096"), "bf16", (1,)),
)


def defines_of(choices: dict[str, str]) -> dict[str, str]:
    """The compiler's -D values for a value of each knob (name -> value)."""
    out: dict[str, str] = {}
    for knob in KNOBS:
        out.update(knob.defines(choices.get(knob.name, knob.values[0])))
    return out


def choose_value(label: str, runs: dict[str, Callable[[int], list[torch.Tensor]]], rows: tuple[int, ...],
                 rounds: int = ROUNDS, refused: dict[str, str] | None = None) -> Choice:
    """The fastest of `runs` (value -> f(M) running the products for M rows, returning their outputs) among those
    whose outputs equal the first's bit for bit (at CHECK_ROWS and `rows`); its time: the sum over `rows` of
    medians, best of `rounds`. `refused`: values already out (value -> why)."""
    if not runs:
        raise RuntimeError(f"no build of the kernels for {label}: {refused}")
    check_rows = sorted({*CHECK_ROWS, *rows})
    reference = {m: runs[next(iter(runs))](m) for m in check_rows}

    def same_bits(outputs: list[torch.Tensor], m: int) -> bool:
        return len(outputs) == len(reference[m]) and all(torch.equal(a, b) for a, b in zip(outputs, reference[m]))
    refused = dict(refused or {})
    refused.update({value: "other bits than the first build" for value, run in runs.items()
                    if not all(same_bits(run(m), m) for m in check_rows)})
    ms: dict[str, float] = {}
    for _ in range(rounds):
        for value, run in runs.items():
            if value not in refused:
                t = sum(median_ms(lambda: run(m)) for m in rows)
                ms[value] = min(ms.get(value, float("inf")), t)
    return Choice((), min(ms, key=ms.get), ms, refused, f"{TUNING_LABEL}{label}")


def layer_runs(products: dict[str, object], product: str) -> dict[str, Callable[[int], list[torch.Tensor]]]:
    """value -> f(M): that build's products (float32, int8, int4 or bfloat16) for M random rows over bark-small layers' weights,
    as many layers as make choice.eviction_bytes(): read from memory, one after another, as in a decode step."""
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    layer_bytes = sum(n * k for n, k in LAYER) * {"s8": 1, "q4": 0.5, "f32": 4, "bf16": 2}[product]
    shapes = LAYER * max(2, int(-(-eviction_bytes() // layer_bytes)))  # ceil(2 x cache / a layer), capped
    if product == "s8":
        weights = [torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g) for n, k in shapes]
        sums = [w.sum(dim=1, dtype=torch.int32) for w in weights]  # (N,): the VNNI dot's correction
        scales = [torch.rand(n, generator=g) / 100 for n, _ in shapes]
    elif product == "q4":  # int4.h's layout: K / 2 packed bytes a row (K a multiple of 64), a scale per 32 weights
        weights = [torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g) for n, k in shapes]
        scales = [torch.rand(n, k // 32, generator=g) / 100 for n, k in shapes]
    else:
        weights = [torch.randn(n, k, generator=g).to(torch.float32 if product == "f32" else torch.bfloat16)
                   for n, k in shapes]
    xs = {m: {k: torch.randn(m, k, generator=g) for k in (768, 3072)} for m in CHECK_ROWS}  # (M, K) rows
    if product == "bf16":
        xs = {m: {k: x.bfloat16() for k, x in rows.items()} for m, rows in xs.items()}

    def run(build, m: int) -> list[torch.Tensor]:
        x = xs[m]
        if product == "s8":
            return [build.linear_s8(x[w.shape[1]], w, s, c, threads) for w, s, c in zip(weights, sums, scales)]
        if product == "q4":
            return [build.linear_q4(x[2 * w.shape[1]], w, c, threads) for w, c in zip(weights, scales)]
        if product == "bf16":
            return [build.linear_bf16(x[w.shape[1]], w, threads) for w in weights]
        return [build.linear_f32(x[w.shape[1]], w, threads) for w in weights]
    return {value: (lambda m, build=build: run(build, m)) for value, build in products.items()}


def cached(cache: ChoiceCache) -> tuple[dict[str, str], tuple[Choice, ...]] | None:
    """What `tune` chose here before (its -D values and choices), or None where something is still to measure."""
    choices = [cache.get(knob.name) for knob in KNOBS]
    if not all(c is not None and c.chosen in knob.values for c, knob in zip(choices, KNOBS)):
        return None
    return defines_of({knob.name: c.chosen for knob, c in zip(KNOBS, choices)}), tuple(choices)


def tune(build: Callable[[dict[str, str]], object], cache: ChoiceCache) -> tuple[dict[str, str], tuple[Choice, ...]]:
    """The -D values to build the library with, and the choices behind them (cached, else measured now).
    `build(defines)` compiles gemv.c with them and returns its products (library.Products: `linear_f32`,
    `linear_s8`, `linear_q4`, `linear_bf16`), or raises OSError or SubprocessError."""
    known = cached(cache)
    if known is not None:
        return known

    def built(defines: tuple[tuple[str, str], ...]):
        try:
            return build(dict(defines))
        except (OSError, subprocess.SubprocessError) as e:
            return f"it did not build ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    wanted = [(knob, value, tuple(sorted(defines_of({knob.name: value}).items())))
              for knob in KNOBS for value in knob.values]
    builds = list(dict.fromkeys(defines for _, _, defines in wanted))  # every knob's first value: one build
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:  # one compile per candidate
        results = dict(zip(builds, pool.map(built, builds)))
    products: dict[str, dict] = {knob.name: {} for knob in KNOBS}
    failed: dict[str, dict[str, str]] = {knob.name: {} for knob in KNOBS}
    for knob, value, defines in wanted:
        result = results[defines]
        (failed if isinstance(result, str) else products)[knob.name][value] = result
    choices = []
    for knob in KNOBS:
        choice = choose_value(knob.name, layer_runs(products[knob.name], knob.product), knob.rows,
                              refused=failed[knob.name])
        cache.put(knob.name, choice)
        choices.append(choice)
    return defines_of({knob.name: c.chosen for knob, c in zip(KNOBS, choices)}), tuple(choices)
