/* The fast modes' GELU, in GCC's generic vectors: x / 2 (1 + erf(x / sqrt 2)).
 *
 * 1 + erf(z) for z = x / sqrt(2) from Abramowitz and Stegun 7.1.26, 1 - erf(|z|) = p(t) e^(-z^2), t = 1 / (1 +
 * 0.3275911 |z|) (|error| < 1.5e-7), with e^(-z^2) = 2^n 2^f (n rounded by adding 1.5 x 2^23; 2^f by its Taylor
 * polynomial of degree 6 on [-1/2, 1/2]): at most 4.2e-7 from float64's GELU (torch's float32 GELU: 1.1e-6).
 * glibc's scalar erff took 9 ns a value on the Xeon of RESULTS.md section 58. The exact mode keeps erff.
 *
 * Users: the fast modes' one-call decode step (decode_step.c), the long products that end in GELU (the MLP's first
 * product, its GELU in the product's epilogue: amx.c, gemv.c's rescaling) and gemv.c's fastbark_gelu_f32.
 *
 * GELU_LANES values at a time: 16 where the CPU has 512-bit registers, else 8 (a 64-byte generic vector would live
 * on the stack on AVX2). Lane for lane the arithmetic is the same at either width, and without contraction every
 * operation rounds once, so every build gives the same bits (checked: 800,000 inputs, x86-64 against arm64 under
 * qemu, RESULTS.md section 58; 16 lanes against 8, AVX-512 and AVX2 builds, 8,000,000 inputs, section 59;
 * tests/test_native_targets.py). A fused multiply-add where another build has none moved a value by an ulp, and the
 * next product's int8 rounding of it by a step. Casts between vector types of one size keep the bits. */
#ifndef FASTBARK_GELU_H
#define FASTBARK_GELU_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define GELU_LANES 16
#else
#define GELU_LANES 8
#endif
typedef float gelu_f __attribute__((vector_size(GELU_LANES * 4)));
typedef int32_t gelu_i __attribute__((vector_size(GELU_LANES * 4)));

__attribute__((optimize("fp-contract=off")))
static inline gelu_f gelu_lanes(gelu_f x) {
    const gelu_f zero = {0};
    const gelu_f z = x * 0.707106781186547524f;  /* x / sqrt(2) */
    const gelu_f a = (gelu_f)((gelu_i)z & 0x7fffffff);  /* |z| */
    const gelu_f t = 1.0f / (1.0f + 0.3275911f * a);
    const gelu_f poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f +
                                                                                              t * 1.061405429f))));
    gelu_f e = -(a * a) * 1.44269504088896341f;  /* -z^2 in powers of 2 */
    const gelu_f floor_ = zero - 125.0f;
    const gelu_i low = e < floor_;  /* below 2^-125: e^(-z^2) is under 1e-37, far below p(t)'s error */
    e = (gelu_f)((low & (gelu_i)floor_) | (~low & (gelu_i)e));
    const gelu_f big = e + 12582912.0f, n = big - 12582912.0f, f = e - n;
    const gelu_f p = 1.0f + f * (0.693147181f + f * (0.240226507f + f * (0.0555041087f + f * (0.00961812911f +
                                 f * (0.00133335581f + f * 0.000154035304f)))));
    const gelu_f q = poly * (gelu_f)((gelu_i)p + ((gelu_i)big << 23));  /* 1 - erf(|z|); big's low bits hold n */
    const gelu_i negative = x < zero;
    const gelu_f one_plus = (gelu_f)((negative & (gelu_i)q) | (~negative & (gelu_i)(2.0f - q)));  /* 1 + erf(z) */
    return x * 0.5f * one_plus;
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
