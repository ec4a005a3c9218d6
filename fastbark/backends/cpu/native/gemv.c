/* Float32 matrix-vector products for the decode step: y[m, n] = sum_k x[m, k] * w[n, k] + bias[n].
 *
 * A decode step only streams weights, so this kernel is written for that: w stays in its plain
 * (N, K) row-major layout, the rows of w are split over OpenMP threads, and each row is read from
 * memory once for all M rows of x.
 *
 * Batch invariance: every output follows one fixed sequence of operations (gemv.h). The loader checks
 * at build time that a row's bits alone equal its bits in a batch, and falls back to oneDNN if this
 * compiler broke that.
 *
 * Built at first use by fastbark/backends/cpu/library.py with the system C compiler.
 */
#include "gemv.h"

/* x: (M, K), w: (N, K), bias: (N,) or NULL, y: (M, N); all contiguous float32. */
void fastbark_gemv_f32(const float *x, const float *w, const float *bias, float *y,
                       int64_t M, int64_t N, int64_t K, int threads) {
    if (M == 1) {  /* one row of x: stream w one row at a time */
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t n = 0; n < N; n++) block(w, x, bias, y, n, 0, N, K, 1, 1);
        return;
    }
    const int64_t units = units_of_w(N), per = units_per_chunk(K), chunks = (units + per - 1) / per;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < chunks; c++)
        units_chunk(w, x, bias, y, c * per, c * per + per < units ? c * per + per : units, M, N, K);
}

/* ---------------------------------------------------------------- int8 (the int8 mode's decode step)
 *
 * y[m, n] = (sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n] + bias[n], where each row of x is
 * quantised here exactly as fastbark/backends/cpu/int8.py does it (symmetric, amax / 127, round half to
 * even). The integer sums are exact, so any blocking gives the same bits; the float epilogue has one
 * fixed order. With AVX512-VNNI or AVX-VNNI, the unsigned-by-signed byte dot product runs on x + 128 and the
 * 128 * sum_k wq[n, k] it adds is taken off again (w_sum, precomputed); with AVX2, on |x| (int8.h).
 */
#include <stdlib.h>
#include "gelu.h"
#include "int8.h"

/* x: (M, K) float32, wq: (N, K) int8, w_sum: (N,) int32, w_scale: (N,), bias: (N,) or NULL, y: (M, N).
   Returns 0, or 1 when out of memory. The epilogue rounds twice, never fused, as torch does. */
__attribute__((optimize("fp-contract=off")))
int fastbark_linear_s8(const float *x, const int8_t *wq, const int32_t *w_sum, const float *w_scale,
                       const float *bias, float *y, int64_t M, int64_t N, int64_t K, int threads) {
    int8_t *xq = malloc((size_t)(M * K));
    uint8_t *aux = malloc((size_t)(M * K));
    float *xs = malloc((size_t)M * sizeof(float));
    if (!xq || !aux || !xs) { free(xq); free(aux); free(xs); return 1; }  /* out of memory */
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, xq + m * K, aux + m * K, xs + m);
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *wn = wq + n * K;
        for (int64_t m = 0; m < M; m++) {
            const int32_t acc = dot_s8(xq + m * K, aux + m * K, wn, w_sum[n], K);
            const float v = (float)acc * (xs[m] * w_scale[n]);
            y[m * N + n] = bias ? v + bias[n] : v;
        }
    }
    free(xq); free(aux); free(xs);
    return 0;
}

/* The int8 mode's big products (prefills, fine passes) run on torch._int_mm; these two do the
 * float work around it in one parallel pass each, with the same arithmetic as the torch path. */
void fastbark_quantize_rows(const float *x, int8_t *q, float *scale, int64_t M, int64_t K, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, q + m * K, NULL, scale + m);
}

/* Without VNNI the big products run as float32 GEMMs over the integers (int8.py's via-float route): the rows
 * quantised as above, written as float32 (each integer exactly), so that no int8 copy is made and converted
 * again. Returns 0, or 1 when out of memory. */
int fastbark_quantize_rows_f32(const float *x, float *q, float *scale, int64_t M, int64_t K, int threads) {
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        int8_t *row = malloc((size_t)K);
        failed = row == NULL;
        #pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) {
            if (row == NULL) continue;
            quantize_row(x + m * K, K, row, NULL, scale + m);
            for (int64_t k = 0; k < K; k++) q[m * K + k] = (float)row[k];
        }
        free(row);
    }
    return failed;
}

