/* The float32 product's inner blocks, shared by gemv.c (one product per call) and decode_step.c (the
 * exact mode's whole decode step in one call): both give each output the same bits.
 *
 * Batch invariance: every output is computed by the same sequence of operations, whatever M, the
 * block it falls in or the number of threads: one 16-float accumulator, acc += w[k:k+16] * x[k:k+16]
 * for k = 0, 16, ..., a horizontal sum in a fixed tree order, the scalar tail, then the bias. The
 * blocks (up to BN rows of w by BM rows of x) only change how many outputs run side by side.
 * Include it only in code compiled with the default floating-point contraction (FMA where the CPU has
 * it): the bits depend on it.
 */
#ifndef FASTBARK_GEMV_H
#define FASTBARK_GEMV_H

#include <stdint.h>
#include <string.h>

#include "vec.h"

/* Block sizes (rows of w x rows of x), chosen so that the accumulators stay in registers. These defaults per
 * instruction set can be overridden at build time (FASTBARK_BN, FASTBARK_BM): tuning.py builds a few and keeps the
 * one that measured fastest on the machine at hand. Blocks never change an output's operations, only which
 * outputs run side by side, so every choice gives the same bits. */
#if defined(FASTBARK_BN) && defined(FASTBARK_BM)
enum { BN = FASTBARK_BN, BM = FASTBARK_BM };
#elif defined(__AVX512F__)
enum { BN = 4, BM = 4 };  /* 16 accumulators of one 16-float register each: half of AVX-512's 32 */
#else
/* AVX2: a v16 is two of its 16 registers, so 4 accumulators take 8. One row of w against 4 rows of x (one read
 * stream per thread) ran 10-20% faster than 2 x 2 blocks at 4 and 8 rows on an AMD Zen 3, the same at 1, 2
 * and 16 (RESULTS.md section 49). */
enum { BN = 1, BM = 4 };
#endif

/* How far ahead (bytes) a single row's product asks for w (the decode step of one text: one row of w at a time);
 * 0: never, leaving it to the hardware prefetcher, which kept up on an AMD Zen 3 (RESULTS.md section 46). A build
 * may set FASTBARK_F32_PREFETCH (tuning.py). A prefetch past the end of w is a hint, never a fault. */
#ifdef FASTBARK_F32_PREFETCH
enum { F32_PREFETCH = FASTBARK_F32_PREFETCH };
#else
enum { F32_PREFETCH = 0 };
#endif

/* The horizontal sum in a fixed tree order, then the scalar tail and the bias. */
static inline float finish(v16 acc, const float *w, const float *x, int64_t k, int64_t K, float bias) {
    float t[8];
    const v8 folded = fold(acc);  /* t[i] = lane i + lane i + 8 */
    memcpy(t, &folded, sizeof t);
    for (int i = 0; i < 4; i++) t[i] += t[i + 4];
    float s = (t[0] + t[2]) + (t[1] + t[3]);
    for (; k < K; k++) s += w[k] * x[k];
    return s + bias;
}

/* Rows n0..n0+NR-1 of w against rows m0..m0+MR-1 of x (NR <= BN, MR <= BM, constants after inlining). */
static inline __attribute__((always_inline)) void block(const float *w, const float *x, const float *bias,
                                                        float *y, int64_t n0, int64_t m0, int64_t N,
                                                        int64_t K, const int NR, const int MR) {
    v16 acc[BN][BM];
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < MR; c++) acc[r][c] = zero();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        v16 xv[BM], wv[BN];
        if (F32_PREFETCH > 0 && NR == 1 && MR == 1) __builtin_prefetch(w + n0 * K + k + F32_PREFETCH / 4, 0, 3);
        for (int c = 0; c < MR; c++) xv[c] = load(x + (m0 + c) * K + k);
        for (int r = 0; r < NR; r++) wv[r] = load(w + (n0 + r) * K + k);
        for (int r = 0; r < NR; r++)
            for (int c = 0; c < MR; c++) acc[r][c] = madd(acc[r][c], wv[r], xv[c]);
    }
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < MR; c++)
            y[(m0 + c) * N + n0 + r] = finish(acc[r][c], w + (n0 + r) * K, x + (m0 + c) * K, k, K,
                                              bias ? bias[n0 + r] : 0.0f);
}

static inline int64_t units_of_w(int64_t N) { return N / BN + N % BN; }  /* BN-row blocks, then single rows */
static inline int64_t unit_row(int64_t u, int64_t N) {  /* unit u's first row of w (u = units_of_w(N): N) */
    return u < N / BN ? u * BN : N / BN * BN + (u - N / BN);
}

/* Several rows of x: the units of w are taken in chunks of about F32_CHUNK bytes of w, and within a chunk BM rows
 * of x at a time across all its units, so that a block of x stays in the nearest cache while the chunk's rows of w
 * (read from memory once) stay in the next. Without chunks each unit reads every row of x again: 16 rows of 768
 * floats are 48 KB, more than a 32 KB L1. With 128 KB chunks a batch-of-16 float32 coarse step of bark-small took
 * 35.5 ms instead of 43 on an AMD Zen 3 (RESULTS.md section 52). Each output is still one block() call, only the
 * order of the calls differs: the same bits. A build may set FASTBARK_F32_CHUNK (tuning.py). */
#ifdef FASTBARK_F32_CHUNK
enum { F32_CHUNK = FASTBARK_F32_CHUNK };
#else
enum { F32_CHUNK = 131072 };
#endif

static inline int64_t units_per_chunk(int64_t K) {
    const int64_t per = F32_CHUNK / (BN * K * (int64_t)sizeof(float));
    return per < 1 ? 1 : per;
}

/* Units u0..u1-1 against rows m0..m0+MR-1 of x. */
static inline __attribute__((always_inline)) void units_at(const float *w, const float *x, const float *bias,
                                                           float *y, int64_t u0, int64_t u1, int64_t m0, int64_t N,
                                                           int64_t K, const int MR) {
    for (int64_t u = u0; u < u1; u++) {  /* NR a constant in each call, so that the block's loops unroll */
        if (u < N / BN) block(w, x, bias, y, unit_row(u, N), m0, N, K, BN, MR);
        else block(w, x, bias, y, unit_row(u, N), m0, N, K, 1, MR);
    }
}

/* Units u0..u1-1 against every row of x: BM rows of x at a time across the units, then the rows left one at a time. */
static inline __attribute__((always_inline)) void units_chunk(const float *w, const float *x, const float *bias,
                                                              float *y, int64_t u0, int64_t u1, int64_t M,
                                                              int64_t N, int64_t K) {
    int64_t m0 = 0;
    for (; m0 + BM <= M; m0 += BM) units_at(w, x, bias, y, u0, u1, m0, N, K, BM);
    for (; m0 < M; m0++) units_at(w, x, bias, y, u0, u1, m0, N, K, 1);
}

#endif
