"""The CPU's peak multiply-add rates for the instruction mixes an int8 GEMM could use, against float32 FMA.

Issue 20 asks for an exact int8 GEMM on AVX2-only CPUs (the fine stage's 1024-frame passes and the prefills)
that beats float32 there. Before building one, this measures its ceiling on the machine at hand: tight loops
with 8 independent accumulators and operands in registers (no memory traffic), 1 and 2 threads, in
billions of multiply-adds per second (best of 5 turns, the kinds taking turns):
- float32 FMA (`vfmadd`, 8 lanes): what the float32 GEMMs (oneDNN, and the int8 mode's exact "via float"
  route) run on;
- int8 exact, operands reused: `vpmaddubsw` on |x| and w carrying x's sign, widened by `vpmaddwd` (the
  decode kernel's AVX2 arithmetic, exact because every pair is at most 2 * 127 * 127), with |x| and the
  signed w computed once, outside the loop: an upper bound;
- int8 exact, a 4 x 2 tile: as a GEMM's register tile would run it, |x| once per row, one sign per
  (row, column) pair;
- int16 `vpmaddwd` on operands widened once.

    python benchmarks/simd_rates.py --json benchmarks/simd-rates.json

It compiles a small C program with the machine's compiler (`-O3 -march=native -fopenmp`; x86-64 with AVX2).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import cpu_description

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <omp.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
/* Each loop: 8 independent accumulators, operands in registers: the core's peak for that instruction mix. */
double fma_f32(long iters) {
    __m256 a[8]; __m256 x = _mm256_set1_ps(1.0001f), y = _mm256_set1_ps(0.9999f);
    for (int i = 0; i < 8; i++) a[i] = _mm256_set1_ps((float)i);
    for (long n = 0; n < iters; n++) {
        for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
        __asm__ volatile("" : "+x"(x));
    }
    float s = 0; float l[8]; for (int i = 0; i < 8; i++) { _mm256_storeu_ps(l, a[i]); s += l[0]; }
    return s;
}
int32_t s8_exact(long iters) {  /* the decode kernel's AVX2 path: 32 byte MACs per abs+sign+maddubs+madd+add */
    __m256i acc[8]; __m256i x = _mm256_set1_epi8(3), w = _mm256_set1_epi8(-5), ones = _mm256_set1_epi16(1);
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_si256();
    for (long n = 0; n < iters; n++) {
        for (int i = 0; i < 8; i++) {
            __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(w, x));
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
        }
        __asm__ volatile("" : "+x"(x), "+x"(w));
    }
    int32_t s = 0; int32_t l[8]; for (int i = 0; i < 8; i++) { _mm256_storeu_si256((__m256i *)l, acc[i]); s += l[0]; }
    return s;
}
int32_t s8_tile(long iters) {  /* a GEMM tile as it would run: 4 rows of x (|x| once each) by 2 columns of w,
    one sign per (x, w) pair: 8 x (sign + maddubs + madd + add) per 4 + 2 loads' worth of operands */
    __m256i acc[8], x[4], w[2]; const __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) x[i] = _mm256_set1_epi8((char)(3 + i));
    for (int j = 0; j < 2; j++) w[j] = _mm256_set1_epi8((char)(-5 + j));
    for (long n = 0; n < iters; n++) {
        __m256i ax[4];
        for (int i = 0; i < 4; i++) ax[i] = _mm256_abs_epi8(x[i]);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++) {
                __m256i p = _mm256_maddubs_epi16(ax[i], _mm256_sign_epi8(w[j], x[i]));
                acc[i * 2 + j] = _mm256_add_epi32(acc[i * 2 + j], _mm256_madd_epi16(p, ones));
            }
        __asm__ volatile("" : "+x"(x[0]), "+x"(x[1]), "+x"(x[2]), "+x"(x[3]), "+x"(w[0]), "+x"(w[1]));
    }
    int32_t s = 0; int32_t l[8]; for (int i = 0; i < 8; i++) { _mm256_storeu_si256((__m256i *)l, acc[i]); s += l[0]; }
    return s;
}
int32_t s16_madd(long iters) {  /* int16 operands (int8 widened once): 16 MACs per madd+add */
    __m256i acc[8]; __m256i x = _mm256_set1_epi16(3), w = _mm256_set1_epi16(-5);
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_si256();
    for (long n = 0; n < iters; n++) {
        for (int i = 0; i < 8; i++) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(x, w));
        __asm__ volatile("" : "+x"(x), "+x"(w));
    }
    int32_t s = 0; int32_t l[8]; for (int i = 0; i < 8; i++) { _mm256_storeu_si256((__m256i *)l, acc[i]); s += l[0]; }
    return s;
}
int main(void) {
    long iters = 200000000L / 8;
    const char *names[4] = {"float32 FMA", "int8 exact, operands reused (abs, sign hoisted)", "int16 madd",
                            "int8 exact, 4x2 tile (sign per pair)"};
    const double macs_per_iter[4] = {8 * 8, 8 * 32, 8 * 16, 8 * 32};
    for (int threads = 1; threads <= 2; threads++) {
        double best[4] = {0, 0, 0, 0};
        for (int rep = 0; rep < 5; rep++)  /* the kinds take turns: a noisy neighbour slows them alike */
            for (int k = 0; k < 4; k++) {
                double t0 = now(); volatile double sink = 0;
                #pragma omp parallel num_threads(threads) reduction(+:sink)
                { sink += k == 0 ? fma_f32(iters) : k == 1 ? s8_exact(iters)
                        : k == 2 ? s16_madd(iters) : s8_tile(iters); }
                double dt = now() - t0, rate = macs_per_iter[k] * iters * threads / dt / 1e9;
                if (rate > best[k]) best[k] = rate;
            }
        for (int k = 0; k < 4; k++)
            printf("{\"threads\": %d, \"kind\": \"%s\", \"gmacs\": %.1f}\n", threads, names[k], best[k]);
    }
    return 0;
}
"""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("no C compiler (cc) found")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "rates.c", Path(tmp) / "rates"
        src.write_text(SOURCE)
        subprocess.run([compiler, "-O3", "-march=native", "-fopenmp", str(src), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=600).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    fma = {r["threads"]: r["gmacs"] for r in rows if r["kind"] == "float32 FMA"}
    print(f"{cpu_description()}, {time.strftime('%Y-%m-%d')}")
    print("| threads | instructions | GMAC/s | against float32 FMA |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        r["vs_fma"] = r["gmacs"] / fma[r["threads"]]
        print(f"| {r['threads']} | {r['kind']} | {r['gmacs']:.1f} | {r['vs_fma']:.2f}x |")
    result = {"cpu": cpu_description(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
