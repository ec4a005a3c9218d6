/* The fast modes' GELU, in GCC's generic vectors: x / 2 (1 + erf(x / sqrt 2)).
 *
 * erf(|x| / sqrt 2) piecewise: u = |x| 7 / (4 sqrt 2) in [0, 7] splits [0, 4 sqrt 2) into 7 intervals (u's integer
 * part i), on each a polynomial of degree 6 in u - i, fitted near-minimax to erf (|error| < 5.2e-8); from 4 sqrt 2 on,
 * where float32's erf is 1, u is held at 7 and the eighth entry is the constant 1. The 8 coefficients of each degree
 * are one 8-entry table, looked up for all lanes at once by a shuffle (vpermps; tbl on ARM): 32 operations a vector
 * and no division. At most 4.9e-7 from float64's GELU (torch's float32 GELU: 1.2e-6). On the Xeon of RESULTS.md
 * section 60 it takes 1.5 ms for 1024 x 3072 values on one thread, against 2.2 ms for the form it replaced (Abramowitz
 * and Stegun 7.1.26 with an exponential and a division, 4.2e-7 from float64). The exact mode keeps erff.
 *
 * Users: the fast modes' one-call decode step (decode_step.c), the long products that end in GELU (the MLP's first
 * product, its GELU in the product's epilogue: amx.c, gemv.c's rescaling) and gemv.c's fastbark_gelu_f32.
 *
 * GELU_LANES values at a time: 16 where the CPU has 512-bit registers, else 8 (a 64-byte generic vector would live
 * on the stack on AVX2). Lane for lane the arithmetic is the same at either width, the tables are the same 8 values,
 * and without contraction every operation rounds once, so every build gives the same bits (tests/native_driver.c's
 * GELU records, compared bit for bit on emulated x86 CPUs and 64-bit ARM in tests/test_native_targets.py). A fused
 * multiply-add where another build has none would move a value by an ulp, and the next product's int8 rounding of it
 * by a step. Casts between vector types of one size keep the bits. */
#ifndef FASTBARK_GELU_H
#define FASTBARK_GELU_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define GELU_LANES 16
#define GELU_ROW(a, b, c, d, e, f, g, h) {a, b, c, d, e, f, g, h, a, b, c, d, e, f, g, h}
#else
#define GELU_LANES 8
#define GELU_ROW(a, b, c, d, e, f, g, h) {a, b, c, d, e, f, g, h}
#endif
typedef float gelu_f __attribute__((vector_size(GELU_LANES * 4)));
typedef int32_t gelu_i __attribute__((vector_size(GELU_LANES * 4)));

enum { GELU_DEGREE = 6 };
#define GELU_SCALE 1.237436891f  /* 7 / (4 sqrt 2), rounded to float32 */

/* GELU_TABLE[d][i]: the coefficient of (u - i)^d on interval i (entry 7: erf = 1). */
static const gelu_f GELU_TABLE[GELU_DEGREE + 1] = {
    GELU_ROW(-3.18011288e-08f, 5.80979705e-01f, 8.93958449e-01f, 9.84664857e-01f,
             9.98772800e-01f, 9.99946713e-01f, 9.99998748e-01f, 1.00000000e+00f),
    GELU_ROW(6.44791365e-01f, 4.65160161e-01f, 1.74653277e-01f, 3.41297984e-02f,
             3.47082084e-03f, 1.83656710e-04f, 5.05570733e-06f, 0.00000000e+00f),
    GELU_ROW(-5.54434155e-05f, -1.51821062e-01f, -1.14066966e-01f, -3.34463380e-02f,
             -4.53129457e-03f, -2.98903935e-04f, -9.82470647e-06f, 0.00000000e+00f),
    GELU_ROW(-6.98275194e-02f, -1.79811623e-02f, 3.06870770e-02f, 1.82055701e-02f,
             3.55703244e-03f, 2.99927400e-04f, 1.18146709e-05f, 0.00000000e+00f),
    GELU_ROW(-1.08737440e-03f, 2.05797721e-02f, 2.33604782e-03f, -5.49719855e-03f,
             -1.80387939e-03f, -1.97733752e-04f, -9.22516938e-06f, 0.00000000e+00f),
    GELU_ROW(8.63318332e-03f, -2.50888523e-03f, -3.62289348e-03f, 6.90200948e-04f,
             5.67306532e-04f, 8.04267693e-05f, 4.32092020e-06f, 0.00000000e+00f),
    GELU_ROW(-1.47449120e-03f, -4.50140302e-04f, 7.19899603e-04f, 2.59495137e-05f,
             -8.61286462e-05f, -1.53046331e-05f, -9.14412908e-07f, 0.00000000e+00f),
};

__attribute__((optimize("fp-contract=off")))
static inline gelu_f gelu_lanes(gelu_f x) {
    const gelu_f zero = {0}, top = zero + 7.0f;
    const gelu_i sign = (gelu_i)x & (int32_t)0x80000000;
    gelu_f u = (gelu_f)((gelu_i)x & 0x7fffffff) * GELU_SCALE;  /* |x| in intervals */
    const gelu_i over = u > top;
    u = (gelu_f)((over & (gelu_i)top) | (~over & (gelu_i)u));
    const gelu_i i = __builtin_convertvector(u, gelu_i);  /* the interval: u's integer part, 0..7 */
    const gelu_f f = u - __builtin_convertvector(i, gelu_f);  /* exact */
    gelu_f p = __builtin_shuffle(GELU_TABLE[GELU_DEGREE], i);
    for (int d = GELU_DEGREE - 1; d >= 0; d--) p = p * f + __builtin_shuffle(GELU_TABLE[d], i);
    const gelu_f e = (gelu_f)((gelu_i)p ^ sign);  /* erf(x / sqrt 2): odd */
    const gelu_f h = x * 0.5f;
    return h + h * e;
}

/* GELU over y[0..n) in place: whole vectors, then the last n % GELU_LANES through one padded with zeros. */
__attribute__((optimize("fp-contract=off")))
static inline void gelu_span(float *y, int64_t n) {
    gelu_f v;
    int64_t i = 0;
    for (; i + GELU_LANES <= n; i += GELU_LANES) {
        memcpy(&v, y + i, sizeof v);
        v = gelu_lanes(v);
        memcpy(y + i, &v, sizeof v);
    }
    if (i < n) {
        v = (gelu_f){0};
        memcpy(&v, y + i, (size_t)(n - i) * sizeof(float));
        v = gelu_lanes(v);
        memcpy(y + i, &v, (size_t)(n - i) * sizeof(float));
    }
}

#endif