/* y = acc * (x_scale[m] * w_scale[n]), then + bias[n] (int8.h's rescaled); with `gelu`, each row then through
 * gelu.h's GELU while it is in cache (the MLP's first product: one pass over its output instead of two). */
__attribute__((optimize("fp-contract=off")))
void fastbark_rescale_s32(const int32_t *acc, const float *x_scale, const float *w_scale, const float *bias,
                          float *y, int64_t M, int64_t N, int gelu, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) y[m * N + n] = rescaled((float)acc[m * N + n], x_scale[m], w_scale[n], bias, n);
        if (gelu) gelu_span(y + m * N, N);
    }
}

/* The same from float32 sums that are exact integers below 2^24 (the via-float route's GEMMs over K <= 1024):
 * (float) of their int32 value is the value itself, so the bits are fastbark_rescale_s32's. */
__attribute__((optimize("fp-contract=off")))
void fastbark_rescale_f32(const float *acc, const float *x_scale, const float *w_scale, const float *bias,
                          float *y, int64_t M, int64_t N, int gelu, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) y[m * N + n] = rescaled(acc[m * N + n], x_scale[m], w_scale[n], bias, n);
        if (gelu) gelu_span(y + m * N, N);
    }
}

/* gelu.h's GELU over y[0..n) in place: the fast modes' MLP where its first product did not apply it (one-position
 * rows). */
void fastbark_gelu_f32(float *y, int64_t n, int threads) {
    const int64_t spans = (n + 4095) / 4096;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t s = 0; s < spans; s++) gelu_span(y + s * 4096, n - s * 4096 < 4096 ? n - s * 4096 : 4096);
}

/* ---------------------------------------------------------------- int4 (the int4 mode's decode step)
 *
 * y[m, n] = dot_q4(xq[m], w[n]) * x_scale[m] + bias[n] (int4.h), each row of x quantised to int8 as in the
 * int8 mode. w: (N, q4_row_bytes(K)) packed, w_scale: (N, groups). Returns 0, or 1 when out of memory. */
#include "int4.h"

int fastbark_linear_q4(const float *x, const uint8_t *w, const float *w_scale, const float *bias, float *y,
                       int64_t M, int64_t N, int64_t K, int threads) {
    const int64_t groups = q4_groups(K), row_bytes = q4_row_bytes(K);
    int8_t *xq = malloc((size_t)(M * K));
    float *xs = malloc((size_t)M * sizeof(float)), *xsum = malloc((size_t)(M * groups) * sizeof(float));
    if (!xq || !xs || !xsum) { free(xq); free(xs); free(xsum); return 1; }
    for (int64_t m = 0; m < M; m++) {
        quantize_row(x + m * K, K, xq + m * K, NULL, xs + m);
        q4_group_sums(xq + m * K, K, xsum + m * groups);
    }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < M; m++) {
            const float v = dot_q4(xq + m * K, xsum + m * groups, w + n * row_bytes, w_scale + n * groups, K) * xs[m];
            y[m * N + n] = bias ? v + bias[n] : v;
        }
    free(xq); free(xs); free(xsum);
    return 0;
}

/* The float32 weight (N, K) that a packed int4 weight stands for, q * d: the long route's operand (prefills,
 * fine passes), made at each call rather than kept (it would take 6.4x the packed bytes). */
void fastbark_dequantize_q4(const uint8_t *w, const float *w_scale, float *out, int64_t N, int64_t K, int threads) {
    const int64_t groups = q4_groups(K), row_bytes = q4_row_bytes(K);
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++)
            out[n * K + k] = (float)q4_at(w + n * row_bytes, k) * w_scale[n * groups + k / Q4_GROUP];
}

/* ---------------------------------------------------------------- bfloat16 (the bfloat16 mode's decode step)
 *
 * y[m, n] = dot_bf16(x[m], w[n]) (+ bias[n]) over bfloat16 rows x (M, K) and w (N, K): the step's bfloat16 product
 * (decode_step.c), exported for tuning.py to time with each BF16_PREFETCH. */
#include "bf16.h"

void fastbark_linear_bf16(const uint16_t *x, const uint16_t *w, const float *bias, float *y, int64_t M, int64_t N,
                          int64_t K, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < M; m++) {
            const float v = dot_bf16(x + m * K, w + n * K, K);
            y[m * N + n] = bias ? v + bias[n] : v;
        }
}
