/* Float32 matrix-vector products for the decode step: y[m, n] = sum_k x[m, k] * w[n, k] + bias[n].
 *
 * A decode step only streams weights, so this kernel is written for that: w stays in its plain
 * (N, K) row-major layout, the rows of w are split over OpenMP threads, and each row is read from
 * memory once for all M rows of x.
 *
 * Batch invariance: every output is computed by the same sequence of operations, whatever M, the
 * block it falls in or the number of threads: one 16-float accumulator, acc += w[k:k+16] * x[k:k+16]
 * for k = 0, 16, ..., a horizontal sum in a fixed tree order, the scalar tail, then the bias. The
 * blocks (up to BN rows of w by BM rows of x) only change how many outputs run side by side. The
 * loader checks at build time that a row's bits alone equal its bits in a batch, and falls back
 * to oneDNN if this compiler broke that.
 *
 * Built at first use by fastbark/backends/cpu/library.py with the system C compiler.
 */
#include <stdint.h>
#include <string.h>

#include "vec.h"

/* Block sizes (rows of w x rows of x), chosen so that the accumulators stay in registers. */
#if defined(__AVX512F__)
enum { BN = 4, BM = 4 };  /* 16 accumulators of one 16-float register each: half of AVX-512's 32 */
#else
enum { BN = 2, BM = 2 };  /* AVX2: a v16 is two of its 16 registers, so 4 accumulators take 8 */
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

/* All rows of x against rows n0..n0+NR-1 of w: BM rows of x at a time, then one at a time. */
static inline __attribute__((always_inline)) void rows_of_w(const float *w, const float *x, const float *bias,
                                                            float *y, int64_t n0, int64_t M, int64_t N,
                                                            int64_t K, const int NR) {
    int64_t m0 = 0;
    for (; m0 + BM <= M; m0 += BM) block(w, x, bias, y, n0, m0, N, K, NR, BM);
    for (; m0 < M; m0++) block(w, x, bias, y, n0, m0, N, K, NR, 1);
}

/* x: (M, K), w: (N, K), bias: (N,) or NULL, y: (M, N); all contiguous float32. */
void fastbark_gemv_f32(const float *x, const float *w, const float *bias, float *y,
                       int64_t M, int64_t N, int64_t K, int threads) {
    if (M == 1) {  /* one row of x: stream w one row at a time */
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t n = 0; n < N; n++) block(w, x, bias, y, n, 0, N, K, 1, 1);
        return;
    }
    const int64_t full = N / BN, units = full + N % BN;  /* BN-row blocks of w, then single rows */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t u = 0; u < units; u++) {
        if (u < full) rows_of_w(w, x, bias, y, u * BN, M, N, K, BN);
        else rows_of_w(w, x, bias, y, full * BN + (u - full), M, N, K, 1);
    }
}

/* ---------------------------------------------------------------- int8 (the int8 mode's decode step)
 *
 * y[m, n] = (sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n] + bias[n], where each row of x is
 * quantised here exactly as fastbark/backends/cpu/int8.py does it (symmetric, amax / 127, round half to
 * even). The integer sums are exact, so any blocking gives the same bits; the float epilogue has one
 * fixed order. With AVX512-VNNI, the unsigned-by-signed byte dot product runs on x + 128 and the
 * 128 * sum_k wq[n, k] it adds is taken off again (w_sum, precomputed).
 */
#include <stdlib.h>
#include "int8.h"

/* x: (M, K) float32, wq: (N, K) int8, w_sum: (N,) int32, w_scale: (N,), bias: (N,) or NULL, y: (M, N).
   Returns 0, or 1 when out of memory. The epilogue rounds twice, never fused, as torch does. */
__attribute__((optimize("fp-contract=off")))
int fastbark_linear_s8(const float *x, const int8_t *wq, const int32_t *w_sum, const float *w_scale,
                       const float *bias, float *y, int64_t M, int64_t N, int64_t K, int threads) {
    int8_t *xq = malloc((size_t)(M * K));
    uint8_t *xb = malloc((size_t)(M * K));
    float *xs = malloc((size_t)M * sizeof(float));
    if (!xq || !xb || !xs) { free(xq); free(xb); free(xs); return 1; }  /* out of memory */
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, xq + m * K, xb + m * K, xs + m);
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *wn = wq + n * K;
        for (int64_t m = 0; m < M; m++) {
            const int32_t acc = dot_s8(xq + m * K, xb + m * K, wn, w_sum[n], K);
            const float v = (float)acc * (xs[m] * w_scale[n]);
            y[m * N + n] = bias ? v + bias[n] : v;
        }
    }
    free(xq); free(xb); free(xs);
    return 0;
}

/* The int8 mode's big products (prefills, fine passes) run on torch._int_mm; these two do the
 * float work around it in one parallel pass each, with the same arithmetic as the torch path. */
void fastbark_quantize_rows(const float *x, int8_t *q, float *scale, int64_t M, int64_t K, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, q + m * K, NULL, scale + m);
}

/* y = acc * (x_scale[m] * w_scale[n]), then + bias[n]: two roundings, never fused, as in torch. */
__attribute__((optimize("fp-contract=off")))
void fastbark_rescale_s32(const int32_t *acc, const float *x_scale, const float *w_scale, const float *bias,
                          float *y, int64_t M, int64_t N, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            const float v = (float)acc[m * N + n] * (x_scale[m] * w_scale[n]);
            y[m * N + n] = bias ? v + bias[n] : v;
        }
}
