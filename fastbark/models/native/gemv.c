/* Float32 matrix-vector products for the decode step: y[m, n] = sum_k x[m, k] * w[n, k] + bias[n].
 *
 * A decode step only streams weights, so this kernel is written for that: w stays in its plain
 * (N, K) row-major layout, the rows of w are split over OpenMP threads, and each row is read from
 * memory once for all M rows of x.
 *
 * Every output is computed by the same sequence of operations, whatever M, the blocking or the
 * number of threads: two 16-float accumulators over k in steps of 32, (acc0 + acc1), a horizontal
 * sum in lane order, the scalar tail, then the bias. Built with -ffp-contract=off, so no path fuses
 * a multiply-add that another does not. A row of x therefore gets the same bits alone as inside
 * a batch.
 *
 * Built at first use by fastbark/models/cpu_gemv.py with the system C compiler.
 */
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }

static inline float finish(v16 acc0, v16 acc1, const float *w, const float *x, int64_t k, int64_t K) {
    v16 acc = acc0 + acc1;
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += acc[i];
    for (; k < K; k++) s += w[k] * x[k];
    return s;
}

/* One row of w against one row of x. */
static float dot1(const float *w, const float *x, int64_t K) {
    v16 a0 = {0}, a1 = {0};
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 += load(w + k) * load(x + k);
        a1 += load(w + k + 16) * load(x + k + 16);
    }
    return finish(a0, a1, w, x, k, K);
}

/* Four rows of w against two rows of x: eight outputs, each with dot1's exact arithmetic. */
static void dot4x2(const float *w, const float *x0, const float *x1, int64_t K, float out[4][2]) {
    const float *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
    v16 a00 = {0}, b00 = {0}, a01 = {0}, b01 = {0}, a10 = {0}, b10 = {0}, a11 = {0}, b11 = {0};
    v16 a20 = {0}, b20 = {0}, a21 = {0}, b21 = {0}, a30 = {0}, b30 = {0}, a31 = {0}, b31 = {0};
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        v16 xa0 = load(x0 + k), xb0 = load(x0 + k + 16), xa1 = load(x1 + k), xb1 = load(x1 + k + 16);
        v16 wa = load(w0 + k), wb = load(w0 + k + 16);
        a00 += wa * xa0; b00 += wb * xb0; a01 += wa * xa1; b01 += wb * xb1;
        wa = load(w1 + k); wb = load(w1 + k + 16);
        a10 += wa * xa0; b10 += wb * xb0; a11 += wa * xa1; b11 += wb * xb1;
        wa = load(w2 + k); wb = load(w2 + k + 16);
        a20 += wa * xa0; b20 += wb * xb0; a21 += wa * xa1; b21 += wb * xb1;
        wa = load(w3 + k); wb = load(w3 + k + 16);
        a30 += wa * xa0; b30 += wb * xb0; a31 += wa * xa1; b31 += wb * xb1;
    }
    out[0][0] = finish(a00, b00, w0, x0, k, K); out[0][1] = finish(a01, b01, w0, x1, k, K);
    out[1][0] = finish(a10, b10, w1, x0, k, K); out[1][1] = finish(a11, b11, w1, x1, k, K);
    out[2][0] = finish(a20, b20, w2, x0, k, K); out[2][1] = finish(a21, b21, w2, x1, k, K);
    out[3][0] = finish(a30, b30, w3, x0, k, K); out[3][1] = finish(a31, b31, w3, x1, k, K);
}

/* x: (M, K), w: (N, K), bias: (N,) or NULL, y: (M, N); all contiguous float32. */
void fastbark_gemv_f32(const float *x, const float *w, const float *bias, float *y,
                       int64_t M, int64_t N, int64_t K, int threads) {
    const int64_t blocks = (N + 3) / 4;  /* blocks of 4 rows of w; the last may be short */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n0 = b * 4, rows = N - n0 < 4 ? N - n0 : 4;
        int64_t m = 0;
        if (rows == 4) {
            float out[4][2];
            for (; m + 2 <= M; m += 2) {
                dot4x2(w + n0 * K, x + m * K, x + (m + 1) * K, K, out);
                for (int r = 0; r < 4; r++) {
                    const float add = bias ? bias[n0 + r] : 0.0f;
                    y[m * N + n0 + r] = out[r][0] + add;
                    y[(m + 1) * N + n0 + r] = out[r][1] + add;
                }
            }
        }
        for (; m < M; m++)
            for (int64_t r = 0; r < rows; r++)
                y[m * N + n0 + r] = dot1(w + (n0 + r) * K, x + m * K, K) + (bias ? bias[n0 + r] : 0.0f);
    }
}
